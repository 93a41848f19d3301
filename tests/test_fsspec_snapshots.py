"""Snapshots through an fsspec URL: real fsspec filesystems (file:// on disk, memory:// in process), the same
format and checks as the local store, and no reader ever sees a partial snapshot."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest
import torch

from app.settings import ConfigError, load_settings
from learner.fsspec_snapshots import FsspecSnapshotStore
from learner.snapshots import SnapshotError, SnapshotStore
from learner.stores import open_snapshot_store
from tests.test_snapshots import _assert_tensors_equal, _flip_byte, _state, _tensors


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A root of its own in fsspec's in-process memory filesystem."""
    url = f"memory://snapshots-{uuid.uuid4().hex}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_a_url_store_round_trips_verifies_and_shares_the_local_format(tmp_path: Path) -> None:
    writer = open_snapshot_store(f"file://{tmp_path}/shared")
    assert isinstance(writer, FsspecSnapshotStore)
    first = writer.save(_tensors(0), _state(0), info={"mean_accuracy": 0.5})
    second = writer.save(_tensors(1), _state(1), parent=first.id)

    reader = open_snapshot_store(f"file://{tmp_path}/shared/")
    assert [m.id for m in reader.list()] == [second.id, first.id]
    loaded = reader.load(second.id)
    _assert_tensors_equal(loaded.tensors, _tensors(1))
    assert loaded.state == _state(1) and loaded.manifest == second
    # The layout is the local store's: a plain path to the same directory reads the same snapshots.
    assert SnapshotStore(tmp_path / "shared").list() == reader.list()
    assert not list((tmp_path / "shared" / second.id).glob(".*"))

    _flip_byte(tmp_path / "shared" / second.id / "model.safetensors")
    snapshot, skipped = reader.load_latest_valid()
    assert snapshot is not None and snapshot.id == first.id
    assert len(skipped) == 1 and second.id in skipped[0] and "sha256" in skipped[0]


def test_a_reader_never_sees_a_partial_snapshot(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = FsspecSnapshotStore(memory_url)
    reader = FsspecSnapshotStore(memory_url)
    first = writer.save(_tensors(0), _state(0))
    seen: list[tuple[str, list[str], int]] = []

    def observed(method: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            snapshot, skipped = reader.load_latest_valid()
            seen.append((snapshot.id, skipped, reader.max_version()))
            return method(*args, **kwargs)

        return call

    monkeypatch.setattr(writer.fs, "pipe_file", observed(writer.fs.pipe_file))
    monkeypatch.setattr(writer.fs, "mv", observed(writer.fs.mv))
    second = writer.save(_tensors(1), _state(1))
    monkeypatch.undo()

    # Three data files, the manifest under its temporary name, then the move into place.
    assert len(seen) == 5
    assert {(snapshot_id, tuple(skipped)) for snapshot_id, skipped, _ in seen} == {(first.id, ())}
    # Once its first file is written, the version being written is taken: no other writer reuses it.
    assert [version for _, _, version in seen] == [1, 2, 2, 2, 2]
    assert reader.latest() == second
    _assert_tensors_equal(reader.load(second.id).tensors, _tensors(1))


def test_a_failed_write_leaves_no_snapshot_behind(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FsspecSnapshotStore(memory_url)
    earlier = store.save(_tensors(0), _state(0))
    real_pipe = store.fs.pipe_file
    calls = []

    def disk_fills_up(path: str, data: bytes, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_pipe(path, data, **kwargs)

    monkeypatch.setattr(store.fs, "pipe_file", disk_fills_up)
    with pytest.raises(SnapshotError, match="No space left"):
        store.save(_tensors(1), _state(1))
    monkeypatch.undo()

    assert [m.id for m in store.list()] == [earlier.id]
    assert {path.split("/")[-2] for path in store.fs.find(store.path)} == {earlier.id}
    assert store.save(_tensors(2), _state(2)).version == 2


def test_an_abandoned_write_is_skipped_quietly_and_removed_by_a_later_save(tmp_path: Path) -> None:
    store = open_snapshot_store(f"file://{tmp_path}")
    good = store.save(_tensors(0), _state(0))
    abandoned = tmp_path / "00000002-0123456789ab"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"the writer died here")

    assert [m.id for m in store.list()] == [good.id] and store.latest() == good
    snapshot, skipped = store.load_latest_valid()
    assert snapshot is not None and snapshot.id == good.id and skipped == []
    with pytest.raises(SnapshotError, match="incomplete"):
        store.load(abandoned.name)

    assert store.save(_tensors(1), _state(1)).version == 3
    assert store.save(_tensors(2), _state(2)).version == 4
    assert not abandoned.exists()


def test_retention_and_pins_work_through_a_url(tmp_path: Path) -> None:
    store = open_snapshot_store(f"file://{tmp_path}", keep=2)
    saved = [
        store.save(_tensors(i), _state(i), info={"mean_accuracy": acc}) for i, acc in enumerate([0.9, 0.1])
    ]
    store.pin(saved[1].id)
    saved += [store.save(_tensors(i), _state(i), info={"mean_accuracy": 0.2}) for i in (2, 3, 4)]

    reopened = open_snapshot_store(f"file://{tmp_path}", keep=2)
    # Newest two, the best (0.9) and the pinned one.
    assert [m.id for m in reopened.list()] == [saved[4].id, saved[3].id, saved[1].id, saved[0].id]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(m.id for m in reopened.list())
    assert reopened.latest().version == 5 and reopened.list()[2].pinned
    reopened.pin(saved[1].id, pinned=False)
    assert reopened.prune() == [saved[1].id]


def test_the_snapshot_url_setting_places_both_stores_and_refuses_what_cannot_be_shared(
    tmp_path: Path,
) -> None:
    settings = load_settings(snapshot_url=f"file://{tmp_path}/", model_name="news")
    assert settings.snapshot_dir == f"file://{tmp_path}/snapshots/news"
    assert settings.published_dir == f"file://{tmp_path}/published/news"
    assert load_settings(data_dir=tmp_path).snapshot_dir == tmp_path / "snapshots" / "default"

    refused = {
        "/mnt/shared": "must be a URL such as s3://bucket/prefix",
        "nosuchfs://bucket": "fsspec knows no filesystem nosuchfs://",
        "memory://x": "memory:// lives inside one process",
    }
    for url, message in refused.items():
        with pytest.raises(ConfigError, match="RETENTIVE_SNAPSHOT_URL: ") as raised:
            load_settings(snapshot_url=url)
        assert message in str(raised.value)


def test_s3_without_s3fs_says_which_package_to_install() -> None:
    try:
        fsspec.get_filesystem_class("s3")
    except ImportError:
        with pytest.raises(ConfigError, match=r"RETENTIVE_SNAPSHOT_URL: s3:// needs a package .* s3fs"):
            load_settings(snapshot_url="s3://bucket/retentive")
    else:
        pytest.skip("s3fs is installed here")


def test_a_weights_only_load_reads_only_the_weights(tmp_path: Path) -> None:
    store = open_snapshot_store(f"file://{tmp_path}")
    manifest = store.save({"model": {"w": torch.ones(3)}, "trainer": {"m": torch.zeros(2)}}, {"k": 1})
    _flip_byte(tmp_path / manifest.id / "trainer.safetensors")
    served, skipped = store.load_latest_valid(only=["model", "state"])
    assert served is not None and skipped == [] and served.state == {"k": 1}
    assert torch.equal(served.tensors["model"]["w"], torch.ones(3))
