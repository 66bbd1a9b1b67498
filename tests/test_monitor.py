"""Baselines and drift: statistics, the demo's shifted batch on several seeds, reports, backfill."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from inference_records import captured_records, records_bucket

from demo import monitoring as demo_traffic
from pipelines.candidate import quick_candidate_run, split_dataset
from pipelines.data import FEATURES, load_dataset
from registry_bridge import publish
from registry_bridge.errors import RegistryError
from registry_bridge.monitoring import baselines, drift, inference_log
from registry_bridge.monitoring import plots as drift_plots
from registry_bridge.monitoring.drift import parse_since
from registry_bridge.store import ModelStore


@pytest.fixture(scope="module")
def data_split():
    """The data set and the training split the default settings cut from it."""
    from conftest import data_path

    from conf.settings import load_settings

    settings = load_settings(env={"VERTEBRAL_DATA": str(data_path())})
    dataset = load_dataset(settings.data)
    split = split_dataset(dataset, settings.training.test_size, settings.training.seed)
    return dataset, split


@pytest.fixture(scope="module")
def split_baseline(data_split):
    _, split = data_split
    return baselines.build_baseline(
        {f: split.x_train[f].to_numpy() for f in FEATURES}, list(split.y_test), "test split"
    )


def sample_of(table) -> inference_log.LiveSample:
    """Records as captured; the true label stands for the model's prediction."""
    matrix = table[list(FEATURES)].to_numpy(dtype=float, copy=True)
    labels = list(table["label"]) if "label" in table else ["Normal"] * len(matrix)
    return inference_log.LiveSample(tuple(FEATURES), matrix, labels)


def labelled(dataset):
    return dataset.features.assign(label=dataset.labels.to_numpy())


def test_feature_baseline_summarises_the_training_values():
    """Check count, mean, std, min, max, quantiles and bins of a known sample."""
    values = np.arange(1.0, 101.0)
    stats = baselines.feature_baseline(np.append(values, np.nan))
    assert stats["count"] == 100 and stats["mean"] == pytest.approx(50.5)
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert (stats["min"], stats["max"]) == (1.0, 100.0)
    assert len(stats["quantiles"]) == 101 and stats["quantiles"][50] == pytest.approx(50.5)
    assert sum(stats["bin_counts"]) == 100 and len(stats["bin_counts"]) == 10
    assert stats["bin_counts"] == [10] * 10


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 42])
def test_demo_shift_flags_only_the_shifted_feature(data_split, split_baseline, seed):
    """Check the demo's window on several seeds (42 is the demo's): the held-out patients
    sent twice plus the normal traffic drift nowhere; adding the shifted batch, only
    degree_spondylolisthesis drifts."""
    dataset, split = data_split
    settings = drift.MonitorSettings()
    normal, shifted = demo_traffic.traffic(labelled(dataset), seed)
    held_out = split.x_test.assign(label=split.y_test.to_numpy())
    before = pd.concat([held_out, held_out, normal], ignore_index=True)
    calm = drift.compare(split_baseline, sample_of(before), settings)
    assert calm["drifted_features"] == [] and calm["status"] == "ok"
    assert calm["class_mix"]["drift"] is False
    both = sample_of(pd.concat([before, shifted], ignore_index=True))
    report = drift.compare(split_baseline, both, settings)
    assert report["drifted_features"] == [demo_traffic.SHIFTED_FEATURE]
    assert report["status"] == "drift" and report["sample_size"] == len(before) + len(shifted)
    flagged = {f["name"]: f for f in report["features"]}[demo_traffic.SHIFTED_FEATURE]
    assert flagged["live_mean"] > flagged["baseline_mean"] + 10


def test_small_samples_are_not_judged(split_baseline, data_split):
    """Check that fewer records than min_samples give no verdict, even when shifted."""
    dataset, _ = data_split
    few = demo_traffic.shifted(dataset.features.head(10))
    report = drift.compare(split_baseline, sample_of(few), drift.MonitorSettings())
    assert report["status"] == "insufficient_data" and report["drifted_features"] == []
    assert all(not f["judged"] and f["drift"] is False for f in report["features"])
    assert all(f["ks"] is not None for f in report["features"])


def test_missing_values_are_counted_not_compared(split_baseline, data_split):
    """Check that a missing feature value raises its missing share and leaves the others."""
    dataset, _ = data_split
    sample = sample_of(labelled(dataset))
    sample.matrix[:31, 0] = np.nan
    report = drift.compare(split_baseline, sample, drift.MonitorSettings())
    first = report["features"][0]
    assert first["missing_share"] == pytest.approx(0.1) and first["sample_size"] == 279
    assert report["features"][1]["missing_share"] == 0


@pytest.mark.parametrize("text", ["", "yesterday", "-3h", "0h", "24"])
def test_bad_windows_are_refused(text):
    """Check that --since accepts only a positive duration with a unit."""
    with pytest.raises(RegistryError, match="since must be") as caught:
        drift.parse_since(text)
    assert caught.value.code == "INVALID_INPUT"


def test_counts_and_windows_read_inside_buckets(registry_db):
    """Check a bucket across the start of the window counts only its records inside it."""
    now = datetime.now(UTC)
    records = [{"at": now - timedelta(hours=h), "label": "x"} for h in (0, 1, 3)]
    registry_db[inference_log.INFERENCE_LOG].insert_one(records_bucket("m", 1, records))
    since = now - timedelta(hours=2)
    assert inference_log.count_captured(registry_db, "m") == 3
    assert inference_log.count_captured(registry_db, "m", 1, since) == 2
    assert inference_log.count_captured(registry_db, "m", 2) == 0
    assert len(captured_records(registry_db, "m", 1, since)) == 2


def test_malformed_buckets_are_skipped_not_fatal(registry_db, caplog):
    """Check a document that is not a readable bucket (an older per-record bucket, a column
    cut short, a column that is not bytes, a label code out of range) is logged and left
    out of records, counts and reports instead of failing them."""
    now = datetime.now(UTC)
    good = records_bucket(
        "m", 1, [{"at": now, "features": {"a": 1.0}, "label": "x"} for _ in range(3)]
    )
    short = {**good, "x": good["x"][:-1]}
    pickled = {**good, "x": [1.0, 2.0, 3.0]}
    bad_label = {**good, "y": np.array([0, 0, 7], dtype="<i2").tobytes()}
    old = {"name": "m", "version": 1, "at": now, "last_at": now, "records": [{"at": now}]}
    registry_db[inference_log.INFERENCE_LOG].insert_many([good, short, pickled, bad_label, old])
    records = captured_records(registry_db, "m", 1)
    assert len(records) == 3 and {r["features"]["a"] for r in records} == {1.0}
    sample = inference_log.read_live(registry_db, "m", 1, ["a"], now - timedelta(hours=1))
    assert sample.size == 3 and sample.labels == ["x"] * 3
    # counts: the well-formed counts (count field), the one without it is read and skipped
    assert inference_log.count_captured(registry_db, "m", 1, now - timedelta(hours=1)) == 12
    assert "a per-record bucket of an older release" in caplog.text
    assert "x holds 11 bytes" in caplog.text and "x is not binary" in caplog.text
    assert "label is not among label_names" in caplog.text


def test_windows_are_durations():
    """Check the units of --since."""
    assert drift.parse_since("30m") == timedelta(minutes=30)
    assert drift.parse_since("24h") == timedelta(hours=24)
    assert drift.parse_since("7d") == timedelta(days=7)


def test_training_rows_are_the_data_without_the_test_split(data_split):
    """Check the training split is recovered from the data set and the card's test rows."""
    dataset, split = data_split
    rows = baselines.training_rows(dataset, split.x_test[list(FEATURES)].to_numpy().tolist())
    assert len(rows) == len(split.x_train)
    expected = np.sort(split.x_train[list(FEATURES)].to_numpy(), axis=0)
    np.testing.assert_allclose(np.sort(rows, axis=0), expected)
    with pytest.raises(ValueError, match="not in the data set"):
        baselines.training_rows(dataset, [[1e6] * 6])


def log_records(db, name, version, table, labels, at=None):
    at = at or datetime.now(UTC)
    records = [
        {"at": at, "features": dict(zip(FEATURES, map(float, row), strict=True)), "label": label}
        for row, label in zip(table[list(FEATURES)].to_numpy(), labels, strict=True)
    ]
    db[inference_log.INFERENCE_LOG].insert_one(records_bucket(name, version, records))


def test_publish_stores_a_baseline_and_the_report_uses_it(
    registry_db, settings, data_split, tmp_path
):
    """Check a published run gets the baseline of its training split, and the report
    compares the version's captured records in the window with it, plots included."""
    dataset, split = data_split
    store = ModelStore(registry_db, settings)
    run_id = quick_candidate_run(settings)
    version = publish.publish_run(store, settings, run_id).version
    baseline = store.get_baseline(version.name, version.version)
    assert baseline is not None and baseline["source"] == f"run {run_id}"
    assert baseline["features"]["pelvic_tilt"]["count"] == len(split.x_train)
    assert sum(baseline["class_mix"].values()) == pytest.approx(1.0)

    normal, shifted = demo_traffic.traffic(dataset.features, 7)
    both = pd.concat([normal, shifted], ignore_index=True)
    log_records(registry_db, version.name, version.version, both, ["Spondylolisthesis"] * len(both))
    old = datetime.now(UTC) - timedelta(days=3)
    log_records(
        registry_db, version.name, version.version, shifted, ["Normal"] * len(shifted), at=old
    )
    report = drift.drift_report(store, settings, version.name, since="24h")
    assert report["version"] == version.version and report["sample_size"] == len(both)
    assert report["drifted_features"] == [demo_traffic.SHIFTED_FEATURE]
    assert report["class_mix"]["live"]["Spondylolisthesis"] == 1.0
    assert report["class_mix"]["drift"] is True
    assert {f["name"] for f in report["features"]} == set(FEATURES)
    week = drift.drift_report(store, settings, version.name, version.version, since="7d")
    assert week["sample_size"] == len(both) + len(shifted)

    paths = drift_plots.write_plots(store, version.name, version.version, tmp_path / "plots")
    assert [p.name for p in paths] == [
        f"drift-{version.name}-v{version.version}-{f}.png" for f in FEATURES
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    with pytest.raises(RegistryError, match="no baseline for feature age"):
        drift_plots.feature_plot(store, version.name, version.version, "age")


def test_versions_without_a_baseline_say_so_and_backfill_from_their_run(
    registry_db, settings, tmp_path
):
    """Check a version published before baselines existed reports no_baseline; backfilling
    names why it cannot (other data, no run), else computes it from its run, once."""
    store = ModelStore(registry_db, settings)
    run_id = quick_candidate_run(settings)
    version = publish.publish_run(store, settings, run_id).version
    registry_db["model_versions"].update_one(
        {"name": version.name, "version": version.version}, {"$unset": {"baseline": ""}}
    )
    report = drift.drift_report(store, settings, version.name)
    assert report["status"] == "no_baseline" and "--baseline" in report["message"]
    other = tmp_path / "other.csv"
    lines = open(settings.data.path).read().splitlines()
    other.write_text("\n".join(lines[:-5]) + "\n")
    moved = replace(settings, data=replace(settings.data, path=other))
    with pytest.raises(RegistryError, match="trained on data") as caught:
        baselines.backfill_baseline(store, moved, version)
    assert caught.value.code == "NOT_FOUND"
    without_run = replace(version, run_id=None)
    with pytest.raises(RegistryError, match="no MLflow run"):
        baselines.backfill_baseline(store, settings, without_run)
    stored, message = baselines.backfill_baseline(store, settings, version)
    assert stored and f"run {run_id}" in message
    assert store.get_baseline(version.name, version.version) is not None
    assert baselines.backfill_baseline(store, settings, version) == (
        False,
        f"{version.label} already has a baseline",
    )


@pytest.mark.parametrize(
    "text", ["800000d", "9" * 400 + "h", "٣h", "3651d", "0h", "-1h", "1e9w", " 99999999w"]
)
def test_a_window_out_of_range_or_in_other_digits_is_invalid_input(text):
    """Check that ?since / --since refuses huge, zero and non-ASCII windows with INVALID_INPUT."""
    with pytest.raises(RegistryError, match="since must be a positive duration") as info:
        parse_since(text)
    assert info.value.code == "INVALID_INPUT" and len(info.value.message) < 200


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1.5h", 5400), ("3650d", 3650 * 86400)])
def test_a_window_in_range_is_read(text, seconds):
    """Check the accepted windows: ASCII digits, one unit, at most ten years."""
    assert parse_since(text).total_seconds() == seconds
