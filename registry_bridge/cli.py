"""The ``bridge`` command: publish MLflow runs to the MongoDB registry and manage versions.

Over 500 lines: one short function per command, each its own --help; the work is in the
store, publish, monitoring and spark modules.

Every command exits 0 on success, or non-zero with one line naming what was wrong.

Adding a command: append a function at the end of this file, decorated with
``@main.command("name")`` and ``@pass_state`` (its first parameter is the :class:`CliState`).
Raise :class:`RegistryError` for a failure (the group prints it as one line, exit 1) and
``click.UsageError`` for options that do not go together; take the store from
:func:`open_store` (opened once, closed when the command ends). Take a model name with
``@model_name()`` (right under ``@main.command``): one rule for every command, a positional
``NAME`` defaulting to ``MODEL_NAME`` (``every_name=True``: every name), ``--name`` kept as
an alias; ``with_version=True`` adds ``VERSION`` after it (``bridge activate 2`` is
``MODEL_NAME`` v2). Take a version option with ``@version_option(help)``. Both apply the run
contract's rules and refuse bad input as a usage error naming the parameter.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from conf.contract import ContractError, check_model_name, cv_mean_key, parse_version
from conf.settings import Settings, SettingsError, load_settings
from conf.uris import mask_uri
from registry_bridge import cli_webhooks, database
from registry_bridge.entities import ActiveState, ModelVersion
from registry_bridge.errors import RegistryError
from registry_bridge.store import ORPHAN_MIN_AGE_S, ModelStore, artifact_filename, checked_reason

# `bridge reference set` reads the file whole: a reference set is thousands of rows, not GBs.
REFERENCE_MAX_MB = 64


class CliState:
    """What every command shares: the settings (loaded once) and the store, opened on demand."""

    def __init__(self, config: str | None):
        self.settings: Settings = load_settings(config)
        self.store: ModelStore | None = None


pass_state = click.make_pass_decorator(CliState)


def checked(rule: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A Click callback applying a run-contract rule; its refusal is a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return rule(value)
        except ContractError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def model_name(
    *, every_name: bool = False, with_version: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The one way a command names a model: ``[NAME]`` (or ``--name NAME``), then ``VERSION``.

    NAME defaults to ``MODEL_NAME`` (with ``every_name``: None, i.e. every name). With
    ``with_version`` a single positional is the VERSION, so ``bridge activate 2`` works;
    the command receives ``name`` (and ``version``) resolved and checked.
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def resolved(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            name, alias = kwargs.pop("name"), kwargs.pop("name_alias")
            if with_version:
                version = kwargs.pop("version")
                if version is None:  # one positional: it is the version
                    if name is None:
                        raise click.UsageError("missing argument VERSION", ctx=ctx)
                    name, version = None, name
                kwargs["version"] = _checked_value(parse_version, version, "VERSION")
            if name is not None and alias is not None and name != alias:
                raise click.UsageError(f"two model names given: {name} and --name {alias}")
            name = _checked_value(check_model_name, name or alias, "NAME")
            if name is None and not every_name:
                name = ctx.find_object(CliState).settings.api.model_name  # type: ignore[union-attr]
            return command(*args, name=name, **kwargs)

        default = "every name" if every_name else "MODEL_NAME"
        resolved = click.option(
            "--name",
            "name_alias",
            metavar="NAME",
            help=f"Same as the NAME argument (default {default}).",
        )(resolved)
        if with_version:
            resolved = click.argument("version", required=False, metavar="VERSION")(resolved)
        return click.argument("name", required=False, metavar="[NAME]")(resolved)

    return decorate


def _checked_value(rule: Callable[[Any], Any], value: Any, what: str) -> Any:
    """``rule(value)``, its refusal a usage error naming the argument (None passes)."""
    if value is None:
        return None
    try:
        return rule(value)
    except ContractError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


def version_option(help: str) -> Callable[[Any], Any]:
    """``--version`` checked by the version rule (ASCII digits, 1 to 2^63-1)."""
    return click.option("--version", callback=checked(parse_version), help=help)


class BridgeGroup(click.Group):
    """A command group that reports the project's errors as one line on stderr, exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; RegistryError or SettingsError becomes one ``error:`` line."""
        try:
            return super().invoke(ctx)
        except (RegistryError, SettingsError) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's whole first sentence, wrapped (Click cuts it at the terminal width)."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=BridgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    envvar="VERTEBRAL_CONFIG",
    type=click.Path(dir_okay=False),
    help="YAML settings file (default: $VERTEBRAL_CONFIG or conf/default.yaml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what happens, one line per event.")
@click.pass_context
def main(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """Registry bridge: MLflow runs -> versioned ONNX models in MongoDB GridFS."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # MLflow logs INFO on its own handler (e.g. creating tables); keep output to one line.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        ctx.obj = CliState(config)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)


def open_store(state: CliState) -> ModelStore:
    """The command's model store, connected once (starts the embedded server if needed)."""
    if state.store is None:
        state.store = ModelStore.from_settings(state.settings)
        # Close the client (its monitor threads and sockets) however the command ends.
        click.get_current_context().call_on_close(state.store.close)
    return state.store


@main.group(cls=BridgeGroup)
def db() -> None:
    """Start, stop or inspect the embedded registry database (used when MONGODB_URI is unset)."""


@db.command("start")
@pass_state
def db_start(state: CliState) -> None:
    """Start the embedded server (a no-op when it already runs)."""
    if state.settings.registry.mongodb_uri:
        click.echo(
            f"MONGODB_URI is set ({mask_uri(state.settings.registry.mongodb_uri)}); "
            "nothing to start"
        )
        return
    click.echo(database.start_embedded(state.settings.registry.embedded).describe())


@db.command("stop")
@pass_state
def db_stop(state: CliState) -> None:
    """Stop the embedded server started by this project."""
    embedded = state.settings.registry.embedded
    stopped = database.stop_embedded(embedded)
    click.echo(
        f"stopped the embedded registry database at {database.embedded_uri(embedded)}"
        if stopped
        else "the embedded registry database was not running"
    )


@db.command("status")
@pass_state
def db_status(state: CliState) -> None:
    """Say which database is used and whether it answers (exit 1 when it does not)."""
    registry = state.settings.registry
    if registry.mongodb_uri:
        client = database.connect(registry, start=False)
        client.close()
        click.echo(f"MONGODB_URI {mask_uri(registry.mongodb_uri)}: reachable")
        return
    status = database.embedded_status(registry.embedded)
    click.echo(status.describe())  # the server that answers, even when it is another clone's
    if not status.running or status.foreign:
        sys.exit(1)


# --- registry commands ------------------------------------------------------------------


@main.command("runs")
@click.option("--experiment", help="MLflow experiment (default mlflow.experiment).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def runs_command(state: CliState, experiment: str | None, as_json: bool) -> None:
    """List candidate MLflow runs, best first, with their metrics and published versions."""
    from registry_bridge import publish, render

    runs = publish.list_candidate_runs(state.settings, open_store(state), experiment)
    if as_json:
        click.echo(render.as_json(runs))
    elif not runs:
        click.echo(
            f"no candidate runs in experiment {experiment or state.settings.mlflow.experiment!r}"
        )
    else:
        click.echo(render.runs_table(runs, cv_mean_key(state.settings.training.objective)))


@main.command("publish")
@model_name()
@click.option("--run-id", help="MLflow run to publish (see `bridge runs`).")
@click.option(
    "--best",
    is_flag=True,
    help="Publish the experiment's best candidate run: highest cross-validated "
    "training.objective (macro F1 by default), ties broken by the test score.",
)
@click.option("--experiment", help="Experiment searched by --best (default mlflow.experiment).")
@click.option("--activate", is_flag=True, help="Activate the version once published.")
@click.option(
    "--new-version", is_flag=True, help="Publish again even if this run already has a version."
)
@click.option("--reason", help="Reason recorded in the activation log (with --activate).")
@click.option(
    "--force",
    is_flag=True,
    help="With --activate: activate even if the promotion gate refuses it (needs --reason).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="2-class runs: publish with this decision threshold on P(Abnormal) instead of "
    "the one training chose (a new version; its test metrics rescored).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the version as JSON.")
@pass_state
def publish_command(
    state: CliState,
    run_id: str | None,
    best: bool,
    experiment: str | None,
    name: str,
    activate: bool,
    new_version: bool,
    reason: str | None,
    force: bool,
    threshold: float | None,
    as_json: bool,
) -> None:
    """Publish an MLflow run's ONNX model as the next version in GridFS (verified by sha256)."""
    import os

    from registry_bridge import publish, render

    # MLflow draws download progress bars on stderr; one result line is what users read.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if bool(run_id) == best:
        raise click.UsageError("give exactly one of --run-id ID or --best")
    if experiment and not best:
        raise click.UsageError("--experiment only applies with --best")
    if force and not activate:
        raise click.UsageError("--force only applies with --activate")
    _check_forced_reason(force, reason)
    checked_reason(reason)  # before publishing: not a version published, then a refusal
    store = open_store(state)
    chosen = run_id or publish.best_candidate_run_id(state.settings, experiment)
    result = publish.publish_run(
        store, state.settings, chosen, name, new_version=new_version, threshold=threshold
    )
    version = result.version
    if as_json:
        if activate:
            _activate_published(store, version, chosen, reason, force)
        click.echo(render.as_json(result))
        return
    # Said before activating: when the gate refuses the switch, the version stays published.
    if result.created:
        click.echo(
            f"published {version.label} from run {chosen} "
            f"(file {version.artifact_file_id}, sha256 {version.sha256[:12]}…, "
            f"{version.size_bytes} bytes)"
        )
    else:
        click.echo(
            f"run {chosen} is already published as {version.label}; nothing uploaded "
            "(use --new-version to publish it again)"
        )
    if activate:
        activated = _activate_published(store, version, chosen, reason, force)
        _say_gate(activated)
        click.echo(
            f"activated {version.label} (previous: "
            f"{'v' + str(activated.previous_version) if activated.previous_version else 'none'})"
        )


def _activate_published(
    store: ModelStore, version: ModelVersion, run_id: str, reason: str | None, force: bool
) -> ActiveState:
    """``publish --activate``: the switch, through the gate (or forced, with the reason)."""
    return store.set_active_version(
        version.name, version.version, reason=reason or f"published from run {run_id}", force=force
    )


@main.command("list")
@model_name(every_name=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (every field) instead of a table."
)
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted versions.")
@pass_state
def list_command(state: CliState, name: str | None, as_json: bool, include_deleted: bool) -> None:
    """List published versions: version, family, test macro F1, created, run id, active marker."""
    from registry_bridge import render

    store = open_store(state)
    versions = store.search_model_versions(name, include_deleted=include_deleted)
    active = store.list_active_states()
    mirrors = _mirror_status(store, {v.name for v in versions})
    if as_json:
        click.echo(
            render.as_json(
                [
                    {
                        **v.to_dict(),
                        "active": v.name in active and active[v.name].active_version == v.version,
                        "mlflow": _mirror_of_version(mirrors, v.name, v.version),
                    }
                    for v in versions
                ]
            )
        )
    elif not versions:
        click.echo(f"no published versions{f' of {name!r}' if name else ''}")
    else:
        click.echo(render.versions_table(versions, active))
        for report in mirrors.values():
            click.echo(report.describe())


@main.command("show")
@model_name(with_version=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of key/value lines.")
@pass_state
def show_command(state: CliState, name: str, version: int, as_json: bool) -> None:
    """Show every metadata field of one version."""
    from registry_bridge import render

    store = open_store(state)
    found = store.get_model_version(name, version)
    active = store.get_active_version(name)
    mirrors = _mirror_status(store, {found.name})
    mirrored = _mirror_of_version(mirrors, found.name, found.version)
    if as_json:
        is_active = bool(active and active.active_version == found.version)
        click.echo(render.as_json({**found.to_dict(), "active": is_active, "mlflow": mirrored}))
    else:
        click.echo(render.version_details(found, active))
        if mirrors:
            where = f"models:/{found.name}/{mirrored['version']}" if mirrored["version"] else "none"
            click.echo(f"mlflow version: {where}; {mirrors[found.name].describe()}")


@main.command("activate")
@model_name(with_version=True)
@click.option("--reason", help="Why, recorded in the activation log.")
@click.option(
    "--force",
    is_flag=True,
    help="Activate even if the promotion gate refuses the version (needs --reason).",
)
@pass_state
def activate_command(
    state: CliState, name: str, version: int, reason: str | None, force: bool
) -> None:
    """Make a version the one served, after checking its sha256, re-scoring its example and
    passing the promotion gate (setting promotion.rules) against the active version."""
    _check_forced_reason(force, reason)
    store = open_store(state)
    before = store.get_active_version(name)
    now = store.set_active_version(name, version, reason=reason, force=force)
    if before is not None and before.active_version == now.active_version:
        click.echo(f"{name} v{now.active_version} is already active; nothing changed")
        return
    _say_gate(now)
    click.echo(
        f"activated {name} v{now.active_version} (previous: "
        f"{'v' + str(now.previous_version) if now.previous_version else 'none'})"
    )
    _say_prepared(now)


@main.command("rollback")
@model_name()
@click.option("--reason", help="Why, recorded in the activation log.")
@pass_state
def rollback_command(state: CliState, name: str, reason: str | None) -> None:
    """Return to the version active before the current one (checked like activate)."""
    rolled = open_store(state).rollback(name, reason=reason)
    click.echo(f"rolled back {name} to v{rolled.active_version} (from v{rolled.previous_version})")
    _say_prepared(rolled)


@main.command("history")
@model_name()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def history_command(state: CliState, name: str, as_json: bool) -> None:
    """Print the activation log of a model name, oldest first."""
    from registry_bridge import render

    events = open_store(state).list_activation_log(name)
    if as_json:
        click.echo(render.as_json(events))
    elif not events:
        click.echo(f"no activation of {name!r} recorded")
    else:
        click.echo(render.history_table(events))


@main.command("download")
@model_name(with_version=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    callback=lambda ctx, param, value: _regular_file_or_new(value, param),
    help="Where to write the ONNX file: a new path or a regular file "
    "(default <name>-v<version>.onnx here).",
)
@pass_state
def download_command(state: CliState, name: str, version: int, output: Path | None) -> None:
    """Write a version's ONNX file, verifying its sha256 while writing."""
    store = open_store(state)
    found = store.get_model_version(name, version)
    # The name rule (no "/", no leading ".") keeps the default file in this directory.
    default = Path(artifact_filename(found.name, found.version))
    path = store.download_artifact(found, output or default)
    click.echo(f"wrote {path} ({found.size_bytes} bytes, sha256 {found.sha256})")


def _regular_file_or_new(path: Path | None, param: click.Parameter) -> Path | None:
    # Replacing /dev/null, a FIFO or a socket (as root) would break the system, not write a file.
    if path is not None and path.exists() and not path.is_file():
        raise click.BadParameter(
            f"{path} exists and is not a regular file; give a new path or a regular file",
            param=param,
        )
    return path


@main.command("verify")
@model_name(with_version=True)
@click.option(
    "--baseline",
    is_flag=True,
    help="Also give the version its drift baseline from its MLflow run when it has none.",
)
@pass_state
def verify_command(state: CliState, name: str, version: int, baseline: bool) -> None:
    """Check a version's sha256 and re-score its input example (exit 1 on any mismatch)."""
    report = open_store(state).verify_model_version(name, version)
    click.echo(
        f"{name} v{report.version}: sha256 {report.sha256} matches ({report.size_bytes} "
        f"bytes); {report.rows_scored} example rows re-scored, max |Δp| "
        f"{report.max_probability_difference:.2e}"
    )
    if baseline:
        _backfill_baseline(state, name, report.version)


@main.command("delete")
@model_name(with_version=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def delete_command(state: CliState, name: str, version: int, yes: bool) -> None:
    """Delete a version's file and hide its metadata (the active version is refused)."""
    store = open_store(state)
    found = store.get_model_version(name, version)
    if not yes:
        click.confirm(f"delete {found.label} (run {found.run_id}) and its ONNX file?", abort=True)
    store.delete_model_version(name, found.version)
    click.echo(f"deleted {found.label}")


@main.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list the orphan files.")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=ORPHAN_MIN_AGE_S,
    show_default=True,
    help="Spare files younger than this many seconds (a publish may be running).",
)
@pass_state
def gc_command(state: CliState, dry_run: bool, min_age: float) -> None:
    """Remove GridFS files no version points to (left by a crashed publish or delete)."""
    orphans = open_store(state).collect_orphan_files(dry_run=dry_run, min_age_s=min_age)
    verb = "would remove" if dry_run else "removed"
    for orphan in orphans:
        click.echo(f"{verb} {orphan['file_id']} {orphan['filename']} ({orphan['length']} bytes)")
    click.echo(f"{verb} {len(orphans)} orphan file(s)")


@main.command("fleet")
@model_name(every_name=True)
@click.option("--json", "as_json", is_flag=True, help="Print the workers as a JSON list.")
@pass_state
def fleet_command(state: CliState, name: str | None, as_json: bool) -> None:
    """List the API workers from their heartbeats and whether they serve the active version
    (a worker silent for 3 heartbeats is shown as gone, then removed)."""
    import json

    from registry_bridge import fleet, render

    store = open_store(state)
    active = {n: s.active_version for n, s in store.list_active_states().items()}
    workers = fleet.to_json(fleet.list_workers(store.db, name, active))
    if as_json:
        click.echo(json.dumps(workers, indent=2))
        return
    click.echo(render.fleet_table(workers) if workers else "no API worker has reported")


def _backfill_baseline(state: CliState, name: str, version: int) -> None:
    """``verify --baseline``: compute a missing baseline from the run, or say why there is none."""
    from registry_bridge.monitoring import baselines

    store = open_store(state)
    found = store.get_model_version(name, version)
    try:
        _, message = baselines.backfill_baseline(store, state.settings, found)
    except RegistryError as exc:
        message = f"{found.label} has no baseline: {exc.message}"
    click.echo(message)


@main.command("monitor")
@model_name()
@version_option("Version to check (default: the active one).")
@click.option(
    "--since",
    default="24h",
    show_default=True,
    help="Window of captured requests: 30m, 24h, 7d...",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option(
    "--plots",
    type=click.Path(file_okay=False),
    help="Write one PNG per feature (baseline against live) into this directory.",
)
@pass_state
def monitor_command(
    state: CliState, name: str, version: int | None, since: str, as_json: bool, plots: str | None
) -> None:
    """Compare captured requests with the version's training baseline, and the decisions
    with the labels sent as feedback (exit 3 on drift or on a drop of live accuracy)."""
    from pathlib import Path

    from registry_bridge import render
    from registry_bridge.monitoring import drift, quality
    from registry_bridge.monitoring import plots as drift_plots

    store = open_store(state)
    report = drift.drift_report(store, state.settings, name, version, since)
    quality.add_quality(report, store, state.settings.monitor, version)
    if as_json:
        click.echo(render.as_json(report))
    else:
        click.echo(render.drift_table(report))
        click.echo(quality.quality_table(report))
    if plots and report["features"]:
        written = drift_plots.write_plots(store, name, report["version"], Path(plots), since)
        if not as_json:
            click.echo(f"wrote {len(written)} plot(s) to {plots}")
    if report["drift"]:
        cli_webhooks.announce_drift(store, report)
    if report["drift"] or report["quality_drop"]:
        sys.exit(3)


@main.command("score")
@model_name()
@click.option(
    "--input", "source", required=True, help="CSV or Parquet: a file, a directory or a glob."
)
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["parquet", "csv"]),
    default="parquet",
    show_default=True,
    help="Output format.",
)
@click.option("--master", help="Spark master URL (default local[*], or spark-submit's --master).")
@version_option("Score with this version (default: the active).")
@click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="skip: keep rows with a bad cell, unscored, with an error column.",
)
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@pass_state
def score_command(
    state: CliState,
    source: str,
    output: str,
    output_format: str,
    master: str | None,
    name: str,
    version: int | None,
    on_error: str,
    overwrite: bool,
) -> None:
    """Score a CSV or Parquet data set on Spark with one registry version (needs '.[spark]')."""
    from registry_bridge import spark as spark_scoring

    store = open_store(state)
    with spark_scoring.job_session(master) as session:
        session.sparkContext.setLogLevel("ERROR")
        result = spark_scoring.run_job(
            session,
            store,
            name,
            source,
            output,
            output_format=output_format,
            version=version,
            on_error=on_error,
            overwrite=overwrite,
            progress=lambda line: click.echo(line, err=True),
        )
    model = result.model
    click.echo(
        f"scored {result.rows_out} rows ({result.rows_in_error} in error) with "
        f"{model['name']} v{model['version']} in {result.seconds:.1f}s -> {result.output}"
    )


@main.command("sync")
@model_name(every_name=True)
@click.option("--dry-run", is_flag=True, help="Only report the drift; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of one line per name.")
@pass_state
def sync_command(state: CliState, name: str | None, dry_run: bool, as_json: bool) -> None:
    """Make MLflow's Model Registry match the registry: versions, and the alias on the active one.

    MongoDB is the truth. Creates the MLflow versions missing (also for registries published
    before the mirror existed), removes those of deleted versions, moves the alias, and
    reports what differed. Exit 1 when a name cannot be mirrored.
    """
    from registry_bridge import render
    from registry_bridge.mirror import Mirror

    store = open_store(state)
    mirror = Mirror(state.settings.mlflow)
    # Names with deleted versions too: their MLflow versions must go.
    names = sorted({v.name for v in store.search_model_versions(name, include_deleted=True)})
    if name and not names:
        raise RegistryError("NOT_FOUND", f"no version of {name!r} was ever published")
    reports = [mirror.reconcile(store, n, dry_run=dry_run) for n in names]
    if as_json:
        click.echo(render.as_json([r.to_dict() for r in reports]))
    else:
        for report in reports:
            click.echo(report.describe())
        if not reports:
            click.echo("no published versions: nothing to mirror")
    if any(r.problem for r in reports):
        sys.exit(1)


@main.command("feedback")
@model_name()
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help='CSV with the header request_id,label[,record], or JSON {"labels": [...]}.',
)
@click.option(
    "--skip-unknown",
    is_flag=True,
    help="Report ids with no captured request instead of refusing the whole file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def feedback_command(
    state: CliState, name: str, data: str, skip_unknown: bool, as_json: bool
) -> None:
    """Store the true labels of captured requests (all or nothing; exit 1 naming each bad row)."""
    from registry_bridge import render
    from registry_bridge.entities import current_user
    from registry_bridge.monitoring import feedback, feedback_rows

    path = Path(data)
    if path.stat().st_size > feedback_rows.MAX_FEEDBACK_BYTES:
        raise feedback_rows.too_large()
    kind = "json" if path.suffix.lower() == ".json" else None
    store = open_store(state)
    try:
        rows = feedback_rows.parse_labels_file(path.read_bytes(), kind)
        result = feedback.record_feedback(
            store.db, rows, name=name, by=f"cli:{current_user()}", skip_unknown=skip_unknown
        )
    except RegistryError as exc:
        if as_json:
            click.echo(render.as_json(exc.to_dict()))
        else:
            for detail in exc.details:
                click.echo(feedback_rows.describe_problem(detail), err=True)
        raise
    if as_json:
        click.echo(render.as_json(result.to_dict()))
        return
    for skipped in result.skipped:
        click.echo("skipped " + feedback_rows.describe_problem(skipped))
    per_version = ", ".join(f"v{v}: {n}" for (_, v), n in sorted(result.versions.items()))
    click.echo(f"stored {result.stored} label(s) of {name} ({per_version or 'none'})")


def _mirror_status(store: ModelStore, names: set[str]) -> dict[str, Any]:
    """name -> its MLflow mirror report (empty when ``mlflow.mirror`` is off)."""
    if store.mirror is None:
        return {}
    return {n: store.mirror.status(store, n) for n in sorted(names)}


def _mirror_of_version(mirrors: dict[str, Any], name: str, version: int) -> dict[str, Any]:
    """``{"version": MLflow's number or None, "in_sync": bool|None}`` of one registry version."""
    report = mirrors.get(name)
    if report is None:
        return {"version": None, "in_sync": None}
    return {"version": report.versions.get(version), "in_sync": report.in_sync}


@main.command("canary")
@model_name()
@click.argument("version", required=False, metavar="[VERSION]")
@click.option(
    "--percent",
    type=click.FloatRange(0, 100, min_open=True, max_open=True),
    help="Start: the share of requests VERSION answers (sticky by X-Request-Key or record).",
)
@click.option("--promote", is_flag=True, help="Activate the canary's version, through the gate.")
@click.option("--abort", is_flag=True, help="End the canary: the active version answers all.")
@click.option("--reason", help="Why, recorded in the activation log.")
@click.option(
    "--force", is_flag=True, help="With --promote: past a refusing gate (needs --reason)."
)
@pass_state
def canary_command(
    state: CliState,
    name: str,
    version: str | None,
    percent: float | None,
    promote: bool,
    abort: bool,
    reason: str | None,
    force: bool,
) -> None:
    """Send a share of NAME's requests to VERSION (--percent P), --promote it or --abort it;
    alone, say what runs. Guardrails (settings canary.*) end it when it fails more, or is
    slower, than the active version (docs/promotion.md)."""

    if version is None and percent is not None and name.isdigit():  # `bridge canary 3 --percent 5`
        name, version = state.settings.api.model_name, name
    chosen = [
        flag
        for flag, on in (
            ("--percent", percent is not None),
            ("--promote", promote),
            ("--abort", abort),
        )
        if on
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} do not go together")
    if (version is None) != (percent is None):
        raise click.UsageError("starting a canary takes both VERSION and --percent P")
    if force and not (promote and (reason or "").strip()):
        raise click.UsageError("--force goes with --promote and needs --reason TEXT")
    store = open_store(state)
    if percent is not None:
        number = _checked_value(parse_version, version, "VERSION")
        started = store.start_canary(name, number, percent, reason=reason)
        click.echo(
            f"canary: {name} v{number} answers {percent:g}% of requests beside "
            f"v{started.active_version}; every answer names its version"
        )
    elif promote:
        now = store.promote_canary(name, reason=reason, force=force)
        _say_gate(now)
        click.echo(f"promoted: {name} v{now.active_version} is active; the canary has ended")
        _say_prepared(now)
    elif abort:
        ended = store.end_canary(name, reason=reason or "aborted by hand")
        click.echo(
            f"canary ended: {name} v{ended.active_version if ended else '?'} answers every request"
        )
    else:
        current = store.get_active_version(name)
        if current is None or not current.canary:
            click.echo(f"no canary of {name!r} is running")
        else:
            c = current.canary
            click.echo(
                f"canary: {name} v{c['version']} answers {c['percent']:g}% beside "
                f"v{current.active_version}, since {c['started_at']} (by {c['started_by']}); "
                "`bridge fleet` shows each worker's figures"
            )


@main.command("shadow")
@model_name()
@click.argument("version", required=False, metavar="[VERSION]")
@click.option(
    "--percent",
    type=click.FloatRange(0, 100, min_open=True),
    help="The share of answered requests VERSION scores a copy of (after the answer).",
)
@click.option("--off", is_flag=True, help="Stop the shadow traffic.")
@click.option("--reason", help="Why, recorded in the activation log.")
@pass_state
def shadow_command(
    state: CliState,
    name: str,
    version: str | None,
    percent: float | None,
    off: bool,
    reason: str | None,
) -> None:
    """Have VERSION score a copy of P % of NAME's requests after they are answered
    (--percent P), or stop it (--off); alone, say what runs. `bridge compare` shows how
    the two versions agree (docs/promotion.md)."""
    if version is None and percent is not None and name.isdigit():  # `bridge shadow 3 --percent 5`
        name, version = state.settings.api.model_name, name
    if off and percent is not None:
        raise click.UsageError("--percent and --off do not go together")
    if not off and (version is None) != (percent is None):
        raise click.UsageError("starting shadow traffic takes both VERSION and --percent P")
    store = open_store(state)
    if percent is not None:
        number = _checked_value(parse_version, version, "VERSION")
        started = store.start_shadow(name, number, percent, reason=reason)
        click.echo(
            f"shadow: {name} v{number} scores a copy of {percent:g}% of the requests answered "
            f"by v{started.active_version}; `bridge compare {name}` shows the comparison"
        )
    elif off:
        store.end_shadow(name, reason=reason or "stopped by hand")
        click.echo(f"shadow traffic of {name} stopped")
    else:
        current = store.get_active_version(name)
        if current is None or not current.shadow:
            click.echo(f"no shadow traffic of {name!r} is running")
        else:
            s = current.shadow
            click.echo(
                f"shadow: {name} v{s['version']} scores {s['percent']:g}% beside "
                f"v{current.active_version}, since {s['started_at']} (by {s['started_by']})"
            )


@main.command("compare")
@model_name()
@click.option("--since", default="24h", show_default=True, help="Window: 30m, 24h, 7d...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def compare_command(state: CliState, name: str, since: str, as_json: bool) -> None:
    """Compare the shadow version's answers with the active version's on the requests it
    was copied: agreement, the disagreement matrix, latencies, drift, live accuracy."""
    from registry_bridge import render
    from registry_bridge.monitoring.shadow_log import compare_report

    report = compare_report(open_store(state), state.settings, name, since)
    click.echo(render.as_json(report) if as_json else render.compare_table(report))


@main.group(cls=BridgeGroup)
def reference() -> None:
    """The labelled data set a model name's versions are compared on (the promotion gate)."""


@reference.command("set")
@model_name()
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV (or .dat/.arff) of the six features and a label column, like the training data.",
)
@pass_state
def reference_set_command(state: CliState, name: str, data_file: Path) -> None:
    """Make FILE the reference set of NAME (a new set; a stored one never changes)."""
    from pipelines.data import DataError, read_dataset
    from registry_bridge.reference import ReferenceRows

    if not data_file.is_file():
        raise click.BadParameter(f"no such file: {data_file}", param_hint="--data")
    if data_file.stat().st_size > REFERENCE_MAX_MB * 1024 * 1024:
        raise click.BadParameter(
            f"{data_file} is over {REFERENCE_MAX_MB} MB; a reference set is a few thousand rows",
            param_hint="--data",
        )
    store = open_store(state)
    versions = store.search_model_versions(name)
    variant = next((v.variant for v in reversed(versions) if v.variant), None) or "auto"
    try:
        dataset = read_dataset(data_file, variant)
    except DataError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    rows = ReferenceRows(dataset.features.to_numpy(dtype="float64"), list(dataset.labels))
    found = store.set_reference_set(name, rows, source=f"file {data_file.name}")
    counts = ", ".join(f"{c} {n}" for c, n in found.class_counts.items())
    click.echo(
        f"{found.label}: {found.rows} rows ({counts}), sha256 {found.sha256[:12]}; "
        f"the promotion gate now scores versions of {name} on it"
    )


@reference.command("show")
@model_name()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def reference_show_command(state: CliState, name: str, as_json: bool) -> None:
    """List the reference sets of NAME; the newest is the one the gate uses."""
    from registry_bridge import render

    sets = open_store(state).list_reference_sets(name)
    if as_json:
        click.echo(render.as_json(sets))
    elif not sets:
        click.echo(
            f"{name!r} has no reference set; publishing its first version makes one from the "
            f"run's test split, or `bridge reference set {name} --data FILE`"
        )
    else:
        click.echo(render.reference_table(sets))


def _check_forced_reason(force: bool, reason: str | None) -> None:
    """``--force`` passes a refusing gate only with a reason, kept in the activation log."""
    if force and not (reason or "").strip():
        raise click.UsageError("--force needs --reason TEXT (kept in the activation log)")


def _say_gate(active: ActiveState) -> None:
    """The promotion gate's verdict on a switch and each rule's values, when it ran."""
    from registry_bridge import render

    if not active.gate:
        return
    verdict = "passed" if active.gate["passed"] else "refused it: FORCED with the reason given"
    click.echo(f"promotion gate {verdict}")
    click.echo("\n".join(f"  {line}" for line in render.gate_lines(active.gate)))


def _say_prepared(active: ActiveState) -> None:
    """One line on the preparation (prepare, then switch) when there was one."""
    from registry_bridge import render

    prepared = active.prepared
    if not prepared:
        return
    version, live = f"v{prepared['staged_version']}", prepared["live_workers"]
    if live == 0:  # "0 of 0 live API workers had loaded v2" told a newcomer nothing
        click.echo(f"no API is running; it will serve {version} when it starts")
    else:
        click.echo(render.prepared_line(prepared))


main.add_command(cli_webhooks.group)  # bridge webhooks ... (registry_bridge/cli_webhooks.py)

if __name__ == "__main__":
    main()
