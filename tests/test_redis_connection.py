import os
import stat
import tempfile
from pathlib import Path

import pytest
import redis

from streams.connection import RedisUnavailableError, connect, server_version
from streams.embedded import EmbeddedRedis


def test_stream_entry_round_trips(redis_client: redis.Redis, key_prefix: str) -> None:
    entry_id = redis_client.xadd(f"{key_prefix}:feedback", {"text": "hello", "label": "greeting"})
    [(read_id, fields)] = redis_client.xrange(f"{key_prefix}:feedback")
    assert read_id == entry_id
    assert fields == {b"text": b"hello", b"label": b"greeting"}
    assert server_version(redis_client).split(".")[0] in {"6", "7", "8"}


def test_embedded_server_keeps_the_stream_across_a_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    entry_id = server.client().xadd("rt:m:feedback", {"text": "kept"})
    server.stop()
    assert not server.is_running()

    server.start()
    try:
        assert server.client().xrange("rt:m:feedback") == [(entry_id, {b"text": b"kept"})]
    finally:
        server.stop()


def test_second_process_attaches_to_the_running_embedded_server(tmp_path: Path) -> None:
    first = connect("", tmp_path)
    first.set("owner", "first")
    try:
        assert connect("", tmp_path).get("owner") == b"first"
    finally:
        EmbeddedRedis(tmp_path / "redis").stop()


def test_long_data_dir_still_gets_a_usable_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    client = connect("", deep)
    try:
        assert client.ping()
    finally:
        EmbeddedRedis(deep / "redis").stop()


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the machine's shared temp directory, with no private runtime directory to prefer."""
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return shared


def test_a_long_data_dir_puts_its_socket_in_a_directory_only_this_user_may_enter(
    tmp_path: Path, shared_tmp: Path
) -> None:
    deep = tmp_path / ("d" * 120)
    server = EmbeddedRedis(deep / "redis")
    assert server.socket_path.parent == shared_tmp / f"retentive-{os.getuid()}"
    assert stat.S_IMODE(server.socket_path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("planted", ["open to others", "a link"])
def test_a_socket_directory_planted_by_someone_else_is_refused(
    tmp_path: Path, shared_tmp: Path, planted: str
) -> None:
    private = shared_tmp / f"retentive-{os.getuid()}"
    if planted == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        private.symlink_to(tmp_path / "elsewhere")
    else:
        private.mkdir(mode=0o777)
        private.chmod(0o777)
    with pytest.raises(RedisUnavailableError, match="not a private directory of this user"):
        connect("", tmp_path / ("d" * 120))
    assert list((tmp_path / "elsewhere").iterdir() if planted == "a link" else private.iterdir()) == []


def test_refused_url_is_reported() -> None:
    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1"):
        connect("redis://127.0.0.1:1/0", Path("."))
