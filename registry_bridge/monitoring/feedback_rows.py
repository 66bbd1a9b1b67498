"""The rows of a feedback call: JSON or CSV parsed and checked, and refused row by row.

What a client sends to ``POST /feedback`` or ``bridge feedback --data`` becomes a list of
:class:`LabelRow` here, or one INVALID_INPUT naming every malformed row (``{"row",
"request_id", "field", "problem"}``, rows counted from 1); the join to captured requests
and the write are in :mod:`.feedback`. Whatever is echoed back is neutralised
(:func:`echoed`). No database, no Flask.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry_bridge.errors import RegistryError
from registry_bridge.scoring.csv_safe import safe_text

# Labels accepted in one call (JSON or CSV): one call is one database write of at most a
# few documents, ~0.5 MB, and is answered within the goal of 2 s.
MAX_LABELS = 10_000
# The largest feedback body or file: 10,000 rows of a 64-character id and a label.
MAX_FEEDBACK_BYTES = 2 * 1024 * 1024
MAX_REQUEST_ID_CHARS = 64  # api/capture.py's request ids: [A-Za-z0-9._:-]{1,64}
MAX_LABEL_CHARS = 100
MAX_RECORD = 2**31 - 1  # a record's row is stored as int32
MAX_DETAILS = 100  # problems listed in one refusal (the message gives the total)
_PLAIN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CSV_COLUMNS = ("request_id", "label", "record")  # record: optional


@dataclass(frozen=True)
class LabelRow:
    """One label as sent: its row in the call (from 1), the request id, the label, and the
    record of the request (None: not given, i.e. 0)."""

    row: int
    request_id: str
    label: str
    record: int | None = None


# --- echoing what a client sent ------------------------------------------------------


def echoed(value: Any, limit: int = MAX_REQUEST_ID_CHARS) -> str:
    """A client's value as an answer or a terminal may show it: plain ids unchanged, any
    other text ASCII-escaped (no control, escape or bidirectional character), cut to
    ``limit`` characters, and never starting like a spreadsheet formula."""
    text = value if isinstance(value, str) else repr(value)
    if not _PLAIN_ID.match(text):
        text = ascii(text)[1:-1]
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} chars)"
    return safe_text(text)


def row_problem(row: LabelRow | int, field_name: str, problem: str, request_id: Any = None) -> dict:
    number = row.row if isinstance(row, LabelRow) else row
    given = row.request_id if isinstance(row, LabelRow) else request_id
    detail: dict[str, Any] = {"row": number}
    if given is not None:
        detail["request_id"] = echoed(given)
    detail.update(field=field_name, problem=problem)
    return detail


def refusal(problems: list[dict[str, Any]], rows: int) -> RegistryError:
    """INVALID_INPUT listing the first MAX_DETAILS problems; nothing was stored."""
    shown = problems[:MAX_DETAILS]
    more = f" (the first {MAX_DETAILS} are listed)" if len(problems) > MAX_DETAILS else ""
    first = shown[0]
    return RegistryError(
        "INVALID_INPUT",
        f"{len(problems)} of {rows} label row(s) refused{more}; nothing was stored. "
        f"Row {first['row']}: {first['field']} {first['problem']}",
        shown,
    )


def too_many(count: int | str) -> RegistryError:
    return RegistryError(
        "PAYLOAD_TOO_LARGE",
        f"{count} labels in one call; at most {MAX_LABELS} (send several calls)",
        [{"field": "labels", "problem": "too many", "limit_records": MAX_LABELS}],
    )


def too_large() -> RegistryError:
    return RegistryError(
        "PAYLOAD_TOO_LARGE",
        f"the feedback is larger than the limit of {MAX_FEEDBACK_BYTES // (1024 * 1024)} MB",
        [{"field": "body", "problem": "too large", "limit_bytes": MAX_FEEDBACK_BYTES}],
    )


def describe_problem(detail: Mapping[str, Any]) -> str:
    """One refusal detail as a line: ``row 3 (request abc-1): label ... is not a class``."""
    where = f"row {detail['row']}" if "row" in detail else f"line {detail.get('line', '?')}"
    if "request_id" in detail:
        where += f" (request {detail['request_id']})"
    return f"{where}: {detail.get('field', '')} {detail.get('problem', '')}"


# --- parsing: JSON and CSV -----------------------------------------------------------


def parse_json_labels(body: Any) -> list[LabelRow]:
    """``{"labels": [{"request_id", "label", "record"?}, ...]}`` as rows.

    Raises:
        RegistryError: INVALID_INPUT naming each malformed row, PAYLOAD_TOO_LARGE beyond
            MAX_LABELS.
    """
    if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
        raise RegistryError(
            "INVALID_INPUT",
            'the body must be {"labels": [{"request_id": "...", "label": "..."}, ...]}',
            [{"field": "labels", "problem": "missing or not a list"}],
        )
    items = body["labels"]
    if len(items) > MAX_LABELS:
        raise too_many(len(items))
    rows, problems = [], []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            problems.append(row_problem(number, "labels", "is not an object"))
            continue
        unknown = sorted(set(item) - set(CSV_COLUMNS))
        if unknown:
            keys = ", ".join(echoed(k, 40) for k in unknown[:5])
            problems.append(
                row_problem(number, "labels", f"has unknown keys: {keys}", item.get("request_id"))
            )
            continue
        row, problem = _row(number, item.get("request_id"), item.get("label"), item.get("record"))
        if problem:
            problems.append(problem)
        elif row is not None:
            rows.append(row)
    if problems:
        raise refusal(problems, len(items))
    return rows


def parse_csv_labels(text: str) -> list[LabelRow]:
    """A CSV with the header ``request_id,label`` (and optionally ``record``) as rows.

    Raises:
        RegistryError: INVALID_INPUT naming the header or each malformed row,
            PAYLOAD_TOO_LARGE beyond MAX_LABELS rows.
    """
    lines = text.lstrip("\ufeff").splitlines()
    data_lines = sum(1 for line in lines[1:] if line.strip())
    if data_lines > MAX_LABELS:
        raise too_many(data_lines)
    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader, [])]
    except csv.Error as exc:
        raise _bad_csv(1, exc) from None
    if header[:2] != ["request_id", "label"] or header[2:] not in ([], ["record"]):
        raise RegistryError(
            "INVALID_INPUT",
            "the CSV's header must be request_id,label (or request_id,label,record), got "
            f"{echoed(','.join(header), 80)!r}",
            [{"line": 1, "field": "header", "problem": "not request_id,label[,record]"}],
        )
    rows, problems, number = [], [], 0
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue  # blank lines
            number += 1
            if len(cells) != len(header):
                problems.append(
                    row_problem(
                        number,
                        "row",
                        f"has {len(cells)} cell(s), not {len(header)} (line {reader.line_num})",
                        cells[0] if cells else None,
                    )
                )
                continue
            record = cells[2].strip() if len(cells) > 2 else ""
            row, problem = _row(number, cells[0].strip(), cells[1].strip(), record or None)
            if problem:
                problems.append(problem)
            elif row is not None:
                rows.append(row)
    except csv.Error as exc:
        raise _bad_csv(reader.line_num, exc) from None
    if problems:
        raise refusal(problems, number)
    return rows


def _bad_csv(line: int, exc: Exception) -> RegistryError:
    return RegistryError(
        "INVALID_INPUT",
        f"the CSV is malformed at line {line}: {echoed(str(exc), 120)}",
        [{"line": line, "field": "body", "problem": "malformed CSV"}],
    )


def parse_labels_file(data: bytes, kind: str | None = None) -> list[LabelRow]:
    """A feedback file's rows: JSON (``kind`` "json", or text starting with ``{``) or CSV.

    Raises:
        RegistryError: PAYLOAD_TOO_LARGE beyond MAX_FEEDBACK_BYTES, INVALID_INPUT otherwise.
    """
    if len(data) > MAX_FEEDBACK_BYTES:
        raise too_large()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(
            "INVALID_INPUT",
            f"the feedback is not UTF-8 text (byte {exc.start})",
            [{"field": "body", "problem": "not UTF-8"}],
        ) from None
    if kind == "json" or (kind is None and text.lstrip("\ufeff \t\r\n").startswith("{")):
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise RegistryError(
                "INVALID_INPUT",
                f"the feedback is not valid JSON: {echoed(str(exc), 120)}",
                [{"field": "body", "problem": "malformed JSON"}],
            ) from None
        return parse_json_labels(body)
    return parse_csv_labels(text)


def _row(
    number: int, request_id: Any, label: Any, record: Any
) -> tuple[LabelRow | None, dict[str, Any] | None]:
    """One row checked: (the row, None) or (None, its first problem)."""
    if not isinstance(request_id, str) or not request_id.strip():
        return None, row_problem(number, "request_id", "is missing or not a text", request_id)
    if len(request_id) > MAX_REQUEST_ID_CHARS or not _PLAIN_ID.match(request_id):
        return None, row_problem(
            number,
            "request_id",
            f"is not a request id of this API (1 to {MAX_REQUEST_ID_CHARS} of A-Z a-z 0-9 . _ : -)",
            request_id,
        )
    if not isinstance(label, str) or not label.strip():
        return None, row_problem(number, "label", "is missing or not a text", request_id)
    if len(label) > MAX_LABEL_CHARS:
        return None, row_problem(
            number,
            "label",
            f"is {len(label)} characters long; at most {MAX_LABEL_CHARS}",
            request_id,
        )
    index = None
    if record is not None:
        if isinstance(record, str) and record.isascii() and record.isdigit() and len(record) < 11:
            record = int(record)
        if isinstance(record, bool) or not isinstance(record, int) or not 0 <= record <= MAX_RECORD:
            return None, row_problem(
                number, "record", "must be a whole number from 0 (the record's index)", request_id
            )
        index = record
    return LabelRow(number, request_id, label.strip(), index), None
