"""One way to name a model in every ``bridge`` command (issue 26, point 5).

A positional ``NAME`` (defaulting to ``MODEL_NAME``, or to every name for the listing
commands), with ``--name`` kept as an alias for scripts written before; ``VERSION``
after it where the command takes one. Also: a 2-class run refused under the 3-class
name, ``bridge runs`` showing variant and classes, and an idempotent publish.
"""

from __future__ import annotations

import json
from dataclasses import replace

import click
import pytest
from click.testing import CliRunner

from pipelines.candidate import quick_candidate_run
from pipelines.data import variant_file
from registry_bridge.cli import main

# Commands that act on no model: everything else must follow the naming rule.
NAMELESS = {"runs", "gc", "db start", "db stop", "db status"}
# Listing commands: no NAME means every name.
EVERY_NAME = {"list", "sync", "fleet"}
WITH_VERSION = {"show", "activate", "download", "verify", "delete"}
# VERSION only to start one (`bridge canary NAME V --percent P`); not to promote, end or show.
OPTIONAL_VERSION = {"canary", "shadow"}


def every_command(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(every_command(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


COMMANDS = every_command()
# `bridge webhooks ...` act on the registry's webhooks, not on a model: their `--name` is
# the webhook's name (DESIGN.md's `bridge webhooks add URL --events E1,E2 [--name NAME]`).
WEBHOOKS = {path for path in COMMANDS if path.startswith("webhooks ")}


def test_the_rule_covers_every_command():
    """Check the lists above name real commands, so a new command cannot slip past the rule."""
    assert NAMELESS | EVERY_NAME | WITH_VERSION <= set(COMMANDS)
    assert {"publish", "monitor", "score", "rollback", "history"} <= set(COMMANDS) - NAMELESS


@pytest.mark.parametrize("path", sorted(set(COMMANDS) - NAMELESS - WEBHOOKS))
def test_every_model_command_takes_a_positional_name_and_the_name_alias(path):
    """Check NAME is the first positional, optional, and --name is the same parameter's alias."""
    command = COMMANDS[path]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    options = {o: p for p in command.params if isinstance(p, click.Option) for o in p.opts}
    assert arguments[0].name == "name" and not arguments[0].required, path
    assert [a.name for a in arguments] == (
        ["name", "version"] if path in WITH_VERSION | OPTIONAL_VERSION else ["name"]
    ), path
    if path in OPTIONAL_VERSION:
        assert not arguments[1].required, path
    assert "--name" in options, f"bridge {path} lost --name"
    default = "every name" if path in EVERY_NAME else "MODEL_NAME"
    assert f"(default {default})" in (options["--name"].help or ""), path
    usage = CliRunner().invoke(main, [*path.split(), "--help"]).output
    version = (
        " VERSION" if path in WITH_VERSION else " [VERSION]" if path in OPTIONAL_VERSION else ""
    )
    assert f"[NAME]{version}" in usage, usage


@pytest.mark.parametrize("path", sorted(WEBHOOKS))
def test_webhook_commands_take_no_model_name(path):
    """Check `bridge webhooks` commands take no model NAME: their --name is a webhook's."""
    arguments = [p.name for p in COMMANDS[path].params if isinstance(p, click.Argument)]
    assert "name_alias" not in {p.name for p in COMMANDS[path].params}, path
    assert arguments[:1] != ["name"] or path in ("webhooks remove", "webhooks test"), path


@pytest.mark.parametrize("path", sorted(NAMELESS))
def test_nameless_commands_take_no_name(path):
    """Check the commands that act on no model do not pretend to take one."""
    assert all(p.name not in ("name", "name_alias") for p in COMMANDS[path].params)


def test_two_different_names_are_refused():
    """Check NAME and --name naming two models is a usage error (exit 2) naming both."""
    result = CliRunner().invoke(main, ["history", "model-a", "--name", "model-b"])
    assert result.exit_code == 2 and "model-a" in result.output and "model-b" in result.output


@pytest.mark.parametrize(
    "argv",
    [["history"], ["monitor"], ["rollback"], ["show", "3"], ["activate", "3"], ["verify", "3"]],
    ids=" ".join,
)
def test_no_name_means_model_name(bridge, argv):
    """Check a command given no NAME acts on MODEL_NAME (here a name nothing was published as)."""
    result = bridge(*argv, env_changes={"MODEL_NAME": "nobody-published-this"})
    assert "nobody-published-this" in result.output, result.output


@pytest.mark.slow
def test_a_name_holds_one_kind_and_publish_is_idempotent(bridge, settings):
    """Check, through the CLI: the 3-class run published twice is "already v1" (exit 0) and
    --new-version makes v2; a 2-class run is refused under the 3-class name with one line
    suggesting --name, and published under its own; `bridge runs` shows variant and classes."""
    three = quick_candidate_run(settings)
    assert "published vertebral-column v1" in bridge("publish", "--run-id", three).output
    again = bridge("publish", "--run-id", three)
    assert again.exit_code == 0 and "already published as vertebral-column v1" in again.output
    forced = bridge("publish", "vertebral-column", "--run-id", three, "--new-version")
    assert forced.exit_code == 0 and "published vertebral-column v2" in forced.output

    assert settings.data.path is not None
    binary = replace(
        settings,
        data=replace(settings.data, variant="2C", path=variant_file(settings.data.path, "2C")),
    )
    two = quick_candidate_run(binary)  # same experiment on purpose: an explicit --experiment
    refused = bridge("publish", "--run-id", two)
    assert refused.exit_code == 1, refused.output
    line = refused.stderr.strip()
    assert "\n" not in line and "classes Abnormal,Normal" in line and "variant 2C" in line
    assert "--name vertebral-column-2c" in line
    own = bridge("publish", "vertebral-column-2c", "--run-id", two)
    assert own.exit_code == 0 and "published vertebral-column-2c v1" in own.output

    activated = bridge("activate", "2")  # no NAME: MODEL_NAME; no API running
    assert activated.exit_code == 0, activated.output
    assert activated.output.splitlines()[0] == "activated vertebral-column v2 (previous: none)"
    assert "0 of 0" not in activated.output  # said "prepared in 0.00 s: 0 of 0 live API ..."
    runs = json.loads(bridge("runs", "--json").output)
    kinds = {r["run_id"]: (r["variant"], r["classes"]) for r in runs}
    assert kinds[three] == ("3C", ["Hernia", "Normal", "Spondylolisthesis"])
    assert kinds[two] == ("2C", ["Abnormal", "Normal"])
    header = bridge("runs").output.splitlines()[0].split()
    assert header[4:6] == ["variant", "classes"]  # after rank, "run id", family


def test_activate_with_no_api_running_says_so_in_plain_words(capsys):
    """Check the preparation line when no API worker is live (it said "prepared in 0.00 s: 0
    of 0 live API workers had loaded v2")."""
    from types import SimpleNamespace

    from registry_bridge.cli import _say_prepared

    prepared = {"staged_version": 2, "live_workers": 0, "loaded": 0, "timed_out": False}
    _say_prepared(SimpleNamespace(prepared={**prepared, "prepare_s": 0.0, "not_loaded": []}))
    assert capsys.readouterr().out == "no API is running; it will serve v2 when it starts\n"
