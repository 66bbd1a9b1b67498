"""The OpenAPI 3.1 description served at ``/openapi.json`` (built once, from the code's tables).

Over 500 lines: one declarative table of every native path, its bodies and its errors;
the Open Inference Protocol's paths are in api/openapi_oip.py.
"""

from __future__ import annotations

import functools
from typing import Any

from api import openapi_oip
from conf.contract import FEATURES
from registry_bridge.errors import STATUS_BY_CODE, openapi_responses

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: str) -> dict[str, Any]:
    return openapi_responses(codes, _ERROR)


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """A required JSON request body with this schema."""
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema with these required keys and properties."""
    return {"type": "object", "required": required, "properties": properties}


_BATCH_SUMMARY = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "saved_path": {"type": "string", "description": "relative to OUTPUT_DIR"},
        "job_path": {"type": "string", "description": "relative to OUTPUT_DIR"},
        "rows": {"type": "integer"},
        "predicted": {"type": "integer"},
        "errors": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "duration_s": {"type": "number"},
        "model": {"type": "object"},
    },
}

_PREDICT_ERRORS = (
    "INVALID_INPUT",
    "FORBIDDEN",  # a browser's request from another site (api.hosts.cross_site_field)
    "PAYLOAD_TOO_LARGE",
    "UNSUPPORTED_MEDIA_TYPE",
    "NO_ACTIVE_MODEL",
    "REGISTRY_UNAVAILABLE",
)
_STALE = {
    "X-Model-Stale": {
        "description": "true when the registry database was unreachable "
        "and the loaded version answered",
        "schema": {"type": "string"},
    },
    "X-Model-Version": {
        "description": "the version that made the prediction",
        "schema": {"type": "integer"},
    },
}
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]  # no scopes


@functools.lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    """The whole document."""
    record = {
        "type": "object",
        "additionalProperties": False,
        "required": list(FEATURES),
        "properties": {f: {"type": "number"} for f in FEATURES},
    }
    predict_body = {
        "oneOf": [
            record,
            {
                "type": "object",
                "required": ["records"],
                "properties": {"records": {"type": "array", "items": record}},
            },
            {
                "type": "object",
                "required": ["dataframe_records"],
                "properties": {"dataframe_records": {"type": "array", "items": record}},
            },
            {
                "type": "object",
                "required": ["dataframe_split"],
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "data": {
                                "type": "array",
                                "items": {"type": "array", "items": {"type": "number"}},
                            },
                        },
                    }
                },
            },
            {
                "type": "object",
                "required": ["instances"],
                "properties": {"instances": {"type": "array"}},
            },
        ]
    }
    predict_op = {
        "requestBody": _json_body(predict_body),
        "responses": {
            "200": {**_json({"$ref": "#/components/schemas/Predictions"}), "headers": _STALE},
            **_errors(*_PREDICT_ERRORS),
        },
    }
    invocations_op = {
        **predict_op,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": predict_body},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
    }
    version_path = [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "version",
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        },
    ]
    # A name not served, or a version missing or deleted: 404.
    name_predict_op: dict[str, Any] = {
        **predict_op,
        "parameters": version_path[:1],
        "responses": {**predict_op["responses"], **_errors(*_PREDICT_ERRORS, "NOT_FOUND")},
    }
    pinned_op = {
        **name_predict_op,
        "parameters": version_path,
        # CONFLICT: the version's bytes fail their sha256 when it loads.
        "responses": {**name_predict_op["responses"], **_errors("CONFLICT")},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Vertebral column inference API",
            "version": "1.0.0",
            "description": "Serves the active registry version of every served model "
            "(ONNX), and pinned versions. Every error body is "
            '{"error": {code, message, details?}}, but under /v2 (the Open Inference '
            'Protocol), where it is the protocol\'s {"error": "<message>"}.',
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API_ADMIN_TOKEN (or, for /feedback, API_FEEDBACK_TOKEN)",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string", "enum": sorted(STATUS_BY_CODE)},
                                "message": {"type": "string"},
                                "details": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "record": {"type": "integer"},
                                            "line": {"type": "integer"},
                                            "row": {"type": "integer"},
                                            "request_id": {"type": "string"},
                                            "field": {"type": "string"},
                                            "problem": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        }
                    },
                },
                "Predictions": {
                    "type": "object",
                    "properties": {
                        "model": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "integer"},
                                "run_id": {"type": ["string", "null"]},
                            },
                        },
                        "request_id": {
                            "type": "string",
                            "description": "this request's id (also X-Request-Id): what "
                            "POST /feedback labels",
                        },
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "label": {"type": "string"},
                                    "probability": {"type": "number"},
                                    "probabilities": {
                                        "type": "object",
                                        "additionalProperties": {"type": "number"},
                                    },
                                    "out_of_range": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "description": "fields outside the training range",
                                    },
                                },
                            },
                        },
                    },
                },
                **openapi_oip.SCHEMAS,
                "ModelVersion": {
                    "type": "object",
                    "description": "a model_versions document (DESIGN.md) plus active: boolean",
                },
                "ActiveState": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "active_version": {"type": "integer"},
                        "previous_version": {"type": ["integer", "null"]},
                        # The promotion gate's report when it ran (docs/promotion.md).
                        "gate": {"type": "object"},
                    },
                },
            },
        },
        "paths": {
            "/predict": {"post": {"summary": "Predict one or many records", **predict_op}},
            "/invocations": {
                "post": {"summary": "MLflow scoring drop-in (JSON or CSV)", **invocations_op}
            },
            "/models/{name}/predict": {
                "post": {
                    "summary": "/predict for a served model's active version",
                    **name_predict_op,
                }
            },
            "/models/{name}/versions/{version}/predict": {
                "post": {"summary": "/predict for one version, active or not", **pinned_op}
            },
            "/batch-predict": {
                "post": {
                    "summary": "Score a CSV file in chunks; saved to OUTPUT_DIR/predicciones.csv",
                    "parameters": [
                        {"name": "format", "in": "query", "schema": {"enum": ["csv", "json"]}},
                        {"name": "on_error", "in": "query", "schema": {"enum": ["fail", "skip"]}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"file": {"type": "string", "format": "binary"}},
                                }
                            },
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the scored CSV (input columns, prediction, "
                            "probability, prob_<class>, model_version[, error]; text "
                            "cells starting with = + - @ tab or CR prefixed with ') or "
                            "a JSON summary with ?format=json",
                            "headers": {
                                "X-Job-Id": {"schema": {"type": "string"}},
                                "X-Saved-Path": {
                                    "description": "file name relative to OUTPUT_DIR",
                                    "schema": {"type": "string"},
                                },
                            },
                            "content": {
                                "text/csv": {"schema": {"type": "string"}},
                                "application/json": {"schema": _BATCH_SUMMARY},
                            },
                        },
                        **_errors(*_PREDICT_ERRORS),
                    },
                }
            },
            "/models": {
                "get": {
                    "summary": "Every version with metadata and active flag",
                    "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "models": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/ModelVersion"},
                                    },
                                    "count": {"type": "integer"},
                                },
                            }
                        ),
                        **_errors("INVALID_INPUT", "REGISTRY_UNAVAILABLE"),
                    },
                }
            },
            "/models/{name}/versions/{version}": {
                "get": {
                    "summary": "One version",
                    "parameters": version_path,
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ModelVersion"}),
                        **_errors("INVALID_INPUT", "NOT_FOUND", "REGISTRY_UNAVAILABLE"),
                    },
                }
            },
            "/models/{name}/versions/{version}/artifact": {
                "get": {
                    "summary": "The ONNX bytes (X-Checksum-Sha256 header)",
                    "parameters": version_path,
                    "responses": {
                        "200": {
                            "description": "ONNX model",
                            "headers": {"X-Checksum-Sha256": {"schema": {"type": "string"}}},
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        **_errors("INVALID_INPUT", "NOT_FOUND", "CONFLICT", "REGISTRY_UNAVAILABLE"),
                    },
                }
            },
            "/models/{name}/history": {
                "get": {
                    "summary": "Activation log of a model name",
                    "parameters": version_path[:1],
                    "responses": {
                        "200": _json({"type": "object"}),
                        **_errors("INVALID_INPUT", "REGISTRY_UNAVAILABLE"),
                    },
                }
            },
            "/models/activate": {
                "post": {
                    "summary": "Activate a version (admin)",
                    "security": _ADMIN,
                    "requestBody": _json_body(
                        _object(
                            ["name", "version"],
                            {
                                "name": {"type": "string"},
                                "version": {"type": "integer"},
                                "reason": {"type": "string"},
                                # Past a refusing promotion gate; needs a reason.
                                "force": {"type": "boolean"},
                            },
                        )
                    ),
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ActiveState"}),
                        **_errors(
                            "INVALID_INPUT",
                            "UNAUTHORIZED",
                            "FORBIDDEN",
                            "NOT_FOUND",
                            "CONFLICT",
                            "PAYLOAD_TOO_LARGE",
                            "UNSUPPORTED_MEDIA_TYPE",
                            "REGISTRY_UNAVAILABLE",
                        ),
                    },
                }
            },
            "/models/rollback": {
                "post": {
                    "summary": "Return to the previous version (admin)",
                    "security": _ADMIN,
                    "requestBody": _json_body(
                        _object(
                            ["name"], {"name": {"type": "string"}, "reason": {"type": "string"}}
                        )
                    ),
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ActiveState"}),
                        **_errors(
                            "INVALID_INPUT",
                            "UNAUTHORIZED",
                            "FORBIDDEN",
                            "CONFLICT",
                            "PAYLOAD_TOO_LARGE",
                            "UNSUPPORTED_MEDIA_TYPE",
                            "REGISTRY_UNAVAILABLE",
                        ),
                    },
                }
            },
            **_monitoring_paths(version_path[:1]),
            "/feedback": _feedback_path(),
            **openapi_oip.paths(version_path[0], version_path[1]),
            "/health": {
                "get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"})}}
            },
            "/ready": {
                "get": {
                    "summary": "Registry reachable and active version loaded",
                    "responses": {
                        "200": _json({"type": "object"}),
                        **_errors("NO_ACTIVE_MODEL", "REGISTRY_UNAVAILABLE"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
            },
            "/fleet": {
                "get": {
                    "summary": "Every API worker's last heartbeat and whether they converged",
                    "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "active_version": {"type": ["integer", "null"]},
                                    "staged_version": {"type": ["integer", "null"]},
                                    "live_workers": {"type": "integer"},
                                    "converged": {"type": "boolean"},
                                    "workers": {"type": "array", "items": {"type": "object"}},
                                },
                            }
                        ),
                        **_errors("INVALID_INPUT", "REGISTRY_UNAVAILABLE"),
                    },
                }
            },
        },
    }
    paths = document["paths"]
    batch = paths["/batch-predict"]["post"]
    paths["/models/{name}/batch-predict"] = {
        "post": {
            **batch,
            "summary": "/batch-predict for a served model's active version",
            "parameters": [*version_path[:1], *batch["parameters"]],
            "responses": {**batch["responses"], **_errors(*_PREDICT_ERRORS, "NOT_FOUND")},
        }
    }
    return document


def _monitoring_paths(name_path: list[dict[str, Any]]) -> dict[str, Any]:
    """Drift, its plots and the console page."""
    query = [
        {"name": "version", "in": "query", "schema": {"type": "integer"}},
        {
            "name": "since",
            "in": "query",
            "description": "window such as 30m, 24h (default) or 7d",
            "schema": {"type": "string"},
        },
    ]
    feature = {"name": "feature", "in": "path", "required": True, "schema": {"type": "string"}}
    html = {"content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        "/models/{name}/monitoring": {
            "get": {
                "summary": "Drift of a version (default the active one) against its baseline: "
                "per feature KS, PSI, missing and out-of-range shares; predicted-class mix",
                "parameters": [*name_path, *query],
                "responses": {
                    "200": _json({"type": "object"}),
                    **_errors("INVALID_INPUT", "NOT_FOUND", "REGISTRY_UNAVAILABLE", "BUSY"),
                },
            }
        },
        "/models/{name}/monitoring/plots/{feature}.png": {
            "get": {
                "summary": "Baseline against live histogram of one feature",
                "parameters": [*name_path, feature, *query],
                "responses": {
                    "200": {
                        "description": "PNG",
                        "content": {"image/png": {"schema": {"type": "string"}}},
                    },
                    **_errors("INVALID_INPUT", "NOT_FOUND", "REGISTRY_UNAVAILABLE", "BUSY"),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The console page (HTML)",
                "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "HTML", **html}},
            }
        },
        "/console/{asset}": {
            "get": {
                "summary": "The console's script and style",
                "parameters": [
                    {"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "text"}, **_errors("NOT_FOUND")},
            }
        },
    }


def _feedback_path() -> dict[str, Any]:
    """POST /feedback (api/feedback.py): labels of captured requests, all or nothing."""
    label = _object(
        ["request_id", "label"],
        {
            "request_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
            "label": {"type": "string", "minLength": 1, "maxLength": 100},
            "record": {"type": "integer", "minimum": 0, "description": "default 0"},
        },
    )
    body = _object(["labels"], {"labels": {"type": "array", "maxItems": 10000, "items": label}})
    return {
        "post": {
            "summary": "Labels (ground truth) of captured requests, joined and stored all or "
            "none; a bad row (unknown id, not a class, duplicate) refuses the call (400, one "
            "detail per row)",
            "security": _ADMIN,
            "parameters": [
                {"name": "name", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "unknown",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["refuse", "skip"]},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": body},
                    "text/csv": {"schema": {"type": "string"}},
                    "multipart/form-data": {
                        "schema": _object(
                            ["file"], {"file": {"type": "string", "format": "binary"}}
                        )
                    },
                },
            },
            "responses": {
                "200": _json(
                    _object(
                        ["call", "stored"],
                        {
                            "call": {"type": "string"},
                            "stored": {"type": "integer"},
                            "versions": {"type": "array", "items": {"type": "object"}},
                            "skipped": {"type": "array", "items": {"type": "object"}},
                        },
                    )
                ),
                **_errors(
                    "INVALID_INPUT",
                    "UNAUTHORIZED",
                    "FORBIDDEN",
                    "PAYLOAD_TOO_LARGE",
                    "UNSUPPORTED_MEDIA_TYPE",
                    "REGISTRY_UNAVAILABLE",
                ),
            },
        }
    }
