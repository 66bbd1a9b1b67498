"""Run ONNX bytes with onnxruntime, from memory, and compare them with recorded predictions.

Used by publishing (parity with the sklearn pipeline on the run's evaluation data) and
by activation and ``verify`` (re-scoring a version's input example). The bytes are only
ever parsed by onnxruntime: nothing read from MLflow or the database is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from conf.contract import EXAMPLE_ROWS, ONNX_IO, PARITY_TOLERANCE
from registry_bridge.errors import RegistryError, first_line
from registry_bridge.scoring.threshold import decide


@dataclass(frozen=True)
class Scores:
    """What the model said for each row: a label and one probability per class."""

    labels: list[str]
    probabilities: np.ndarray


def load_session(artifact: bytes, what: str) -> Any:
    """An onnxruntime session over ``artifact``, built by the scoring core's one builder.

    Raises:
        RegistryError: CONFLICT naming ``what`` when onnxruntime cannot load the bytes.
    """
    # Imported here: the CLI imports this module, and only some commands run a model.
    from registry_bridge.scoring.session import build_session

    return build_session(artifact, what)


def score(
    session: Any,
    inputs: Sequence[Sequence[float]] | np.ndarray,
    onnx_io: Mapping[str, str],
    what: str,
) -> Scores:
    """Run ``inputs`` (rows of features) through the session.

    Raises:
        RegistryError: CONFLICT naming ``what`` when the graph refuses the input or lacks an output.
    """
    io = {**ONNX_IO, **onnx_io}
    try:
        batch = np.asarray(inputs, dtype=np.dtype(io["input_type"]))
        labels, probabilities = session.run(
            [io["label_output"], io["probabilities_output"]], {io["input_name"]: batch}
        )
    except Exception as exc:  # onnxruntime's InvalidArgument/Fail have no common public base
        raise RegistryError(
            "CONFLICT",
            f"{what}: the ONNX model cannot score its input example: {first_line(exc)}",
        ) from None
    return Scores(
        [str(label) for label in np.asarray(labels).ravel()],
        np.asarray(probabilities, dtype=np.float64),
    )


def compare(
    expected: Mapping[str, Any],
    actual: Scores,
    classes: Sequence[str],
    what: str,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Check ``actual`` against recorded labels and probabilities; the largest |Δp| on success.

    Raises:
        RegistryError: CONFLICT naming ``what``, the first row that differs and by how much.
    """
    labels = [str(label) for label in expected.get("labels", [])]
    wanted = np.asarray(expected.get("probabilities", []), dtype=np.float64)
    threshold, positive = expected.get("threshold"), expected.get("positive_class")
    if (
        actual.probabilities.shape != (len(labels), len(classes))
        or wanted.shape != actual.probabilities.shape
    ):
        raise RegistryError(
            "CONFLICT",
            f"{what}: expected probabilities of shape ({len(labels)}, {len(classes)}) "
            f"for classes {list(classes)}, the ONNX model gave {actual.probabilities.shape}",
        )
    served = actual.labels
    if threshold is not None and positive is not None:
        # A binary version serves the threshold's label: that is what was recorded.
        try:
            served = [str(c) for c in decide(actual.probabilities, classes, threshold, positive)[0]]
        except ValueError as exc:
            raise RegistryError("CONFLICT", f"{what}: {exc}") from None
    for row, (want, got) in enumerate(zip(labels, served, strict=False)):
        if want != got:
            raise RegistryError(
                "CONFLICT",
                f"{what}: row {row} of the evaluation data is labelled "
                f"{got!r} by the ONNX model but {want!r} by the recorded model",
            )
    differences = np.abs(wanted - actual.probabilities)
    worst = float(differences.max()) if differences.size else 0.0
    if worst > tolerance:
        at_row, column = (int(i) for i in np.unravel_index(differences.argmax(), differences.shape))
        raise RegistryError(
            "CONFLICT",
            f"{what}: probability of {classes[column]!r} on row {at_row} differs by "
            f"{worst:.3g} from the recorded model (tolerance {tolerance:g})",
        )
    return worst


def check_predictions(
    artifact: bytes,
    expected: Mapping[str, Any],
    onnx_io: Mapping[str, str],
    classes: Sequence[str],
    what: str,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Load ``artifact``, score ``expected["inputs"]`` and compare; the largest |Δp| on success.

    Raises:
        RegistryError: CONFLICT naming ``what`` and the problem (no rows, load, score, mismatch).
    """
    inputs = expected.get("inputs") or []
    if not inputs:
        raise RegistryError("CONFLICT", f"{what}: no input example to score")
    session = load_session(artifact, what)
    return compare(expected, score(session, inputs, onnx_io, what), classes, what, tolerance)


def input_example(evaluation: Mapping[str, Any], rows: int = EXAMPLE_ROWS) -> dict[str, Any]:
    """The first ``rows`` rows of an evaluation block: what activation and verify re-score.

    A binary version's ``threshold`` and ``positive_class`` come along: its recorded
    labels are the threshold's.
    """
    example: dict[str, Any] = {
        key: list(evaluation.get(key, []))[:rows] for key in ("inputs", "labels", "probabilities")
    }
    for key in ("threshold", "positive_class"):
        if evaluation.get(key) is not None:
            example[key] = evaluation[key]
    return example
