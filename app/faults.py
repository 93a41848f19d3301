"""Fault injection for the crash tests, kept apart from the code it interrupts.

With `RETENTIVE_CRASH_AT=<point>` in its environment a learner process SIGKILLs itself when it reaches that
named point (`before_snapshot`, `after_snapshot`), so a test can prove that a crash there loses nothing.
Unset, `crash_point` does nothing.
"""

from __future__ import annotations

import os
import signal

CRASH_AT_ENV = "RETENTIVE_CRASH_AT"
CRASH_POINTS = ("before_snapshot", "after_snapshot")


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
