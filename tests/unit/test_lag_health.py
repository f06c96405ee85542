"""Lag health: each of Burrow's statuses from a scripted window, and the lag in seconds."""

from __future__ import annotations

import pytest

from service.lag_health import LagHealth, LagStatus


def feed(
    health: LagHealth,
    points: list[tuple[float, int, int]],
    partition: object = 0,
) -> None:
    for now, position, log_end in points:
        health.observe(partition, position, log_end, now=now)


def test_caught_up_consumer_is_ok() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 100 * t, 100 * t) for t in range(10)])
    result = health.evaluate(0, now=9.5)
    assert result["status"] == "OK"
    assert result["lag"] == 0 and result["lag_seconds"] == 0.0


def test_lag_zero_anywhere_in_the_window_is_ok_even_if_it_grows_after() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(0.0, 0, 0), (1.0, 10, 50), (2.0, 20, 90), (3.0, 30, 130)])
    assert health.evaluate(0, now=3.1)["status"] == "OK"


def test_catching_up_consumer_is_ok() -> None:
    # Large lag, but it shrinks: Burrow's point, no threshold on the count.
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 1000 * t, 50_000 + 100 * t) for t in range(10)])
    result = health.evaluate(0, now=9.2)
    assert result["status"] == "OK"
    assert result["lag"] == 50_900 - 9000


def test_slow_consumer_whose_lag_never_decreases_warns() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 100 * t, 1000 + 150 * t) for t in range(10)])
    assert health.evaluate(0, now=9.5)["status"] == "WARN"


def test_one_decrease_in_the_window_clears_the_warning() -> None:
    health = LagHealth(interval_s=1.0)
    lags = [1000, 1100, 1200, 1150, 1250, 1300]
    feed(health, [(float(t), 100 * t, 100 * t + lag) for t, lag in enumerate(lags)])
    assert health.evaluate(0, now=5.5)["status"] == "OK"


def test_offsets_not_moving_with_lag_stall() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 500, 800 + 10 * t) for t in range(10)])
    result = health.evaluate(0, now=9.5)
    assert result["status"] == "STALL"
    assert result["lag"] == 390


def test_offsets_not_moving_without_lag_is_ok() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 500, 500) for t in range(10)])
    assert health.evaluate(0, now=9.5)["status"] == "OK"


def test_no_observation_for_longer_than_the_window_is_stop() -> None:
    health = LagHealth(interval_s=1.0, stop_after_s=3.0)
    feed(health, [(float(t), 100 * t, 2000 + 150 * t) for t in range(5)])
    assert health.evaluate(0, now=4.5)["status"] == "WARN"
    # The window spans 4 s: silence longer than that means the consumer stopped.
    assert health.evaluate(0, now=7.9)["status"] == "WARN"
    assert health.evaluate(0, now=8.1)["status"] == "STOP"


def test_stop_needs_a_minimum_silence_with_a_single_point() -> None:
    health = LagHealth(interval_s=1.0, stop_after_s=3.0)
    health.observe(0, 10, 100, now=0.0)
    assert health.evaluate(0, now=2.0)["status"] == "OK"
    assert health.evaluate(0, now=3.5)["status"] == "STOP"


def test_stopped_consumer_without_lag_is_ok_until_the_log_moves() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 100 * t, 100 * t) for t in range(5)])
    assert health.evaluate(0, now=100.0)["status"] == "OK"
    # A fresher log end (read by whoever asks) reveals the lag that piled up meanwhile.
    result = health.evaluate(0, now=100.0, log_end=900)
    assert result["status"] == "OK"  # the window saw lag 0: Burrow's rule 1 still holds
    health = LagHealth(interval_s=1.0, stop_after_s=3.0)
    feed(health, [(float(t), 100 * t, 100 * t + 5) for t in range(5)])
    assert health.evaluate(0, now=100.0, log_end=900)["status"] == "STOP"
    assert health.evaluate(0, now=100.0, log_end=900)["lag"] == 500


def test_offset_going_backwards_is_rewind() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(0.0, 1000, 5000), (1.0, 2000, 5000), (2.0, 3000, 5100)])
    # Goes back between two window points: recorded at once, not lost to sampling.
    feed(health, [(2.3, 3200, 5100), (2.4, 1500, 5100)])
    result = health.evaluate(0, now=2.5)
    assert result["status"] == "REWIND"
    assert result["position"] == 1500 and result["lag"] == 3600


def test_rewind_outranks_stop_and_leaves_the_window_in_time() -> None:
    health = LagHealth(window=4, interval_s=1.0, stop_after_s=2.0)
    feed(health, [(0.0, 1000, 5000), (1.0, 500, 5000)])
    assert health.evaluate(0, now=50.0)["status"] == "REWIND"
    feed(health, [(float(t), 500 + 1000 * t, 9000) for t in range(2, 7)])
    assert health.evaluate(0, now=6.5)["status"] == "OK"


def test_statuses_need_min_points_except_rewind_and_stop() -> None:
    health = LagHealth(interval_s=1.0, min_points=3)
    feed(health, [(0.0, 500, 900), (1.0, 500, 900)])
    assert health.evaluate(0, now=1.5)["status"] == "OK"
    health.observe(0, 500, 900, now=2.0)
    assert health.evaluate(0, now=2.5)["status"] == "STALL"


def test_points_enter_the_window_at_most_every_interval() -> None:
    health = LagHealth(window=10, interval_s=5.0)
    # Observed every 0.2 s for 60 s while stuck: the window covers 45 s, not the last 2 s.
    feed(health, [(0.2 * i, 700, 1000) for i in range(300)])
    result = health.evaluate(0, now=60.0)
    assert result["status"] == "STALL"
    assert result["observed_at"] == pytest.approx(59.8)


def test_worst_status_over_partitions_and_forget() -> None:
    health = LagHealth(interval_s=1.0)
    feed(health, [(float(t), 100 * t, 100 * t) for t in range(5)], partition=("t", 0))
    feed(health, [(float(t), 300, 800) for t in range(5)], partition=("t", 1))
    assert set(health.partitions()) == {("t", 0), ("t", 1)}
    assert health.worst(now=4.5) == LagStatus.STALL
    health.forget(("t", 1))
    assert health.worst(now=4.5) == "OK"
    with pytest.raises(KeyError):
        health.evaluate(("t", 1))


def test_lag_seconds_from_the_last_learned_record_timestamp() -> None:
    # A backlog produced before the service started, at 1000 records/s from t=0 to t=100.
    health = LagHealth(interval_s=1.0)
    health.observe(0, 0, 100_000, now=200.0)
    # Before any record is learned: only "it existed when first seen", a lower bound.
    assert health.evaluate(0, now=200.0)["lag_seconds"] == 0.0
    # Learned up to offset 20_000 (the last one was produced at t=20.0 s).
    health.observe(0, 20_000, 100_000, now=210.0, last_record_timestamp_ms=19_999)
    result = health.evaluate(0, now=210.0)
    assert result["lag_seconds"] == pytest.approx(190.0, abs=0.01)
    assert result["lag"] == 80_000


def test_lag_seconds_when_the_producer_was_idle_uses_when_the_log_end_moved() -> None:
    # Caught up, an hour of silence, then one record: it is fresh, not an hour old.
    health = LagHealth(interval_s=1.0)
    health.observe(0, 10, 10, now=0.0, last_record_timestamp_ms=0)
    health.observe(0, 10, 10, now=3600.0)
    health.observe(0, 10, 11, now=3600.2)
    result = health.evaluate(0, now=3600.5)
    assert result["lag"] == 1
    assert 0.3 <= result["lag_seconds"] <= 0.5


def test_lag_seconds_is_zero_when_caught_up() -> None:
    health = LagHealth()
    health.observe(0, 50, 50, now=10.0, last_record_timestamp_ms=1_000)
    assert health.evaluate(0, now=99.0)["lag_seconds"] == 0.0


def test_log_end_marks_stay_bounded_when_far_behind() -> None:
    health = LagHealth(interval_s=1.0)
    for t in range(5000):  # the log grows every step; the consumer never moves
        health.observe(0, 0, 10 * (t + 1), now=float(t))
    state = health._partitions[0]  # noqa: SLF001 - the bound is the point of the test
    assert len(state.log_end_marks) <= 257
    assert health.evaluate(0, now=5000.0)["lag_seconds"] == pytest.approx(5000.0)


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        LagHealth(window=1)
    with pytest.raises(ValueError):
        LagHealth(window=3, min_points=4)


def test_a_rewound_partition_is_rewind_until_its_lag_first_reaches_zero() -> None:
    health = LagHealth(interval_s=1.0)
    health.rewound("p")
    assert health.evaluate("p", now=0.0)["status"] == "REWIND", "before any observation"
    health.observe("p", position=0, log_end=2000, now=0.0)
    health.observe("p", position=1500, log_end=2000, now=1.0)
    assert health.evaluate("p", now=1.5)["status"] == "REWIND"
    assert health.worst(now=1.5) == "REWIND"
    health.observe("p", position=2000, log_end=2000, now=2.0)
    assert health.evaluate("p", now=2.5)["status"] == "OK"
    health.observe("p", position=2000, log_end=2600, now=3.0)
    assert health.evaluate("p", now=3.5)["status"] != "REWIND", "cleared for good"
