"""The `retentive` command line: every flag maps onto a field of the settings object."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import redis
import typer

from app.auth import LOOPBACK_HOSTS, parse_api_keys
from app.client.feed import RetryPolicy, direct_sender, http_sender, open_input, progress_bar, service_url
from app.client.feed import feed as feed_lines
from app.settings import ConfigError, Settings, load_settings
from learner.encoder import ModelNotFoundError
from streams.connection import RedisUnavailableError, embedded_server, release_embedded

cli = typer.Typer(
    help="Online continual learner for transformer text classifiers, served behind a REST API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[str | None, typer.Option(help="Model directory or hub name [RETENTIVE_MODEL].")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Data directory [RETENTIVE_DATA_DIR].")]
RedisOpt = Annotated[str | None, typer.Option(help="Redis URL; empty for embedded [RETENTIVE_REDIS_URL].")]


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as err:
        _fail(str(err))


def _check_device(setting: str, name: str) -> None:
    """Fail at start, naming the setting, when the device it asks for is not on this machine."""
    from learner.devices import resolve_device

    try:
        resolve_device(name)
    except ValueError as err:
        _fail(f"RETENTIVE_{setting}: {err}")


def _read_api_key(path: Path) -> str:
    try:
        lines = path.expanduser().read_text().splitlines()
    except OSError as err:
        _fail(f"--api-key-file: cannot read {path}: {err.strerror}")
    key = next((line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")), None)
    if key is None:
        _fail(f"--api-key-file: {path} holds no key (only blank lines or comments)")
    return key


def _fail(message: str) -> NoReturn:
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
    _check_device("DEVICE", settings.device)
    _check_device("API_DEVICE", settings.serving_device())
    try:
        with embedded_server(settings.redis_url, settings.data_dir):
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
    from streams.connection import connect, durability_warnings

    settings = _settings(model=model, data_dir=data_dir, redis_url=redis_url, host=host, port=port)
    open_access = not parse_api_keys(settings.api_key_entries())
    if open_access and settings.host not in LOOPBACK_HOSTS and not insecure:
        _fail(
            f"RETENTIVE_HOST: {settings.host} is reachable from other machines and no API key is set; "
            "set RETENTIVE_API_KEYS or pass --insecure"
        )
    _check_device("API_DEVICE", settings.serving_device())
    if learner:
        _check_device("DEVICE", settings.device)
    with ExitStack() as stack:
        try:
            stack.enter_context(embedded_server(settings.redis_url, settings.data_dir))
            client = connect(settings.redis_url, settings.data_dir)
            warnings = durability_warnings(client)
            client.close()
            load_encoder(settings.model)
        except ModelNotFoundError as err:
            _fail(f"RETENTIVE_MODEL: {err}")
        except RedisUnavailableError as err:
            _fail(f"RETENTIVE_REDIS_URL: {err}")
        if open_access:
            typer.echo(f"no API keys set: serving without authentication on {settings.host} only", err=True)
        for warning in warnings:
            typer.echo(f"warning: redis {warning}", err=True)
        child = LearnerChild(settings) if learner else None
        # uvicorn re-raises the SIGTERM it shut down on once it returns; as SystemExit it still lets the
        # learner child be stopped below (its last snapshot written), then the embedded Redis.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        if child:
            child.start()
        try:
            uvicorn.run(
                create_app(settings),
                host=settings.host,
                port=settings.port,
                timeout_keep_alive=settings.keep_alive_s,
            )
        finally:
            if child:
                child.stop()


def _exit_on_signal(signum: int, _: object) -> None:
    raise SystemExit(0)


@cli.command()
def learn(
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    redis_url: RedisOpt = None,
    parent_pid: Annotated[
        int | None, typer.Option(hidden=True, help="Stop cleanly once this parent process is gone.")
    ] = None,
) -> None:
    """Run a learner in the foreground: standby until it holds the lease, then learn from the stream."""
    from app.learner_process import run_learner

    settings = _settings(model=model, data_dir=data_dir, redis_url=redis_url)
    _check_device("DEVICE", settings.device)
    try:
        if parent_pid is None:
            with embedded_server(settings.redis_url, settings.data_dir):
                run_learner(settings)
        # The child of `serve` never owns the embedded Redis, even one it had to start again: it belongs to
        # `serve`, and is stopped here only when `serve` was killed outright, after the last snapshot.
        elif run_learner(settings, parent_pid) and not settings.redis_url:
            release_embedded(settings.data_dir, heir_of=parent_pid)
    except ModelNotFoundError as err:
        _fail(f"RETENTIVE_MODEL: {err}")
    except RedisUnavailableError as err:
        _fail(f"RETENTIVE_REDIS_URL: {err}")


@cli.command()
def pin(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id, as GET /v1/snapshots lists it.")],
    unpin: Annotated[bool, typer.Option("--unpin", help="Let retention remove it again.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Keep a snapshot whatever retention (RETENTIVE_SNAPSHOT_KEEP) would remove; --unpin undoes it."""
    from learner.snapshots import SnapshotError
    from learner.stores import open_snapshot_store

    settings = _settings(data_dir=data_dir)
    store = open_snapshot_store(settings.snapshot_dir, keep=settings.snapshot_keep)
    try:
        manifest = store.pin(snapshot_id, pinned=not unpin)
    except (SnapshotError, ValueError) as err:
        _fail(f"{snapshot_id}: {err}")
    typer.echo(
        f"{manifest.id} (version {manifest.version}) is {'pinned' if manifest.pinned else 'not pinned'}"
    )


dead_letters = typer.Typer(help="See what went to the dead-letter stream and why, and put entries back.")
cli.add_typer(dead_letters, name="dead-letters")


@dead_letters.command("list")
def list_dead(
    limit: Annotated[int, typer.Option(min=1, help="Most dead letters to show, oldest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per dead letter.")] = False,
    data_dir: DataDirOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Each dead letter: its ID, the entry's original stream ID, why, and the entry's text and label."""
    from streams.dead_letters import list_dead_letters

    with _redis(data_dir, redis_url) as (client, settings):
        letters = list_dead_letters(client, settings.stream_keys(), limit)
    for letter in letters:
        fields = letter.readable_fields()
        if as_json:
            row = {"dead_id": letter.dead_id, "stream_id": letter.stream_id, "reason": letter.reason}
            typer.echo(json.dumps({**row, "fields": fields}))
        else:
            typer.echo(f"{letter.dead_id}  {letter.reason}  {json.dumps(fields)[:200]}")


@dead_letters.command("requeue")
def requeue_dead(
    ids: Annotated[list[str] | None, typer.Option("--id", help="A dead letter's ID (repeatable).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    data_dir: DataDirOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Put dead letters back on the feedback stream, their ids' duplicate check cleared; exit 1 if any could
    not be (still malformed, or no such dead letter)."""
    from streams.dead_letters import requeue

    if bool(ids) == every:
        _fail("name the dead letters with --id (repeatable), or pass --all")
    with _redis(data_dir, redis_url) as (client, settings):
        keys = settings.stream_keys()
        outcome = requeue(client, keys, settings.producer(client), None if every else ids)
    for dead_id, stream_id in outcome.requeued.items():
        typer.echo(f"{dead_id}: requeued as {stream_id}")
    for dead_id, reason in outcome.refused.items():
        typer.echo(f"{dead_id}: not requeued: {reason}", err=True)
    if outcome.refused:
        raise typer.Exit(1)


@contextlib.contextmanager
def _redis(data_dir: Path | None, redis_url: str | None) -> Iterator[tuple[redis.Redis, Settings]]:
    from streams.connection import connect

    settings = _settings(data_dir=data_dir, redis_url=redis_url)
    with embedded_server(settings.redis_url, settings.data_dir):
        try:
            client = connect(settings.redis_url, settings.data_dir)
        except RedisUnavailableError as err:
            _fail(f"RETENTIVE_REDIS_URL: {err}")
        try:
            yield client, settings
        finally:
            client.close()


FEED_HELP = (
    "Send labelled examples from a JSON Lines file as feedback, then print what became of them.\n\n"
    "Each line is an object with text and label, and optionally id, slice and prediction_id. Every line is "
    "checked first: a bad line is refused alone (the summary names its number and why), blank lines are "
    "skipped, and the good lines go out in batches, over HTTP or with --direct straight into the Redis "
    "stream. Lines are checked against the limits of the settings (RETENTIVE_MAX_TEXT_CHARS, "
    "RETENTIVE_MAX_LABEL_CHARS); a batch the service finds too large is sent in smaller parts.\n\n"
    "Lines with an id are safe to send again: an id already accepted counts as a duplicate and is not added "
    "twice, so after a stop the same file can simply be fed again.\n\n"
    "Exit status: 0 when every line was accepted or a duplicate, 1 when some were refused, 2 when feeding "
    "stopped early (no access, service unreachable, backlog full for too long) or on a usage error."
)


@cli.command(help=FEED_HELP)
def feed(
    file: Annotated[str, typer.Argument(metavar="FILE", help="JSON Lines file of examples; - reads stdin.")],
    url: Annotated[
        str | None, typer.Option(help="Service URL; default http://RETENTIVE_HOST:RETENTIVE_PORT.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="RETENTIVE_API_KEY",
            show_envvar=False,
            help="API key with the feedback scope [RETENTIVE_API_KEY]; a flag shows in the process list.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the API key (its first line that is not blank or a '#' comment)."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Examples per request.")] = 100,
    direct: Annotated[
        bool, typer.Option("--direct", help="Add to the Redis stream directly instead of over HTTP.")
    ] = False,
    data_dir: DataDirOpt = None,
    redis_url: RedisOpt = None,
    max_wait: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds to keep retrying in all while the backlog is full or Redis is down."
        ),
    ] = 120,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    truncate: Annotated[
        bool,
        typer.Option(
            "--truncate",
            help="Cut texts longer than RETENTIVE_MAX_TEXT_CHARS to it instead of refusing their lines.",
        ),
    ] = False,
) -> None:
    from streams.connection import connect

    if direct and url:
        _fail("--url is for HTTP; with --direct the stream is reached through --redis-url or --data-dir")
    if api_key_file is not None:
        api_key = _read_api_key(api_key_file)
    settings = _settings(data_dir=data_dir, redis_url=redis_url)
    with ExitStack() as stack:
        try:
            source, total = open_input(file)
        except OSError as err:
            _fail(f"{file}: {err.strerror or err}")
        lines = stack.enter_context(source)
        if direct:
            try:
                client = connect(settings.redis_url, settings.data_dir)
            except RedisUnavailableError as err:
                _fail(f"RETENTIVE_REDIS_URL: {err}")
            stack.callback(client.close)
            send = direct_sender(settings.producer(client))
        else:
            target = url or service_url(settings.host, settings.port)
            send = http_sender(stack.enter_context(httpx.Client(timeout=60)), target, api_key)
        progress = stack.enter_context(progress_bar(total, quiet))
        summary = feed_lines(
            lines,
            send,
            batch_size=batch,
            limits=settings.record_limits(),
            retry=RetryPolicy(max_wait_s=max_wait),
            progress=progress,
            truncate=truncate,
        )
    typer.echo(json.dumps(summary.as_dict()) if as_json else summary.report())
    if summary.stopped:
        _fail(summary.stopped)
    raise typer.Exit(summary.exit_code)


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
