"""Model management: list and show versions, download artifacts, activate and roll back."""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request

from api import registry
from api.body import ADMIN_BODY_LIMIT, read_body
from api.errors import registry_error_response
from api.validation import parse_json
from registry_bridge.entities import ActiveState
from registry_bridge.errors import RegistryError
from registry_bridge.scoring import invalid
from registry_bridge.store import checked_name, checked_version

bp = Blueprint("models", __name__, url_prefix="/models")


def bearer_refusal(
    tokens: Sequence[str | None], named: str, realm: str, wrong: str
) -> Response | None:
    """None when no token is configured or the request's bearer token is one of ``tokens``;
    else the 401 answer (no token given). A wrong token raises FORBIDDEN saying ``wrong``.

    ``named`` names the tokens in the 401's message (``<API_ADMIN_TOKEN>``).
    """
    accepted = [t for t in tokens if t]
    if not accepted:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        error = RegistryError(
            "UNAUTHORIZED", f"this endpoint needs the header 'Authorization: Bearer {named}'"
        )
        response = registry_error_response(error)
        response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
        return response
    # Constant-time comparison, against every token: none may leak through timing.
    sent = given.strip().encode()
    matches = [hmac.compare_digest(sent, token.encode()) for token in accepted]
    if not any(matches):
        raise RegistryError("FORBIDDEN", f"the bearer token is not {wrong}")
    return None


def admin_required(view: Callable[..., Response]) -> Callable[..., Response]:
    """Require ``Authorization: Bearer <API_ADMIN_TOKEN>`` when a token is configured."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Response:
        api = registry().settings.api
        refused = bearer_refusal([api.admin_token], "<API_ADMIN_TOKEN>", "admin", "the admin token")
        return refused if refused is not None else view(*args, **kwargs)

    return wrapped


def _actor() -> str:
    return f"api:{request.remote_addr or 'unknown'}"


def _json_object() -> dict[str, Any]:
    if not request.is_json:
        raise RegistryError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type {request.mimetype or 'none'} is not accepted here; "
            "send application/json",
        )
    body = parse_json(read_body(ADMIN_BODY_LIMIT))
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def _text_field(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid(
            f"'{key}' must be a non-empty text",
            [{"field": key, "problem": "missing" if value is None else "not a text"}],
        )
    return value.strip()


def _state(state: ActiveState) -> dict[str, Any]:
    return {
        "name": state.name,
        "active_version": state.active_version,
        "previous_version": state.previous_version,
        **{
            k: v
            for k, v in state.to_dict().items()
            if k in ("activated_at", "activated_by", "reason", "lease_ms", "prepared", "gate")
            and v is not None
        },
    }


@bp.get("")
def list_models() -> Response:
    """Every ready version with its metadata and whether it is active (``?name=`` filters)."""
    store = registry().store
    name = request.args.get("name") or None
    active = store.list_active_states()
    versions = []
    for version in store.search_model_versions(name=name):
        state = active.get(version.name)
        versions.append(
            {
                **version.to_dict(),
                "active": state is not None and state.active_version == version.version,
            }
        )
    return jsonify({"models": versions, "count": len(versions)})


@bp.get("/<name>/versions/<version>")
def show_version(name: str, version: str) -> Response:
    """One version's metadata and whether it is active."""
    store = registry().store
    found = store.get_model_version(name, checked_version(version))
    state = store.get_active_version(name)
    return jsonify(
        {**found.to_dict(), "active": state is not None and state.active_version == found.version}
    )


def attachment(filename: str) -> str:
    """A Content-Disposition value for any file name: an ASCII fallback and the exact name.

    The exact name is percent-encoded (RFC 6266/5987), so a quote, a line break or a
    non-Latin letter in a model name can neither break the header nor answer 500.
    """
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    value = f'attachment; filename="{plain}"'
    if plain != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


@bp.get("/<name>/versions/<version>/artifact")
def download_artifact(name: str, version: str) -> Response:
    """The ONNX bytes, checked against their sha256 before they are sent."""
    store = registry().store
    found = store.get_model_version(name, checked_version(version))
    data = store.artifacts.read(found)
    response = Response(data, mimetype="application/octet-stream")
    filename = found.filename or f"{name}-v{found.version}.onnx"
    response.headers["Content-Disposition"] = attachment(filename)
    response.headers["X-Checksum-Sha256"] = found.sha256
    return response


@bp.post("/activate")
@admin_required
def activate() -> Response:
    """Make a version the one served; answers once every new request will use it."""
    body = _json_object()
    name = checked_name(body.get("name"))
    version = checked_version(body.get("version"))
    reason = _text_field(body, "reason", required=False)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise invalid(
            "'force' must be true or false", [{"field": "force", "problem": "not a boolean"}]
        )
    handle = registry()
    # A name this worker serves: the store validates it loaded into this worker's cache
    # (loaded once, and reported loaded before staging) rather than in a session of its own.
    served = handle.models.find(name)
    load = served.load_session if served is not None else None
    state = handle.store.set_active_version(
        name, version, by=_actor(), reason=reason, load=load, force=force
    )
    return jsonify(_state(state))


@bp.post("/rollback")
@admin_required
def rollback() -> Response:
    """Return to the previously active version."""
    body = _json_object()
    name = checked_name(body.get("name"))
    reason = _text_field(body, "reason", required=False)
    state = registry().store.rollback(name, by=_actor(), reason=reason)
    return jsonify(_state(state))


@bp.get("/<name>/history")
def history(name: str) -> Response:
    """Every activation and rollback of ``name``, oldest first."""
    events = registry().store.list_activation_log(name)
    return jsonify({"name": name, "events": [e.to_dict() for e in events]})
