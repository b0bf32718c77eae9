"""Cluster coordination: what the nodes of one deployment share that is not a message
(the node registry, session slots, token buckets, carrier bind slots, reload fan-out),
behind :class:`router.ports.Coordinator`. ``local`` runs one node in memory; ``redis``
shares it through Redis. :func:`coordinator` picks one from the configuration."""

from __future__ import annotations

from router.cluster.config import ClusterConfig
from router.cluster.local import LocalCoordinator
from router.ports import Coordinator


def coordinator(config: ClusterConfig, node_id: str) -> Coordinator:
    """The Redis coordinator when ``config.redis`` is set, else the local one."""
    if config.redis is None:
        return LocalCoordinator(node_id, lease=config.lease)
    from router.cluster.redis import RedisCoordinator

    return RedisCoordinator.from_config(config, node_id)
