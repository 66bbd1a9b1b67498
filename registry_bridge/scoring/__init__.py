"""The Flask-free scoring core: one contract for /predict, /batch-predict, Spark and capture.

- ``schema``: a version's input schema and the checks of records and column names;
- ``session``: the one place an onnxruntime session is built, and a loaded version;
- ``columns``: the one place label, probability and ``prob_<class>`` are derived;
- ``csv_safe``: text cells neutralised against spreadsheet formula injection;
- ``chunk``: scoring a block of Arrow/pandas columns with the error policy
  (``fail`` naming the row, or ``skip`` keeping an ``error`` column).

Import the public names from here; they are stable.
"""

from registry_bridge.scoring.chunk import ON_ERROR, score_batch, score_frame
from registry_bridge.scoring.columns import (
    Decision,
    decide,
    output_names,
    probability_column,
)
from registry_bridge.scoring.csv_safe import csv_safe, safe_text
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
