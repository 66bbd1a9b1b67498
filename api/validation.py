"""Turn a request body into a float matrix for the model, or a 400 listing every problem.

Accepted JSON shapes (DESIGN.md, "HTTP API"): one record ``{feature: value}``,
``{"records": [...]}``, and MLflow's ``dataframe_records``, ``dataframe_split`` and
``instances`` (``inputs`` too); ``/invocations`` also takes a CSV body. Values must be
JSON numbers (CSV cells: numeric text), finite and present for every feature of the
version's ``input_schema``; unknown fields are refused. Values outside the training
range are served but flagged per record.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry_bridge.errors import RegistryError

# Keys that mark a wrapped payload rather than a single record.
_WRAPPERS = ("records", "dataframe_records", "dataframe_split", "instances", "inputs")
_MISSING: Any = object()  # a field absent from a record (None means JSON null)
MAX_DETAILS = 100  # problems listed in one 400 (the message gives the total)
MAX_COLUMNS = 10_000  # a CSV header wider than this is refused before it is parsed
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise invalid(
                f"duplicate key {shown(key)!r} in a JSON object: each field once",
                [{"field": shown(key), "problem": "duplicate key"}],
            )
        found[key] = value
    return found


def parse_json(data: bytes, content_length: int | None = None) -> Any:
    """A request body as JSON: UTF-8 only, no duplicate keys, bounded nesting.

    Raises:
        RegistryError: INVALID_INPUT naming the problem (body shorter than its
            Content-Length, not UTF-8, malformed, duplicate key, nested too deep).
    """
    if content_length is not None and len(data) < content_length:
        raise invalid(
            f"the body ended after {len(data)} of the {content_length} bytes its "
            "Content-Length announced (client disconnected?)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(
            f"the body is not UTF-8 text (byte {exc.start}); JSON must be UTF-8"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise invalid("the JSON is nested too deeply") from None
    except ValueError as exc:
        raise invalid(f"malformed JSON: {exc}") from None


def extract_records(payload: Any) -> list[Any]:
    """The list of records inside any accepted JSON shape.

    Raises:
        RegistryError: INVALID_INPUT when the shape is none of the accepted ones.
    """
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        raise invalid(
            'the body must be a JSON object: one record, or {"records": [...]}, '
            "or MLflow's dataframe_records / dataframe_split / instances"
        )
    wrappers = [key for key in _WRAPPERS if key in payload]
    if not wrappers:
        return [payload]
    if len(wrappers) > 1 or len(payload) > 1 + ("params" in payload):
        extra = sorted(set(payload) - {wrappers[0], "params"})
        raise invalid(f"give exactly one of {', '.join(_WRAPPERS)}; also found: {', '.join(extra)}")
    key = wrappers[0]
    body = payload[key]
    if key == "dataframe_split":
        return _split_records(body)
    if isinstance(body, dict) and key in ("instances", "inputs"):
        return _columns_records(body, key)
    if not isinstance(body, list):
        raise invalid(f"'{key}' must be a list of records, got {type(body).__name__}")
    return body


def _split_records(body: Any) -> list[Any]:
    if not isinstance(body, dict) or "columns" not in body or "data" not in body:
        raise invalid("'dataframe_split' must be an object with 'columns' and 'data'")
    columns, data = body["columns"], body["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise invalid("'dataframe_split.columns' must be a list of field names")
    if not isinstance(data, list):
        raise invalid("'dataframe_split.data' must be a list of rows")
    records: list[Any] = []
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise invalid(
                f"'dataframe_split.data' row {index} must be a list of "
                f"{len(columns)} values (one per column)",
                [{"record": index, "problem": "wrong number of values"}],
            )
        records.append(dict(zip(columns, row, strict=False)))
    return records


def _columns_records(body: dict[str, Any], key: str) -> list[Any]:
    # MLflow's columnar form: {"instances": {"feature": [v0, v1, ...], ...}}.
    lengths = {len(v) if isinstance(v, list) else -1 for v in body.values()}
    if not body or -1 in lengths or len(lengths) != 1:
        raise invalid(f"'{key}' as an object must map each field to a list of equal length")
    size = lengths.pop()
    return [{name: values[i] for name, values in body.items()} for i in range(size)]


def check_count(records: Sequence[Any], max_records: int) -> None:
    """400 for no records, 413 for more than ``max_records``."""
    if not records:
        raise invalid("no records to predict: the input is empty")
    if len(records) > max_records:
        raise RegistryError(
            "PAYLOAD_TOO_LARGE",
            f"{len(records)} records in one request; the limit is {max_records} "
            f"(use /batch-predict for more)",
        )


def _number(value: Any, from_text: bool) -> tuple[float | None, str | None]:
    """(value, None) or (None, problem)."""
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
            number, problem = _number(value, from_text)
            if problem is not None:
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


def csv_records(text: str) -> list[dict[str, str]]:
    """Records of a small CSV body (``/invocations``): header row, ',' or ';' delimiter.

    Raises:
        RegistryError: INVALID_INPUT when there is no header or a row has extra cells.
    """
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise invalid("the CSV body is empty: expected a header row and data rows")
    delimiter = sniff_delimiter(lines[0])
    check_width(lines[0], delimiter)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    records: list[dict[str, str]] = []
    for line, row in enumerate(reader, start=2):
        if not row or all(cell.strip() == "" for cell in row):
            continue
        if len(row) != len(header):
            raise invalid(
                f"line {line}: {len(row)} cells for {len(header)} columns",
                [{"line": line, "problem": "wrong number of cells"}],
            )
        records.append(dict(zip(header, row, strict=False)))
    return records


def check_width(header_line: str, delimiter: str) -> None:
    """400 for a header of more than MAX_COLUMNS columns (parsing it would take the worker)."""
    columns = header_line.count(delimiter) + 1
    if columns > MAX_COLUMNS:
        raise invalid(
            f"line 1: the CSV header has {columns} columns; at most {MAX_COLUMNS} are accepted",
            [{"line": 1, "problem": "too many columns"}],
        )


def sniff_delimiter(header_line: str) -> str:
    """';' when the header has more semicolons than commas (European exports), else ','."""
    return ";" if header_line.count(";") > header_line.count(",") else ","


def missing_columns(columns: Iterable[str], schema: InputSchema) -> list[str]:
    """The schema's fields absent from ``columns``, in schema order."""
    present = set(columns)
    return [name for name in schema.features if name not in present]
