"""Crash-safe, verifiable snapshots of the learner's full state.

A snapshot is a directory ``<root>/<id>/`` holding one ``<name>.safetensors`` file per tensor group
(``model.safetensors`` alone is what a serving process needs), ``state.json`` with the caller's JSON
state, and ``manifest.json``, written last, recording the sha256 and size of every other file.

Each snapshot is assembled in a hidden temp directory and renamed into place, so a crash at any moment
leaves either a complete snapshot or a dot-directory that listing ignores and the next save removes.
Nothing in a snapshot is unpickled: tensors are safetensors, everything else is JSON.

`learner.stores.open_snapshot_store` opens this module's store for a local path, or for an fsspec URL such as
``s3://bucket/x`` the store of `learner.fsspec_snapshots` (the same format written without renames or locks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from learner.tensor_file import tensor_file

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
STATE_FILE = "state.json"
TENSOR_SUFFIX = ".safetensors"
MODEL = "model"
# Pseudo tensor-group name that asks ``load(only=...)`` for state.json as well.
STATE = "state"

_FORMAT = 1
_ID_RE = re.compile(r"([0-9]{8,19})-([0-9a-f]{12})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_RESERVED_NAMES = frozenset({STATE, "manifest"})
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_LOCK_FILE = ".lock"
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class SnapshotError(Exception):
    """A snapshot is missing, corrupt or could not be written; the message names it and the problem."""

    def __init__(self, message: str, snapshot_id: str | None = None) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id


class SnapshotNotFoundError(SnapshotError):
    """No snapshot directory with that id exists in the store."""


class InvalidSnapshotIdError(SnapshotError, ValueError):
    """The string is not an id this store could have generated, so it is never turned into a path."""


def is_snapshot_id(value: object) -> bool:
    """Whether ``value`` has the exact shape of a generated snapshot id."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_snapshot_id(value: object) -> str:
    """Return ``value`` if it is a well-formed snapshot id, else raise InvalidSnapshotIdError."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise InvalidSnapshotIdError(f"invalid snapshot id {str(value)[:80]!r}")
    return value


def _is_file_name(name: object) -> bool:
    if name == STATE_FILE:
        return True
    if not isinstance(name, str) or not name.endswith(TENSOR_SUFFIX):
        return False
    stem = name[: -len(TENSOR_SUFFIX)]
    return _NAME_RE.fullmatch(stem) is not None and stem not in _RESERVED_NAMES


@dataclass(frozen=True)
class Manifest:
    """What a snapshot holds: identity, lineage, the caller's summary ``info`` and a hash of every file."""

    id: str
    version: int
    parent: str | None
    created_at: str
    info: dict[str, Any]
    files: dict[str, dict[str, Any]]
    pinned: bool = False

    @property
    def model_sha256(self) -> str | None:
        """sha256 of ``model.safetensors``, i.e. a content address for the weights; None if absent."""
        entry = self.files.get(MODEL + TENSOR_SUFFIX)
        return entry["sha256"] if entry else None

    @property
    def tensor_names(self) -> list[str]:
        """Names of the tensor groups stored in this snapshot."""
        return sorted(n[: -len(TENSOR_SUFFIX)] for n in self.files if n.endswith(TENSOR_SUFFIX))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in manifest.json."""
        return {"format": _FORMAT, **dataclasses.asdict(self)}

    def to_json(self) -> bytes:
        """The bytes of manifest.json."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and validate a manifest.json document; raises ValueError if it is malformed."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("unknown manifest format")
        snapshot_id, version, parent = data.get("id"), data.get("version"), data.get("parent")
        if not is_snapshot_id(snapshot_id):
            raise ValueError("bad id")
        if type(version) is not int or version != int(snapshot_id.split("-")[0]):
            raise ValueError("version does not match id")
        if parent is not None and not is_snapshot_id(parent):
            raise ValueError("bad parent id")
        created_at, info, pinned = data.get("created_at"), data.get("info"), data.get("pinned")
        if not isinstance(created_at, str) or not isinstance(info, dict) or type(pinned) is not bool:
            raise ValueError("bad created_at, info or pinned")
        files = data.get("files")
        if not isinstance(files, dict):
            raise ValueError("bad files table")
        for name, entry in files.items():
            # File names come from disk and become paths, so they must match what save() writes.
            if not _is_file_name(name):
                raise ValueError(f"bad file name {name!r}")
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not _SHA_RE.fullmatch(entry["sha256"])
                or type(entry.get("size")) is not int
                or entry["size"] < 0
            ):
                raise ValueError(f"bad entry for {name}")
        return cls(
            id=snapshot_id,
            version=version,
            parent=parent,
            created_at=created_at,
            info=info,
            files={name: {"sha256": e["sha256"], "size": e["size"]} for name, e in files.items()},
            pinned=pinned,
        )


@dataclass
class Snapshot:
    """A loaded snapshot. ``state`` is ``{}`` when ``only`` excluded it."""

    manifest: Manifest
    tensors: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]

    @property
    def id(self) -> str:
        """The snapshot id."""
        return self.manifest.id


def is_url(location: Path | str) -> bool:
    """Whether a snapshot location is a URL (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and _URL_RE.match(location) is not None


class SnapshotStore:
    """Directory of snapshots with atomic saves, hash-verified loads and retention.

    Several stores (also in other processes) may share one root: writers serialise on a lock file in
    the root, readers need no lock because snapshots only ever appear and disappear by rename. Only `_open`,
    `_ids`, `max_version`, `_read`, `_exists`, `_write`, `_replace_manifest`, `_discard`, `_locked` and
    `_remove_stale` touch storage; `FsspecSnapshotStore` replaces them for a URL.
    """

    def __init__(self, root: Path | str, keep: int = 5, best_key: str = "mean_accuracy") -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self.best_key = best_key
        self.location = str(root)
        self._open(root)

    def _open(self, root: Path | str) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SnapshotError(f"cannot create snapshot root {self.root}: {exc}") from exc
        try:
            with self._locked():
                self._remove_stale()
        except OSError as exc:
            # A read-only root (e.g. a serving replica) can still list and load.
            log.warning("snapshot root %s: skipped cleanup of temp dirs: %s", self.root, exc)

    def save(
        self,
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        state: Mapping[str, Any],
        info: Mapping[str, Any] | None = None,
        parent: str | None = None,
        version: int | None = None,
    ) -> Manifest:
        """Write a new snapshot atomically, prune old ones and return its manifest.

        Its version is one more than the newest here, or `version` when given (it must be higher), so
        that two stores written by one learner can share one sequence of versions.

        Tensor groups are named like identifiers ("model", "trainer"); "state" and "manifest" are
        reserved. ``state`` and ``info`` must be JSON-serialisable (tuples come back as lists, dict keys
        as strings). Bad arguments raise TypeError/ValueError before anything is written; filesystem
        failures raise SnapshotError and leave no new snapshot behind.
        """
        return self.write(serialized(tensors, state), info, parent, version)

    def write(
        self,
        payload: Mapping[str, bytes | bytearray],
        info: Mapping[str, Any] | None = None,
        parent: str | None = None,
        version: int | None = None,
    ) -> Manifest:
        """`save` for contents already `serialized`: hash, write, prune. The payload is a copy, so it can be
        written on another thread while the tensors it was made from change."""
        if parent is not None:
            check_snapshot_id(parent)
        info_json = json.loads(json.dumps(dict(info or {})))
        files = {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in payload.items()
        }
        try:
            with self._locked():
                self._remove_stale()
                manifest = self._new_manifest(files, info_json, parent, version)
                self._write(manifest, payload)
                try:
                    self._prune(self.best_key, protect=manifest.id)
                except OSError as exc:
                    # The snapshot itself is durable; a failed cleanup must not report the save as lost.
                    log.warning("snapshot %s saved but pruning failed: %s", manifest.id, exc)
        except OSError as exc:
            raise SnapshotError(f"could not save snapshot in {self.location}: {exc}") from exc
        return manifest

    def list(self) -> list[Manifest]:
        """Manifests of complete snapshots, newest first."""
        manifests = []
        for snapshot_id in self._ids():
            try:
                manifests.append(self._read_manifest(snapshot_id))
            except SnapshotError:
                continue
        return manifests

    def latest(self) -> Manifest | None:
        """Manifest of the newest complete snapshot (not verified), or None."""
        for snapshot_id in self._ids():
            with contextlib.suppress(SnapshotError):
                return self._read_manifest(snapshot_id)
        return None

    def load(self, snapshot_id: str, *, only: Iterable[str] | None = None) -> Snapshot:
        """Load and verify a snapshot.

        ``only`` names the tensor groups to read (e.g. ``["model"]``); add ``"state"`` to read state.json
        too. Every file read is checked against the manifest's size and sha256.
        """
        check_snapshot_id(snapshot_id)
        manifest = self._read_manifest(snapshot_id)
        available = manifest.tensor_names
        if only is None:
            wanted, with_state = available, True
        else:
            if isinstance(only, str):
                raise TypeError("only must be an iterable of names, not a single string")
            requested = list(dict.fromkeys(only))
            with_state = STATE in requested
            wanted = [name for name in requested if name != STATE]
            missing = [name for name in wanted if name not in available]
            if missing:
                raise SnapshotError(f"snapshot {snapshot_id} has no tensor group {missing}", snapshot_id)
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for name in wanted:
            data = self._read_verified(manifest, name + TENSOR_SUFFIX)
            try:
                tensors[name] = load_tensors(data)
            except SafetensorError as exc:
                raise SnapshotError(
                    f"snapshot {snapshot_id}: {name}{TENSOR_SUFFIX} is not valid safetensors: {exc}",
                    snapshot_id,
                ) from exc
        state: dict[str, Any] = {}
        if with_state:
            data = self._read_verified(manifest, STATE_FILE)
            try:
                state = json.loads(data)
            except ValueError as exc:
                raise SnapshotError(
                    f"snapshot {snapshot_id}: {STATE_FILE} is not JSON: {exc}", snapshot_id
                ) from exc
            if not isinstance(state, dict):
                raise SnapshotError(f"snapshot {snapshot_id}: {STATE_FILE} is not an object", snapshot_id)
        return Snapshot(manifest=manifest, tensors=tensors, state=state)

    def load_latest_valid(
        self, *, only: Iterable[str] | None = None, accept: Callable[[Manifest], bool] | None = None
    ) -> tuple[Snapshot | None, list[str]]:
        """Newest snapshot that loads and verifies (and whose manifest `accept`s, if given), plus one
        message per newer snapshot skipped as broken."""
        skipped: list[str] = []
        for snapshot_id in self._ids():
            try:
                if accept is not None and not accept(self._read_manifest(snapshot_id)):
                    continue
                return self.load(snapshot_id, only=only), skipped
            except SnapshotNotFoundError:
                # Pruned by another process since listing: gone, not broken.
                continue
            except SnapshotError as exc:
                skipped.append(str(exc))
        return None, skipped

    def pin(self, snapshot_id: str, pinned: bool = True) -> Manifest:
        """Set or clear the pinned flag (pinned snapshots are never pruned); the manifest as it is now."""
        check_snapshot_id(snapshot_id)
        try:
            with self._locked():
                manifest = self._read_manifest(snapshot_id)
                if manifest.pinned == pinned:
                    return manifest
                updated = dataclasses.replace(manifest, pinned=pinned)
                self._replace_manifest(snapshot_id, updated.to_json())
                return updated
        except OSError as exc:
            raise SnapshotError(
                f"could not update pin of snapshot {snapshot_id}: {exc}", snapshot_id
            ) from exc

    def prune(self, best_key: str | None = None) -> list[str]:
        """Apply retention and return the removed ids.

        Kept: the newest ``keep``, the one with the highest numeric ``info[best_key]`` (default: the
        store's ``best_key``), and every pinned one. Directories without a readable manifest are left
        for inspection.
        """
        try:
            with self._locked():
                return self._prune(best_key or self.best_key)
        except OSError as exc:
            raise SnapshotError(f"could not prune snapshots in {self.location}: {exc}") from exc

    def _prune(self, best_key: str, protect: str | None = None) -> list[str]:
        manifests = self.list()
        kept = {m.id for m in manifests[: self.keep]} | {m.id for m in manifests if m.pinned}
        best = _best(manifests, best_key)
        if best is not None:
            kept.add(best.id)
        if protect is not None:
            kept.add(protect)
        removed = []
        for manifest in manifests:
            if manifest.id not in kept:
                self._discard(manifest.id)
                removed.append(manifest.id)
        return removed

    def _new_manifest(
        self, files: dict[str, dict[str, Any]], info: dict[str, Any], parent: str | None, version: int | None
    ) -> Manifest:
        newest = self.max_version()
        if version is None:
            version = newest + 1
        elif version <= newest:
            raise ValueError(f"version {version} is not above the newest snapshot's ({newest})")
        created_at = datetime.now(UTC).isoformat()
        digest = hashlib.sha256(json.dumps([version, created_at, files], sort_keys=True).encode()).hexdigest()
        return Manifest(
            id=f"{version:08d}-{digest[:12]}",
            version=version,
            parent=parent,
            created_at=created_at,
            info=info,
            files=files,
        )

    def _write(self, manifest: Manifest, payload: Mapping[str, bytes | bytearray]) -> None:
        snapshot_id = manifest.id
        tmp = self.root / f"{_TMP_PREFIX}{snapshot_id}-{secrets.token_hex(4)}"
        final = self.root / snapshot_id
        tmp.mkdir()
        try:
            for name, data in payload.items():
                _write_file(tmp / name, data)
            # Written last: a manifest vouches for files that are already on disk.
            _write_file(tmp / MANIFEST_FILE, manifest.to_json())
            _fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            _fsync_dir(self.root)
        except BaseException:
            # The rename may not survive a crash; withdraw it so an error always means "not saved".
            with contextlib.suppress(OSError):
                _discard(self.root, snapshot_id)
            raise

    def _ids(self) -> list[str]:
        """Ids of all snapshot directories (complete or not), newest first."""
        try:
            entries = [e.name for e in os.scandir(self.root) if _ID_RE.fullmatch(e.name) and e.is_dir()]
        except FileNotFoundError:
            return []
        return newest_first(entries)

    def max_version(self) -> int:
        """Version of the newest snapshot directory (complete or not), 0 when there is none."""
        ids = self._ids()
        return version_of(ids[0]) if ids else 0

    def _read(self, snapshot_id: str, file_name: str) -> bytes:
        return (self.root / snapshot_id / file_name).read_bytes()

    def _exists(self, snapshot_id: str) -> bool:
        return (self.root / snapshot_id).is_dir()

    def _replace_manifest(self, snapshot_id: str, data: bytes) -> None:
        directory = self.root / snapshot_id
        tmp = directory / f".{MANIFEST_FILE}.{secrets.token_hex(4)}.tmp"
        try:
            _write_file(tmp, data)
            os.replace(tmp, directory / MANIFEST_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(directory)

    def _discard(self, snapshot_id: str) -> None:
        _discard(self.root, snapshot_id)

    def _read_manifest(self, snapshot_id: str) -> Manifest:
        try:
            raw = self._read(snapshot_id, MANIFEST_FILE)
        except FileNotFoundError as exc:
            if not self._exists(snapshot_id):
                raise SnapshotNotFoundError(f"snapshot {snapshot_id} not found", snapshot_id) from exc
            raise SnapshotError(
                f"snapshot {snapshot_id} is incomplete: no {MANIFEST_FILE}", snapshot_id
            ) from exc
        except OSError as exc:
            raise SnapshotError(
                f"snapshot {snapshot_id}: cannot read {MANIFEST_FILE}: {exc}", snapshot_id
            ) from exc
        try:
            manifest = Manifest.from_dict(json.loads(raw))
        except ValueError as exc:
            raise SnapshotError(
                f"snapshot {snapshot_id}: invalid {MANIFEST_FILE}: {exc}", snapshot_id
            ) from exc
        if manifest.id != snapshot_id:
            raise SnapshotError(f"snapshot {snapshot_id}: manifest names {manifest.id}", snapshot_id)
        return manifest

    def _read_verified(self, manifest: Manifest, file_name: str) -> bytes:
        snapshot_id = manifest.id
        entry = manifest.files.get(file_name)
        if entry is None:
            raise SnapshotError(f"snapshot {snapshot_id}: manifest lists no {file_name}", snapshot_id)
        try:
            data = self._read(snapshot_id, file_name)
        except FileNotFoundError as exc:
            raise SnapshotError(f"snapshot {snapshot_id}: {file_name} is missing", snapshot_id) from exc
        except OSError as exc:
            raise SnapshotError(
                f"snapshot {snapshot_id}: cannot read {file_name}: {exc}", snapshot_id
            ) from exc
        if len(data) != entry["size"]:
            raise SnapshotError(
                f"snapshot {snapshot_id}: {file_name} has {len(data)} bytes, manifest says {entry['size']}",
                snapshot_id,
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SnapshotError(
                f"snapshot {snapshot_id}: {file_name} fails its sha256 check (corrupt)", snapshot_id
            )
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _remove_stale(self) -> None:
        """Delete temp and trash dirs left by crashed writers; only safe while holding the lock."""
        for entry in os.scandir(self.root):
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


def version_of(snapshot_id: str) -> int:
    """The version a snapshot id starts with."""
    return int(snapshot_id.split("-")[0])


def newest_first(snapshot_ids: Iterable[str]) -> list[str]:
    """Snapshot ids sorted by version, newest first (ties broken by the id, for a stable order)."""
    return sorted(snapshot_ids, key=lambda n: (version_of(n), n), reverse=True)


def serialized(
    tensors: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]
) -> dict[str, bytes | bytearray]:
    """The files of a snapshot of `tensors` and `state`, as bytes (for `SnapshotStore.write`)."""
    if not isinstance(state, Mapping):
        raise TypeError("state must be a mapping")
    payload = {}
    for name, group in tensors.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in _RESERVED_NAMES:
            raise ValueError(f"invalid tensor group name {name!r}")
        payload[name + TENSOR_SUFFIX] = tensor_file(_prepare(name, group))
    payload[STATE_FILE] = json.dumps(dict(state), separators=(",", ":")).encode()
    return payload


def _prepare(group_name: str, group: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prepared = {}
    for key, tensor in group.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor group {group_name!r}: entry {key!r} is not a str -> Tensor pair")
        prepared[key] = tensor.detach().cpu().contiguous()
    return prepared


def _best(manifests: list[Manifest], key: str) -> Manifest | None:
    scored = [
        (m.info[key], m.version, m)
        for m in manifests
        if isinstance(m.info.get(key), int | float)
        and not isinstance(m.info.get(key), bool)
        and math.isfinite(m.info[key])
    ]
    return max(scored, key=lambda s: (s[0], s[1]))[2] if scored else None


def _write_file(path: Path, data: bytes | bytearray) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(root: Path, snapshot_id: str) -> None:
    """Remove a snapshot dir; renaming it away first means a crash mid-delete leaves only a dot-dir."""
    trash = root / f"{_TRASH_PREFIX}{snapshot_id}-{secrets.token_hex(4)}"
    os.rename(root / snapshot_id, trash)
    shutil.rmtree(trash, ignore_errors=True)
