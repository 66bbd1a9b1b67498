"""CSV formula injection: text a spreadsheet would evaluate is neutralised before it is written.

OWASP's rule: a cell (or column name) starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return is prefixed with ``'``, so spreadsheets show it as text instead of
running it; quoting the cell does not stop them. Plain numbers such as ``-0.25`` or
``+1e3`` are left as they are (a feature value must round-trip), and NUL bytes are
removed. Every CSV the project writes from client data goes through ``csv_safe``.
"""

from __future__ import annotations

import re

import pyarrow as pa
from pyarrow import compute as pa_compute

_RISKY = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_RISKY_RE = re.compile(_RISKY)
_NUMBER_RE = re.compile(_NUMBER)


def safe_text(value: str) -> str:
    """One cell or column name as it may be written to a CSV."""
    value = value.replace("\x00", "")
    if _RISKY_RE.match(value) and not _NUMBER_RE.match(value):
        return "'" + value
    return value


def _safe_column(column: pa.Array) -> pa.Array:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    column = pa_compute.replace_substring(column, "\x00", "")
    risky = pa_compute.match_substring_regex(column, _RISKY)
    if not pa_compute.any(risky).as_py():
        return column
    risky = pa_compute.and_(
        risky, pa_compute.invert(pa_compute.match_substring_regex(column, _NUMBER))
    )
    return pa_compute.if_else(risky, pa_compute.binary_join_element_wise("'", column, ""), column)


def csv_safe(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with every text cell and column name made safe for a spreadsheet."""
    return pa.RecordBatch.from_arrays(
        [_safe_column(column) for column in batch.columns],
        names=[safe_text(name) for name in batch.schema.names],
    )
