"""What a replica reports to learners: slowdown against its own fastest answer of the same size."""

from __future__ import annotations

from app.pressure import WINDOW_S, LatencyWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_of_many_texts_slow_as_their_size_needs_are_no_pressure() -> None:
    window = LatencyWindow(Clock())
    window.record(0.012, texts=1)
    for _ in range(16):
        window.record(0.9, texts=64)  # 64 texts take their time: no sign of contention
    assert window.slowdown() < 1.5


def test_requests_answered_several_times_slower_than_the_replica_can_are_pressure() -> None:
    window = LatencyWindow(Clock())
    window.record(0.012, texts=1)
    for _ in range(10):
        window.record(0.060, texts=1)
    assert window.slowdown() == 5.0


def test_pressure_ends_once_the_window_holds_no_request() -> None:
    clock = Clock()
    window = LatencyWindow(clock)
    window.record(0.012, texts=1)
    window.record(0.120, texts=1)
    assert window.slowdown() == 10.0
    clock.now += WINDOW_S + 0.1
    assert window.slowdown() == 1.0
