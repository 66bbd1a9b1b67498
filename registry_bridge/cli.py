"""The ``bridge`` command: publish MLflow runs to the MongoDB registry and manage versions.

Every command exits 0 on success, or non-zero with one line naming what was wrong.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

import click

from conf.settings import Settings, SettingsError, load_settings
from registry_bridge import database
from registry_bridge.errors import RegistryError


class Context:
    """What every command shares: settings, loaded once from --config and the environment."""

    def __init__(self, config: str | None):
        self.settings: Settings = load_settings(config)


def fail_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's errors into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (RegistryError, SettingsError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", envvar="VERTEBRAL_CONFIG", type=click.Path(dir_okay=False),
              help="YAML settings file (default conf/default.yaml).")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens, one line per event.")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """Registry bridge: MLflow runs -> versioned ONNX models in MongoDB GridFS."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ctx.obj = Context(config)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


pass_context = click.make_pass_decorator(Context)


@main.group()
def db() -> None:
    """Start, stop or inspect the embedded registry database (used when MONGODB_URI is unset)."""


@db.command("start")
@pass_context
@fail_cleanly
def db_start(ctx: Context) -> None:
    """Start the embedded server (a no-op when it already runs)."""
    if ctx.settings.registry.mongodb_uri:
        click.echo(f"MONGODB_URI is set ({database.mask_uri(ctx.settings.registry.mongodb_uri)}); "
                   "nothing to start")
        return
    click.echo(database.start_embedded(ctx.settings.registry.embedded).describe())


@db.command("stop")
@pass_context
@fail_cleanly
def db_stop(ctx: Context) -> None:
    """Stop the embedded server started by this project."""
    embedded = ctx.settings.registry.embedded
    stopped = database.stop_embedded(embedded)
    click.echo(f"stopped the embedded registry database at {database.embedded_uri(embedded)}"
               if stopped else "the embedded registry database was not running")


@db.command("status")
@pass_context
@fail_cleanly
def db_status(ctx: Context) -> None:
    """Say which database is used and whether it answers (exit 1 when it does not)."""
    registry = ctx.settings.registry
    if registry.mongodb_uri:
        client = database.connect(registry, start=False)
        client.close()
        click.echo(f"MONGODB_URI {database.mask_uri(registry.mongodb_uri)}: reachable")
        return
    status = database.embedded_status(registry.embedded)
    click.echo(status.describe())
    if not status.running:
        sys.exit(1)


if __name__ == "__main__":
    main()
