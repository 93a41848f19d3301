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


def test_refused_url_is_reported() -> None:
    with pytest.raises(RedisUnavailableError, match=r"127\.0\.0\.1:1"):
        connect("redis://127.0.0.1:1/0", Path("."))
