"""The run contract (docs/run-contract.md): what training writes and the registry and API read.

One place for the names and numbers that ``pipelines/`` (the writer), ``registry_bridge/``
and ``api/`` (the readers) must agree on. It lives in ``conf/`` because every layer already
imports ``conf`` and ``conf.settings`` itself needs the family list; it imports nothing
heavy (no MLflow, scikit-learn or numpy), so API workers and the CLI load it for free.
"""

from __future__ import annotations

import re
from typing import Any

# The six features, in the column order of the ONNX input and of every table.
FEATURES: tuple[str, ...] = (
    "pelvic_incidence",
    "pelvic_tilt",
    "lumbar_lordosis_angle",
    "sacral_slope",
    "pelvic_radius",
    "degree_spondylolisthesis",
)

# Model families the study can search, in display order (plots colour them by position).
# Adding a family: its name here, plus its builder and search space in pipelines/families.py.
FAMILIES: tuple[str, ...] = (
    "logistic_regression",
    "svc",
    "knn",
    "random_forest",
    "gradient_boosting",
    "xgboost",
)

# The ONNX graph: one float32 input, a label output and a probabilities tensor (zipmap off).
ONNX_INPUT = "input"
ONNX_INPUT_TYPE = "float32"
ONNX_LABEL = "label"
ONNX_PROBABILITIES = "probabilities"
# The ``onnx_io`` block of a model card and of a version document.
ONNX_IO: dict[str, str] = {
    "input_name": ONNX_INPUT,
    "input_type": ONNX_INPUT_TYPE,
    "label_output": ONNX_LABEL,
    "probabilities_output": ONNX_PROBABILITIES,
}

# Largest |ONNX probability - scikit-learn probability| accepted at publish and verify.
PARITY_TOLERANCE = 1e-5
# The run artifact publishing reads: features, input schema, classes, evaluation data.
MODEL_CARD = "registry/model_card.json"
# Rows of the evaluation data kept as the version's input example (re-scored on activate).
EXAMPLE_ROWS = 5

# The metrics a promotion rule may name (``promotion.rules``), each with whether greater is
# better (MLflow's ``MetricThreshold.greater_is_better``). They are the test metrics of
# pipelines/metrics.py, computed the same way on the reference set; the binary ones (at
# the version's own threshold) exist for 2-class versions only. ``roc_auc`` is
# ``roc_auc_ovr`` (one-vs-rest macro average; for two classes, the plain ROC AUC).
GATE_METRICS: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1_macro": True,
    "roc_auc": True,
    "roc_auc_ovr": True,
    "log_loss": False,
    "sensitivity": True,
    "specificity": True,
    "precision": True,
    "npv": True,
    "auc": True,
    "fpr": False,
    "fnr": False,
    "fdr": False,
}


def cv_mean_key(metric: str) -> str:
    """The MLflow metric holding a metric's cross-validation mean: ``cv_<metric>_mean``."""
    return f"cv_{metric}_mean"


def cv_std_key(metric: str) -> str:
    """The MLflow metric holding a metric's cross-validation spread: ``cv_<metric>_std``."""
    return f"cv_{metric}_std"


# Model names: one rule for the CLI, the API and the store (docs/registry.md). A name ends
# up in file names (<name>-v<N>.onnx), HTTP headers, tables and MongoDB filters, so it is
# plain ASCII without separators, line breaks, "$" operators or a leading dot.
MAX_NAME_LENGTH = 100
NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} ASCII letters, digits, '.', '_' or '-', "
    "starting with a letter or digit"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Version numbers are stored as BSON 64-bit integers.
MAX_VERSION = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit and int() also take "٢" and "1_0"


class ContractError(ValueError):
    """A value the contract refuses; ``field`` and ``problem`` go in an error's details."""

    def __init__(self, field: str, problem: str, message: str):
        super().__init__(message)
        self.field = field
        self.problem = problem


def check_model_name(value: Any) -> str:
    """``value`` when it follows NAME_RULE.

    Raises:
        ContractError: missing, not a text, too long, or a character outside the rule.
    """
    if not isinstance(value, str) or not value:
        problem = "missing" if value is None or value == "" else "not a text"
        raise ContractError("name", problem, f"'name' must be {NAME_RULE}, got {_shown(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise ContractError(
            "name",
            "too long",
            f"'name' must be at most {MAX_NAME_LENGTH} characters, got {len(value)}",
        )
    if not _NAME.fullmatch(value):
        raise ContractError(
            "name", "not allowed", f"'name' must be {NAME_RULE}, got {_shown(value)}"
        )
    return value


def parse_version(value: Any) -> int:
    """A version number from an int or its text (``"3"``, ``"v3"``), 1 to MAX_VERSION.

    Raises:
        ContractError: not a whole number of ASCII digits, below 1, or above MAX_VERSION.
    """
    wanted = f"'version' must be a positive whole number, got {_shown(value)}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        problem = "missing" if value is None else "not a whole number"
        raise ContractError("version", problem, wanted)
    if isinstance(value, str):
        text = value.strip()
        text = text[1:] if text[:1] in ("v", "V") else text
        if not _DIGITS.fullmatch(text):
            raise ContractError("version", "not a whole number", wanted)
        if len(text.lstrip("0")) > len(str(MAX_VERSION)):
            # Refused before int(): a million-digit text must not cost a conversion.
            raise ContractError("version", "too large", _too_large(len(text.lstrip("0"))))
        value = int(text)
    if value < 1:
        raise ContractError("version", "not positive", wanted)
    if value > MAX_VERSION:
        # Digits estimated from the bits: str() of a huge int is refused by Python itself.
        raise ContractError(
            "version", "too large", _too_large(int(value.bit_length() * 0.30103) + 1)
        )
    return value


def _shown(value: Any) -> str:
    # The value is the client's: echo a bounded part of it.
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else "a huge int"
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} chars)"


def _too_large(digits: int) -> str:
    return f"'version' must be at most {MAX_VERSION}, got a {digits}-digit number"
