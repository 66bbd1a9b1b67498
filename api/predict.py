"""Predictions: ``/predict``, ``/invocations`` (MLflow scoring drop-in) and ``/batch-predict``
for the default name, and ``/models/<name>/predict``, ``/models/<name>/batch-predict`` and
``/models/<name>/versions/<v>/predict`` (a pinned version) for every served name."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flask import Blueprint, Response, g, jsonify, request, send_file

from api import registry
from api.active import Resolved, routing_key
from api.batch import run_batch
from api.body import MB, body_stream, read_body
from api.capture import current as capture_of_app
from api.capture import flask_request_id
from api.metrics import BATCH_ROWS
from api.observe import predicted
from api.shadow import offer as shadow_offer
from api.validation import (
    check_count,
    check_json_size,
    csv_records,
    extract_records,
    parse_json,
)
from registry_bridge.canary import KEY_HEADER
from registry_bridge.errors import RegistryError
from registry_bridge.scoring import (
    MAX_DETAILS,
    Decision,
    LoadedModel,
    ValidatedInput,
    decide,
    invalid,
    validate_records,
)

bp = Blueprint("predict", __name__)

JSON_TYPES = "application/json"
# The environ key under which api/fast.py hands over the version it resolved.
RESOLVED = "vertebral.resolved"
CSV_TYPE = "text/csv"


def serving(name: str | None = None, version: str | None = None) -> Resolved:
    """The version for this request (remembered for the response headers).

    Args:
        name: a served model name; None is the default name (``/predict``), whose version
            the fast path may have resolved already when it handed the request over.
        version: a pinned version of ``name`` (else its active one).

    Raises:
        RegistryError: NOT_FOUND for a name not served or a version missing or deleted.
    """
    models = registry().models
    handed = request.environ.get(RESOLVED)  # resolved by api/fast.py, which handed it over
    if version is None and handed is not None and name in (None, handed.model.name):
        resolved = handed
    elif name is None:
        resolved = registry().active.resolve()
    elif version is None:
        resolved = models.get(name).resolve()
    else:
        resolved = models.pinned(name, version)
    g.served = resolved
    return resolved


def routed(body: bytes | bytearray, version: str | None) -> LoadedModel:
    """The model answering this request: while a canary runs, its version for the requests
    in its share (by ``X-Request-Key``, else by the body; registry_bridge/canary.py); a
    pinned version is never rerouted."""
    served: Resolved = g.served
    if version is None and served.router is not None:
        key = routing_key(request.headers.get(KEY_HEADER), body)
        served = g.served = served.router.route(served, key)
    return served.model


def body_limit() -> int:
    """Bytes accepted by /predict and /invocations: api.max_request_mb, within the upload cap."""
    settings = registry().settings.api
    return min(settings.max_request_mb, settings.max_upload_mb) * MB


def _unsupported(allowed: str) -> RegistryError:
    given = request.mimetype or "none"
    return RegistryError(
        "UNSUPPORTED_MEDIA_TYPE", f"Content-Type {given} is not accepted here; send {allowed}"
    )


def _records(model: LoadedModel) -> tuple[list[Any], bool, bytes | bytearray]:
    """The body's records (and whether cells are text, and the body), read under the body
    and record limits."""
    max_records = registry().settings.api.max_records
    if request.is_json:
        body = read_body(body_limit())
        check_json_size(body, max_records, len(model.schema.features))
        return extract_records(parse_json(body)), False, body
    # Otherwise a CSV body: _predict refused every other media type before this.
    body = read_body(body_limit(), max_lines=max_records + 1)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the CSV body is not UTF-8 text") from None
    return csv_records(text), True, body


class Scored:
    """A request's records scored: the validated input, the labels and the decision, the
    same whichever protocol answers (``/predict``, ``api/fast.py``, OIP in ``api/oip.py``).

    ``body`` is the native answer (``/predict``, ``/invocations``), built on first use:
    another protocol's adapter builds its own from the decision instead.
    """

    __slots__ = ("_body", "checked", "decision", "labels", "model")

    def __init__(
        self, model: LoadedModel, checked: ValidatedInput, labels: list[str], decision: Decision
    ):
        self.model = model
        self.checked = checked
        self.labels = labels
        self.decision = decision
        self._body: dict[str, Any] | None = None

    @property
    def body(self) -> dict[str, Any]:
        """``{"model": {name, version, run_id}, "predictions": [...]}``."""
        if self._body is None:
            decision = self.decision
            predictions = [
                {
                    "label": label,
                    "probability": probability,
                    "probabilities": dict(zip(self.model.classes, row, strict=True)),
                    "out_of_range": flags,
                }
                for label, probability, row, flags in zip(
                    self.labels,
                    decision.probability.tolist(),
                    decision.probabilities.tolist(),
                    self.checked.out_of_range,
                    strict=True,
                )
            ]
            self._body = {"model": self.model.identity(), "predictions": predictions}
        return self._body


def score(model: LoadedModel, records: Sequence[Any], from_text: bool = False) -> Scored:
    """Validate, predict and decide: the one scoring call of every protocol.

    Args:
        records: dicts keyed by feature, or lists in the model's feature order.

    Raises:
        RegistryError: INVALID_INPUT naming the records at fault (bad fields, or no
            finite probabilities).
    """
    checked = validate_records(records, model.schema, from_text=from_text)
    decision = decide(model, model.predict(checked.matrix))
    if not decision.finite.all():  # extreme (if finite) values overflow inside the model
        unscored = np.flatnonzero(~decision.finite)
        raise invalid(
            f"the model gives no finite probabilities for {unscored.size} record(s): "
            "values too far outside the training range",
            [
                {
                    "record": int(i),
                    "problem": "no finite probabilities; out of range: "
                    + (", ".join(checked.out_of_range[i]) or "none"),
                }
                for i in unscored[:MAX_DETAILS]
            ],
        )
    return Scored(model, checked, decision.labels.tolist(), decision)


def _predict(accept_csv: bool, name: str | None = None, version: str | None = None) -> Response:
    if not request.is_json and not (accept_csv and request.mimetype == CSV_TYPE):
        raise _unsupported(f"{JSON_TYPES} or {CSV_TYPE}" if accept_csv else JSON_TYPES)
    model = serving(name, version).model
    records, from_text, body = _records(model)
    check_count(records, registry().settings.api.max_records)
    scored = score(routed(body, version), records, from_text)
    # predict or invocations: the endpoint, whatever the name's path
    captured(scored, request.path.rstrip("/").rpartition("/")[2])
    # Every answer names its request, captured or not: the id feedback labels (POST /feedback).
    return jsonify({**scored.body, "request_id": flask_request_id()})


def captured(scored: Scored, source: str) -> None:
    """Count a Flask request's predictions, and capture them when it is sampled."""
    model = scored.model
    # Off the request path: records only enter a bounded queue (api/capture.py).
    capture = capture_of_app()
    started = g.get("started")
    latency_ms = (time.perf_counter() - started) * 1000 if started else None
    if capture.sampled():
        capture.record(
            source,
            model,
            scored.checked.matrix,
            scored.labels,
            scored.decision.probabilities,
            request_id=flask_request_id(),
            latency_ms=latency_ms,
        )
    served = g.get("served")
    if served is not None and served.router is not None:  # shadow traffic (api/shadow.py)
        shadow_offer(
            served, scored.checked.matrix, scored.labels, flask_request_id(), latency_ms or 0.0
        )
    predicted(model, len(scored.labels))


@bp.post("/predict")
def predict() -> Response:
    """Score one record or a list of records with the active version."""
    return _predict(accept_csv=False)


@bp.post("/invocations")
def invocations() -> Response:
    """MLflow scoring-server drop-in: the same JSON shapes, plus a CSV body."""
    return _predict(accept_csv=True)


@bp.post("/models/<name>/predict")
def predict_name(name: str) -> Response:
    """``/predict`` for the active version of a served name."""
    return _predict(accept_csv=False, name=name)


@bp.post("/models/<name>/versions/<version>/predict")
def predict_pinned(name: str, version: str) -> Response:
    """``/predict`` for one version of a served name, active or not (comparisons and
    reproducible calls); its answer names that version."""
    return _predict(accept_csv=False, name=name, version=version)


@bp.post("/models/<name>/batch-predict")
def batch_predict_name(name: str) -> Response:
    """``/batch-predict`` for the active version of a served name."""
    return batch_predict(name)


@bp.post("/batch-predict")
def batch_predict(name: str | None = None) -> Response:
    """Score a CSV upload in chunks; answer the CSV, or a JSON summary with ?format=json."""
    answer = request.args.get("format", "csv")
    on_error = request.args.get("on_error", "fail")
    if answer not in ("csv", "json"):
        raise invalid(
            f"format must be csv or json, got {answer!r}",
            [{"field": "format", "problem": "unknown value"}],
        )
    if on_error not in ("fail", "skip"):
        raise invalid(
            f"on_error must be fail or skip, got {on_error!r}",
            [{"field": "on_error", "problem": "unknown value"}],
        )
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise invalid(
                "multipart upload without a 'file' field", [{"field": "file", "problem": "missing"}]
            )
        stream = upload.stream  # spooled to a temporary file by werkzeug, under its limit
    elif request.mimetype == CSV_TYPE:
        stream = body_stream(registry().settings.api.max_upload_mb * MB)
    else:
        raise _unsupported(f"multipart/form-data with a 'file' field, or {CSV_TYPE}")
    model = serving(name).model
    settings = registry().settings.api
    capture = capture_of_app()
    result = run_batch(
        stream,
        model,
        settings.output_dir,
        settings.batch_chunk_rows,
        on_error,
        settings.output_retention,
        on_chunk=functools.partial(capture.record_batch_rows, model) if capture.enabled else None,
    )
    version = str(model.version)
    BATCH_ROWS.labels(model.name, version, "predicted").inc(result.predicted)
    if result.errors:
        BATCH_ROWS.labels(model.name, version, "error").inc(result.errors)
    predicted(model, result.predicted)
    if answer == "json":
        result.saved.close()
        response = jsonify(result.summary())
    else:
        response = send_file(
            result.saved,
            mimetype=CSV_TYPE,
            as_attachment=True,
            download_name=result.job_path.name,
            max_age=0,
        )
    response.headers["X-Job-Id"] = result.job_id
    # Names relative to OUTPUT_DIR: an answer never reveals where the server keeps files.
    response.headers["X-Saved-Path"] = result.latest_path.name
    return response
