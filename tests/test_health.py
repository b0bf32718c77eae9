"""Live carrier health: bound binds, decayed acceptance and delivery rates, latency, and a
circuit breaker (closed → open → half-open with one trial → closed or open again).

Time is a parameter: every test drives ``now`` by hand, nothing sleeps.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import HealthConfig
from router.health import MIN_SAMPLES, NO_DATA_SCORE, CarrierHealth, HealthView

CFG = HealthConfig(
    window_seconds=60.0,
    min_acceptance=0.5,
    min_delivery=0.3,
    max_latency=5.0,
    breaker_failures=3,
    breaker_open=10.0,
)


def bound(now: float = 0.0, config: HealthConfig = CFG) -> CarrierHealth:
    h = CarrierHealth("alpha", config, now)
    h.set_binds(2)
    return h


# -- no data -------------------------------------------------------------------------------


def test_a_carrier_with_no_data_is_healthy_and_available_once_bound() -> None:
    h = CarrierHealth("alpha", CFG, 100.0)
    v = h.view(100.0)
    assert v.healthy
    assert not v.available  # nothing bound yet
    assert v.reasons == ("no bind up",)
    h.set_binds(1)
    v = h.view(100.0)
    assert v == HealthView(carrier="alpha", binds=1)
    assert v.acceptance is v.delivery is v.latency is None
    assert v.score == pytest.approx(NO_DATA_SCORE)


def test_losing_every_bind_makes_the_carrier_unavailable() -> None:
    h = bound()
    h.set_binds(0)
    assert not h.view(0.0).available
    h.set_binds(-3)  # nonsense counts clamp to zero
    assert h.view(0.0).binds == 0


# -- rates and latency -----------------------------------------------------------------------


def test_acceptance_rate_counts_every_outcome_that_is_not_accepted() -> None:
    h = bound()
    for kind in ("accepted", "accepted", "rejected", "temporary"):
        h.record_submit(1.0, 0.1, kind)
    v = h.view(1.0)
    assert v.acceptance == pytest.approx(0.5)
    assert v.submits == pytest.approx(4.0)
    assert v.latency == pytest.approx(0.1)


def test_unknown_submit_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown submit outcome"):
        bound().record_submit(0.0, 0.1, "maybe")  # type: ignore[arg-type]


def test_too_few_samples_are_not_judged() -> None:
    h = bound()
    for _ in range(int(MIN_SAMPLES) - 1):
        h.record_submit(0.0, 9.0, "rejected")
        h.record_receipt(0.0, delivered=False)
    v = h.view(0.0)
    assert v.acceptance == 0.0
    assert v.delivery == 0.0
    assert v.healthy, "fewer than MIN_SAMPLES: assume healthy"
    h.record_submit(0.0, 9.0, "rejected")
    h.record_receipt(0.0, delivered=False)
    v = h.view(0.0)
    assert not v.healthy
    assert v.available, "unhealthy is not unavailable: routing only demotes it"
    assert v.reasons == (
        "acceptance 0.00 < 0.50",
        "delivery 0.00 < 0.30",
        "latency 9.00s > 5.00s",
    )


@pytest.mark.parametrize(
    ("accepted", "delivered", "latency", "healthy"),
    [
        (10, 10, 1.0, True),
        (4, 10, 1.0, False),  # acceptance 0.4 < 0.5
        (10, 2, 1.0, False),  # delivery 0.2 < 0.3
        (10, 10, 6.0, False),  # latency 6 s > 5 s
        (5, 3, 5.0, True),  # exactly at every threshold
    ],
)
def test_thresholds(accepted: int, delivered: int, latency: float, healthy: bool) -> None:
    h = bound()
    for i in range(10):
        h.record_submit(0.0, latency, "accepted" if i < accepted else "rejected")
        h.record_receipt(0.0, delivered=i < delivered)
    assert h.view(0.0).healthy is healthy


def test_samples_decay_with_a_half_life_of_the_window() -> None:
    h = bound()
    for _ in range(20):
        h.record_submit(0.0, 1.0, "rejected")
    assert not h.view(0.0).healthy
    assert h.view(60.0).submits == pytest.approx(10.0)  # one half-life later
    # old failures fade: after 5 windows they weigh 20/32 < MIN_SAMPLES, not judged
    assert h.view(300.0).healthy
    # and fresh successes outweigh them
    for _ in range(20):
        h.record_submit(300.0, 1.0, "accepted")
    v = h.view(300.0)
    assert v.acceptance == pytest.approx(20 / (20 + 20 / 32))
    assert v.healthy


def test_recent_samples_weigh_more_than_old_ones() -> None:
    h = bound()
    for _ in range(10):
        h.record_submit(0.0, 4.0, "accepted")
    for _ in range(10):
        h.record_submit(60.0, 1.0, "accepted")
    # the old ten weigh five now: (5*4 + 10*1) / 15
    assert h.view(60.0).latency == pytest.approx(2.0)


def test_a_wall_clock_stepping_back_does_not_grow_the_weights() -> None:
    h = bound(now=100.0)
    h.record_submit(100.0, 1.0, "accepted")
    h.record_submit(50.0, 1.0, "accepted")
    assert h.view(40.0).submits == pytest.approx(2.0)


def test_score_prefers_delivery_and_low_latency() -> None:
    fast, slow, lossy = bound(), bound(), bound()
    for _ in range(50):
        fast.record_submit(0.0, 0.2, "accepted")
        fast.record_receipt(0.0, delivered=True)
        slow.record_submit(0.0, 3.0, "accepted")
        slow.record_receipt(0.0, delivered=True)
        lossy.record_submit(0.0, 0.2, "accepted")
        lossy.record_receipt(0.0, delivered=False)
    s_fast, s_slow, s_lossy = (h.view(0.0).score for h in (fast, slow, lossy))
    assert s_fast > s_slow > s_lossy
    assert s_fast > NO_DATA_SCORE, "a proven carrier outranks one with no data"
    assert 0.0 < s_lossy < 1.0
    assert s_fast < 1.0


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1000),
            st.floats(0, 30),
            st.sampled_from(
                ["accepted", "rejected", "throttled", "temporary", "failed", "dlr+", "dlr-"]
            ),
        ),
        max_size=60,
    )
)
def test_any_history_gives_rates_in_range(events: list[tuple[float, float, str]]) -> None:
    h = bound()
    for now, latency, kind in sorted(events):
        if kind.startswith("dlr"):
            h.record_receipt(now, delivered=kind == "dlr+")
        else:
            h.record_submit(now, latency, kind)  # type: ignore[arg-type]
    v = h.view(2000.0)
    for rate in (v.acceptance, v.delivery):
        assert rate is None or 0.0 <= rate <= 1.0 + 1e-9
    assert 0.0 <= v.score <= 1.0
    assert v.available == (v.breaker != "open")  # bound, and no trial taken


# -- circuit breaker ---------------------------------------------------------------------------


def fail(h: CarrierHealth, now: float, n: int, kind: str = "temporary") -> None:
    for _ in range(n):
        h.record_submit(now, 0.1, kind)  # type: ignore[arg-type]


def test_consecutive_failures_open_the_breaker() -> None:
    h = bound()
    fail(h, 0.0, 2)
    assert h.view(0.0).breaker == "closed"
    fail(h, 0.0, 1, "failed")
    v = h.view(0.0)
    assert v.breaker == "open"
    assert not v.available
    assert v.reasons[0].startswith("breaker open (10.0s left")
    assert not h.try_acquire_trial(5.0)


@pytest.mark.parametrize("kind", ["accepted", "rejected"])
def test_an_answer_resets_the_failure_count(kind: str) -> None:
    """A permanent reject is the carrier answering: it counts against acceptance, not
    towards the breaker."""
    h = bound()
    fail(h, 0.0, 2)
    h.record_submit(0.0, 0.1, kind)  # type: ignore[arg-type]
    fail(h, 0.0, 2)
    assert h.view(0.0).breaker == "closed"


def test_closed_breaker_always_grants() -> None:
    h = bound()
    assert all(h.try_acquire_trial(float(t)) for t in range(5))


def test_half_open_lets_one_trial_through_and_success_closes() -> None:
    h = bound()
    fail(h, 0.0, 3)
    assert h.view(9.9).breaker == "open"
    v = h.view(10.0)
    assert v.breaker == "half_open"
    assert v.available
    assert h.try_acquire_trial(10.0)
    assert not h.try_acquire_trial(10.5), "only ONE trial"
    v = h.view(10.5)
    assert not v.available
    assert v.reasons == ("breaker half-open, trial in flight",)
    h.record_submit(11.0, 1.0, "accepted")
    assert h.view(11.0).breaker == "closed"
    assert h.try_acquire_trial(11.0)
    assert h.try_acquire_trial(11.0)


def test_a_failed_trial_reopens_for_another_period() -> None:
    h = bound()
    fail(h, 0.0, 3)
    assert h.try_acquire_trial(10.0)
    fail(h, 12.0, 1, "failed")
    assert h.view(12.0).breaker == "open"
    assert h.view(21.9).breaker == "open"
    assert h.view(22.0).breaker == "half_open"


def test_outcomes_while_open_do_not_move_the_breaker() -> None:
    """Late answers to submits sent before it opened neither close nor extend it."""
    h = bound()
    fail(h, 0.0, 3)
    fail(h, 5.0, 5)
    h.record_submit(6.0, 0.1, "accepted")
    assert h.view(9.0).breaker == "open"
    assert h.view(10.0).breaker == "half_open"


def test_a_lost_trial_is_forgotten_after_the_open_period() -> None:
    h = bound()
    fail(h, 0.0, 3)
    assert h.try_acquire_trial(10.0)
    assert not h.try_acquire_trial(19.9)
    assert h.try_acquire_trial(20.0), "no outcome came: a new trial may go"


def test_the_breaker_says_when_it_lets_a_trial_through_and_reports_each_move() -> None:
    """What a router holding messages back for the carrier needs: when to look again
    (``trial_at``), and a call when an outcome moves the breaker."""
    moves: list[tuple[str, str]] = []
    h = CarrierHealth("alpha", CFG, 0.0, on_breaker=lambda name, s: moves.append((name, s)))
    h.set_binds(1)
    assert h.trial_at(0.0) is None  # closed: lets submits through now
    fail(h, 1.0, 2)
    assert moves == []
    fail(h, 2.0, 1)
    assert moves == [("alpha", "open")]
    assert h.trial_at(5.0) == 12.0
    assert h.trial_at(12.0) is None  # half-open, the trial free
    assert h.try_acquire_trial(12.0)
    assert h.trial_at(13.0) == 22.0  # the trial in flight (forgotten after breaker_open)
    fail(h, 14.0, 1, "failed")
    assert moves == [("alpha", "open"), ("alpha", "open")]
    assert h.trial_at(14.0) == 24.0
    assert h.try_acquire_trial(24.0)
    h.record_submit(24.5, 0.1, "accepted")
    assert moves[-1] == ("alpha", "closed")
    assert h.trial_at(24.5) is None
    h.record_submit(25.0, 0.1, "accepted")  # no move: no call
    assert len(moves) == 3


def test_breaker_needs_a_bind_to_be_available() -> None:
    h = bound()
    fail(h, 0.0, 3)
    h.set_binds(0)
    v = h.view(10.0)
    assert v.breaker == "half_open"
    assert not v.available
    assert v.reasons == ("no bind up",)


def test_a_throttle_neither_counts_as_a_breaker_failure_nor_resets_the_count() -> None:
    """ESME_RTHROTTLED says the carrier is up and wants less (the adaptive rate slows
    down): failures either side of throttles still add up; a throttle answering the
    half-open trial closes the breaker."""
    h = CarrierHealth("c", HealthConfig(breaker_failures=3, breaker_open=10.0), 0.0)
    h.set_binds(1)
    fail(h, 1.0, 2)
    for _ in range(50):
        h.record_submit(1.5, 0.01, "throttled")
    assert h.view(1.5).breaker == "closed"
    assert h.view(1.5).acceptance == 0.0  # two failures; the throttles are not counted
    fail(h, 2.0, 1)
    assert h.view(2.0).breaker == "open"
    assert h.try_acquire_trial(12.0)
    h.record_submit(12.1, 0.01, "throttled")
    assert h.view(12.1).breaker == "closed"
