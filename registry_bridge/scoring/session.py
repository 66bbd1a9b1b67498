"""The one place an onnxruntime session is built, and a version loaded ready to score.

The bytes come from the store already checked against their sha256; they are handed
to ``onnxruntime.InferenceSession`` as a serialized ONNX graph, which is data, not
code: nothing read from the database is ever unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from conf.contract import ONNX_LABEL, ONNX_PROBABILITIES
from registry_bridge.errors import RegistryError, first_line
from registry_bridge.scoring.schema import InputSchema

log = logging.getLogger(__name__)


def build_session(onnx_bytes: bytes, what: str) -> ort.InferenceSession:
    """An onnxruntime session over serialized ONNX bytes (CPU, one thread per operator).

    Every caller (API workers, publishing's parity check, training, Spark executors)
    builds its session here, so all of them run the graph with the same options.

    Raises:
        RegistryError: CONFLICT naming ``what`` when onnxruntime cannot load the bytes.
    """
    options = ort.SessionOptions()
    # Two cores shared by the API's workers (or Spark tasks): one thread each avoids
    # oversubscription, and the parallelism comes from the processes.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # onnxruntime warns on stderr otherwise; errors still raise
    try:
        return ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors on a bad graph
        raise RegistryError(
            "CONFLICT",
            f"{what}: the ONNX model does not load in onnxruntime: {first_line(exc)}",
        ) from None


@dataclass(frozen=True)
class Prediction:
    """Labels, the probability of each label, and the full probability matrix."""

    labels: list[str]
    probabilities: np.ndarray  # shape (rows, classes), columns in LoadedModel.classes order


@dataclass(frozen=True)
class LoadedModel:
    """One version ready to score: its identity, parsed schema and ONNX session.

    ``threshold`` is the decision threshold of a binary version on P(``positive_class``)
    (None: the model's label).
    """

    name: str
    version: int
    run_id: str | None
    classes: tuple[str, ...]
    schema: InputSchema
    session: ort.InferenceSession
    input_name: str
    label_output: str
    probabilities_output: str
    sha256: str | None = None
    threshold: float | None = None
    positive_class: str | None = None

    @property
    def column_of(self) -> dict[str, int]:
        """Class name -> its column in the probabilities (built once per class tuple)."""
        return _column_index(self.classes)

    def identity(self) -> dict[str, Any]:
        """``{name, version, run_id}`` as every prediction reports it."""
        return {"name": self.name, "version": self.version, "run_id": self.run_id}

    def predict(self, matrix: np.ndarray) -> Prediction:
        """Score a float32 matrix whose columns follow ``schema.features``."""
        labels, probabilities = self.session.run(
            [self.label_output, self.probabilities_output], {self.input_name: matrix}
        )
        return Prediction([str(label) for label in labels], np.asarray(probabilities))


_COLUMN_INDEX: dict[tuple[str, ...], dict[str, int]] = {}


def _column_index(classes: tuple[str, ...]) -> dict[str, int]:
    index = _COLUMN_INDEX.get(classes)
    if index is None:
        index = _COLUMN_INDEX[classes] = {c: i for i, c in enumerate(classes)}
    return index


def _pick_outputs(session: ort.InferenceSession, onnx_io: Mapping[str, str]) -> tuple[str, str]:
    """The label and probabilities outputs: as the version names them, else by type."""
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    label, probs = onnx_io.get("label_output"), onnx_io.get("probabilities_output")
    if label in names and probs in names:
        return str(label), str(probs)
    if ONNX_LABEL in names and ONNX_PROBABILITIES in names:
        return ONNX_LABEL, ONNX_PROBABILITIES
    label = next((o.name for o in outputs if "float" not in o.type), None)
    probs = next((o.name for o in outputs if "float" in o.type), None)
    if label is None or probs is None:
        raise ValueError(f"expected a label and a probabilities output, found {names}")
    return label, probs


def load_model(
    name: str,
    version: int,
    run_id: str | None,
    classes: Sequence[str],
    input_schema: Sequence[Mapping[str, Any]],
    onnx_bytes: bytes,
    sha256: str | None = None,
    onnx_io: Mapping[str, str] | None = None,
    threshold: float | None = None,
    positive_class: str | None = None,
) -> LoadedModel:
    """Build an ONNX session from verified bytes and check it fits the schema.

    Raises:
        RegistryError: CONFLICT naming the version when the graph does not match its
            metadata (input width, outputs, class count).
    """
    where = f"model {name!r} version {version}"
    session = build_session(onnx_bytes, f"{where} cannot be served")
    try:
        schema = InputSchema.from_fields(input_schema)
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"expected one input tensor, found {len(inputs)}")
        width = inputs[0].shape[-1]
        if isinstance(width, int) and width != len(schema.features):
            raise ValueError(
                f"the graph takes {width} features, the schema lists {len(schema.features)}"
            )
        label_output, prob_output = _pick_outputs(session, onnx_io or {})
        if threshold is not None and (len(classes) != 2 or positive_class not in classes):
            raise ValueError(
                f"a threshold needs two classes including its positive class "
                f"{positive_class!r}, the version has {list(classes)}"
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError("CONFLICT", f"{where} cannot be served: {exc}") from None
    model = LoadedModel(
        name,
        int(version),
        run_id,
        tuple(str(c) for c in classes),
        schema,
        session,
        inputs[0].name,
        label_output,
        prob_output,
        sha256,
        threshold,
        positive_class,
    )
    try:
        probe = model.predict(np.zeros((1, len(schema.features)), dtype=np.float32))
    except Exception as exc:  # onnxruntime's run errors have no common public base
        raise RegistryError("CONFLICT", f"{where} cannot be served: {first_line(exc)}") from None
    if probe.probabilities.shape[1] != len(model.classes):
        raise RegistryError(
            "CONFLICT",
            f"{where} gives {probe.probabilities.shape[1]} "
            f"probabilities for {len(model.classes)} classes",
        )
    log.info("loaded %s (sha256 %s)", where, (sha256 or "?")[:12])
    return model


def model_from_version(meta: Any, onnx_bytes: bytes) -> LoadedModel:
    """Load a store ``ModelVersion`` whose bytes were read (sha256-checked) by the store.

    The one way from registry metadata to a scoring model, for the API and Spark alike.
    """
    return load_model(
        meta.name,
        meta.version,
        meta.run_id,
        meta.classes,
        meta.input_schema,
        onnx_bytes,
        meta.sha256,
        onnx_io=meta.onnx_io,
        threshold=getattr(meta, "threshold", None),
        positive_class=getattr(meta, "positive_class", None),
    )
