"""Check the course lab's pieces: threshold rules, binary metrics, its split and its preset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import data_path
from mlflow.tracking import MlflowClient
from sklearn.model_selection import train_test_split

from pipelines.candidate import split_dataset
from pipelines.data import read_dataset, variant_file
from pipelines.metrics import binary_metrics
from pipelines.threshold import rule_threshold
from pipelines.train import main
from registry_bridge.scoring.threshold import decide

POSITIVE = np.array([True, True, True, True, False, False, False, False])
SCORES = np.array([0.95, 0.8, 0.6, 0.35, 0.55, 0.3, 0.2, 0.1])


def test_binary_metrics_are_the_labs_definitions():
    """Check the lab's eight rates and the AUC on a hand-counted confusion matrix."""
    metrics = binary_metrics(POSITIVE, SCORES >= 0.5, SCORES)
    # TP 3 (0.95, 0.8, 0.6), FN 1 (0.35), FP 1 (0.55), TN 3.
    assert (metrics["tp"], metrics["fn"], metrics["fp"], metrics["tn"]) == (3, 1, 1, 3)
    assert metrics["sensitivity"] == pytest.approx(3 / 4)
    assert metrics["specificity"] == pytest.approx(3 / 4)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["npv"] == pytest.approx(3 / 4)
    assert metrics["fpr"] == pytest.approx(1 / 4)
    assert metrics["fnr"] == pytest.approx(1 / 4)
    assert metrics["fdr"] == pytest.approx(1 / 4)
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["auc"] == pytest.approx(15 / 16)


def test_threshold_rules_pick_youden_f1_or_the_fixed_value():
    """Check that Youden's J, F1 and a fixed value give the thresholds worked out by hand."""
    # At 0.6: sensitivity 3/4, specificity 4/4 -> J 0.75, the largest.
    assert rule_threshold(POSITIVE, SCORES, "youden") == (0.6, "youden")
    # F1 is largest at 0.35 (TP 4, FP 1: 8/9) against 0.6 (TP 3, FP 0: 6/7).
    assert rule_threshold(POSITIVE, SCORES, "f1") == (0.35, "f1")
    assert rule_threshold(POSITIVE, SCORES, "0.65") == (0.65, "fixed")


def test_decide_labels_by_the_threshold_and_reports_the_positive_probability():
    """Check that a row is positive at P >= threshold and its probability is P(positive)."""
    probabilities = np.array([[0.7, 0.3], [0.64, 0.36], [0.2, 0.8]])
    labels, positive = decide(probabilities, ["Abnormal", "Normal"], 0.65, "Abnormal")
    assert list(labels) == ["Abnormal", "Normal", "Normal"]
    assert list(positive) == [0.7, 0.64, 0.2]
    with pytest.raises(ValueError, match="'Abnormal'"):
        decide(probabilities, ["Hernia", "Normal"], 0.5, "Abnormal")


def test_split_is_the_lab_notebooks_80_10_10():
    """Check that the 2C split holds the rows the lab's notebook code draws."""
    dataset = read_dataset(variant_file(data_path(), "2C"), "2C")
    split = split_dataset(dataset, 0.1, 42, validation_size=0.1)
    # The notebook: class coded Abnormal=1/Normal=0, then two stratified splits, seed 42.
    frame = dataset.features.assign(**{"class": (dataset.labels == "Abnormal").astype(int)})
    train, rest = train_test_split(frame, test_size=0.2, random_state=42, stratify=frame["class"])
    test, validate = train_test_split(rest, test_size=0.5, random_state=42, stratify=rest["class"])
    assert list(split.x_train.index) == list(train.index)
    assert list(split.x_test.index) == list(test.index)
    assert split.x_val is not None and list(split.x_val.index) == list(validate.index)
    assert (len(split.x_train), len(split.x_val), len(split.x_test)) == (248, 31, 31)


def test_variant_file_finds_the_sibling_uci_file(tmp_path):
    """Check that a column_3C file leads to its column_2C sibling, and other names stay."""
    three, two = tmp_path / "column_3C_weka.csv", tmp_path / "column_2C_weka.csv"
    three.write_text("x"), two.write_text("x")
    assert variant_file(three, "2C") == two
    assert variant_file(two, "3C") == three
    other = tmp_path / "patients.csv"
    assert variant_file(other, "2C") == other


@pytest.mark.slow
def test_aws_lab_preset_logs_the_labs_model_as_a_candidate(settings, tmp_path):
    """Check that --preset aws-lab logs XGBoost, 42 rounds, on 2C with a threshold and metrics."""
    config = tmp_path / "config.yaml"
    config.write_text(f"mlflow:\n  artifact_root: {settings.mlflow.artifact_root}\n")
    # The environment, not the file: MLflow exports MLFLOW_TRACKING_URI once a test set it.
    result = CliRunner().invoke(
        main,
        ["--config", str(config), "--preset", "aws-lab", "--data", str(data_path())],
        env={"MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri},
    )
    assert result.exit_code == 0, result.output
    assert "248 train / 31 validation / 31 test rows" in result.output
    run_id = result.output.split("Candidate run: ")[1].split()[0]
    run = MlflowClient(settings.mlflow.tracking_uri).get_run(run_id)
    assert run.data.tags["candidate"] == "true"
    assert run.data.tags["preset"] == "aws-lab"
    assert run.data.tags["variant"] == "2C"
    assert run.data.params["xgb_n_estimators"] == "42"
    assert 0 < run.data.metrics["decision_threshold"] < 1
    for name in ("sensitivity", "specificity", "precision", "npv", "fpr", "fnr", "fdr", "auc"):
        assert 0 <= run.data.metrics[f"test_{name}"] <= 1
    assert pd.notna(run.data.metrics["validation_auc"])
    artifacts = {
        a.path for a in MlflowClient(settings.mlflow.tracking_uri).list_artifacts(run_id, "plots")
    }
    assert artifacts == {"plots/roc_threshold.png", "plots/metrics_vs_threshold.png"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # SVC(probability=True), as elsewhere
def test_demo_2c_step_sets_the_labs_model_beside_the_winner_on_the_same_rows(settings):
    """Check the 2C demo's last step: same test rows, both thresholds, table and figures."""
    from dataclasses import replace

    from demo.lab import VARIANT_SETTINGS, comparison_rows, train_lab_model
    from demo.report import lab_section
    from demo.run import DemoRun
    from pipelines.study import run_study

    sections = {"data": settings.data, "training": settings.training, "api": settings.api}
    for dotted, value in VARIANT_SETTINGS["2C"].items():
        section, key = dotted.split(".")
        sections[section] = replace(sections[section], **{key: value})
    # A small study keeps the test short; the demo searches every family.
    training = replace(sections["training"], trials=2, families=("logistic_regression", "svc"))
    two = replace(settings, data=sections["data"], training=training, api=sections["api"])
    assert two.api.model_name == "vertebral-column-2c"  # never mixed with 3-class versions
    run = DemoRun(two)
    run.study = run_study(two)
    run.lab = train_lab_model(run)

    assert list(run.lab.split.x_test.index) == list(run.study.split.x_test.index)
    rows = {metric: (lab_value, ours) for metric, lab_value, ours in comparison_rows(run)}
    assert rows["model"][0] == "XGBoost, 42 rounds, no tuning"
    assert rows["threshold on P(Abnormal)"][0].endswith("(youden)")
    assert {"sensitivity", "specificity", "npv", "fdr", "auc", "TP", "FN"} <= set(rows)
    page = lab_section(run)
    assert page.count("data:image/png;base64,") == 3
    assert "same 31 test rows" in page
