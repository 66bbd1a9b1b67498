"""CSV formula injection: text a spreadsheet would evaluate is neutralised before it is written.

OWASP's rule: a cell (or column name) starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return is prefixed with ``'``, so spreadsheets show it as text instead of
running it; quoting the cell does not stop them. Spaces before such a character count
too: a writer or a spreadsheet that trims them (Spark's CSV writer does by default)
would otherwise leave a bare formula. Plain numbers such as ``-0.25`` or
``+1e3`` are left as they are (a feature value must round-trip), and NUL bytes are
removed. Every CSV the project writes from client data goes through ``csv_safe``.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from pyarrow import compute as pa_compute

_RISKY = r"^[ \n]*[=+\-@\t\r]"
_RISKY_FIRST = np.frombuffer(b"=+-@\t\r \n", dtype=np.uint8)  # first bytes of _RISKY
_NUMBER = r"^ *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *$"
_RISKY_RE = re.compile(_RISKY)
_NUMBER_RE = re.compile(_NUMBER)


def safe_text(value: str) -> str:
    """One cell or column name as it may be written to a CSV."""
    value = value.replace("\x00", "")
    if _RISKY_RE.match(value) and not _NUMBER_RE.match(value):
        return "'" + value
    return value


def _first_bytes(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the non-empty cells and their first bytes, read from the Arrow
    buffers (no per-cell objects)."""
    _, offsets_buffer, data_buffer = column.buffers()
    if data_buffer is None or len(column) == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.uint8)
    kind = np.dtype(np.int64 if pa.types.is_large_string(column.type) else np.int32)
    offsets: np.ndarray = np.frombuffer(offsets_buffer, dtype=kind)[
        column.offset : column.offset + len(column) + 1
    ]
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    filled = np.flatnonzero(offsets[1:] > offsets[:-1])
    return filled, data[offsets[:-1][filled]] if filled.size else np.empty(0, np.uint8)


def _safe_column(column: pa.Array) -> pa.Array:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    buffers = column.buffers()
    if buffers[2] is not None and (np.frombuffer(buffers[2], dtype=np.uint8) == 0).any():
        column = pa_compute.replace_substring(column, "\x00", "")
    filled, firsts = _first_bytes(column)
    at = filled[np.isin(firsts, _RISKY_FIRST)]
    if not at.size:
        return column
    try:  # the usual case, a column of numbers some negative: one vectorised cast
        pa_compute.cast(column, pa.float64())
        return column
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    candidates = column.take(pa.array(at))
    risky = pa_compute.match_substring_regex(candidates, _RISKY).fill_null(False)
    numeric = pa_compute.match_substring_regex(candidates, _NUMBER).fill_null(False)
    at = at[risky.to_numpy(zero_copy_only=False) & ~numeric.to_numpy(zero_copy_only=False)]
    if not at.size:
        return column
    mask = np.zeros(len(column), dtype=bool)
    mask[at] = True
    quote, nothing = pa.scalar("'", column.type), pa.scalar("", column.type)
    prefixed = pa_compute.binary_join_element_wise(quote, column, nothing)
    return pa_compute.if_else(pa.array(mask), prefixed, column)


def csv_safe(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with every text cell and column name made safe for a spreadsheet."""
    return pa.RecordBatch.from_arrays(
        [_safe_column(column) for column in batch.columns],
        names=[safe_text(name) for name in batch.schema.names],
    )
