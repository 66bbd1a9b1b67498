"""Unit tests of the Flask-free scoring core (registry_bridge.scoring)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from api_fixtures import FAMILIES, _candidates
from conftest import ROOT, data_path

from conf.settings import load_settings
from pipelines.data import FEATURES
from registry_bridge import onnx_check
from registry_bridge.errors import RegistryError
from registry_bridge.scoring import (
    Prediction,
    decide,
    load_model,
    output_names,
    probability_column,
    score_batch,
    score_frame,
)


@pytest.fixture(scope="module")
def candidate():
    settings = load_settings(env={"VERTEBRAL_DATA": str(data_path())})
    return _candidates(settings.data, settings.training.seed, settings.training.test_size)[
        FAMILIES[0]
    ]


@pytest.fixture(scope="module")
def model(candidate):
    draft = candidate.draft
    return load_model(
        draft.name,
        3,
        "run",
        draft.classes,
        draft.input_schema,
        candidate.artifact,
        onnx_io=draft.onnx_io,
    )


def _text_batch(rows: np.ndarray, **extra: list[str]) -> pa.RecordBatch:
    columns = {name: [repr(float(v)) for v in rows[:, i]] for i, name in enumerate(FEATURES)}
    columns.update(extra)
    return pa.RecordBatch.from_pydict(columns)


def test_importable_without_flask():
    """Check that Spark executors can import the core without Flask installed or loaded."""
    code = "import sys, registry_bridge.scoring; assert 'flask' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_every_public_name_resolves_and_the_lazy_table_lists_them():
    """Check the package's three lists of its names (``__all__`` for the linters, the
    TYPE_CHECKING imports for mypy, ``_HOMES`` for the first use): each public name resolves
    to its module's object, and the lazy table holds every one not imported at the top."""
    import registry_bridge.scoring as scoring

    lazy = set(scoring.__all__) - {"csv_safe", "safe_text"}
    assert set(scoring._HOMES) == lazy
    for name in scoring.__all__:
        home = scoring._HOMES.get(name, "csv_safe")
        module = __import__(f"registry_bridge.scoring.{home}", fromlist=[name])
        assert getattr(scoring, name) is getattr(module, name), name


def test_one_record_decides_as_the_batch_does(model, candidate):
    """Check that /predict's single-record path gives each row what the batch gives it,
    a non-finite row included."""
    rows = candidate.test_inputs.astype(np.float32)
    batch_prediction = model.predict(rows)
    probabilities = batch_prediction.probabilities.copy()
    probabilities[1, 0] = np.nan  # as an overflow inside the model would give
    batch = decide(model, Prediction(batch_prediction.labels, probabilities))
    for i in range(len(rows)):
        one = decide(
            model, Prediction(batch_prediction.labels[i : i + 1], probabilities[i : i + 1])
        )
        assert one.labels.tolist() == [batch.labels[i]]
        assert one.column.tolist() == [batch.column[i]] and one.column.dtype == np.intp
        assert one.probability.dtype == np.float32
        assert np.array_equal(one.probability, batch.probability[i : i + 1], equal_nan=True)
        assert np.array_equal(one.probabilities, probabilities[i : i + 1], equal_nan=True)
        assert one.finite.tolist() == [bool(batch.finite[i])]
    assert batch.finite.tolist().count(False) == 1


def test_text_and_numeric_columns_score_like_the_model(model, candidate):
    """Check that text cells and float columns give the model's labels and probabilities."""
    rows = candidate.test_inputs[:20]
    expected = decide(model, model.predict(rows))
    numeric = pa.RecordBatch.from_arrays(
        [pa.array(rows[:, i].astype(np.float64)) for i in range(len(FEATURES))], names=FEATURES
    )
    for batch in (_text_batch(rows), numeric):
        scored = score_batch(model, batch)
        out = scored.batch.to_pydict()
        assert out["prediction"] == expected.labels.tolist()
        assert np.allclose(out["probability"], expected.probability)
        for i, label in enumerate(model.classes):
            assert np.allclose(out[probability_column(label)], expected.probabilities[:, i])
        assert out["model_version"] == [3] * 20
        assert scored.predicted == 20 and scored.counts.sum() == 20


def test_outputs_follow_the_input_columns_in_a_fixed_order(model, candidate):
    """Check that passed-through columns keep their place and the outputs come after."""
    batch = _text_batch(candidate.test_inputs[:2], id=["a", "b"])
    names = score_batch(model, batch, on_error="skip").batch.schema.names
    assert names == [*FEATURES, "id", *output_names(model.classes)]
    assert "error" not in score_batch(model, batch).batch.schema.names


def test_bad_cell_fails_naming_row_and_column(model, candidate):
    """Check that on_error=fail names the first bad row (numbered from first_row) and column."""
    batch = _text_batch(candidate.test_inputs[:3])
    cells = batch.column(1).to_pylist()
    cells[2] = "abc"
    batch = batch.set_column(1, FEATURES[1], pa.array(cells))
    with pytest.raises(RegistryError, match=rf"^line 12, column {FEATURES[1]}: not a number"):
        score_batch(model, batch, first_row=10, row_key="line")


def test_skip_keeps_bad_rows_with_an_error_and_no_prediction(model, candidate):
    """Check that on_error=skip scores the good rows and explains the bad ones."""
    batch = _text_batch(candidate.test_inputs[:3])
    cells = batch.column(0).to_pylist()
    cells[1] = ""
    batch = batch.set_column(0, FEATURES[0], pa.array(cells))
    scored = score_batch(model, batch, on_error="skip")
    out = scored.batch.to_pydict()
    assert out["error"] == ["", f"{FEATURES[0]}: empty", ""]
    assert out["prediction"][1] == "" and out["probability"][1] is None
    assert scored.predicted == 2


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ([*FEATURES, FEATURES[2]], "duplicate column"),
        (list(FEATURES[1:]), "missing column"),
        ([*FEATURES, "prediction"], "reserved column"),
    ],
)
def test_unusable_columns_are_refused_naming_them(model, candidate, names, problem):
    """Check that a missing, repeated or reserved column is a 400 naming the column."""
    width = len(names)
    batch = pa.RecordBatch.from_arrays([pa.array(["1.0"])] * width, names=names)
    with pytest.raises(RegistryError) as caught:
        score_batch(model, batch)
    assert caught.value.code == "INVALID_INPUT"
    assert caught.value.details[0]["problem"] == problem


def test_frame_scores_like_a_batch(model, candidate):
    """Check that score_frame (mapInPandas) gives the same outputs as score_batch."""
    rows = candidate.test_inputs[:5]
    frame = pd.DataFrame(rows.astype(np.float64), columns=list(FEATURES))
    scored = score_frame(model, frame)
    expected = score_batch(model, pa.RecordBatch.from_pandas(frame)).batch.to_pandas()
    pd.testing.assert_frame_equal(scored, expected)


def test_publishing_and_serving_build_the_same_session(candidate, model):
    """Check that the parity check's session and the served one give the same probabilities."""
    rows = candidate.test_inputs[:5]
    session = onnx_check.load_session(candidate.artifact, "test")
    checked = onnx_check.score(session, rows.tolist(), candidate.draft.onnx_io, "test")
    assert np.allclose(checked.probabilities, model.predict(rows).probabilities)
    with pytest.raises(RegistryError, match="does not load in onnxruntime") as caught:
        onnx_check.load_session(b"not onnx", "test")
    assert caught.value.code == "CONFLICT"


def test_csv_safe_prefixes_formulas_keeps_numbers_and_drops_nul():
    """Check OWASP's rule on cells and names, for sliced and large-string columns too."""
    from registry_bridge.scoring import csv_safe

    cells = ["=1+2", "-0.25", "+1e3", "@a", "\tb", "\r=x", "-abc", "ok", "a\x00b", None, "", "-"]
    expected = [
        "'=1+2",
        "-0.25",
        "+1e3",
        "'@a",
        "'\tb",
        "'\r=x",
        "'-abc",
        "ok",
        "ab",
        None,
        "",
        "'-",
    ]
    batch = pa.RecordBatch.from_arrays(
        [pa.array(cells), pa.array(cells, type=pa.large_string()), pa.array(range(12))],
        names=["=name", "plain", "n"],
    )
    safe = csv_safe(batch)
    assert safe.schema.names == ["'=name", "plain", "n"]
    assert safe.column(0).to_pylist() == expected == safe.column(1).to_pylist()
    assert safe.column(2).to_pylist() == list(range(12))
    assert csv_safe(batch.slice(3, 4)).column(0).to_pylist() == expected[3:7]
    numbers = pa.RecordBatch.from_arrays([pa.array(["-1", "-2.5", "+3", "4"])], names=["x"])
    assert csv_safe(numbers).column(0).to_pylist() == ["-1", "-2.5", "+3", "4"]


def test_csv_safe_sees_a_formula_behind_leading_spaces():
    """Check that " =1+2" is prefixed (a trimming writer or spreadsheet would run it), while
    " plain ", " -0.25" and "\\n" stay as they are."""
    from registry_bridge.scoring import csv_safe, safe_text

    cells = [" =1+2", "  @SUM(A1)", "\n+1", " plain ", " -0.25", "\n"]
    expected = ["' =1+2", "'  @SUM(A1)", "'\n+1", " plain ", " -0.25", "\n"]
    batch = pa.RecordBatch.from_arrays([pa.array(cells)], names=[" =name"])
    safe = csv_safe(batch)
    assert safe.column(0).to_pylist() == expected == [safe_text(c) for c in cells]
    assert safe.schema.names == ["' =name"]
