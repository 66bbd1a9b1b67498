"""A version's input schema and the checks every input meets before it is scored.

Values must be numbers (text cells: numeric text), finite, within float32, present for
every feature of the version's ``input_schema``; unknown fields are refused. Values
outside the training range are served but flagged per record.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry_bridge.errors import RegistryError

_MISSING: Any = object()  # a field absent from a record (None means JSON null)
MAX_DETAILS = 100  # problems listed in one 400 (the message gives the total)
MAX_NAME_CHARS = 80  # longer client-given names are shortened when echoed in an error
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class InputSchema:
    """A version's input schema, parsed once per version (features in model order)."""

    features: tuple[str, ...]
    mins: tuple[float | None, ...]
    maxs: tuple[float | None, ...]
    names: frozenset[str]

    @classmethod
    def from_fields(cls, fields: Sequence[Mapping[str, Any]]) -> InputSchema:
        """Build from ``[{name, dtype, min, max}, ...]`` as stored in ``model_versions``."""
        if not fields:
            raise ValueError("the version has an empty input_schema")
        names = tuple(str(f["name"]) for f in fields)

        def bound(value: Any) -> float | None:
            return None if value is None else float(value)

        return cls(
            names,
            tuple(bound(f.get("min")) for f in fields),
            tuple(bound(f.get("max")) for f in fields),
            frozenset(names),
        )


@dataclass(frozen=True)
class ValidatedInput:
    """Rows ready for the model and, per row, the fields outside the training range."""

    matrix: np.ndarray
    out_of_range: list[list[str]]


def invalid(message: str, details: list[dict[str, Any]] | None = None) -> RegistryError:
    """An INVALID_INPUT error (400)."""
    return RegistryError("INVALID_INPUT", message, details)


def shown(text: Any) -> str:
    """A client-given name as an error may echo it: at most MAX_NAME_CHARS characters."""
    text = str(text)
    return (
        text if len(text) <= MAX_NAME_CHARS else f"{text[:MAX_NAME_CHARS]}... ({len(text)} chars)"
    )


def check_columns(
    names: Sequence[str],
    schema: InputSchema,
    reserved: Iterable[str] = (),
    where: str = "line 1",
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Refuse column names the scoring cannot use unambiguously.

    Args:
        names: the input's column names (a CSV header, ``dataframe_split.columns``, a frame).
        reserved: output column names the input must not carry (they would be overwritten).
        where: how the message names the place of the names, e.g. ``"line 1"``.
        detail: keys added to every detail, e.g. ``{"line": 1}``.

    Raises:
        RegistryError: INVALID_INPUT naming missing features, a feature given twice (which
            value would count is ambiguous) or a reserved name.
    """
    extra = dict(detail or {})
    present = set(names)
    absent = [name for name in schema.features if name not in present]
    if absent:
        raise invalid(
            f"{where}: missing required column(s): {', '.join(absent)}",
            [{**extra, "field": n, "problem": "missing column"} for n in absent],
        )
    counts = Counter(name for name in names if name in schema.names)
    twice = [name for name in schema.features if counts[name] > 1]
    if twice:
        raise invalid(
            f"{where}: column(s) {', '.join(twice)} given more than once; each feature once",
            [{**extra, "field": n, "problem": "duplicate column"} for n in twice],
        )
    taken = [shown(name) for name in dict.fromkeys(names) if name in set(reserved)]
    if taken:
        raise invalid(
            f"{where}: column(s) {', '.join(taken)} would be overwritten "
            "by the output; rename or drop them",
            [{**extra, "field": n, "problem": "reserved column"} for n in taken],
        )


def number_problem(value: Any, from_text: bool) -> tuple[float | None, str | None]:
    """``(number, None)`` for a usable feature value, else ``(None, problem)``."""
    if value is None:
        return None, "null"
    if isinstance(value, bool):  # bool is an int subclass: refuse it explicitly
        return None, "not a number (boolean)"
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer with hundreds of digits
            return None, f"beyond the model's float32 range (|x| <= {FLOAT32_MAX:.3g})"
    elif from_text and isinstance(value, str):
        text = value.strip()
        if text == "":
            return None, "empty"
        try:
            number = float(text)
        except ValueError:
            return None, f"not a number ({value[:40]!r})"
    else:
        return None, f"not a number ({type(value).__name__})"
    if math.isnan(number):
        return None, "NaN"
    if math.isinf(number):
        return None, "infinite"
    if abs(number) > FLOAT32_MAX:  # the model computes in float32: this would become infinite
        return None, f"beyond the model's float32 range (|x| <= {FLOAT32_MAX:.3g})"
    return number, None


def validate_records(
    records: Sequence[Any], schema: InputSchema, from_text: bool = False
) -> ValidatedInput:
    """Check every record against ``schema`` and build the float32 matrix.

    Args:
        records: dicts keyed by field, or lists in ``schema.features`` order.
        from_text: accept numeric strings (CSV cells); JSON strings are refused.

    Raises:
        RegistryError: INVALID_INPUT with one detail per problem (record, field, problem).
    """
    features = schema.features
    width = len(features)
    matrix = np.empty((len(records), width), dtype=np.float64)
    problems: list[dict[str, Any]] = []
    flags: list[list[str]] = []
    for index, record in enumerate(records):
        if isinstance(record, dict):
            values = [record.get(name, _MISSING) for name in features]
            if len(record) != width or any(v is _MISSING for v in values):
                for name in features:
                    if name not in record:
                        problems.append({"record": index, "field": name, "problem": "missing"})
                for name in record:
                    if name not in schema.names:
                        problems.append(
                            {"record": index, "field": shown(name), "problem": "unknown field"}
                        )
        elif isinstance(record, list):
            if len(record) != width:
                problems.append(
                    {
                        "record": index,
                        "problem": f"expected {width} values in this order: {', '.join(features)}; "
                        f"got {len(record)}",
                    }
                )
                flags.append([])
                continue
            values = record
        else:
            problems.append(
                {
                    "record": index,
                    "problem": f"a record must be an object of fields, got {type(record).__name__}",
                }
            )
            flags.append([])
            continue
        row_flags: list[str] = []
        for col, (name, value) in enumerate(zip(features, values, strict=False)):
            if value is _MISSING:
                continue
            number, problem = number_problem(value, from_text)
            if number is None:
                problems.append({"record": index, "field": name, "problem": problem})
                continue
            matrix[index, col] = number
            low, high = schema.mins[col], schema.maxs[col]
            if (low is not None and number < low) or (high is not None and number > high):
                row_flags.append(name)
        flags.append(row_flags)
    if problems:
        records_at_fault = len({p["record"] for p in problems})
        listed = "" if len(problems) <= MAX_DETAILS else f" (the first {MAX_DETAILS} listed)"
        raise invalid(
            f"{len(problems)} problem(s){listed} in {records_at_fault} of "
            f"{len(records)} record(s); expected fields: {', '.join(features)}",
            problems[:MAX_DETAILS],
        )
    return ValidatedInput(matrix.astype(np.float32), flags)
