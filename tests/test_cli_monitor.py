"""``bridge monitor`` (exit 3 on drift, JSON, plots) and ``bridge verify --baseline``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from inference_records import records_bucket

from demo import monitoring as demo_traffic
from pipelines.candidate import quick_candidate_run
from pipelines.data import FEATURES, load_dataset
from registry_bridge.cli import main
from registry_bridge.monitoring.inference_log import INFERENCE_LOG

pytestmark = pytest.mark.slow  # fits and logs a real candidate run

NAME = "vertebral-column"


def run_bridge(settings, db_name, *args):
    env = {
        "MONGODB_URI": settings.registry.mongodb_uri,
        "REGISTRY_DB": db_name,
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "VERTEBRAL_DATA": str(settings.data.path),
        "MODEL_NAME": NAME,
    }
    return CliRunner().invoke(main, list(args), env=env)


def capture(db, table, version=1):
    now = datetime.now(UTC)
    records = [
        {"at": now, "features": dict(zip(FEATURES, map(float, row), strict=True)), "label": label}
        for row, label in zip(table[list(FEATURES)].to_numpy(), table["label"], strict=True)
    ]
    db[INFERENCE_LOG].insert_one(records_bucket(NAME, version, records))


def test_monitor_exits_3_on_drift_and_names_the_feature(
    settings, registry_db, registry_db_name, tmp_path
):
    """Check the whole CLI flow: publish (baseline stored), normal traffic exits 0, the
    demo's shifted batch exits 3 naming only the shifted feature; JSON and plots."""
    run_id = quick_candidate_run(settings)
    published = run_bridge(settings, registry_db_name, "publish", "--run-id", run_id, "--activate")
    assert published.exit_code == 0, published.output
    dataset = load_dataset(settings.data)
    normal, shifted = demo_traffic.traffic(
        dataset.features.assign(label=dataset.labels.to_numpy()), seed=3
    )
    empty = run_bridge(settings, registry_db_name, "monitor", NAME)
    assert empty.exit_code == 0 and "insufficient data (0 captured record(s))" in empty.output

    capture(registry_db, normal)
    calm = run_bridge(settings, registry_db_name, "monitor", NAME, "--since", "1h")
    assert calm.exit_code == 0, calm.output
    assert f"{NAME} v1, last 1h: ok ({len(normal)} captured record(s))" in calm.output

    capture(registry_db, shifted)
    drift = run_bridge(settings, registry_db_name, "monitor", NAME, "--plots", str(tmp_path))
    assert drift.exit_code == 3, drift.output
    assert f"drifting: {demo_traffic.SHIFTED_FEATURE}" in drift.output
    rows = {line.split()[0]: line for line in drift.output.splitlines() if line.split()}
    assert rows[demo_traffic.SHIFTED_FEATURE].rstrip().endswith("DRIFT")
    assert all(rows[f].rstrip().endswith("ok") for f in FEATURES[:-1])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        f"drift-{NAME}-v1-{f}.png" for f in FEATURES
    )

    as_json = run_bridge(settings, registry_db_name, "monitor", NAME, "--version", "1", "--json")
    assert as_json.exit_code == 3
    report = json.loads(as_json.output)
    by_name = {f["name"]: f for f in report["features"]}
    assert set(by_name) == set(FEATURES)
    assert {"name", "ks", "psi", "drift"} <= set(by_name[FEATURES[0]])
    assert [n for n, f in by_name.items() if f["drift"]] == [demo_traffic.SHIFTED_FEATURE]

    for since in ("later", "800000d"):
        bad = run_bridge(settings, registry_db_name, "monitor", NAME, "--since", since)
        assert bad.exit_code == 1 and "since must be a positive duration" in bad.output
        assert len(bad.output.strip().splitlines()) == 1, bad.output


def test_verify_baseline_backfills_an_older_version(settings, registry_db, registry_db_name):
    """Check `verify --baseline` computes a missing baseline from the run, then says it has one."""
    run_id = quick_candidate_run(settings)
    assert run_bridge(settings, registry_db_name, "publish", "--run-id", run_id).exit_code == 0
    registry_db["model_versions"].update_one({"version": 1}, {"$unset": {"baseline": ""}})
    monitor = run_bridge(settings, registry_db_name, "monitor", NAME)
    assert monitor.exit_code == 0 and "has no baseline" in monitor.output
    first = run_bridge(settings, registry_db_name, "verify", NAME, "1", "--baseline")
    assert first.exit_code == 0, first.output
    assert f"baseline stored from run {run_id}" in first.output
    second = run_bridge(settings, registry_db_name, "verify", NAME, "1", "--baseline")
    assert "already has a baseline" in second.output
