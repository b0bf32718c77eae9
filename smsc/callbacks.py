"""What the status events of a message sent through the HTTP API ask: its callback URL,
its reference, and for messages sent through the Kannel or Jasmin endpoints, their
callback dialect. Kept in memory by message id (bounded) and in the API's records."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import msgspec

#: Messages whose target is remembered in memory, at most.
MAX_TARGETS = 1_000_000


class Target(msgspec.Struct, frozen=True):
    """What a message sent through the HTTP API asked of its status events."""

    callback_url: str | None
    reference: str | None
    dialect: Literal["json", "kannel", "jasmin"] = "json"
    """json: our signed events; kannel, jasmin: their DLR callbacks (smsc/legacy_http.py)."""
    mask: int = 0
    """Kannel's dlr-mask, or Jasmin's dlr-level."""
    method: str = "GET"
    """Jasmin's dlr-method (Kannel calls with GET)."""
    user: str = ""
    """The account, for Kannel's %n."""


#: The target of a message whose events ask nothing of their own (the account's webhook,
#: or SMPP, as for a message without a target): in a cluster, a message known to ask
#: nothing needs no read of the shared records when its receipt comes.
NO_TARGET = Target(None, None)

#: The ``via`` of the messages the HTTP API creates (router.model.Message): only those may
#: have a target.
VIA_API = "http"


class Callbacks:
    """Callback URL and reference of messages sent through the HTTP API, by id (its
    parts' reports name it as their client id); bounded, the oldest forgotten first.
    Filled at submit and, at start, from the API's records."""

    def __init__(self, limit: int = MAX_TARGETS) -> None:
        self._targets: OrderedDict[str, Target] = OrderedDict()
        self.limit = limit

    def add(self, message_id: str, target: Target) -> None:
        self._targets[message_id] = target
        if len(self._targets) > self.limit:
            self._targets.popitem(last=False)

    def get(self, message_id: str) -> Target | None:
        return self._targets.get(message_id)
