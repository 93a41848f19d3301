"""Snapshots on any filesystem fsspec knows (``s3://`` with s3fs, ``gs://``, ``file://`` ...), shared by
the learner and every API replica through one URL.

Same layout, manifest and checks as the local `SnapshotStore`; what differs is how a snapshot appears,
because an object store cannot rename a directory and has no locks:

- A snapshot exists once its ``manifest.json`` does. The data files are written first, straight to their
  final names under the snapshot's id: nothing reads a file that no manifest vouches for, and renaming a
  large model on an object store would copy it. The manifest, written last, goes to a temporary name
  and is then moved into place, which is a rename on a filesystem and one atomic copy on an object store,
  so a reader never sees a partial manifest, nor a snapshot whose files are not all written.
- A snapshot directory without a manifest is a write in progress or an abandoned one: it is not listed
  and not reported as broken, but its version is never reused. The writer removes abandoned ones when it
  saves, once a newer snapshot is complete.
- Removal deletes the manifest first, so a snapshot disappears whole.
- There is no lock: a root has one writer, the learner that holds the model's lease (`streams.lease`),
  which renews it just before each write. Readers never write here.
- Every file read is checked against the manifest's size and sha256, as for a local store.
- Durability is the backend's: an object store holds an object once its PUT returns. fsspec's ``file://``
  does not fsync, so a local or network-mounted directory is better given as a plain path, which keeps
  the local store's fsync and rename.
- fsspec may cache directory listings; they are dropped before each listing, so replicas see new
  snapshots at once.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from learner.snapshots import (
    MANIFEST_FILE,
    Manifest,
    SnapshotStore,
    is_snapshot_id,
    is_url,
    newest_first,
    version_of,
)

# Filesystems private to one process: a learner and the API replicas could never share them.
_PRIVATE = frozenset({"memory"})


def check_snapshot_url(url: str) -> None:
    """Raise ValueError, saying what to change, unless fsspec can share snapshots at `url`."""
    if not is_url(url):
        raise ValueError(
            "must be a URL such as s3://bucket/prefix or file:///mnt/shared "
            "(a local directory goes in RETENTIVE_DATA_DIR)"
        )
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ValueError(f"fsspec knows no filesystem {protocol}://") from None
    except ImportError as err:
        raise ValueError(f"{protocol}:// needs a package that is not installed: {err}") from None
    if protocol in _PRIVATE:
        raise ValueError(f"{protocol}:// lives inside one process; learner and API could not share it")


class FsspecSnapshotStore(SnapshotStore):
    """Snapshots under an fsspec URL; one writer (the lease holder), any number of readers."""

    def _open(self, root: Path | str) -> None:
        self.fs, self.path = url_to_fs(str(root))

    def _file(self, snapshot_id: str, file_name: str) -> str:
        return f"{self._directory(snapshot_id)}/{file_name}"

    def _directory(self, snapshot_id: str) -> str:
        return f"{self.path.rstrip('/')}/{snapshot_id}"

    def _directories(self) -> tuple[set[str], set[str]]:
        """Ids of every snapshot directory, and of those whose manifest is in place."""
        self.fs.invalidate_cache(self.path)
        prefix = self.path.rstrip("/") + "/"
        every, complete = set(), set()
        for path in self.fs.find(self.path):
            parts = path.removeprefix(prefix).split("/")
            if len(parts) == 2 and is_snapshot_id(parts[0]):
                every.add(parts[0])
                if parts[1] == MANIFEST_FILE:
                    complete.add(parts[0])
        return every, complete

    def _ids(self) -> list[str]:
        """Ids of complete snapshots, newest first."""
        return newest_first(self._directories()[1])

    def max_version(self) -> int:
        """Version of the newest snapshot directory, complete or still being written; 0 when none."""
        return max(map(version_of, self._directories()[0]), default=0)

    def _read(self, snapshot_id: str, file_name: str) -> bytes:
        return self.fs.cat_file(self._file(snapshot_id, file_name))

    def _exists(self, snapshot_id: str) -> bool:
        return self.fs.isdir(self._directory(snapshot_id))

    def _write(self, manifest: Manifest, payload: Mapping[str, bytes | bytearray]) -> None:
        directory = self._directory(manifest.id)
        try:
            self.fs.makedirs(directory, exist_ok=True)
            for name, data in payload.items():
                self.fs.pipe_file(f"{directory}/{name}", data)
            self._replace_manifest(manifest.id, manifest.to_json())
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.rm(directory, recursive=True)
            raise

    def _replace_manifest(self, snapshot_id: str, data: bytes) -> None:
        tmp = self._file(snapshot_id, f".{MANIFEST_FILE}.{secrets.token_hex(4)}.tmp")
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, self._file(snapshot_id, MANIFEST_FILE))
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.rm_file(tmp)
            raise

    def _discard(self, snapshot_id: str) -> None:
        self.fs.rm_file(self._file(snapshot_id, MANIFEST_FILE))
        self.fs.rm(self._directory(snapshot_id), recursive=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The model's lease, not a lock here, keeps writers to one.
        yield

    def _remove_stale(self) -> None:
        """Delete abandoned writes: directories with no manifest, older than the newest complete one."""
        every, complete = self._directories()
        newest = max(map(version_of, complete), default=0)
        for snapshot_id in every - complete:
            if version_of(snapshot_id) < newest:
                self.fs.rm(self._directory(snapshot_id), recursive=True)
