"""The one place a prediction's label, its probability and ``prob_<class>`` are derived.

Every output (``/predict``'s JSON, ``/batch-predict``'s CSV, Spark's columns) takes
them from ``decide``, so a decision rule (e.g. a binary version's threshold) applies
everywhere at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from registry_bridge.scoring.session import LoadedModel, Prediction
from registry_bridge.scoring.threshold import threshold_labels

PREDICTION = "prediction"
PROBABILITY = "probability"
MODEL_VERSION = "model_version"
ERROR = "error"
SMALL_BATCH = 64  # below this, a dictionary lookup per row beats pandas' hashing set-up


def probability_column(label: str) -> str:
    """The output column holding the probability of class ``label``."""
    return f"prob_{label}"


def output_names(classes: Sequence[str]) -> list[str]:
    """The columns scoring adds to its input, in order (``error`` only with on_error=skip)."""
    return [PREDICTION, PROBABILITY, *map(probability_column, classes), MODEL_VERSION, ERROR]


@dataclass(frozen=True)
class Decision:
    """Per scored row: the label, its probability, all probabilities, and usability.

    ``finite`` is False for a row whose probabilities are not all finite (extreme inputs
    can overflow inside the model): such a row has no usable prediction.
    """

    labels: np.ndarray  # object array of class names
    # float32: probability of the chosen label; a binary version's P(positive class)
    probability: np.ndarray
    probabilities: np.ndarray  # float32 (rows, classes), columns in model.classes order
    column: np.ndarray  # intp, index of the chosen label in model.classes
    finite: np.ndarray  # bool


def _decide_one(model: LoadedModel, label: str, probabilities: np.ndarray) -> Decision:
    """:func:`decide` for the usual single record of /predict, in plain Python: under load
    its nine numpy calls on 1-row arrays cost ~30 µs of a worker's ~365 µs (py-spy)."""
    row = probabilities[0].tolist()
    column = model.column_of.get(label, 0)
    return Decision(
        np.array([label], dtype=object),
        np.array([row[column]], dtype=np.float32),
        probabilities,
        np.array([column], dtype=np.intp),
        np.array([all(map(math.isfinite, row))]),
    )


def decide(model: LoadedModel, prediction: Prediction) -> Decision:
    """Derive label and probability of each row from what the model gave.

    A binary version with a ``threshold`` labels rows by it (not by the graph's argmax)
    and reports the positive class's probability, as the lab's endpoint did.
    """
    probabilities = np.asarray(prediction.probabilities, dtype=np.float32)
    if len(prediction.labels) == 1 and model.threshold is None:
        return _decide_one(model, prediction.labels[0], probabilities)
    finite = np.asarray(np.isfinite(probabilities).all(axis=1), dtype=bool)
    if model.threshold is not None and model.positive_class is not None:
        column, positive = threshold_labels(
            probabilities, model.classes, model.threshold, model.positive_class
        )
        labels = np.asarray(model.classes, dtype=object)[column]
        return Decision(labels, positive, probabilities, column, finite)
    labels = np.asarray(prediction.labels, dtype=object)
    column_of = model.column_of
    if len(labels) <= SMALL_BATCH:  # /predict's usual few records: pandas costs ~0.5 ms here
        column = np.array([column_of.get(label, 0) for label in labels], dtype=np.intp)
    else:
        # Hash each label once (np.unique would sort a million strings).
        codes, found = pd.factorize(labels)
        column = np.array([column_of.get(label, 0) for label in found], dtype=np.intp)[codes]
    rows = np.arange(len(labels))
    return Decision(labels, probabilities[rows, column], probabilities, column, finite)
