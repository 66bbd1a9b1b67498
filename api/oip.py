"""The Open Inference Protocol (KServe "V2", Triton, MLServer), REST: a thin adapter.

Paths (``/v2``): server metadata, ``health/live``, ``health/ready``, a model's (or a
pinned version's) metadata and readiness, and ``infer``. ``infer`` turns the request's
tensors into the records the scoring core takes (:func:`api.predict.score`, the one
call of every protocol) and the core's decision back into tensors:

- inputs: one numeric tensor ``[N, F]`` whose columns are the model's features in its
  order (``metadata.inputs``), or one tensor ``[N]`` (or ``[N, 1]``) per feature, named
  by the feature, as MLServer's pandas codec sends a data frame;
- outputs: ``label`` (BYTES ``[N]``), ``probability`` (FP32 ``[N]``: the label's, or
  P(positive class) for a binary version, as ``/predict``) and ``probabilities`` (FP32
  ``[N, C]``, the class order in the output's ``parameters.classes``, comma-separated).

Errors here are the protocol's ``{"error": "<message>"}`` with the native status (a 4xx
for the client's mistakes, naming the input at fault); every other path keeps the
native error body. Binary tensor data (``Inference-Header-Content-Length``) is refused:
the JSON form carries the six features of a record in a few dozen bytes anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from api import registry
from api.active import Resolved
from api.body import read_body
from api.errors import native_answer
from api.predict import JSON_TYPES, Scored, body_limit, captured, routed, score, serving
from api.validation import check_count, check_json_size, parse_json
from registry_bridge.errors import RegistryError
from registry_bridge.scoring import LoadedModel, invalid, shown

bp = Blueprint("oip", __name__, url_prefix="/v2")

SERVER_NAME = "vertebral-registry"
PLATFORM = "onnxruntime_onnx"
TENSOR_INPUT = "input"  # the name metadata gives the [N, F] tensor (any name is accepted)
LABEL, PROBABILITY, PROBABILITIES = "label", "probability", "probabilities"
OUTPUTS = (LABEL, PROBABILITY, PROBABILITIES)
_INTEGERS = (f"{sign}INT{bits}" for sign in ("", "U") for bits in (8, 16, 32, 64))
NUMERIC = frozenset(("FP16", "FP32", "FP64", *_INTEGERS))
BINARY_HEADER = "Inference-Header-Content-Length"
MAX_LISTED = 5  # problems named in one error message (the message gives the total)


@bp.errorhandler(Exception)
def _error(exc: Exception) -> Response:
    """The protocol's error body around the native answer's status and message."""
    native = native_answer(exc)
    body = native.get_json(silent=True) or {}
    message = (body.get("error") or {}).get("message") or "error"
    response = jsonify({"error": message})
    response.status_code = native.status_code
    for header in ("Allow", "WWW-Authenticate"):
        if header in native.headers:
            response.headers[header] = native.headers[header]
    return response


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def _routing_error(exc: HTTPException) -> Response:
    """An unknown path or a wrong method under /v2: no blueprint matched it, so the
    app's handlers would answer; the protocol's body there, the native one elsewhere."""
    if request.path == bp.url_prefix or request.path.startswith(f"{bp.url_prefix}/"):
        return _error(exc)
    return native_answer(exc)


@bp.get("")
def server_metadata() -> Response:
    """``$metadata_server_response``."""
    try:
        version = metadata.version("vertebral-registry")
    except metadata.PackageNotFoundError:  # running from a checkout that was not installed
        version = "0"
    return jsonify({"name": SERVER_NAME, "version": version, "extensions": []})


@bp.get("/health/live")
def live() -> Response:
    """The process answers (no database access)."""
    return jsonify({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    """Ready as ``/ready``: the registry answers and the default name's version is loaded."""
    _confirmed(serving())
    return jsonify({"ready": True})


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    """``$metadata_model_response`` of a served name's active version, or of one version."""
    model = serving(name, version).model
    if version is None:
        versions = [str(v.version) for v in registry().store.search_model_versions(name)]
    else:
        versions = [str(model.version)]
    features = model.schema.features
    return jsonify(
        {
            "name": name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": TENSOR_INPUT,
                    "datatype": "FP32",
                    "shape": [-1, len(features)],
                    "parameters": {"features": ",".join(features)},
                }
            ],
            "outputs": [
                {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
                {"name": PROBABILITY, "datatype": "FP32", "shape": [-1]},
                {
                    "name": PROBABILITIES,
                    "datatype": "FP32",
                    "shape": [-1, len(model.classes)],
                    "parameters": {"classes": ",".join(model.classes)},
                },
            ],
        }
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """200 when the version would answer now from a confirmed pointer, else 503."""
    _confirmed(serving(name, version))
    return jsonify({"name": name, "ready": True})


def _confirmed(resolved: Resolved) -> None:
    """Refuse readiness to a version served stale (the registry could not confirm it)."""
    if resolved.stale:
        raise RegistryError(
            "NO_ACTIVE_MODEL",
            f"{resolved.reason}; still serving {resolved.model.name} "
            f"v{resolved.model.version} from memory",
        )


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """``$inference_request`` -> ``$inference_response``."""
    if BINARY_HEADER in request.headers:
        raise invalid(
            f"binary tensor data ({BINARY_HEADER}) is not accepted; send the tensors' "
            "data as JSON (tritonclient: binary_data=False)"
        )
    if request.mimetype and request.mimetype != JSON_TYPES:
        raise RegistryError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type {shown(request.mimetype)} is not accepted here; send {JSON_TYPES}",
        )
    model = serving(name, version).model
    max_records = registry().settings.api.max_records
    body = read_body(body_limit())
    check_json_size(body, max_records, len(model.schema.features))
    answer, scored = respond(name, routed(body, version), parse_json(body), max_records)
    captured(scored, "infer")
    return jsonify(answer)


def respond(
    name: str, model: LoadedModel, payload: Any, max_records: int
) -> tuple[dict[str, Any], Scored]:
    """An inference request's answer by ``model`` (Flask-free: any server may call it).

    Raises:
        RegistryError: INVALID_INPUT naming the input at fault; PAYLOAD_TOO_LARGE beyond
            ``max_records`` rows.
    """
    if not isinstance(payload, dict):
        raise invalid("the body must be a JSON object with 'inputs' (an inference request)")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    wanted = _requested_outputs(payload.get("outputs"))
    records, names = _records(payload.get("inputs"), model)
    check_count(records, max_records)
    try:
        scored = score(model, records)
    except RegistryError as exc:
        raise _named(exc, names) from None
    answer: dict[str, Any] = {"model_name": name, "model_version": str(model.version)}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"] = [_output(scored, output) for output in wanted]
    return answer, scored


def _requested_outputs(outputs: Any) -> tuple[str, ...]:
    """The outputs asked for, in their order (all three when ``outputs`` is absent)."""
    if outputs is None:
        return OUTPUTS
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise invalid("'outputs' must be a list of objects, each with a 'name'")
    names = [o.get("name") for o in outputs]
    for given in names:
        if given not in OUTPUTS:
            raise invalid(
                f"output {shown(given)!r} is not one of this model's: {', '.join(OUTPUTS)}"
            )
    if len(set(names)) != len(names):
        raise invalid("an output is requested more than once in 'outputs'")
    return tuple(names)


def _records(inputs: Any, model: LoadedModel) -> tuple[list[list[Any]], list[str]]:
    """Rows in the model's feature order, and the input naming each feature (for errors)."""
    if not isinstance(inputs, list) or not inputs:
        raise invalid("'inputs' must be a non-empty list of tensors")
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise invalid(f"inputs[{index}] must be an object with a 'name'")
    features = model.schema.features
    if len(inputs) == 1 and inputs[0]["name"] not in model.schema.names:
        tensor = inputs[0]
        data = _data(tensor, 2)
        rows, width = tensor["shape"]
        if width != len(features):
            raise invalid(
                f"input {shown(tensor['name'])!r} has shape {tensor['shape']}: expected "
                f"[N, {len(features)}], one column per feature in this order: "
                f"{', '.join(features)}"
            )
        return [data[i * width : (i + 1) * width] for i in range(rows)], [tensor["name"]]
    return _columns(inputs, features)


def _columns(
    inputs: list[dict[str, Any]], features: Sequence[str]
) -> tuple[list[list[Any]], list[str]]:
    """One input per feature (MLServer's pandas codec): rows from the columns."""
    by_name: dict[str, list[Any]] = {}
    for tensor in inputs:
        given = tensor["name"]
        if given not in features:
            raise invalid(
                f"input {shown(given)!r} is not a feature of this model: send one [N, "
                f"{len(features)}] tensor, or one [N] tensor per feature: {', '.join(features)}"
            )
        if given in by_name:
            raise invalid(f"input {given!r} is given more than once")
        by_name[given] = _data(tensor, 1)
    missing = [f for f in features if f not in by_name]
    if missing:
        raise invalid(f"missing input(s) {', '.join(map(repr, missing))}: one per feature")
    rows = len(by_name[features[0]])
    for given, column in by_name.items():
        if len(column) != rows:
            raise invalid(
                f"input {given!r} has {len(column)} values, input {features[0]!r} {rows}: "
                "every feature needs one value per row"
            )
    columns = [by_name[f] for f in features]
    return [list(row) for row in zip(*columns, strict=True)], list(features)


def _data(tensor: dict[str, Any], dims: int) -> list[Any]:
    """A tensor's data, flat, checked against its datatype and shape.

    ``dims`` is 2 for the ``[N, F]`` tensor, 1 for a feature's column (``[N, 1]`` too).
    """
    name = shown(tensor["name"])
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and "binary_data_size" in parameters:
        raise invalid(f"input {name!r}: binary tensor data is not accepted; send JSON data")
    if datatype not in NUMERIC:
        raise invalid(
            f"input {name!r}: datatype {shown(datatype)!r} is not numeric; "
            f"send FP32 or FP64 (or an integer type)"
        )
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise invalid(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if dims == 1 and len(shape) == 2 and shape[1] == 1:
        shape = [shape[0]]
    if len(shape) != dims:
        expected = "[N, F]" if dims == 2 else "[N] (or [N, 1])"
        raise invalid(f"input {name!r} has shape {shape}: expected {expected}")
    data = _flat(tensor.get("data"), name)
    if len(data) != math.prod(shape):
        raise invalid(
            f"input {name!r}: shape {tensor['shape']} holds {math.prod(shape)} values, "
            f"'data' has {len(data)}"
        )
    return data


def _flat(data: Any, name: str) -> list[Any]:
    """Row-major data, given flat or nested (both are the protocol's)."""
    if not isinstance(data, list):
        raise invalid(f"input {name!r}: 'data' must be a list of numbers")
    while data and all(isinstance(item, list) for item in data):
        data = [value for item in data for value in item]
    if any(isinstance(item, list) for item in data):
        raise invalid(f"input {name!r}: 'data' is nested unevenly; give it flat, row-major")
    return data


def _named(exc: RegistryError, names: list[str]) -> RegistryError:
    """The core's error about records and fields, told in inputs and elements."""
    if exc.code != "INVALID_INPUT" or not exc.details:
        return exc
    tensor = len(names) == 1
    told = []
    for detail in exc.details[:MAX_LISTED]:
        row, field, problem = detail.get("record"), detail.get("field"), detail.get("problem")
        if tensor:
            where = f"input {shown(names[0])!r} row {row}" + (
                f", column {field!r}" if field else ""
            )
        else:
            where = f"input {field!r} element {row}" if field else f"row {row}"
        told.append(f"{where}: {problem}")
    more = len(exc.details) - MAX_LISTED
    suffix = f" (and {more} more)" if more > 0 else ""
    return invalid("; ".join(told) + suffix, exc.details)


def _output(scored: Scored, name: str) -> dict[str, Any]:
    decision, rows = scored.decision, len(scored.labels)
    if name == LABEL:
        return {"name": LABEL, "datatype": "BYTES", "shape": [rows], "data": scored.labels}
    if name == PROBABILITY:
        return {
            "name": PROBABILITY,
            "datatype": "FP32",
            "shape": [rows],
            "data": decision.probability.tolist(),
        }
    classes = scored.model.classes
    return {
        "name": PROBABILITIES,
        "datatype": "FP32",
        "shape": [rows, len(classes)],
        "parameters": {"classes": ",".join(classes)},
        "data": decision.probabilities.ravel().tolist(),
    }
