"""The `retentive` command as a user runs it: a real process, real Redis."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import load_settings
from bench.service import eventually, free_port, serve_log, serving
from learner.snapshots import SnapshotStore
from streams.connection import stop_embedded
from tests.conftest import TEST_REDIS_URL
from tests.services import write_snapshot

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        ["retentive", *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def test_version_matches_the_package() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", result.stdout)


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("doctor", "serve", "version"):
        assert command in result.stdout


def test_doctor_with_embedded_redis_reports_real_values(tmp_path: Path) -> None:
    try:
        result = run_cli("doctor", "--data-dir", str(tmp_path))
    finally:
        stop_embedded(tmp_path)
    assert result.returncode == 0, result.stderr
    report = dict(
        line.split(None, 1)
        for line in result.stdout.replace("model files", "model_files").splitlines()
        if line.startswith(("redis", "torch", "model_files"))
    )
    assert re.match(r"embedded, files in .*\(server 6\.\d+\.\d+\)", report["redis"])
    assert re.match(r"\d+\.\d+\.\d+.*\d+ threads available", report["torch"])
    assert "22.7M" in result.stdout
    assert re.search(
        r"learner device\s+(cpu \(\d+ cores, [\d.]+ GiB\)|cuda.*GiB\)), (fp32|bf16)", result.stdout
    )
    assert f"data dir          {tmp_path}" in result.stdout
    assert "warning" not in result.stdout, "the embedded Redis persists every write and evicts nothing"


@pytest.mark.skipif(not TEST_REDIS_URL, reason="RETENTIVE_TEST_REDIS_URL is not set")
def test_doctor_with_redis_url_reports_that_server(tmp_path: Path) -> None:
    result = run_cli("doctor", "--data-dir", str(tmp_path), env={"REDIS_URL": TEST_REDIS_URL})
    assert result.returncode == 0, result.stderr
    assert re.search(rf"redis\s+{re.escape(TEST_REDIS_URL)} \(server \d+\.\d+\.\d+\)", result.stdout)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--model", "/no/such/model"], {}, "RETENTIVE_MODEL: no model directory at /no/such/model"),
        (
            ["--redis-url", "redis://127.0.0.1:1/0"],
            {},
            "RETENTIVE_REDIS_URL: cannot reach redis://127.0.0.1:1/0",
        ),
        ([], {"RETENTIVE_BATCH_SIZE": "-1"}, "RETENTIVE_BATCH_SIZE: Input should be greater than 0"),
        (
            ["--redis-url", "redis+cluster://127.0.0.1:7000/0"],
            {},
            "RETENTIVE_REDIS_URL: redis+cluster://127.0.0.1:7000/0 is not a Cluster URL",
        ),
        (
            [],
            {"RETENTIVE_DEVICE": "gpu"},
            "RETENTIVE_DEVICE: 'gpu' is not a device: use auto, cpu",
        ),
        (
            [],
            {"RETENTIVE_SERVE_QUANTIZE": "true", "RETENTIVE_API_DEVICE": "cuda"},
            "RETENTIVE_SERVE_QUANTIZE: the int8 copy runs on CPUs only",
        ),
    ],
)
def test_bad_configuration_is_one_clear_line(args: list[str], env: dict[str, str], named: str) -> None:
    result = run_cli("doctor", *args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {named}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_readme_install_steps_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"```bash\n(pip install [^\n]*)\n```", readme).group(1)
    steps = [step.strip() for step in install.split("&&") if step.strip().startswith("pip install")]
    assert steps and all(step in ci for step in steps)
    assert "python -m pytest" in readme and "python -m pytest" in ci


def test_pin_keeps_a_snapshot_and_unpin_releases_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = load_settings(data_dir=tmp_path, model=str(tiny_model_dir))
    snapshot_id = write_snapshot(settings)
    env = {"RETENTIVE_MODEL": str(tiny_model_dir)}
    pinned = run_cli("pin", snapshot_id, "--data-dir", str(tmp_path), env=env)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout == f"{snapshot_id} (version 1) is pinned\n"
    assert SnapshotStore(settings.snapshot_dir).latest().pinned
    unpinned = run_cli("pin", snapshot_id, "--unpin", "--data-dir", str(tmp_path), env=env)
    assert unpinned.returncode == 0 and not SnapshotStore(settings.snapshot_dir).latest().pinned
    missing = run_cli("pin", "00000099-0123456789ab", "--data-dir", str(tmp_path), env=env)
    assert missing.returncode == 2 and missing.stderr.startswith("error: 00000099-0123456789ab: ")


@pytest.mark.parametrize("blank", [" ", ";", " ; "])
def test_serve_refuses_a_key_setting_that_holds_no_key_instead_of_opening_every_route(
    blank: str, tmp_path: Path
) -> None:
    result = run_cli(
        "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), env={"RETENTIVE_API_KEYS": blank}
    )
    assert result.returncode == 2, result.stdout
    assert (
        result.stderr.startswith("error: RETENTIVE_API_KEYS: ")
        and "holds no KEY:SCOPE entry" in result.stderr
    )


def test_serve_refuses_a_key_file_of_only_comments(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# the on-call keys go here\n\n   # none yet\n")
    result = run_cli(
        "serve",
        "--host",
        "0.0.0.0",
        "--data-dir",
        str(tmp_path),
        env={"RETENTIVE_API_KEYS_FILE": str(key_file)},
    )
    assert result.returncode == 2, result.stdout
    assert (
        result.stderr.startswith("error: RETENTIVE_API_KEYS_FILE: ")
        and "only blank lines or comments" in result.stderr
    )


def test_doctor_and_serve_warn_of_a_redis_that_will_drop_feedback(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on this machine")
    port = free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        eventually(lambda: run_cli("doctor", env={"RETENTIVE_REDIS_URL": url}).returncode == 0, 60, "Redis")
        report = run_cli("doctor", "--data-dir", str(tmp_path), env={"RETENTIVE_REDIS_URL": url}).stdout
        warnings = [line for line in report.splitlines() if line.startswith("warning")]
        assert len(warnings) == 2, report
        assert (
            "maxmemory-policy is allkeys-lru" in warnings[0]
            and "set maxmemory-policy noeviction" in warnings[0]
        )
        assert "no persistence" in warnings[1] and "set appendonly yes" in warnings[1]
        with serving(tmp_path / "serve", model=tiny_model_dir, redis_url=url):
            logged = serve_log(tmp_path / "serve").read_text()
        assert (
            "warning: redis maxmemory-policy is allkeys-lru" in logged
            and "warning: redis no persistence" in logged
        )
    finally:
        server.kill()
        server.wait(timeout=30)
