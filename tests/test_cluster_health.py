"""Carrier health pooled across the nodes of a cluster (router.health.HealthSums): each
node shares its decayed sums; each adds the others' to its own rates and latency, decayed
by their age; the breaker and the binds stay the node's own."""

from __future__ import annotations

import pytest

from router.config import HealthConfig
from router.health import CarrierHealth, HealthSums

CFG = HealthConfig(window_seconds=60.0, min_acceptance=0.5, breaker_failures=3)


def health(now: float = 0.0) -> CarrierHealth:
    h = CarrierHealth("mid", CFG, now)
    h.set_binds(1)
    return h


def test_a_node_that_has_seen_nothing_routes_on_what_the_others_saw() -> None:
    elsewhere = health()
    for _ in range(20):
        elsewhere.record_submit(0.0, 0.5, "rejected")
    here = health()
    assert here.view(0.0).acceptance is None
    here.set_peers(elsewhere.sums(0.0))
    view = here.view(0.0)
    assert view.acceptance == 0.0
    assert view.submits == pytest.approx(20.0)
    assert not view.healthy  # 20 samples, none accepted: below min_acceptance
    assert view.breaker == "closed"  # the others' failures do not open this node's breaker
    assert here.sums(0.0).acc_w == 0.0  # what it shares is only its own


def test_own_and_peer_samples_add_up_and_the_peers_age_decays_them() -> None:
    here = health()
    for _ in range(10):
        here.record_submit(0.0, 1.0, "accepted")
    peers = HealthSums(at=0.0, acc_n=0.0, acc_w=10.0, lat_sum=30.0, lat_w=10.0)
    here.set_peers(peers)
    view = here.view(0.0)
    assert view.submits == pytest.approx(20.0)
    assert view.acceptance == pytest.approx(0.5)
    assert view.latency == pytest.approx(2.0)
    later = here.view(60.0)  # one half-life: both halve alike
    assert later.submits == pytest.approx(10.0)
    assert later.acceptance == pytest.approx(0.5)


def test_sums_taken_at_different_instants_add_decayed_to_the_later() -> None:
    early = HealthSums(at=0.0, acc_n=8.0, acc_w=8.0)
    late = HealthSums(at=60.0, acc_n=0.0, acc_w=4.0)
    both = early.plus(late, 60.0)
    assert both.at == 60.0
    assert (both.acc_n, both.acc_w) == (pytest.approx(4.0), pytest.approx(8.0))
    assert late.plus(early, 60.0) == both
