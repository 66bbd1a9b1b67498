"""Turn a request body into records for the scoring core, or a 400 naming the problem.

Accepted JSON shapes (DESIGN.md, "HTTP API"): one record ``{feature: value}``,
``{"records": [...]}``, and MLflow's ``dataframe_records``, ``dataframe_split`` and
``instances`` (``inputs`` too); ``/invocations`` also takes a CSV body. What a record
must hold is checked by ``registry_bridge.scoring`` (the same rules as batch and Spark).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from registry_bridge.errors import RegistryError
from registry_bridge.scoring import MAX_DETAILS, invalid, shown

__all__ = [
    "MAX_COLUMNS",
    "check_count",
    "check_json_size",
    "check_width",
    "csv_records",
    "extract_records",
    "parse_json",
    "sniff_delimiter",
]

# Keys that mark a wrapped payload rather than a single record.
_WRAPPERS = ("records", "dataframe_records", "dataframe_split", "instances", "inputs")
MAX_COLUMNS = 10_000  # a CSV header wider than this is refused before it is parsed
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
MAX_JSON_STRING = 64 * 1024  # bytes in one JSON string of a /predict body
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')
# One line with its line break (\n, \r\n or \r alone), or the last line without one.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


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


def parse_json(data: bytes | bytearray, content_length: int | None = None) -> Any:
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


def check_json_size(data: bytes | bytearray, max_records: int, width: int) -> None:
    """Refuse, before parsing, a JSON body whose parsed form would outgrow the record limit.

    Counted on the bytes (each value but the last of an array or object follows a comma;
    each array or object opens with a bracket), so the parsed objects stay within what
    ``max_records`` records need whatever the body's shape. A string longer than
    MAX_JSON_STRING is refused too: no feature value is a string, no name is that long,
    and one non-Latin character would make Python hold it at 4 bytes a character.

    Raises:
        RegistryError: PAYLOAD_TOO_LARGE naming the record limit (too many values);
            INVALID_INPUT naming the byte where an overlong string starts.
    """
    budget = max_records * (width + 2) + 64
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    if values > budget:
        raise RegistryError(
            "PAYLOAD_TOO_LARGE",
            f"the JSON body holds more than {budget} values, more than {max_records} "
            f"records of {width} fields need; the limit is {max_records} records",
            [{"field": "body", "problem": "too many values", "limit_records": max_records}],
        )
    # Whole strings, one after the other, so text between two strings is never taken
    # for one; the count above bounds how many there are.
    for string in _JSON_STRING.finditer(data):
        if string.end() - string.start() > MAX_JSON_STRING:
            raise invalid(
                f"a JSON string at byte {string.start()} is longer than {MAX_JSON_STRING} "
                "bytes; feature values are numbers and field names are short",
                [{"field": "body", "problem": "string too long", "limit_bytes": MAX_JSON_STRING}],
            )


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
    _refuse_duplicates(columns, "'dataframe_split.columns'", {})
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


def _refuse_duplicates(names: Sequence[str], where: str, detail: dict[str, Any]) -> None:
    """400 naming a column given twice: "last one wins" would silently drop a value."""
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise invalid(
            f"{where}: column(s) {', '.join(shown(n) for n in twice)} given more than once; "
            "each column once",
            [{**detail, "field": shown(n), "problem": "duplicate column"} for n in twice][
                :MAX_DETAILS
            ],
        )


def csv_records(text: str) -> list[dict[str, str]]:
    """Records of a small CSV body (``/invocations``): header row, ',' or ';' delimiter.

    Lines may end in ``\n``, ``\r\n`` or ``\r`` alone.

    Raises:
        RegistryError: INVALID_INPUT naming the line when there is no header, a column
            is repeated, a row has extra cells or a cell cannot be read (e.g. a field
            over ``csv.field_size_limit()`` characters).
    """
    text = text.lstrip("\ufeff")
    end = _LINE_BREAK.search(text)
    first_line = text[: end.start()] if end else text
    if not first_line.strip():
        raise invalid("the CSV body is empty: expected a header row and data rows")
    delimiter = sniff_delimiter(first_line)
    check_width(first_line, delimiter)
    # Lines handed over one at a time: io.StringIO would hold the text again, at up to
    # 4 bytes a character.
    lines = (line.group() for line in _LINE.finditer(text))
    reader = csv.reader(lines, delimiter=delimiter)
    records: list[dict[str, str]] = []
    try:
        header = [h.strip() for h in next(reader)]
        _refuse_duplicates(header, "line 1", {"line": 1})
        for row in reader:
            if not row or all(cell.strip() == "" for cell in row):
                continue
            if len(row) != len(header):
                raise invalid(
                    f"line {reader.line_num}: {len(row)} cells for {len(header)} columns",
                    [{"line": reader.line_num, "problem": "wrong number of cells"}],
                )
            records.append(dict(zip(header, row, strict=True)))
    except csv.Error as exc:
        line = reader.line_num
        raise invalid(
            f"line {line}: the CSV cannot be read: {exc}",
            [{"line": line, "problem": "unreadable row"}],
        ) from None
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
