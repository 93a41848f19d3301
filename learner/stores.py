"""Opening the snapshot store for a location: a local directory, or an fsspec URL shared by hosts."""

from __future__ import annotations

from pathlib import Path

from learner.fsspec_snapshots import FsspecSnapshotStore
from learner.snapshots import SnapshotStore, is_url


def open_snapshot_store(location: Path | str, keep: int = 5) -> SnapshotStore:
    """The store at a local path, or at an fsspec URL (``s3://bucket/prefix``, ``file:///shared``)."""
    if is_url(location):
        return FsspecSnapshotStore(location, keep=keep)
    return SnapshotStore(location, keep=keep)
