"""The `retentive` command line: every flag maps onto a field of the settings object."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer

from app.settings import ConfigError, Settings, load_settings
from learner.encoder import ModelNotFoundError
from streams.connection import RedisUnavailableError

cli = typer.Typer(
    help="Online continual learner for transformer text classifiers, served behind a REST API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ModelOpt = Annotated[str | None, typer.Option(help="Model directory or hub name [RETENTIVE_MODEL].")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Data directory [RETENTIVE_DATA_DIR].")]
RedisOpt = Annotated[str | None, typer.Option(help="Redis URL; empty for embedded [RETENTIVE_REDIS_URL].")]


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as err:
        _fail(str(err))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@cli.command("version")
def show_version() -> None:
    """Print the installed version."""
    typer.echo(version("retentive"))


@cli.command()
def doctor(model: ModelOpt = None, data_dir: DataDirOpt = None, redis_url: RedisOpt = None) -> None:
    """Check the model, torch, Redis and the data directory, and print what was found."""
    from app.doctor import doctor_report

    settings = _settings(model=model, data_dir=data_dir, redis_url=redis_url)
    try:
        rows = doctor_report(settings)
    except ModelNotFoundError as err:
        _fail(f"RETENTIVE_MODEL: {err}")
    except RedisUnavailableError as err:
        _fail(f"RETENTIVE_REDIS_URL: {err}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name.ljust(width)}  {value}")


@cli.command()
def serve(
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    redis_url: RedisOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address [RETENTIVE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [RETENTIVE_PORT].")] = None,
    learner: Annotated[bool, typer.Option(help="Also run a learner in a child process.")] = True,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback address with no API keys.")] = False,
) -> None:
    """Run the API and, unless --no-learner, a learner child process."""
    import uvicorn

    from app.main import create_app
    from app.supervisor import LearnerChild
    from learner.encoder import load_encoder
    from streams.connection import connect

    settings = _settings(model=model, data_dir=data_dir, redis_url=redis_url, host=host, port=port)
    open_access = not settings.api_keys.get_secret_value()
    if open_access and settings.host not in LOOPBACK and not insecure:
        _fail(
            f"RETENTIVE_HOST: {settings.host} is reachable from other machines and no API key is set; "
            "set RETENTIVE_API_KEYS or pass --insecure"
        )
    try:
        connect(settings.redis_url, settings.data_dir).close()
        load_encoder(settings.model)
    except ModelNotFoundError as err:
        _fail(f"RETENTIVE_MODEL: {err}")
    except RedisUnavailableError as err:
        _fail(f"RETENTIVE_REDIS_URL: {err}")
    if open_access:
        typer.echo(f"no API keys set: serving without authentication on {settings.host} only", err=True)
    child = LearnerChild(settings) if learner else None
    if child:
        child.start()
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
    finally:
        if child:
            child.stop()


@cli.command()
def learn(model: ModelOpt = None, data_dir: DataDirOpt = None, redis_url: RedisOpt = None) -> None:
    """Run a learner in the foreground: standby until it holds the lease, then learn from the stream."""
    from app.learner_process import run_learner

    settings = _settings(model=model, data_dir=data_dir, redis_url=redis_url)
    try:
        run_learner(settings)
    except ModelNotFoundError as err:
        _fail(f"RETENTIVE_MODEL: {err}")
    except RedisUnavailableError as err:
        _fail(f"RETENTIVE_REDIS_URL: {err}")


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
