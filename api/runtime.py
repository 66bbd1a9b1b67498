"""Run a version's ONNX bytes with onnxruntime; sessions cached per (name, version).

The bytes come from the store already checked against their sha256; they are handed
to ``onnxruntime.InferenceSession`` as a serialized ONNX graph, which is data, not
code: nothing read from the database is ever unpickled.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from api.validation import InputSchema
from registry_bridge.errors import RegistryError

log = logging.getLogger(__name__)

_ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.InvalidArgument,
)

# Sessions kept per process: the active version, the one rolled back to, and a spare.
CACHE_SIZE = 4


@dataclass(frozen=True)
class Prediction:
    """Labels, the probability of each label, and the full probability matrix."""

    labels: list[str]
    probabilities: np.ndarray  # shape (rows, classes), columns in LoadedModel.classes order


@dataclass(frozen=True)
class LoadedModel:
    """One version ready to serve: its identity, parsed schema and ONNX session."""

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


def _pick_outputs(session: ort.InferenceSession, onnx_io: dict[str, str]) -> tuple[str, str]:
    """The label and probabilities outputs: as the version names them, else by type."""
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    named = (onnx_io.get("label_output"), onnx_io.get("probabilities_output"))
    if all(n in names for n in named):
        return named  # type: ignore[return-value]
    if "label" in names and "probabilities" in names:
        return "label", "probabilities"
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
    input_schema: Sequence[dict[str, Any]],
    onnx_bytes: bytes,
    sha256: str | None = None,
    onnx_io: dict[str, str] | None = None,
) -> LoadedModel:
    """Build an ONNX session from verified bytes and check it fits the schema.

    Raises:
        RegistryError: CONFLICT naming the version when the graph does not match its
            metadata (input width, outputs, class count).
    """
    where = f"model {name!r} version {version}"
    try:
        options = ort.SessionOptions()
        # Two cores shared by gunicorn workers: one intra-op thread each avoids oversubscription.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
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
    except (ValueError, KeyError, TypeError, *_ORT_ERRORS) as exc:
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
    )
    probe = model.predict(np.zeros((1, len(schema.features)), dtype=np.float32))
    if probe.probabilities.shape[1] != len(model.classes):
        raise RegistryError(
            "CONFLICT",
            f"{where} gives {probe.probabilities.shape[1]} "
            f"probabilities for {len(model.classes)} classes",
        )
    log.info("loaded %s (sha256 %s)", where, (sha256 or "?")[:12])
    return model


class SessionCache:
    """Loaded versions per (name, version), least recently used dropped beyond CACHE_SIZE."""

    def __init__(self, size: int = CACHE_SIZE):
        self._size = size
        self._models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def peek(self, name: str, version: int) -> LoadedModel | None:
        """The loaded version, or None (no I/O: the hot path)."""
        return self._models.get((name, version))

    def get_or_load(
        self, name: str, version: int, loader: Callable[[], LoadedModel]
    ) -> LoadedModel:
        """The cached version, loading it once even when many threads ask at once."""
        key = (name, version)
        found = self._models.get(key)
        if found is not None:
            return found
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            found = self._models.get(key)
            if found is not None:
                return found
            model = loader()
            with self._lock:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self._size:
                    self._models.popitem(last=False)
                self._loading.pop(key, None)
            return model
