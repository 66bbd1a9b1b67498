"""The Open Inference Protocol's part of ``/openapi.json`` (the paths of ``api/oip.py``).

Kept apart from ``api/openapi.py`` because its error body is the protocol's
``{"error": "<message>"}``, not the native one, and its schemas are the protocol's.
"""

from __future__ import annotations

from typing import Any

from api.oip import NUMERIC, OUTPUTS
from registry_bridge.errors import openapi_responses

_ERROR = {"$ref": "#/components/schemas/OipError"}

# Parameters: scalar values, as the protocol says. Objects are closed (additionalProperties
# false) and arrays typed, so that a fuzzer draws from these shapes rather than from "any
# JSON" (schemathesis' generator of any JSON trips a CPython 3.11 race in ast.parse when
# it runs two workers; the server ignores unknown keys either way).
_PARAMETERS = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}

SCHEMAS: dict[str, Any] = {
    "OipError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "OipTensor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "parameters": _PARAMETERS,
            "name": {
                "type": "string",
                "description": "any name for the one [N, F] tensor; a feature's name for "
                "one [N] tensor per feature",
            },
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"enum": sorted(NUMERIC)},
            "data": {
                "type": "array",
                "items": {"type": "number"},
                "description": "row-major, flat (nested arrays are accepted too)",
            },
        },
    },
    "OipInferRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _PARAMETERS,
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/OipTensor"},
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {"name": {"enum": list(OUTPUTS)}, "parameters": _PARAMETERS},
                },
            },
        },
    },
    "OipInferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"enum": list(OUTPUTS)},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"enum": ["BYTES", "FP32"]},
                        "parameters": {"type": "object"},
                        "data": {"type": "array"},
                    },
                },
            },
        },
    },
}


def _errors(*codes: str) -> dict[str, Any]:
    return openapi_responses(codes, _ERROR)


def _ok(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


# CONFLICT: a pinned version whose bytes fail their sha256 (an active one is a 503).
_RESOLVE = (
    "INVALID_INPUT",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "NO_ACTIVE_MODEL",
    "REGISTRY_UNAVAILABLE",
)
_INFER = (*_RESOLVE, "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE")


def paths(name: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    """``/v2...``; ``name`` and ``version`` are the path parameters' descriptions."""
    model_metadata = {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "object"}},
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
    }
    ready = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    infer = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/OipInferRequest"}}
            },
        },
        "responses": {
            "200": _ok({"$ref": "#/components/schemas/OipInferResponse"}),
            **_errors(*_INFER),
        },
    }
    found: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "Open Inference Protocol: server metadata",
                "responses": {"200": _ok({"type": "object", "required": ["name", "version"]})},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Open Inference Protocol: liveness",
                "responses": {"200": _ok({"type": "object", "required": ["live"]})},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Open Inference Protocol: the registry answers and the default "
                "model's active version is loaded (else 503)",
                "responses": {
                    "200": _ok({"type": "object", "required": ["ready"]}),
                    **_errors("FORBIDDEN", "NO_ACTIVE_MODEL", "REGISTRY_UNAVAILABLE"),
                },
            }
        },
    }
    for prefix, parameters, what in (
        ("/v2/models/{name}", [name], "the active version of a served model"),
        ("/v2/models/{name}/versions/{version}", [name, version], "one version"),
    ):
        found[prefix] = {
            "get": {
                "summary": f"Open Inference Protocol: metadata of {what}",
                "parameters": parameters,
                "responses": {"200": _ok(model_metadata), **_errors(*_RESOLVE)},
            }
        }
        found[f"{prefix}/ready"] = {
            "get": {
                "summary": f"Open Inference Protocol: readiness of {what} (else 503)",
                "parameters": parameters,
                "responses": {"200": _ok(ready), **_errors(*_RESOLVE)},
            }
        }
        found[f"{prefix}/infer"] = {
            "post": {
                "summary": f"Open Inference Protocol: score with {what}; outputs label "
                "(BYTES [N]), probability (FP32 [N]) and probabilities (FP32 [N, C], "
                "classes in parameters.classes)",
                "parameters": parameters,
                **infer,
            }
        }
    return found
