"""The Flask-free scoring core: one contract for /predict, /batch-predict, Spark and capture.

- ``schema``: a version's input schema and the checks of records and column names;
- ``session``: the one place an onnxruntime session is built, and a loaded version;
- ``columns``: the one place label, probability and ``prob_<class>`` are derived;
- ``csv_safe``: text cells neutralised against spreadsheet formula injection;
- ``chunk``: scoring a block of Arrow/pandas columns with the error policy
  (``fail`` naming the row, or ``skip`` keeping an ``error`` column).

Import the public names from here; they are stable.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded here, not on first use: ``csv_safe`` is also the submodule's name, which the import
# system would bind on the package once any module imports that submodule.
from registry_bridge.scoring.csv_safe import csv_safe, safe_text

# The other public names load their module on first use (PEP 562). Importing any submodule
# runs this file first, and the CLI imports ``threshold`` and ``schema`` (numpy only, via
# onnx_check, promotion, publish, monitoring): loading ``chunk``, ``columns`` and ``session``
# here cost every ``bridge`` command pandas and onnxruntime, half its imports (importing
# registry_bridge.cli took 0.70-0.96 s, now 0.35-0.38 s; -X importtime, 2026-12-07).
_HOMES = {
    "ON_ERROR": "chunk",
    "score_batch": "chunk",
    "score_frame": "chunk",
    "Decision": "columns",
    "decide": "columns",
    "output_names": "columns",
    "probability_column": "columns",
    "FLOAT32_MAX": "schema",
    "MAX_DETAILS": "schema",
    "MAX_NAME_CHARS": "schema",
    "InputSchema": "schema",
    "ValidatedInput": "schema",
    "check_columns": "schema",
    "invalid": "schema",
    "shown": "schema",
    "validate_records": "schema",
    "LoadedModel": "session",
    "Prediction": "session",
    "build_session": "session",
    "load_model": "session",
    "model_from_version": "session",
}

if TYPE_CHECKING:
    from registry_bridge.scoring.chunk import ON_ERROR, score_batch, score_frame
    from registry_bridge.scoring.columns import (
        Decision,
        decide,
        output_names,
        probability_column,
    )
    from registry_bridge.scoring.schema import (
        FLOAT32_MAX,
        MAX_DETAILS,
        MAX_NAME_CHARS,
        InputSchema,
        ValidatedInput,
        check_columns,
        invalid,
        shown,
        validate_records,
    )
    from registry_bridge.scoring.session import (
        LoadedModel,
        Prediction,
        build_session,
        load_model,
        model_from_version,
    )


def __getattr__(name: str) -> Any:
    """A public name, its module imported on first use (and the name kept here)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "FLOAT32_MAX",
    "MAX_DETAILS",
    "MAX_NAME_CHARS",
    "ON_ERROR",
    "Decision",
    "InputSchema",
    "LoadedModel",
    "Prediction",
    "ValidatedInput",
    "build_session",
    "check_columns",
    "csv_safe",
    "decide",
    "invalid",
    "load_model",
    "model_from_version",
    "output_names",
    "probability_column",
    "score_batch",
    "safe_text",
    "score_frame",
    "shown",
    "validate_records",
]
