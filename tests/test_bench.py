"""Tests of the benchmark harness: the quick run end to end, and the helpers it relies on.

No speed is asserted (the machine is shared); what is checked is that every number the
README table shows is present, measured and self-consistent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, SHARED_DATA
from servers import wait_until

from bench import common, report


def test_summarize_gives_median_range_and_spread():
    """Check that summarize reports the median, extremes and relative spread of the rounds."""
    stats = common.summarize([10.0, 30.0, 20.0])
    assert stats["median"] == 20.0 and stats["min"] == 10.0 and stats["max"] == 30.0
    assert stats["spread"] == 1.0
    assert stats["rounds"] == [10.0, 30.0, 20.0]
    assert common.summarize([])["median"] is None
    assert common.summarize([None, 4.0])["median"] == 4.0


@pytest.mark.parametrize(
    "numerator, denominator, expected",
    [(6.0, 2.0, 3.0), (1.0, 3.0, 0.33), (None, 2.0, None), (2.0, 0.0, None), (-1.0, 2.0, None)],
)
def test_ratio_is_none_when_not_measurable(numerator, denominator, expected):
    """Check that a ratio with a missing or non-positive side is None, not a number."""
    assert common.ratio(numerator, denominator) == expected


def test_memory_of_a_child_process_is_measured(tmp_path):
    """Check that run_measured's kernel peak and the sampler both see a 80 MB allocation."""
    # The parent's own peak must not leak into the child's (it would with ru_maxrss).
    ballast = bytearray(200_000_000)
    script = "import time; block = bytearray(80_000_000); time.sleep(0.4)"
    result = common.run_measured([sys.executable, "-c", script], tmp_path / "child.log")
    assert 80 <= result["peak_rss_mb"] < 150
    del ballast
    assert result["peak_rss_total_mb"] >= 80 and result["rss_samples"] >= 2
    assert 0.3 < result["wall_s"] < 30


def test_process_tree_follows_children():
    """Check that the RSS of a process tree includes a child's memory."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(60_000_000); time.sleep(3)'])",
        ]
    )
    try:
        wait_until(lambda: len(common.process_tree(parent.pid)) == 2, 10, "no child seen")
        wait_until(lambda: common.tree_rss_mb(parent.pid) >= 60, 10, "the child's 60 MB unseen")
    finally:
        parent.kill()
        parent.wait()


def test_failed_command_names_its_log(tmp_path):
    """Check that a failing measured command raises with its exit code and log path."""
    log_path = tmp_path / "fail.log"
    with pytest.raises(RuntimeError, match=r"exited with 3; see .*fail\.log"):
        common.run_measured(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log_path
        )
    assert "boom" in log_path.read_text()


def _server(rps: float, p50: float, p99: float, reads: float | None = None) -> dict[str, Any]:
    row = {
        "rps": {"median": rps, "spread": 0.1},
        "p50_ms": {"median": p50},
        "p95_ms": {"median": p50 * 2},
        "p99_ms": {"median": p99},
        "errors": 0,
    }
    if reads is not None:
        row["registry_reads_per_request"] = {"median": reads}
    return {"by_concurrency": {"8": row}, "server": {}}


def test_online_table_rows_are_formatted_as_documented():
    """Check the online table against hand-written lines: thousands grouped, ms to 2 decimals,
    spread as ±half the range, a missing comparison shown as a dash, a missing peer as
    "not measured" with its reason."""
    doc = {
        "plan": {"workers": 2, "rounds": 3, "duration_s": 10, "concurrencies": [8]},
        "results": {
            "api": _server(1234.56, 3.14159, 7.5, reads=0.0213),
            "mlflow": _server(321.04, 20.0, 61.25),
            "constant-gthread": _server(1500.0, 2.5, 6.0),
            "constant-rsgi": _server(3012.3, 0.4, 2.875),
        },
        "comparison": {
            "8": {
                "rps_ratio_vs_mlflow": 3.456,
                "p99_mlflow_over_api": 8.1666,
                "predict_over_constant_gthread": 0.8123,
                "predict_over_constant_rsgi": 0.4098,
                "api_p99_ms": 7.5,
                "constant_rsgi_p99_ms": 2.875,
            }
        },
        "not_measured": {"mlserver": "left out of this run (--quick, or --no-mlserver)"},
    }
    lines = report.online_lines(doc)
    assert lines[0] == (
        "### Online: one record per request (2 workers each, wrk, median of 3 rounds of 10 s, "
        "servers alternated)"
    )
    assert "| 8 | this API (`/predict`) | 1,235 | 3.14 | 6.28 | 7.50 | 0 | ±5 % | 0.021 |" in lines
    assert "| 8 | `mlflow models serve` | 321.0 | 20.00 | 40.00 | 61.25 | 0 | ±5 % | – |" in lines
    assert (
        "| 8 | constant Flask endpoint, stock gunicorn gthread | 1,500 | 2.50 | 5.00 | 6.00 | 0 "
        "| ±5 % | – |" in lines
    )
    assert (
        "| 8 | constant answer, no Flask, granian `--interface rsgi` (the floor) | 3,012 | 0.40 "
        "| 0.80 | 2.88 | 0 | ±5 % | – |" in lines
    )
    assert lines[-1] == "| 8 | – | 0.81× | – | 0.41× | – | 3.46× | – | – | – | – | 7.50 | 2.88 |"
    # A peer that could not run reads "not measured" with the reason, never a figure.
    assert (
        "| – | MLServer 1.7.1 (MLflow runtime), `/v2/models/<name>/infer` | not measured: "
        "left out of this run (--quick, or --no-mlserver) | | | | | | |" in lines
    )


# --- the quick run, end to end ---------------------------------------------------------


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``python -m bench --quick`` run (about two minutes): its JSON and table."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    data = Path(os.environ.get("VERTEBRAL_DATA") or SHARED_DATA)
    if not data.is_file():
        pytest.skip(f"no data set: set VERTEBRAL_DATA (looked at {data})")
    out = tmp_path_factory.mktemp("bench-quick")
    env = {**os.environ, "VERTEBRAL_DATA": str(data)}
    env.pop("MONGODB_URI", None)  # the harness runs its own private registry
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    docs = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in ("online", "batch", "activation", "capture", "promotion", "spark")
    }
    return {"docs": docs, "table": (out / "README-table.md").read_text(), "out": out}


def _stat_ok(stat: dict[str, Any]) -> bool:
    return (
        stat["median"] is not None
        and stat["min"] <= stat["median"] <= stat["max"]
        and stat["spread"] is not None
        and stat["spread"] >= 0
    )


@pytest.mark.slow
def test_quick_online_results_are_complete(quick_results):
    """Check that every server has throughput, ordered percentiles and no errors per concurrency."""
    doc = quick_results["docs"]["online"]
    plan = doc["plan"]
    assert plan["rounds"] >= 3
    for name in ("api", "mlflow", "constant-gthread"):
        server = doc["results"][name]
        assert server["server"]["rss_idle_mb"] > 0
        assert set(server["server"]["sequential_latency"]) == {"keep_alive_ms", "new_connection_ms"}
        assert all(ms > 0 for ms in server["server"]["sequential_latency"].values())
        for connections in plan["concurrencies"]:
            row = server["by_concurrency"][str(connections)]
            assert len(row["runs"]) == plan["rounds"]
            assert row["errors"] == 0, (name, row["runs"])
            assert row["requests"] > 0
            for key in ("rps", "p50_ms", "p95_ms", "p99_ms"):
                assert _stat_ok(row[key]), (name, key, row[key])
            assert row["p50_ms"]["median"] <= row["p95_ms"]["median"] <= row["p99_ms"]["median"]
    for comparison in doc["comparison"].values():
        assert comparison["rps_ratio_vs_mlflow"] > 0 and comparison["p99_mlflow_over_api"] > 0
        assert isinstance(comparison["goal_rps_3x"], bool)
    assert json.loads(doc["results"]["api"]["server"]["answer"])["predictions"]


@pytest.mark.slow
def test_quick_online_new_rows_are_present_and_consistent(quick_results):
    """Check issue 23's rows in the quick run: OIP infer, the named path, today's API, the
    constant endpoints (the floor too) and the two-model round measured, their ratios the
    quotients of their medians; MLServer left out of --quick with the reason, in the table
    too."""
    doc = quick_results["docs"]["online"]
    results = doc["results"]
    targets = (
        "api-oip",
        "api-named",
        "api-baseline",
        "constant-gthread",
        "constant-granian",
        "constant-rsgi",
    )
    for name in (*targets, "two-model-a", "two-model-b"):
        row = results[name]["by_concurrency"]["8"]
        assert row["errors"] == 0 and row["requests"] > 0, (name, row["runs"])
        assert _stat_ok(row["rps"]) and _stat_ok(row["p99_ms"]), name
    assert results["api-oip"]["server"]["answer"].startswith('{"model_name"')  # cut at 300
    assert doc["peers"]["baseline"]["commit"].startswith(doc["plan"]["baseline_rev"])
    c8 = doc["comparison"]["8"]

    def median(name: str) -> float:
        return results[name]["by_concurrency"]["8"]["rps"]["median"]

    for key, name in (
        ("predict_over_baseline", "api-baseline"),
        ("predict_over_constant_gthread", "constant-gthread"),
        ("predict_over_constant_granian", "constant-granian"),
        ("predict_over_constant_rsgi", "constant-rsgi"),
    ):
        assert c8[key] == pytest.approx(median("api") / median(name), abs=0.01), key
    assert c8["oip_over_predict"] == pytest.approx(median("api-oip") / median("api"), abs=0.01)
    for goal in (
        "goal_2_5x_baseline",
        "goal_1_6x_constant_gthread",
        "goal_oip_0_8_of_predict",
        "floor_p99_within_3ms",
    ):
        assert isinstance(c8[goal], bool), goal
    assert (
        c8["constant_rsgi_p99_ms"]
        == results["constant-rsgi"]["by_concurrency"]["8"]["p99_ms"]["median"]
    )
    assert c8["goal_20x_mlserver_v2"] is None  # not measured in --quick
    two = doc["two_model"]
    assert two["clients"] == 8 and two["clients_per_name"] == 4
    assert [e["name"] for e in two["per_name"].values()] == doc["plan"]["model_names"]
    for target, entry in two["per_name"].items():
        assert results[target]["by_concurrency"]["8"]["clients"] == 4
        assert entry["share_of_one_model"] == pytest.approx(
            median(target) / median("api"), abs=0.01
        )
    assert "mlserver" in doc["not_measured"] and "mlserver-v2" not in results
    table = quick_results["table"]
    assert "not measured: left out of this run" in table
    assert "OIP `infer` ≥ 0.8 of `/predict`" in table and "two models at 50/50" in table
    cells = _table_row(table, "8", "constant Flask endpoint, granian `--interface wsgi`")
    assert float(cells[2].replace(",", "")) == pytest.approx(median("constant-granian"), abs=0.5)


@pytest.mark.slow
def test_quick_batch_results_are_complete(quick_results):
    """Check that every way scored every row and reported time and memory."""
    doc = quick_results["docs"]["batch"]
    for rows, entry in doc["by_rows"].items():
        api = entry["api"]
        assert api["rows_out"] == [int(rows)] * doc["plan"]["rounds"]
        assert _stat_ok(api["wall_s"]) and api["rows_per_s"] > 0
        assert api["peak_pss_total_mb"]["max"] > 0 and api["peak_rss_process_mb"]["max"] > 0
        assert entry["mlflow_predict"]["wall_s"]["median"] > 0
        assert entry["mlflow_predict"]["peak_rss_mb"]["max"] > 0
        assert entry["inprocess"]["score_s"]["median"] > 0
        assert all(run["rows"] == int(rows) for run in entry["inprocess"]["runs"])
        assert entry["comparison"]["speedup_vs_mlflow"] > 0
        assert entry["comparison"]["share_of_inprocess_limit"] > 0
    assert isinstance(doc["goal_api_peak_under_300mb"], bool)
    assert all(mb > 0 for mb in doc["api_process_peak_rss_mb"])


@pytest.mark.slow
def test_quick_spark_results_are_complete(quick_results):
    """Check that each Spark way wrote every row and reported time, memory and ratios."""
    doc = quick_results["docs"]["spark"]
    assert doc["plan"]["master"] == "local[2]"
    ways = ["score", "spark_udf", "single"] + (
        ["spark_udf_gridfs"] if doc["plan"]["gridfs_plugin"] else []
    )
    for entry in doc["families"].values():
        for rows, by_way in entry["by_rows"].items():
            for way in ways:
                assert _stat_ok(by_way[way]["job_s"]) and by_way[way]["rows_per_s"] > 0
                assert all(run["rows_out"] == int(rows) for run in by_way[way]["runs"])
            assert by_way["score"]["driver_peak_rss_mb"] > 0
            assert by_way["score"]["worker_peak_rss_mb"] > 0
            assert by_way["comparison"]["score_vs_spark_udf"] > 0
            assert by_way["comparison"]["share_of_single_process"] > 0


@pytest.mark.slow
def test_quick_activation_switches_cleanly(quick_results):
    """Check that each cold switch reached every worker with no error and no unmarked old answer."""
    doc = quick_results["docs"]["activation"]
    workers = doc["plan"]["workers"]
    models = doc["models"]
    assert models["large"]["onnx_mb"] > models["demo"]["onnx_mb"]
    for entry in models.values():
        assert entry["errors"] == 0, entry["runs"]
        # Never silently old: a late answer by the old version must carry X-Model-Stale.
        assert entry["old_version_after_ack"] == entry["old_version_after_ack_marked_stale"]
        for run in entry["runs"]:
            assert run["workers_seen_new"] >= workers
            assert (
                0 < run["acknowledged_s"] and run["all_workers_s"] >= run["first_new_prediction_s"]
            )
        versions = [run["version"] for run in entry["runs"]]
        assert len(set(versions)) == len(versions)  # every switch was to a fresh version


@pytest.mark.slow
def test_quick_capture_compares_0_and_100_percent(quick_results):
    """Check the capture part measured both servers without errors, the 100 % one wrote
    its records (none dropped here) and the 0 % one wrote none."""
    doc = quick_results["docs"]["capture"]
    for name in ("capture_0", "capture_100"):
        result = doc["results"][name]
        assert result["rps"]["median"] > 0 and result["errors"] == 0
    assert doc["captured_during_rounds"]["written"] >= doc["results"]["capture_100"]["requests"]
    assert doc["records_written_by_the_0_percent_server"] == 0
    assert doc["comparison"]["throughput_cost"] is not None
    assert "capture at 100 % costs" in quick_results["table"]


@pytest.mark.slow
def test_quick_promotion_measures_gate_shadow_and_canary(quick_results):
    """Check the promotion part: the gate timed warm and in a fresh `bridge activate`, both
    shadow modes answered without error and the shadow scored the "on" rounds' records,
    and the canary's share counted over every keyed request."""
    doc = quick_results["docs"]["promotion"]
    gate, shadow, canary = doc["gate"], doc["shadow"], doc["canary"]
    assert gate["reference_rows"] == 310 and _stat_ok(gate["warm_s"])
    assert gate["cold_process"]["exit_code"] == 0 and gate["cold_process"]["gate_s"] > 0
    for mode in ("off", "on"):
        assert _stat_ok(shadow["results"][mode]["rps"]) and shadow["results"][mode]["errors"] == 0
    # wrk counts the requests answered within its duration; the server may answer a few
    # more (in flight at the end), all of them copied to the shadow.
    assert shadow["records_scored_by_the_shadow"] > 0
    assert shadow["share_of_on_requests_scored"] <= 1.05
    assert canary["failed"] == 0 and canary["requests"] == doc["plan"]["canary_requests"]
    assert 0 < canary["answered_by_canary"] < canary["requests"]
    assert "### Safe promotion" in quick_results["table"]


def test_quick_results_record_machine_and_load(quick_results):
    """Check that each result says which machine, libraries and load it was measured under."""
    for doc in quick_results["docs"].values():
        machine = doc["machine"]
        assert machine["cores"] >= 1 and machine["python"].count(".") == 2
        assert {"mlflow", "onnxruntime", "flask", "gunicorn"} <= set(machine["libraries"])
        assert len(doc["load_average_before"]) == 3 and len(doc["load_average_after"]) == 3
        assert doc["quick"] is True


@pytest.mark.slow
def test_quick_table_shows_the_run(quick_results):
    """Check that the markdown table is rendered from this run's numbers."""
    table = quick_results["table"]
    docs = quick_results["docs"]
    for heading in ("### Online", "### Batch", "### Activation", "### Capture", "### Goals"):
        assert heading in table
    assert "`mlflow models serve`" in table and "`mlflow models predict`" in table
    assert docs["online"]["machine"]["date_utc"] in table
    # Each API row shows this run's median throughput (to the unit, at most).
    for connections, row in docs["online"]["results"]["api"]["by_concurrency"].items():
        cells = _table_row(table, connections, "this API (`/predict`)")
        assert float(cells[2].replace(",", "")) == pytest.approx(row["rps"]["median"], abs=0.5)


def _table_row(table: str, *first: str) -> list[str]:
    """The cells of the markdown row whose first cells are ``first``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if tuple(cells[: len(first)]) == first:
            return cells
    raise AssertionError(f"no row starting {first}")
