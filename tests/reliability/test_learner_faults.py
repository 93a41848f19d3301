"""The learner process under faults: its snapshot disk fails (full, read-only, a file-size limit), its newest
snapshot is corrupt on disk, and (long) it is killed at 20 random moments while the stream keeps arriving.
Each ends with the exactly-once audit."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from streams.connection import embedded_dir
from streams.embedded import EmbeddedRedis
from tests.conftest import RedisTarget
from tests.learners import LearnerHarness, audit, feed, kill, settled, stop_cleanly

pytestmark = pytest.mark.reliability


def log_events(harness: LearnerHarness, event: str) -> list[dict]:
    """Every JSON log line of this kind written by the harness's learners so far."""
    found = []
    for path in sorted(harness.logs.iterdir()):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
    return found


@functools.cache
def mounting_allowed() -> bool:
    """Whether this process may mount a filesystem (root with CAP_SYS_ADMIN), tried on a scratch directory."""
    if shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        if _mount(Path(scratch), "size=1m").returncode != 0:
            return False
        subprocess.run(["umount", scratch], check=True)
        return True


def _mount(path: Path, options: str) -> subprocess.CompletedProcess:
    command = ["mount", "-t", "tmpfs", "-o", options, "retentive-test", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of `megabytes` mounted at `path` for the block."""
    path.mkdir(parents=True)
    mounted = _mount(path, f"size={megabytes}m")
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


@contextlib.contextmanager
def disk_full(disk: Path, _: subprocess.Popen) -> Iterator[None]:
    filler = disk / "filler"
    with filler.open("wb") as handle:
        free = os.statvfs(disk)
        os.posix_fallocate(handle.fileno(), 0, free.f_bavail * free.f_frsize)
    try:
        yield
    finally:
        filler.unlink()


@contextlib.contextmanager
def read_only(disk: Path, _: subprocess.Popen) -> Iterator[None]:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


@contextlib.contextmanager
def file_size_limit(_: Path, process: subprocess.Popen) -> Iterator[None]:
    """RLIMIT_FSIZE of 1 MiB on the learner: a larger file fails with EFBIG (Python ignores SIGXFSZ)."""
    learner = psutil.Process(process.pid)
    before = learner.rlimit(psutil.RLIMIT_FSIZE)
    learner.rlimit(psutil.RLIMIT_FSIZE, (1 << 20, before[1]))
    try:
        yield
    finally:
        learner.rlimit(psutil.RLIMIT_FSIZE, before)


Fault = Callable[[Path, subprocess.Popen], contextlib.AbstractContextManager[None]]


@pytest.fixture
def on_small_disk(
    harness: LearnerHarness, redis_target: RedisTarget, tmp_path: Path
) -> Iterator[LearnerHarness]:
    """The harness with its whole data directory (snapshots and published weights) on a 256 MB tmpfs when
    mounting is allowed, else on the ordinary disk."""
    if redis_target.url:
        pytest.skip("the disk is under test here, not Redis: once, on the embedded server")
    disk = tmp_path / "disk"
    with contextlib.ExitStack() as stack:
        if mounting_allowed():
            stack.enter_context(small_disk(disk, 256))
        else:
            disk.mkdir()
        socket = EmbeddedRedis(embedded_dir(redis_target.data_dir)).socket_path
        env = {**harness.env, "RETENTIVE_DATA_DIR": str(disk), "RETENTIVE_REDIS_URL": f"unix://{socket}"}
        yield dataclasses.replace(harness, env=env, data_dir=disk)


def test_a_failing_snapshot_disk_is_reported_retried_and_loses_nothing(on_small_disk: LearnerHarness) -> None:
    harness = on_small_disk
    faults: list[tuple[Fault, str]] = [(file_size_limit, "File too large")]
    if mounting_allowed():
        faults = [(disk_full, "No space left on device"), (read_only, "Read-only file system"), *faults]
    else:
        print("no permission to mount a small filesystem: only the file-size limit is tried")
    fed = feed(harness, 0, 300)
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed), timeout=120, what="the first entries")
        for fault, error in faults:
            kept = harness.snapshots.latest()
            failures = harness.counters().get("snapshot_failures", 0)
            with fault(harness.data_dir, process):
                fed += feed(harness, fed, fed + 200)
                harness.wait_for(
                    lambda: harness.counters().get("snapshot_failures", 0) > failures,  # noqa: B023
                    timeout=60,
                    what=f"a failed snapshot ({error})",
                )
                assert process.poll() is None, harness.log_tail()
                assert harness.pending() > 0, "entries were acknowledged without a snapshot"
                newest, _ = harness.snapshots.load_latest_valid(only=[])
                assert newest is not None and newest.id == kept.id
                assert error in log_events(harness, "snapshot_failed")[-1]["error"]
            harness.wait_for(settled(harness, fed), timeout=60, what=f"a snapshot after {fault.__name__}")
    finally:
        stop_cleanly(process)
    failed = log_events(harness, "snapshot_failed")
    print(f"{len(failed)} failed snapshot writes, each retried:", sorted({f["error"][-60:] for f in failed}))
    audit(harness, fed, 0)


def test_a_corrupt_newest_snapshot_is_caught_by_its_hash_and_the_previous_one_used(
    harness: LearnerHarness,
) -> None:
    fed = feed(harness, 0, 600)
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed), timeout=120, what="the first 600 entries")
    finally:
        stop_cleanly(process)
    newest, previous = harness.snapshots.list()[:2]
    weights = harness.snapshot_dir / newest.id / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    fed += feed(harness, 600, 800)
    recoveries_before = len(log_events(harness, "recovered"))
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed), timeout=120, what="the learner to recover and go on")
    finally:
        stop_cleanly(process)
    skipped = log_events(harness, "snapshot_skipped")[0]
    assert newest.id in skipped["reason"] and "sha256" in skipped["reason"]
    # The restart's first recovery (a busy machine may cost the learner its lease later, and a recovery
    # from a newer snapshot of its own then follows).
    recovered = log_events(harness, "recovered")[recoveries_before]
    # What only the corrupt snapshot held was acknowledged with it, and is read from the stream again.
    assert recovered["snapshot"] == previous.id and recovered["reread"] > 0
    audit(harness, fed, 0)


def newest_log_has(harness: LearnerHarness, event: str) -> bool:
    newest = max(harness.logs.iterdir(), key=lambda path: path.stat().st_mtime_ns)
    return f'"event": "{event}"' in newest.read_text()


def wait_for_event(harness: LearnerHarness, process: subprocess.Popen, event: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not newest_log_has(harness, event):
        time.sleep(0.05)


@pytest.mark.long
def test_twenty_sigkills_at_random_moments_while_the_stream_arrives(harness: LearnerHarness) -> None:
    total, kills, chunk = 5000, 20, 50
    rng = random.Random(20)
    duplicates: list[int] = []

    def stream() -> None:
        for start in range(0, total, chunk):
            feed(harness, start, start + chunk)
            if start % 1000 == 0:
                # A client retrying a request it already sent: every id comes back as a duplicate.
                duplicates.append(feed(harness, start, start + chunk // 5))
            time.sleep(0.4)

    feeder = threading.Thread(target=stream)
    feeder.start()
    while_leading = 0
    try:
        for _ in range(kills):
            process = harness.start()
            # From the moment the model is loaded: the kill lands in the lease wait, the recovery, a
            # step, a snapshot write or between a snapshot and its acknowledgement.
            wait_for_event(harness, process, "standby")
            time.sleep(rng.uniform(0.0, 6.0))
            kill(process)
            while_leading += newest_log_has(harness, "recovered")
    finally:
        feeder.join()
    process = harness.start()
    try:
        wait_for_event(harness, process, "recovered")
        harness.wait_for(settled(harness, total), timeout=300, what="every entry after 20 kills")
    finally:
        stop_cleanly(process)
    print(f"{kills} SIGKILLs, {while_leading} of them after recovery, while {total} entries arrived")
    assert harness.client.xlen(harness.keys.dead) == 0, "entries were dead-lettered by the restarts"
    audit(harness, total, sum(duplicates))


def test_a_restart_storm_dead_letters_no_good_entry_and_loses_none(harness: LearnerHarness) -> None:
    """Twelve learners in a row take over the pending entries, apply some and die just before their first
    snapshot: more restarts than RETENTIVE_MAX_DELIVERIES (10), and none of them died applying an entry."""
    fed = feed(harness, 0, 400)
    for restart in range(12):
        process = harness.start(crash_at="before_snapshot")
        assert process.wait(timeout=120) == -signal.SIGKILL, (restart, harness.log_tail())
    assert harness.snapshots.list() == [], "no snapshot between the restarts"
    assert harness.pending() > 0
    process = harness.start()
    try:
        harness.wait_for(settled(harness, fed), timeout=240, what="every entry applied and acknowledged")
    finally:
        stop_cleanly(process)
    assert harness.client.xlen(harness.keys.dead) == 0
    audit(harness, fed, 0)
