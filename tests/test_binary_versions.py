"""Check that a binary (2C) version keeps its threshold and is served by it, everywhere.

One xgboost candidate run on the 2-class file with a fixed threshold of 0.8 (far from
the graph's 0.5, so rows relabel) is published through MLflow like any run; the API,
``bridge show`` and a second version with another threshold are checked against it.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import replace

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from api_fixtures import make_app, record
from click.testing import CliRunner
from conftest import throwaway_settings

from conf.settings import Settings
from pipelines.candidate import quick_candidate_run, split_dataset
from pipelines.data import load_dataset, variant_file
from registry_bridge.cli import main as bridge
from registry_bridge.publish import publish_run
from registry_bridge.store import ModelStore

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]

NAME = "vertebral-2c"


def binary_settings(settings: Settings, rule: str) -> Settings:
    """``settings`` on the 2-class file, split 80/10/10 as the lab, with threshold ``rule``."""
    assert settings.data.path is not None
    data = replace(settings.data, variant="2C", path=variant_file(settings.data.path, "2C"))
    training = replace(settings.training, threshold_rule=rule, test_size=0.1, validation_size=0.1)
    return replace(settings, data=data, training=training)


@pytest.fixture(scope="module")
def binary(mongo_server, mongo_client, tmp_path_factory):
    """Version 1: xgboost on 2C at threshold 0.8, active; and the test rows (one per module)."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    settings = throwaway_settings(mongo_server.uri, database, tmp_path_factory.mktemp("binary"))
    two = binary_settings(settings, "0.8")
    run_id = quick_candidate_run(two, family="xgboost")
    store = ModelStore(mongo_client, two)
    version = publish_run(store, two, run_id, name=NAME).version
    store.set_active_version(NAME, version.version, by="tests", reason="binary fixture")
    dataset = load_dataset(two.data)
    split = split_dataset(dataset, 0.1, two.training.seed, 0.1)
    yield two, store, version, split
    mongo_client.drop_database(database)


def test_binary_version_stores_its_threshold_and_rule(binary):
    """Check that the version document holds threshold, rule, positive class and lab metrics."""
    _, _, version, _ = binary
    assert (version.threshold, version.threshold_rule, version.positive_class) == (
        0.8,
        "fixed",
        "Abnormal",
    )
    assert version.classes == ["Abnormal", "Normal"]
    for name in ("sensitivity", "specificity", "npv", "fdr", "auc"):
        assert 0 <= version.metrics[f"test_{name}"] <= 1


def test_predict_labels_by_the_threshold_and_reports_p_abnormal(binary, mongo_client):
    """Check /predict: Abnormal iff P(Abnormal) >= 0.8, probability = P(Abnormal)."""
    two, _, _, split = binary
    client = make_app(replace(two, api=replace(two.api, model_name=NAME)), mongo_client)
    client = client.test_client()
    rows = split.x_test.to_numpy(dtype=np.float32)
    answer = client.post("/predict", json={"records": [record(r) for r in rows]})
    assert answer.status_code == 200, answer.get_json()
    predictions = answer.get_json()["predictions"]
    p_abnormal = np.array([p["probabilities"]["Abnormal"] for p in predictions])
    labels = [p["label"] for p in predictions]
    assert labels == ["Abnormal" if p >= 0.8 else "Normal" for p in p_abnormal]
    assert [p["probability"] for p in predictions] == pytest.approx(list(p_abnormal))
    # The threshold matters on these rows: some would be Abnormal by the graph's argmax.
    assert any(0.5 < p < 0.8 for p in p_abnormal)

    listed = client.get(f"/models?name={NAME}").get_json()["models"]
    first = next(m for m in listed if m["version"] == 1)
    assert (first["threshold"], first["positive_class"], first["active"]) == (0.8, "Abnormal", True)


def test_batch_predict_applies_the_same_threshold(binary, mongo_client):
    """Check /batch-predict's prediction and probability columns follow the threshold."""
    two, _, _, split = binary
    app = make_app(replace(two, api=replace(two.api, model_name=NAME)), mongo_client)
    body = split.x_test.to_csv(index=False)
    answer = app.test_client().post("/batch-predict", data=body, content_type="text/csv")
    assert answer.status_code == 200, answer.data[:300]
    rows = list(csv.DictReader(io.StringIO(answer.data.decode())))
    assert len(rows) == len(split.x_test)
    for row in rows:
        p_abnormal = float(row["prob_Abnormal"])
        assert row["prediction"] == ("Abnormal" if p_abnormal >= 0.8 else "Normal")
        assert float(row["probability"]) == pytest.approx(p_abnormal)


def test_a_new_threshold_is_a_new_version_and_the_served_one_keeps_its_own(binary):
    """Check that retraining with Youden's J publishes v2; v1 still has 0.8 and is served."""
    two, store, _, _ = binary
    youden = replace(two, training=replace(two.training, threshold_rule="youden"))
    run_id = quick_candidate_run(youden, family="xgboost")
    second = publish_run(store, youden, run_id, name=NAME).version
    assert second.version == 2
    assert second.threshold_rule == "youden" and second.threshold != 0.8
    assert store.get_model_version(NAME, 1).threshold == 0.8
    assert store.get_active_version(NAME).active_version == 1

    shown = CliRunner().invoke(
        bridge,
        ["show", NAME, "1"],
        env={"MONGODB_URI": two.registry.mongodb_uri, "REGISTRY_DB": two.registry.database},
    )
    assert shown.exit_code == 0, shown.output
    assert "threshold " in shown.output and "0.8" in shown.output
    assert "positive_class" in shown.output and "Abnormal" in shown.output


def test_publish_with_another_threshold_is_a_new_rescored_version(binary):
    """Check `bridge publish --threshold 0.5`: a new version, labels and metrics at 0.5."""
    two, store, first, split = binary
    env = {"MONGODB_URI": two.registry.mongodb_uri, "REGISTRY_DB": two.registry.database}
    env["MLFLOW_TRACKING_URI"] = two.mlflow.tracking_uri
    args = ["publish", "--run-id", first.run_id, "--name", NAME, "--threshold", "0.5", "--json"]
    published = CliRunner().invoke(bridge, args, env=env)
    assert published.exit_code == 0, published.output
    again = CliRunner().invoke(bridge, args, env=env)
    assert again.exit_code == 0, again.output
    version = store.get_model_version(NAME, int(json.loads(published.output)["version"]))
    assert json.loads(again.output)["version"] == version.version  # the same, not another
    assert json.loads(again.output)["created"] is False
    assert (version.threshold, version.threshold_rule) == (0.5, "fixed")
    assert version.run_id == first.run_id and version.version != first.version
    assert store.get_model_version(NAME, first.version).threshold == 0.8
    # Rescored on the same test rows: at 0.5 at least as many are called Abnormal.
    assert version.metrics["test_tp"] + version.metrics["test_fp"] >= (
        first.metrics["test_tp"] + first.metrics["test_fp"]
    )
    assert version.metrics["test_auc"] == first.metrics["test_auc"]
    labels = version.input_example["labels"]
    p_abnormal = [row[0] for row in version.input_example["probabilities"]]
    assert labels == ["Abnormal" if p >= 0.5 else "Normal" for p in p_abnormal]

    wrong = CliRunner().invoke(bridge, [*args[:5], "--threshold", "1.5"], env=env)
    assert wrong.exit_code != 0 and "1.5" in wrong.output


def _version_with(store: ModelStore, rule: str, threshold: float | None = None):
    """The first version of NAME decided by ``rule`` (and ``threshold``), or None."""
    return next(
        (
            v
            for v in store.search_model_versions(NAME)
            if v.threshold_rule == rule and threshold in (None, v.threshold)
        ),
        None,
    )


def test_mlflow_loads_the_2c_alias_and_labels_rows_as_predict_does(
    binary, mongo_client, monkeypatch
):
    """Check models:/<2C name>@production through MLflow's own loader (what `mlflow models
    serve` and spark_udf call) for a Youden version and a `publish --threshold 0.3` one:
    it loads, and its labels are /predict's, the version's threshold applied."""
    two, store, first, _ = binary
    for key, value in {
        "MONGODB_URI": two.registry.mongodb_uri,
        "REGISTRY_DB": two.registry.database,
        "MLFLOW_TRACKING_URI": two.mlflow.tracking_uri,
    }.items():
        monkeypatch.setenv(key, str(value))
    youden = _version_with(store, "youden")
    if youden is None:  # this test run alone: train the Youden version the module has
        settings = replace(two, training=replace(two.training, threshold_rule="youden"))
        run_id = quick_candidate_run(settings, family="xgboost")
        youden = publish_run(store, settings, run_id, name=NAME).version
    fixed = publish_run(store, two, first.run_id, name=NAME, threshold=0.3).version
    assert (fixed.threshold, fixed.threshold_rule) == (0.3, "fixed")
    rows = load_dataset(two.data).features  # all 310 rows: some fall between the thresholds
    records = [record(r) for r in rows.to_numpy(dtype=np.float32)]
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(two.mlflow.tracking_uri)  # models:/ resolves through it
    app_settings = replace(two, api=replace(two.api, model_name=NAME))
    try:
        for version in (youden, fixed):
            store.set_active_version(NAME, version.version, by="tests", reason="mlflow loader")
            loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@production")
            out = loaded.predict(rows)
            client = make_app(app_settings, mongo_client).test_client()
            answer = client.post("/predict", json={"records": records})
            assert answer.status_code == 200, answer.get_json()
            predictions = answer.get_json()["predictions"]
            assert {p["label"] for p in predictions} == {"Abnormal", "Normal"}
            assert out["prediction"].tolist() == [p["label"] for p in predictions]
            p_abnormal = out["prob_Abnormal"].to_numpy()
            assert out["probability"].to_numpy() == pytest.approx(p_abnormal, abs=1e-6)
            expected = ["Abnormal" if p >= version.threshold else "Normal" for p in p_abnormal]
            assert out["prediction"].tolist() == expected
        # At 0.3 the threshold decides: rows the graph's argmax calls Normal are Abnormal.
        assert any(0.3 <= p < 0.5 for p in p_abnormal)
    finally:
        store.set_active_version(NAME, first.version, by="tests", reason="restore the fixture")
        mlflow.set_tracking_uri(previous_uri)


def test_mlflow_models_serve_and_spark_udf_label_2c_rows_as_predict_does(
    binary, mongo_client, tmp_path, monkeypatch
):
    """Check `mlflow models serve` and `spark_udf` on models:/<2C name>@production (v1, fixed
    threshold 0.8, so rows between 0.5 and 0.8 are Normal): every one of the 310 rows gets
    /predict's label (issue 21 item 3; the loader failed on every binary version)."""
    import os
    import shutil
    import sys

    import requests

    from api.launcher import Server, free_port

    two, store, first, _ = binary
    assert store.get_active_version(NAME).active_version == first.version
    rows = load_dataset(two.data).features
    records = [record(r) for r in rows.to_numpy(dtype=np.float32)]
    app_settings = replace(two, api=replace(two.api, model_name=NAME))
    answer = (
        make_app(app_settings, mongo_client)
        .test_client()
        .post("/predict", json={"records": records})
    )
    expected = [p["label"] for p in answer.get_json()["predictions"]]
    assert "Normal" in expected and "Abnormal" in expected
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",  # mlflow execs uvicorn
        "MONGODB_URI": str(two.registry.mongodb_uri),
        "REGISTRY_DB": two.registry.database,
        "MLFLOW_TRACKING_URI": two.mlflow.tracking_uri,
    }
    uri = f"models:/{NAME}@production"
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with Server("mlflow-serve", command, port, tmp_path / "serve.log", env, cwd=tmp_path) as serve:
        serve.start().wait_ready("/ping", timeout_s=180)
        served = requests.post(
            f"{serve.base_url}/invocations",
            json={"dataframe_records": [dict(r) for r in records]},
            timeout=120,
        )
    assert served.status_code == 200, served.text[:500]
    assert [p["prediction"] for p in served.json()["predictions"]] == expected

    if not shutil.which("java") and os.environ.get("CI") != "true":
        pytest.skip("no Java runtime for spark_udf (CI installs it)")
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from registry_bridge.spark import spark_session

    for key in ("MONGODB_URI", "REGISTRY_DB", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, env[key])  # the Python workers read the registry through them
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(two.mlflow.tracking_uri)
    running = SparkSession.getActiveSession()  # test_spark's, when it ran first here
    spark = spark_session("local[1]", app_name="tests-2c")
    try:
        frame = spark.createDataFrame(rows.astype("float64")).coalesce(1)
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="string", env_manager="local")
        labelled = frame.withColumn("prediction", udf(F.struct(*frame.columns)))
        assert [r["prediction"] for r in labelled.select("prediction").collect()] == expected
    finally:
        mlflow.set_tracking_uri(previous_uri)
        if running is None:
            spark.stop()
