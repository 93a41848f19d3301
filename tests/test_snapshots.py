"""Tests for the crash-safe snapshot store."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from learner import snapshots
from learner.snapshots import (
    InvalidSnapshotIdError,
    Manifest,
    SnapshotError,
    SnapshotNotFoundError,
    SnapshotStore,
    is_snapshot_id,
)


def _tensors(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "encoder.weight": torch.randn(4, 3, generator=gen),
            "head.bias": torch.randn(2, generator=gen, dtype=torch.float32),
        },
        "trainer": {
            "rng": torch.randint(0, 256, (16,), generator=gen, dtype=torch.uint8),
            "step": torch.tensor([seed, 7], dtype=torch.int64),
            "half": torch.randn(3, generator=gen).to(torch.bfloat16),
        },
    }


def _state(seed: int = 0) -> dict:
    return {
        "labels": ["neg", "pos"],
        "updates": seed,
        "cursor": f"offset-{seed}",
        "replay": [{"text": "héllo", "label": 1}],
        "probe": {"acc": 0.5 + seed / 100},
    }


def _assert_tensors_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for group, tensors in expected.items():
        assert actual[group].keys() == tensors.keys()
        for key, tensor in tensors.items():
            assert actual[group][key].dtype == tensor.dtype
            assert torch.equal(actual[group][key], tensor)


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _final_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_snapshot_id(p.name))


def test_round_trip_keeps_tensors_dtypes_state_and_info(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    tensors, state = _tensors(1), _state(1)
    info = {"updates": 1, "cursor": "offset-1", "mean_accuracy": 0.75}
    manifest = store.save(tensors, state, info=info)

    snap = store.load(manifest.id)
    _assert_tensors_equal(snap.tensors, tensors)
    assert snap.state == state
    assert snap.manifest == manifest
    assert manifest.info == info
    assert manifest.version == 1 and manifest.parent is None and not manifest.pinned
    assert manifest.created_at.endswith("+00:00")
    directory = tmp_path / manifest.id
    assert set(manifest.files) == {"model.safetensors", "trainer.safetensors", "state.json"}
    for name, entry in manifest.files.items():
        data = (directory / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest.model_sha256 == manifest.files["model.safetensors"]["sha256"]
    assert manifest.tensor_names == ["model", "trainer"]
    on_disk = json.loads((directory / "manifest.json").read_text())
    assert Manifest.from_dict(on_disk) == manifest


def test_list_is_newest_first_with_increasing_versions(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=10)
    first = store.save(_tensors(0), _state(0))
    second = store.save(_tensors(1), _state(1), parent=first.id)
    third = store.save(_tensors(2), _state(2), parent=second.id)

    assert [m.id for m in store.list()] == [third.id, second.id, first.id]
    assert [m.version for m in store.list()] == [3, 2, 1]
    assert third.parent == second.id
    assert store.latest() == third
    assert first.id.startswith("00000001-") and is_snapshot_id(first.id)
    assert sorted([first.id, second.id, third.id]) == [first.id, second.id, third.id]


def test_second_store_on_same_root_sees_snapshots(tmp_path: Path) -> None:
    writer = SnapshotStore(tmp_path)
    reader = SnapshotStore(tmp_path)
    assert reader.latest() is None
    saved = writer.save(_tensors(3), _state(3))
    assert reader.latest() == saved
    _assert_tensors_equal(reader.load(saved.id).tensors, _tensors(3))
    assert reader.save(_tensors(4), _state(4)).version == 2
    assert writer.latest().version == 2


def test_concurrent_processes_get_distinct_versions(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import torch
        from learner.snapshots import SnapshotStore
        store = SnapshotStore({str(tmp_path)!r}, keep=100)
        for i in range(4):
            store.save({{"model": {{"w": torch.zeros(8)}}}}, {{"i": i}})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    manifests = SnapshotStore(tmp_path, keep=100).list()
    assert sorted(m.version for m in manifests) == list(range(1, 13))


def test_corrupt_newest_falls_back_to_previous(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    good = store.save(_tensors(0), _state(0))
    bad = store.save(_tensors(1), _state(1))
    _flip_byte(tmp_path / bad.id / "model.safetensors")

    with pytest.raises(SnapshotError, match=bad.id) as raised:
        store.load(bad.id)
    assert raised.value.snapshot_id == bad.id
    assert "model.safetensors" in str(raised.value)

    snap, skipped = store.load_latest_valid()
    assert snap is not None and snap.id == good.id
    _assert_tensors_equal(snap.tensors, _tensors(0))
    assert len(skipped) == 1 and bad.id in skipped[0]


def test_truncated_state_and_broken_manifest_are_reported(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=10)
    good = store.save(_tensors(0), _state(0))
    truncated = store.save(_tensors(1), _state(1))
    garbled = store.save(_tensors(2), _state(2))
    state_file = tmp_path / truncated.id / "state.json"
    state_file.write_bytes(state_file.read_bytes()[:5])
    (tmp_path / garbled.id / "manifest.json").write_text("{not json")

    assert [m.id for m in store.list()] == [truncated.id, good.id]
    snap, skipped = store.load_latest_valid()
    assert snap is not None and snap.id == good.id
    assert len(skipped) == 2
    assert garbled.id in skipped[0] and "manifest.json" in skipped[0]
    assert truncated.id in skipped[1] and "state.json" in skipped[1]


def test_nothing_valid_returns_none_with_messages(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.load_latest_valid() == (None, [])
    only = store.save(_tensors(0), _state(0))
    _flip_byte(tmp_path / only.id / "trainer.safetensors", 0)
    snap, skipped = store.load_latest_valid()
    assert snap is None and len(skipped) == 1 and only.id in skipped[0]


def test_partial_snapshots_are_ignored_and_temp_dirs_cleaned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    good = store.save(_tensors(0), _state(0))
    # A crash mid-save leaves a temp dir; a damaged final dir may lack its manifest.
    temp = tmp_path / ".tmp-00000002-0123456789ab-dead"
    temp.mkdir()
    (temp / "model.safetensors").write_bytes(b"partial")
    headless = tmp_path / "00000003-0123456789ab"
    headless.mkdir()
    (headless / "model.safetensors").write_bytes(b"no manifest")

    reopened = SnapshotStore(tmp_path)
    assert not temp.exists()
    assert [m.id for m in reopened.list()] == [good.id]
    assert reopened.latest() == good
    snap, skipped = reopened.load_latest_valid()
    assert snap is not None and snap.id == good.id
    assert len(skipped) == 1 and headless.name in skipped[0] and "incomplete" in skipped[0]
    with pytest.raises(SnapshotError, match="incomplete"):
        reopened.load(headless.name)

    # Versions never reuse a name that is already on disk.
    assert reopened.save(_tensors(1), _state(1)).version == 4


def test_stale_temp_dir_removed_on_save(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    temp = tmp_path / ".tmp-leftover"
    temp.mkdir()
    store.save(_tensors(0), _state(0))
    assert not temp.exists()


def test_retention_keeps_newest_best_and_pinned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep=2)
    accuracies = [0.5, 0.9, None, 0.6, 0.7, 0.4]
    saved = []
    for i, acc in enumerate(accuracies):
        info = {"updates": i} if acc is None else {"updates": i, "mean_accuracy": acc}
        saved.append(store.save(_tensors(i), _state(i), info=info))
        if i == 2:
            store.pin(saved[2].id)

    kept = [m.id for m in store.list()]
    # newest two (5, 4), best accuracy (1), pinned (2)
    assert kept == [saved[5].id, saved[4].id, saved[2].id, saved[1].id]
    assert _final_dirs(tmp_path) == sorted(kept)
    assert [m.pinned for m in store.list()] == [False, False, True, False]
    assert store.prune() == []

    store.pin(saved[2].id, pinned=False)
    assert store.prune() == [saved[2].id]
    assert store.prune(best_key="updates") == [saved[1].id]
    assert [m.id for m in store.list()] == [saved[5].id, saved[4].id]


def test_pin_persists_and_validates(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    manifest = store.save(_tensors(0), _state(0))
    store.pin(manifest.id)
    assert SnapshotStore(tmp_path).latest().pinned
    assert store.load(manifest.id).manifest.pinned
    assert [p.name for p in (tmp_path / manifest.id).iterdir() if p.name.startswith(".")] == []
    with pytest.raises(SnapshotNotFoundError):
        store.pin("00000099-0123456789ab")


def test_failed_write_leaves_earlier_snapshots_and_no_new_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path)
    earlier = store.save(_tensors(0), _state(0))
    real_write = snapshots._write_file
    calls = []

    def disk_fills_up(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(snapshots, "_write_file", disk_fills_up)
    with pytest.raises(SnapshotError, match="No space left") as raised:
        store.save(_tensors(1), _state(1))
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()

    assert _final_dirs(tmp_path) == [earlier.id]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", earlier.id]
    _assert_tensors_equal(store.load(earlier.id).tensors, _tensors(0))
    assert store.save(_tensors(2), _state(2)).version == 2


@pytest.mark.parametrize("failing", ["rename", "fsync_root"])
def test_failure_around_rename_leaves_no_new_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store = SnapshotStore(tmp_path)
    earlier = store.save(_tensors(0), _state(0))
    if failing == "rename":

        def broken_rename(src: object, dst: object) -> None:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(snapshots.os, "rename", broken_rename)
    else:
        real_fsync_dir = snapshots._fsync_dir

        def broken_fsync_dir(path: Path) -> None:
            if Path(path) == tmp_path:
                raise OSError(errno.EIO, "I/O error")
            real_fsync_dir(path)

        monkeypatch.setattr(snapshots, "_fsync_dir", broken_fsync_dir)

    with pytest.raises(SnapshotError):
        store.save(_tensors(1), _state(1))
    monkeypatch.undo()

    assert _final_dirs(tmp_path) == [earlier.id]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp", ".trash"))] == []
    snap, skipped = store.load_latest_valid()
    assert snap is not None and snap.id == earlier.id and skipped == []


@pytest.mark.parametrize(
    "bad_id",
    [
        "../x",
        "../../etc",
        "",
        "00000001-0123456789ab/../..",
        "00000001-0123456789AB",
        "1-0123456789ab",
        ".lock",
    ],
)
def test_invalid_ids_are_refused(tmp_path: Path, bad_id: str) -> None:
    store = SnapshotStore(tmp_path)
    for call in (store.load, store.pin):
        with pytest.raises(InvalidSnapshotIdError):
            call(bad_id)
    with pytest.raises(ValueError):
        store.load(bad_id)
    with pytest.raises(ValueError):
        store.save(_tensors(0), _state(0), parent=bad_id)
    assert not is_snapshot_id(bad_id + "\n")


def test_manifest_naming_foreign_paths_is_rejected(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    manifest = store.save(_tensors(0), _state(0))
    path = tmp_path / manifest.id / "manifest.json"
    data = json.loads(path.read_text())
    data["files"]["../../outside.safetensors"] = data["files"].pop("model.safetensors")
    path.write_text(json.dumps(data))
    with pytest.raises(SnapshotError, match="bad file name"):
        store.load(manifest.id)


def test_only_model_loads_just_the_weights(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    manifest = store.save(_tensors(5), _state(5))
    # Damage the trainer file: a weights-only load must not read it.
    _flip_byte(tmp_path / manifest.id / "trainer.safetensors")

    snap = store.load(manifest.id, only=["model"])
    assert list(snap.tensors) == ["model"]
    _assert_tensors_equal(snap.tensors, {"model": _tensors(5)["model"]})
    assert snap.state == {}

    with_state = store.load(manifest.id, only=["model", "state"])
    assert with_state.state == _state(5)
    with pytest.raises(SnapshotError, match="trainer"):
        store.load(manifest.id)
    with pytest.raises(SnapshotError, match="optimizer"):
        store.load(manifest.id, only=["optimizer"])
    with pytest.raises(TypeError):
        store.load(manifest.id, only="model")

    served, skipped = store.load_latest_valid(only=["model"])
    assert served is not None and served.id == manifest.id and skipped == []


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    embedding = torch.randn(5, 4)
    model = {"embed.weight": embedding, "lm_head.weight": embedding, "transposed": embedding.t()}
    manifest = store.save({"model": model}, {})
    loaded = store.load(manifest.id).tensors["model"]
    assert torch.equal(loaded["embed.weight"], embedding)
    assert torch.equal(loaded["lm_head.weight"], embedding)
    assert torch.equal(loaded["transposed"], embedding.t())


def test_bad_arguments_write_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(TypeError):
        store.save(_tensors(0), {"not json": object()})
    with pytest.raises(ValueError):
        store.save({"state": {"x": torch.zeros(1)}}, {})
    with pytest.raises(ValueError):
        store.save({"../model": {"x": torch.zeros(1)}}, {})
    with pytest.raises(TypeError):
        store.save({"model": {"x": [1.0]}}, {})
    with pytest.raises(ValueError):
        SnapshotStore(tmp_path, keep=0)
    assert _final_dirs(tmp_path) == []
