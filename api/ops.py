"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

import os

from flask import Blueprint, Response, g, jsonify

from api import registry
from api.metrics import exposition
from api.openapi import spec
from registry_bridge.errors import RegistryError

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    """The process answers (no database access: liveness only)."""
    return jsonify({"status": "ok", "pid": os.getpid()})


@bp.get("/ready")
def ready() -> Response:
    """200 when the registry answers and the active version is loaded, else 503."""
    resolved = registry().active.resolve()
    g.served = resolved
    if resolved.stale:
        unreachable = not registry().active.registry_reachable
        raise RegistryError(
            "REGISTRY_UNAVAILABLE" if unreachable else "NO_ACTIVE_MODEL",
            f"{resolved.reason}; still serving {resolved.model.name} "
            f"v{resolved.model.version} from memory",
        )
    return jsonify({"status": "ready", "model": resolved.model.identity()})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of every worker."""
    body, content_type = exposition()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of every endpoint and error."""
    return jsonify(spec())
