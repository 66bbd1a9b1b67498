"""Score a block of columns (Arrow or pandas) with a version, under one error policy.

A block is what a CSV reader chunk, Spark's ``mapInArrow``/``mapInPandas`` or a
capture sample hands over: named columns, features as numbers or numeric text. The
features are converted in one vectorised cast per column (cell by cell only when some
cell is bad), scored, and the block comes back with its input columns followed by
``prediction``, ``probability``, ``prob_<class>``…, ``model_version`` (and ``error``).

Error policy (``on_error``): ``"fail"`` raises INVALID_INPUT naming the first bad row
and column; ``"skip"`` keeps such rows, without a prediction, with an ``error`` cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import compute as pa_compute

from registry_bridge.scoring.columns import (
    ERROR,
    MODEL_VERSION,
    PREDICTION,
    PROBABILITY,
    decide,
    output_names,
    probability_column,
)
from registry_bridge.scoring.schema import FLOAT32_MAX, MAX_DETAILS, check_columns, invalid
from registry_bridge.scoring.session import LoadedModel

ON_ERROR = ("fail", "skip")
UNSCORED = "no finite probabilities (values too far outside the training range)"


@dataclass(frozen=True)
class ScoredBatch:
    """A scored block: input columns then outputs, rows predicted, rows per class."""

    batch: pa.RecordBatch
    predicted: int
    counts: np.ndarray  # int64, one per model.classes


def _is_number_or_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_null(kind)
    )


def _as_float(column: pa.Array, name: str) -> np.ndarray:
    """float64 values of one feature column; NaN where a cell is not a number."""
    if not _is_number_or_text(column.type):
        raise invalid(
            f"column {name} has type {column.type}; numbers or numeric text expected",
            [{"field": name, "problem": f"type {column.type}"}],
        )
    try:  # fast path: a clean column converts in one vectorised cast, in Arrow
        return pa_compute.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # some cell is not a plain number (or has spaces around it): convert cell by cell
        text = pd.Series(column.to_pandas(), dtype=object).str.strip()
        return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def cell_problem(value: Any) -> str:
    """Why a feature cell (text, number or null) cannot be scored."""
    if value is None:
        return "empty"
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return "empty"
        try:
            number = float(text)
        except ValueError:
            return f"not a number ({text[:40]!r})"
    else:
        number = float(value)
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "infinite"
    return f"beyond the model's float32 range (|x| <= {FLOAT32_MAX:.3g})"


def _features(
    batch: pa.RecordBatch, features: tuple[str, ...]
) -> tuple[np.ndarray, list[tuple[str, pa.Array, np.ndarray]]]:
    """float32 matrix (bad cells as 0) and, per feature with bad cells, its mask."""
    matrix = np.empty((batch.num_rows, len(features)), dtype=np.float32)
    bad_columns: list[tuple[str, pa.Array, np.ndarray]] = []
    for col, name in enumerate(features):
        column = batch.column(batch.schema.get_field_index(name))
        values = _as_float(column, name)
        # NaN, infinities, and values beyond float32 (they would reach the model as inf).
        bad = ~(np.abs(values) <= FLOAT32_MAX)
        if bad.any():
            bad_columns.append((name, column, bad))
            values = np.where(bad, 0.0, values)
        matrix[:, col] = values
    return matrix, bad_columns


def _row_errors(
    bad_columns: list[tuple[str, pa.Array, np.ndarray]], unscored: np.ndarray, n: int
) -> list[str]:
    errors = [""] * n
    for name, column, bad in bad_columns:
        for pos in np.flatnonzero(bad):
            text = f"{name}: {cell_problem(column[int(pos)].as_py())}"
            errors[pos] = f"{errors[pos]}; {text}" if errors[pos] else text
    for pos in np.flatnonzero(unscored):
        errors[pos] = UNSCORED
    return errors


def _fail(
    bad_columns: list[tuple[str, pa.Array, np.ndarray]],
    unscored: np.ndarray,
    first_row: int,
    row_key: str,
) -> None:
    details: list[dict[str, Any]] = []
    total = 0
    for name, column, bad in bad_columns:
        positions = np.flatnonzero(bad)
        total += len(positions)
        for pos in positions[:MAX_DETAILS]:
            value = column[int(pos)].as_py()
            details.append(
                {
                    row_key: first_row + int(pos),
                    "field": name,
                    "value": str(value)[:40],
                    "problem": cell_problem(value),
                }
            )
    positions = np.flatnonzero(unscored)
    total += len(positions)
    details.extend(
        {row_key: first_row + int(p), "problem": UNSCORED} for p in positions[:MAX_DETAILS]
    )
    details.sort(key=lambda d: (d[row_key], d.get("field", "")))
    details = details[:MAX_DETAILS]
    first = details[0]
    where = f"{row_key} {first[row_key]}" + (
        f", column {first['field']}" if "field" in first else ""
    )
    raise invalid(
        f"{where}: {first['problem']} ({total} bad cell(s) in this part of the input; "
        "on_error=skip keeps such rows with an error column)",
        details,
    )


def score_batch(
    model: LoadedModel,
    batch: pa.RecordBatch | pa.Table,
    on_error: str = "fail",
    first_row: int = 0,
    row_key: str = "row",
) -> ScoredBatch:
    """Score a block of named columns; its columns come back followed by the outputs.

    Args:
        batch: the block; feature columns by name (numbers or numeric text), any other
            column passed through unchanged.
        on_error: ``"fail"`` or ``"skip"`` (see the module docstring).
        first_row: the number of the block's first row, as errors name it.
        row_key: how errors name a row: ``"row"``, or ``"line"`` for a CSV file.

    Raises:
        RegistryError: INVALID_INPUT naming the column (missing, duplicate, reserved,
            wrong type) or, with on_error="fail", the first bad row.
    """
    if on_error not in ON_ERROR:
        raise invalid(
            f"on_error must be fail or skip, got {on_error!r}",
            [{"field": "on_error", "problem": "unknown value"}],
        )
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else _empty(batch)
    classes = model.classes
    check_columns(batch.schema.names, model.schema, output_names(classes), where="columns")
    n = batch.num_rows
    matrix, bad_columns = _features(batch, model.schema.features)
    ok = np.ones(n, dtype=bool)
    for _, _, bad in bad_columns:
        ok &= ~bad
    labels = np.full(n, "", dtype=object)
    probs = np.full((n, len(classes)), np.nan, dtype=np.float32)
    probability = np.full(n, np.nan, dtype=np.float32)
    unscored = np.zeros(n, dtype=bool)
    counts = np.zeros(len(classes), dtype=np.int64)
    if ok.any():
        rows = np.flatnonzero(ok) if not ok.all() else slice(None)
        decision = decide(model, model.predict(matrix[rows]))
        scored = np.flatnonzero(ok)
        unscored[scored[~decision.finite]] = True
        ok &= ~unscored
        keep = decision.finite
        labels[scored[keep]] = decision.labels[keep]
        probs[scored[keep]] = decision.probabilities[keep]
        probability[scored[keep]] = decision.probability[keep]
        counts += np.bincount(decision.column[keep], minlength=len(classes))
    if on_error == "fail" and (bad_columns or unscored.any()):
        _fail(bad_columns, unscored, first_row, row_key)
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    names += [PREDICTION, PROBABILITY, *map(probability_column, classes), MODEL_VERSION]
    arrays += [
        pa.array(labels, type=pa.string()),
        pa.array(probability, from_pandas=True),
        *(pa.array(values, from_pandas=True) for values in probs.T),
        pa.array(np.full(n, model.version, dtype=np.int64)),
    ]
    if on_error == "skip":
        names.append(ERROR)
        arrays.append(pa.array(_row_errors(bad_columns, unscored, n), type=pa.string()))
    return ScoredBatch(pa.RecordBatch.from_arrays(arrays, names=names), int(ok.sum()), counts)


def _empty(table: pa.Table) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([], type=f.type) for f in table.schema], names=table.schema.names
    )


def score_frame(
    model: LoadedModel,
    frame: pd.DataFrame,
    on_error: str = "fail",
    first_row: int = 0,
    row_key: str = "row",
) -> pd.DataFrame:
    """``score_batch`` for a pandas frame (Spark's ``mapInPandas``): the frame plus outputs."""
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    return score_batch(model, batch, on_error, first_row, row_key).batch.to_pandas()
