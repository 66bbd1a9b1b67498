"""Live quality (registry_bridge/monitoring/quality.py): figures from a hand-computed
confusion matrix, coverage and window, and the flag (``bridge monitor`` exits 3)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from feedback_samples import BINARY, BINARY_CLASSES, NAME, capture, pairs_for, publish
from registry_samples import CLASSES
from sklearn.metrics import f1_score

from conf.settings import MonitorSettings
from registry_bridge.monitoring import feedback, quality
from registry_bridge.monitoring.feedback_rows import LabelRow
from registry_bridge.store import ModelStore

# Rows: the label, columns: the decision (CLASSES: Hernia, Normal, Spondylolisthesis).
MATRIX_3C = [[3, 1, 0], [1, 4, 1], [0, 0, 5]]
# By hand: 12 of 15 right; F1 per class 6/8, 8/11, 10/11.
ACCURACY_3C = 12 / 15
F1_3C = (6 / 8 + 8 / 11 + 10 / 11) / 3
# Abnormal (positive), Normal: sensitivity 6/8, specificity 4/5, accuracy 10/13,
# F1 12/15 (Abnormal) and 8/11 (Normal).
MATRIX_2C = [[6, 2], [1, 4]]


@pytest.fixture
def store(registry_db, settings) -> ModelStore:
    return ModelStore(registry_db, settings.registry)


def label(store: ModelStore, name: str, version: int, matrix, classes, prefix: str, at=None):
    """Capture one request per (label, decision) pair of ``matrix`` and label them all."""
    pairs = pairs_for(matrix, classes)
    ids = [f"{prefix}-{i}" for i in range(len(pairs))]
    capture(
        store.db, name, version, [(rid, [d]) for rid, (_, d) in zip(ids, pairs, strict=True)], at=at
    )
    rows = [
        LabelRow(n, rid, truth)
        for n, (rid, (truth, _)) in enumerate(zip(ids, pairs, strict=True), 1)
    ]
    feedback.record_feedback(store.db, rows, name=name)


def section(store: ModelStore, name: str, rules=None, version=None, shown=None):
    now = datetime.now(UTC)
    return quality.quality_section(
        store,
        rules or MonitorSettings(min_labelled=5),
        name,
        now - timedelta(hours=1),
        now,
        version,
        shown,
    )


def test_three_class_figures_match_the_hand_computed_matrix(store):
    """Check accuracy, macro F1 (as scikit-learn computes it), the confusion matrix,
    coverage and the change from the test metrics, for a 3-class version."""
    publish(store)
    label(store, NAME, 1, MATRIX_3C, CLASSES, "a")
    capture(store.db, NAME, 1, [("unlabelled", ["Normal"] * 5)])  # coverage: 15 of 20
    [entry] = section(store, NAME)["quality"]
    assert entry["confusion"] == {
        "labels": CLASSES,
        "rows": "label",
        "columns": "decision",
        "matrix": MATRIX_3C,
    }
    assert entry["labelled"] == 15 and entry["captured"] == 20 and entry["coverage"] == 0.75
    assert entry["accuracy"] == pytest.approx(ACCURACY_3C)
    assert entry["f1_macro"] == pytest.approx(F1_3C)
    truth, decided = zip(*pairs_for(MATRIX_3C, CLASSES), strict=True)
    assert entry["f1_macro"] == pytest.approx(
        f1_score(truth, decided, average="macro", labels=CLASSES, zero_division=0)
    )
    assert "sensitivity" not in entry
    assert entry["test_metrics_delta"]["accuracy"] == pytest.approx(ACCURACY_3C - 0.8)
    assert entry["test_metrics_delta"]["f1_macro"] == pytest.approx(F1_3C - 0.75)
    assert entry["status"] == "ok" and not entry["quality_drop"]


def test_binary_figures_are_at_the_stored_decision(store):
    """Check sensitivity and specificity of the positive class, for a 2-class version."""
    publish(store, BINARY, test_sensitivity=0.9, test_specificity=0.7)
    label(store, BINARY, 1, MATRIX_2C, BINARY_CLASSES, "b")
    [entry] = section(store, BINARY)["quality"]
    assert entry["confusion"]["matrix"] == MATRIX_2C
    assert entry["sensitivity"] == pytest.approx(6 / 8)
    assert entry["specificity"] == pytest.approx(4 / 5)
    assert entry["accuracy"] == pytest.approx(10 / 13)
    assert entry["f1_macro"] == pytest.approx((12 / 15 + 8 / 11) / 2)
    assert entry["positive_class"] == "Abnormal" and entry["threshold"] == 0.4
    assert entry["test_metrics_delta"]["sensitivity"] == pytest.approx(6 / 8 - 0.9)
    assert entry["test_metrics_delta"]["specificity"] == pytest.approx(4 / 5 - 0.7)


def test_only_requests_made_in_the_window_count(store):
    """Check a label of a request older than the window is left out, and every version
    labelled in the window is listed (the shown one too, without labels)."""
    for _ in range(3):
        publish(store)
    label(store, NAME, 1, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], CLASSES, "old", at=time.time() - 7200)
    label(store, NAME, 2, [[2, 0, 0], [0, 0, 0], [0, 0, 0]], CLASSES, "new")
    entries = section(store, NAME, shown=3)["quality"]
    assert [(e["version"], e["labelled"], e["status"]) for e in entries] == [
        (2, 2, "insufficient_labels"),
        (3, 0, "no_labels"),
    ]
    assert entries[1]["accuracy"] is None and entries[1]["coverage"] is None


def test_a_drop_beyond_max_quality_drop_flags_the_version(store):
    """Check the flag: more than max_quality_drop under the test accuracy, with at least
    min_labelled labels; fewer labels are not judged."""
    publish(store)  # test accuracy 0.8; live 0.6 below
    label(store, NAME, 1, [[3, 2, 0], [1, 3, 0], [0, 1, 0]], CLASSES, "d")
    flagged = section(store, NAME, MonitorSettings(max_quality_drop=0.1, min_labelled=10))
    assert flagged["quality_drop"] and flagged["quality"][0]["status"] == "quality_drop"
    assert flagged["quality_rules"] == {
        "max_quality_drop": 0.1,
        "min_labelled": 10,
        "metric": "accuracy",
    }
    lenient = section(store, NAME, MonitorSettings(max_quality_drop=0.25, min_labelled=10))
    assert not lenient["quality_drop"]
    unjudged = section(store, NAME, MonitorSettings(max_quality_drop=0.1, min_labelled=11))
    assert not unjudged["quality_drop"] and unjudged["quality"][0]["judged"] is False


def test_bridge_monitor_shows_quality_and_exits_3_on_a_drop(store, bridge):
    """Check ``bridge monitor`` prints the quality table, its JSON has ``quality`` per
    version, and a drop exits 3 as drift does."""
    publish(store)
    label(store, NAME, 1, [[30, 20, 0], [10, 30, 0], [0, 10, 0]], CLASSES, "m")  # 0.6
    text = bridge("monitor", NAME, "--since", "1h")
    assert text.exit_code == 3, text.output
    assert "V1: 100 LABELLED OF 100 CAPTURED (100.0%) - QUALITY DROP" in text.output
    assert "accuracy     0.600  test 0.800  change -0.200" in text.output
    as_json = bridge("monitor", NAME, "--json")
    assert as_json.exit_code == 3
    report = json.loads(as_json.output)
    assert report["quality_drop"] and not report["drift"]
    [entry] = report["quality"]
    assert {"labelled", "coverage", "accuracy", "f1_macro", "confusion"} <= set(entry)
    assert np.array(entry["confusion"]["matrix"]).sum() == 100
