"""Spark scoring (registry_bridge.spark) in local mode: same answers as /predict, one version.

One SparkSession (local[2]) serves the whole test session. Without a Java runtime the
tests skip, except in CI (CI=true), where a missing Java is a failure: .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from api_fixtures import FAMILIES, MODEL, record
from conftest import data_path

from conf.settings import DataSettings
from pipelines.data import FEATURES, load_dataset
from registry_bridge.errors import RegistryError

pytestmark = pytest.mark.slow  # starts a JVM and Python workers

if not shutil.which("java") and os.environ.get("CI") != "true":
    pytest.skip(
        "no Java runtime: Spark needs Java 17 (apt-get install openjdk-17-jre-headless)",
        allow_module_level=True,
    )

from registry_bridge import spark as spark_scoring  # noqa: E402 (after the Java check)


@pytest.fixture(scope="session")
def spark():
    session = spark_scoring.spark_session("local[2]", app_name="tests")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(DataSettings(path=data_path())).features[list(FEATURES)]


def _frame(spark, rows: pd.DataFrame, partitions: int = 2):
    return spark.createDataFrame(rows).repartition(partitions)


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("id").reset_index(drop=True)


def test_labels_and_probabilities_equal_predict(spark, client, published, dataset):
    """Check that every one of the 310 rows gets /predict's label and probabilities (1e-5)."""
    rows = dataset.assign(id=np.arange(len(dataset)))
    scored = _by_id(
        spark_scoring.score(_frame(spark, rows), MODEL, store=published.store).toPandas()
    )
    answer = client.post("/predict", json={"records": [record(r) for r in dataset.to_numpy()]})
    assert answer.status_code == 200, answer.data[:300]
    expected = answer.get_json()["predictions"]
    classes = published.candidates[FAMILIES[0]].draft.classes
    assert len(scored) == len(expected) == 310
    assert list(scored["prediction"]) == [p["label"] for p in expected]
    got = scored[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    want = np.array([[p["probabilities"][c] for c in classes] for p in expected])
    assert np.abs(got - want).max() <= 1e-5
    assert np.allclose(scored["probability"], [p["probability"] for p in expected], atol=1e-5)
    assert set(scored["model_version"]) == {published.versions[FAMILIES[0]]}
    assert list(scored.columns) == (
        [*FEATURES, "id", "prediction", "probability"]
        + [f"prob_{c}" for c in classes]
        + ["model_version"]
    )


def _activate_in_task(uri: str, db: str, version: int):
    """A mapInPandas step that activates ``version`` from inside the job's first partition."""

    def step(frames):
        from pymongo import MongoClient
        from pyspark import TaskContext

        if TaskContext.get().partitionId() == 0:
            with MongoClient(uri) as client:
                client[db]["registry_state"].update_one(
                    {"_id": MODEL}, {"$set": {"active_version": version}}
                )
        yield from frames

    return step


def test_version_stays_pinned_when_activated_mid_job(spark, published, dataset, settings):
    """Check that an activation made while the job runs changes no row's version or answer."""
    v1, v2 = (published.versions[f] for f in FAMILIES)
    rows = pd.concat([dataset] * 4, ignore_index=True).assign(id=np.arange(4 * len(dataset)))
    source = _frame(spark, rows, partitions=6)
    activating = source.mapInPandas(
        _activate_in_task(settings.registry.mongodb_uri, settings.registry.database, v2),
        source.schema,
    )
    scored = _by_id(spark_scoring.score(activating, MODEL, store=published.store).toPandas())
    assert published.store.get_active_version(MODEL).active_version == v2  # it did happen
    assert set(scored["model_version"]) == {v1}
    pinned = spark_scoring.score(_frame(spark, rows), MODEL, version=v1, store=published.store)
    assert list(scored["prediction"]) == list(_by_id(pinned.toPandas())["prediction"])
    again = spark_scoring.score(_frame(spark, rows), MODEL, store=published.store)
    assert set(_by_id(again.toPandas())["model_version"]) == {v2}  # the next job: new version


def test_missing_column_is_refused_before_any_task(spark, published, dataset):
    """Check that a missing feature column is named and no Spark job ran."""
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("missing-column", "should not run")
    try:
        frame = spark.createDataFrame(
            dataset.drop(columns=["pelvic_tilt", "degree_spondylolisthesis"])
        )
        with pytest.raises(RegistryError) as raised:
            spark_scoring.score(frame, MODEL, store=published.store)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert raised.value.code == "INVALID_INPUT"
    assert "pelvic_tilt" in str(raised.value) and "degree_spondylolisthesis" in str(raised.value)
    assert tracker.getJobIdsForGroup("missing-column") == []


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_bad_cell_fails_the_job_naming_its_row(spark, published, dataset, tmp_path):
    """Check that a non-numeric cell fails the job with its row, line and column named."""
    text = dataset.astype(str).assign(id=[f"r{i}" for i in range(len(dataset))])
    text.loc[200, "pelvic_tilt"] = "abc"
    source = _write_csv(tmp_path / "in.csv", text)
    with pytest.raises(RegistryError) as raised:
        spark_scoring.run_job(spark, published.store, MODEL, str(source), str(tmp_path / "out"))
    message = str(raised.value)
    assert raised.value.code == "INVALID_INPUT"
    assert "row 201 (line 202)" in message and "pelvic_tilt" in message and "'abc'" in message
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_skip_keeps_bad_rows_with_an_error_column(spark, published, dataset, tmp_path):
    """Check on_error=skip: bad rows kept, unscored, with the reason; the others scored."""
    text = dataset.astype(str).assign(id=[f"r{i}" for i in range(len(dataset))])
    text.loc[3, "pelvic_tilt"] = "abc"
    text.loc[7, "sacral_slope"] = ""
    text.loc[7, "pelvic_radius"] = "inf"
    source = _write_csv(tmp_path / "in.csv", text)
    result = spark_scoring.run_job(
        spark, published.store, MODEL, str(source), str(tmp_path / "out"), on_error="skip"
    )
    out = pd.read_parquet(tmp_path / "out").set_index("id")
    assert out.loc["r3", "error"] == "pelvic_tilt: not a number ('abc')"
    assert out.loc["r7", "error"] == "sacral_slope: empty; pelvic_radius: infinite"
    assert out.loc[["r3", "r7"], "prediction"].isna().all()
    assert out.loc[["r3", "r7"], "probability"].isna().all()
    good = out.drop(index=["r3", "r7"])
    assert good["error"].isna().all() and good["prediction"].notna().all()
    assert (result.rows_in, result.rows_out, result.rows_in_error) == (310, 310, 2)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_inputs_give_the_same_output(spark, published, dataset, tmp_path, kind):
    """Check a CSV file, and a Parquet directory, scored into each output format and read back."""
    frame = dataset.assign(id=[f"r{i}" for i in range(len(dataset))])
    if kind == "csv":
        source = str(_write_csv(tmp_path / "in.csv", frame))
    else:
        (tmp_path / "in").mkdir()
        frame.iloc[:150].to_parquet(tmp_path / "in" / "a.parquet")
        frame.iloc[150:].to_parquet(tmp_path / "in" / "b.parquet")
        source = str(tmp_path / "in")
    outputs = {}
    for out_format in ("parquet", "csv"):
        target = tmp_path / f"out-{out_format}"
        spark_scoring.run_job(
            spark, published.store, MODEL, source, str(target), output_format=out_format
        )
        assert (target / "_SUCCESS").exists() and (target / "_manifest.json").exists()
        if out_format == "parquet":
            outputs[out_format] = pq.read_table(target).to_pandas()  # skips _ files
        else:
            outputs[out_format] = pd.concat(
                pd.read_csv(p) for p in sorted(target.glob("part-*.csv"))
            )
    parquet, csv = (_by_id(outputs[k]) for k in ("parquet", "csv"))
    assert len(parquet) == len(csv) == 310
    assert list(parquet["prediction"]) == list(csv["prediction"])
    assert np.allclose(parquet["probability"], csv["probability"], atol=1e-6)
    assert list(parquet["id"]) == sorted(frame["id"])


def test_manifest_names_version_and_counts(spark, published, dataset, tmp_path):
    """Check the manifest: model name, version, sha256, run id, rows and seconds."""
    source = _write_csv(tmp_path / "in.csv", dataset)
    version = published.versions[FAMILIES[1]]
    result = spark_scoring.run_job(
        spark, published.store, MODEL, str(source), str(tmp_path / "out"), version=version
    )
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    stored = published.store.get_model_version(MODEL, version)
    assert manifest["model"] == {
        "name": MODEL,
        "version": version,
        "sha256": stored.sha256,
        "run_id": stored.run_id,
    }
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_in_error"]) == (310, 310, 0)
    assert manifest["seconds"] > 0 and manifest == result.manifest()
    assert set(pd.read_parquet(tmp_path / "out")["model_version"]) == {version}


def test_existing_output_is_refused_unless_overwrite(spark, published, dataset, tmp_path):
    """Check that an existing output directory is kept unless overwrite is asked."""
    source = str(_write_csv(tmp_path / "in.csv", dataset))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(RegistryError) as raised:
        spark_scoring.run_job(spark, published.store, MODEL, source, str(target))
    assert raised.value.code == "CONFLICT" and "--overwrite" in str(raised.value)
    assert (target / "keep.txt").exists()
    spark_scoring.run_job(spark, published.store, MODEL, source, str(target), overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "_SUCCESS").exists()


def test_bridge_score_command(spark, published, dataset, tmp_path):
    """Check `bridge score`: scores a CSV, refuses an existing output, names a bad row."""
    from click.testing import CliRunner

    from registry_bridge.cli import main

    settings = published.settings
    env = {
        "MONGODB_URI": settings.registry.mongodb_uri,
        "REGISTRY_DB": settings.registry.database,
        "MODEL_NAME": MODEL,
    }
    source = _write_csv(tmp_path / "in.csv", dataset)
    target = tmp_path / "out"
    args = ["score", "--input", str(source), "--output", str(target), "--master", "local[2]"]
    runner = CliRunner()
    done = runner.invoke(main, [*args, "--format", "csv"], env=env)
    assert done.exit_code == 0, done.output
    version = published.versions[FAMILIES[0]]
    assert f"scored 310 rows (0 in error) with {MODEL} v{version}" in done.stdout
    assert json.loads((target / "_manifest.json").read_text())["format"] == "csv"
    again = runner.invoke(main, args, env=env)
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    bad = dataset.astype(str)
    bad.loc[9, "sacral_slope"] = "n/a"
    _write_csv(source, bad)
    failed = runner.invoke(main, [*args, "--overwrite"], env=env)
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: row 10 (line 11), column sacral_slope: not a number ('n/a'); "
        "add --on-error skip to keep such rows with an error column"
    )
    assert spark.range(3).count() == 3  # the suite's session is still usable


def test_csv_output_neutralises_spreadsheet_formulas(spark, published, dataset, tmp_path):
    """Check that text a spreadsheet would evaluate gets a leading quote in the CSV output,
    numbers such as -0.25 excepted, like /batch-predict's CSV."""
    frame = dataset.iloc[:6].assign(note=["=1+2", "@SUM(A1)", "-0.25", "plain", " =1+2", " plain "])
    frame = frame.rename(columns={"note": "+note"})
    source = _write_csv(tmp_path / "in.csv", frame)
    target = tmp_path / "out"
    spark_scoring.run_job(
        spark, published.store, MODEL, str(source), str(target), output_format="csv"
    )
    out = pd.concat(
        pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(target.glob("part-*.csv"))
    )
    assert "'+note" in out.columns
    # Spark's CSV writer trims spaces by default: " =1+2" left as a bare =1+2 (item 11).
    assert sorted(out["'+note"]) == sorted(
        ["'=1+2", "'@SUM(A1)", "-0.25", "plain", "' =1+2", " plain "]
    )


def test_dotted_column_names_and_multiline_cells_pass_through(spark, published, dataset, tmp_path):
    """Check that a column named patient.id is a column, not a struct path, and that a quoted
    cell holding a line break stays in its row (11 rows in, 11 out)."""
    frame = dataset.iloc[:11].assign(**{"patient.id": [f"p{i}" for i in range(11)]})
    frame["note"] = ["one line"] * 11
    frame.loc[frame.index[3], "note"] = "two\nlines"
    source = _write_csv(tmp_path / "in.csv", frame)
    target = tmp_path / "out"
    result = spark_scoring.run_job(
        spark, published.store, MODEL, str(source), str(target), output_format="csv"
    )
    assert result.rows_in == result.rows_out == 11
    out = pd.concat(
        pd.read_csv(p, dtype=str, keep_default_na=False) for p in sorted(target.glob("part-*.csv"))
    )
    assert len(out) == 11 and sorted(out["patient.id"]) == sorted(frame["patient.id"])
    assert "two\nlines" in set(out["note"])
