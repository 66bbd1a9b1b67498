"""The ``bridge`` registry commands, end to end on real candidate runs and the registry database."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from conftest import free_port
from registry_samples import tamper_first_chunk

from pipelines.candidate import quick_candidate_run

pytestmark = pytest.mark.slow  # fits and logs real candidate runs

NAME = "vertebral-column"


def one_line_error(result) -> str:
    """The failure's stderr, checked to be a single ``error:`` line with exit code 1."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_publish_list_show_activate_rollback_history(bridge, settings, tmp_path):
    """Check the main flow: publish two runs, list them, activate, roll back, read the log;
    then `publish --activate` refused by the promotion gate (the version stays published,
    and says so first) and forced past it with a reason."""
    first = quick_candidate_run(settings, family="logistic_regression")
    second = quick_candidate_run(settings, family="knn")

    result = bridge("publish", "--run-id", first)
    assert result.exit_code == 0, result.output
    assert f"published {NAME} v1 from run {first}" in result.output
    again = bridge("publish", "--run-id", first)
    assert again.exit_code == 0 and f"already published as {NAME} v1" in again.output
    assert bridge("publish", "--run-id", second, "--activate").exit_code == 0

    table = bridge("list").output.splitlines()
    assert table[0].split() == [
        "active",
        "name",
        "version",
        "family",
        "test_f1_macro",
        "created",
        "(UTC)",
        "by",
        "run",
        "id",
    ]
    rows = {line.split()[-1]: line for line in table[2:]}
    assert rows[second].lstrip().startswith("*") and "knn" in rows[second]
    assert not rows[first].lstrip().startswith("*") and "logistic_regression" in rows[first]

    listed = json.loads(bridge("list", "--json").output)
    assert [(v["version"], v["active"], v["run_id"]) for v in listed] == [
        (1, False, first),
        (2, True, second),
    ]
    assert {
        "sha256",
        "input_schema",
        "library_versions",
        "metrics",
        "params",
        "created_at",
        "created_by",
        "data_fingerprint",
        "artifact_file_id",
    } <= set(listed[0])
    assert listed[0]["created_by"] == "cli-tester"

    shown = bridge("show", NAME, "1")
    assert shown.exit_code == 0 and "run_id" in shown.output and first in shown.output
    assert json.loads(bridge("show", NAME, "1", "--json").output)["sha256"] == listed[0]["sha256"]

    activated = bridge("activate", NAME, "1", "--reason", "compare")
    assert activated.exit_code == 0 and f"activated {NAME} v1 (previous: v2)" in activated.output
    rolled = bridge("rollback", NAME)
    assert rolled.exit_code == 0 and f"rolled back {NAME} to v2 (from v1)" in rolled.output

    log = json.loads(bridge("history", NAME, "--json").output)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in log] == [
        ("activate", None, 2),
        ("activate", 2, 1),
        ("rollback", 1, 2),
    ]
    assert log[1]["reason"] == "compare" and log[0]["by"] == "cli-tester"
    history = bridge("history", NAME).output
    assert "rollback" in history and "compare" in history

    runs = bridge("runs")
    assert runs.exit_code == 0 and first in runs.output and "v1" in runs.output

    config = tmp_path / "rules.yaml"  # a rule, and no reference set: the gate refuses
    config.write_text("promotion:\n  rules:\n    accuracy: {min_absolute_change: 0.5}\n")
    gated = {"VERTEBRAL_CONFIG": str(config)}
    refused = bridge("publish", "--run-id", first, "--activate", env_changes=gated)
    assert refused.exit_code == 1, refused.output
    assert refused.stdout.startswith(f"run {first} is already published as {NAME} v1")
    assert "the promotion gate refused" in refused.stderr
    forced = bridge(
        "publish",
        *("--run-id", first, "--activate", "--force", "--reason", "demo run again"),
        env_changes=gated,
    )
    assert forced.exit_code == 0, forced.output
    assert "FORCED" in forced.output and f"activated {NAME} v1 (previous: v2)" in forced.output


def test_download_verify_and_tampering(bridge, settings, registry_db, mongo_server, tmp_path):
    """Check that download writes bytes matching the sha256, and a tampered file fails verify."""
    run_id = quick_candidate_run(settings)
    assert bridge("publish", "--best").exit_code == 0
    target = tmp_path / "model.onnx"
    result = bridge("download", NAME, "1", "-o", str(target))
    assert result.exit_code == 0, result.output
    sha = json.loads(bridge("show", NAME, "1", "--json").output)["sha256"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha and sha in result.output
    verified = bridge("verify", NAME, "1")
    assert verified.exit_code == 0 and "matches" in verified.output

    file_id = json.loads(bridge("show", NAME, "1", "--json").output)["artifact_file_id"]
    tamper_first_chunk(registry_db, file_id, mongo_server)
    assert "checksum mismatch" in one_line_error(bridge("verify", NAME, "1"))
    refused = one_line_error(bridge("activate", NAME, "1"))
    assert f"cannot activate {NAME} v1" in refused and "checksum mismatch" in refused
    assert run_id in bridge("list").output


def test_delete_asks_and_refuses_the_active_version(bridge, settings):
    """Check that delete confirms, refuses the active version, and removes another one."""
    for family in ("logistic_regression", "knn"):
        run_id = quick_candidate_run(settings, family=family)
        assert bridge("publish", "--run-id", run_id).exit_code == 0
    assert bridge("activate", NAME, "1").exit_code == 0
    assert "v1 is the active version" in one_line_error(bridge("delete", NAME, "1", "--yes"))
    declined = bridge("delete", NAME, "2", input="n\n")
    assert declined.exit_code == 1
    assert [v["version"] for v in json.loads(bridge("list", "--json").output)] == [1, 2]
    deleted = bridge("delete", NAME, "2", input="y\n")
    assert deleted.exit_code == 0 and f"deleted {NAME} v2" in deleted.output
    assert [v["version"] for v in json.loads(bridge("list", "--json").output)] == [1]
    gc = bridge("gc", "--min-age", "0")
    assert gc.exit_code == 0 and "removed 0 orphan file(s)" in gc.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (("show", NAME, "9"), "name='vertebral-column' version=9 not found"),
        (("activate", NAME, "9"), "version=9 not found"),
        (("rollback", NAME), "no version is active"),
        (("publish", "--run-id", "0123abcd"), "MLflow run '0123abcd' not found"),
        (("publish", "--best"), "experiment 'vertebral-column' not found"),
        (("runs", "--experiment", "missing"), "experiment 'missing' not found"),
    ],
)
def test_failures_are_one_line(bridge, args, expected):
    """Check that each user mistake exits 1 with one line naming what was wrong."""
    assert expected in one_line_error(bridge(*args))


@pytest.mark.parametrize(
    "args, expected",
    [
        (("publish",), "give exactly one of --run-id ID or --best"),
        (("publish", "--run-id", "abc", "--best"), "give exactly one of --run-id ID or --best"),
        (("publish", "--run-id", "abc", "--experiment", "x"), "--experiment only applies"),
        (("publish", "--run-id", "abc", "--force", "--reason", "x"), "--force only applies"),
        (("publish", "--run-id", "abc", "--activate", "--force"), "--force needs --reason"),
    ],
)
def test_option_conflicts_are_usage_errors(bridge, args, expected):
    """Check that options that do not go together exit 2 with Click's usage message."""
    result = bridge(*args)
    assert result.exit_code == 2, result.output
    assert f"Error: {expected}" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (("verify", NAME, "x"), "'version' must be a positive whole number, got 'x'"),
        (("show", NAME, "\u0662"), "'version' must be a positive whole number"),  # Arabic-Indic 2
        (("show", NAME, "1_0"), "'version' must be a positive whole number, got '1_0'"),
        (("delete", NAME, str(2**63)), "'version' must be at most 9223372036854775807"),
        (("show", "../etc", "1"), "'name' must be 1 to 100 ASCII letters"),
        (("history", "a\nb"), "'name' must be"),
        (("publish", "--best", "--name", "$ne"), "'name' must be"),
        (("list", "--name", "x/y"), "'name' must be"),
        (("download", NAME, "1", "-o", "/dev/null"), "/dev/null exists and is not a regular file"),
    ],
)
def test_bad_names_versions_and_outputs_are_usage_errors(bridge, args, expected):
    """Check that names, versions and -o paths breaking the rules exit 2 naming the parameter."""
    result = bridge(*args)
    assert result.exit_code == 2, result.output
    assert "Error: Invalid value for" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.output


def test_download_refuses_a_fifo(bridge, tmp_path):
    """Check that -o naming a FIFO is refused before anything is opened (no write blocks)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = bridge("download", NAME, "1", "-o", str(fifo))
    assert result.exit_code == 2 and "is not a regular file" in result.stderr


def test_the_store_client_is_closed_when_a_command_fails(bridge, monkeypatch):
    """Check that the store opened by a command is closed on exit, also after an error."""
    from registry_bridge.store import ModelStore

    closed = []
    real_close = ModelStore.close
    monkeypatch.setattr(ModelStore, "close", lambda self: closed.append(self) or real_close(self))
    assert "version=9 not found" in one_line_error(bridge("show", NAME, "9"))
    assert len(closed) == 1


def test_unreachable_database_is_one_line_with_masked_uri(bridge, tmp_path):
    """Check that a dead MONGODB_URI exits 1 naming the URI without its password."""
    port = free_port()
    config = tmp_path / "fast-timeout.yaml"
    config.write_text("registry:\n  timeout_ms: 300\n")
    uri = f"mongodb://admin:hunter2@127.0.0.1:{port}/"
    line = one_line_error(bridge("--config", str(config), "list", env_changes={"MONGODB_URI": uri}))
    assert f"cannot reach the registry database at mongodb://admin:***@127.0.0.1:{port}/" in line
    assert "hunter2" not in line


def test_history_escapes_a_reason_and_activate_refuses_an_unprintable_one(
    bridge, settings, registry_db
):
    """Check `bridge history` prints a stored reason with CR/LF, OSC and U+202E escaped on its
    row (one row per event, no ESC reaching the terminal), and `activate --reason` with a line
    break is one error line naming reason."""
    from datetime import UTC, datetime

    registry_db.activation_log.insert_one(  # as written before reasons were checked
        {
            "name": NAME,
            "from_version": None,
            "to_version": 1,
            "at": datetime(2026, 1, 1, tzinfo=UTC),
            "by": "old-api",
            "reason": "ok\r\n2026-01-02 00:00:00  activate  v1  v9  root  forged"
            "\x1b]0;pwned\x07 \u202eenilepip",
            "action": "activate",
        }
    )
    history = bridge("history", NAME)
    assert history.exit_code == 0, history.output
    lines = history.output.splitlines()
    assert len(lines) == 3 and "v9" in lines[2]  # headers, rule, the one row
    assert "\x1b" not in history.output and "\u202e" not in history.output
    assert "\\r\\n2026-01-02" in lines[2] and "\\x1b]0;pwned\\x07" in lines[2]
    assert "\\u202e" in lines[2]

    run_id = quick_candidate_run(settings, family="logistic_regression")
    refused = bridge("publish", "--run-id", run_id, "--activate", "--reason", "a\nb")
    assert "reason holds the non-printable character U+000A" in one_line_error(refused)
    assert bridge("list", "--json").output.strip() == "[]"  # refused before publishing
    assert bridge("publish", "--run-id", run_id).exit_code == 0
    line = one_line_error(bridge("activate", NAME, "1", "--reason", "a\u202eb"))
    assert "reason holds the non-printable character U+202E" in line


def test_every_registry_command_has_help(bridge):
    """Check that every command documents itself in --help."""
    for command in (
        "runs",
        "publish",
        "list",
        "show",
        "activate",
        "rollback",
        "history",
        "download",
        "verify",
        "delete",
        "gc",
    ):
        result = bridge(command, "--help")
        assert result.exit_code == 0 and len(result.output.splitlines()[2]) > 10, command
