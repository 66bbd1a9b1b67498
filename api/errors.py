"""JSON errors everywhere: RegistryError, HTTP errors raised by Flask, and the unexpected.

Every error body is ``{"error": {"code", "message", "details"?}}``. A client's mistake
never becomes a 500: malformed JSON, wrong method, too large a body and unknown paths
each get their own status; only a real bug answers 500, without a traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from registry_bridge.errors import STATUS_BY_CODE, RegistryError, error_body

log = logging.getLogger(__name__)

# What a client learns when the registry database is down; the log has the details.
UNAVAILABLE_MESSAGE = "the registry database is unavailable; the server log has the details"

# HTTP statuses that have a code in the shared table; others get a code from their name.
_CODE_BY_STATUS = {
    status: code for code, status in STATUS_BY_CODE.items() if code not in ("NO_ACTIVE_MODEL",)
}


def error_response(
    code: str, message: str, status: int, details: list[dict[str, Any]] | None = None
) -> Response:
    """A JSON error response whose body is ``registry_bridge.errors.error_body``."""
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    return response


def registry_error_response(exc: RegistryError) -> Response:
    """The answer to a RegistryError: its code's status and its body (never its operator detail)."""
    return error_response(exc.code, exc.message, exc.status, exc.details)


def _registry_error(exc: RegistryError) -> Response:
    if exc.code == "REGISTRY_UNAVAILABLE":
        # The message names the database (masked URI, host, port, driver text): fine for the
        # server log, not for any client that can reach the API.
        log.warning("%s %s: %s", request.method, request.path, exc)  # with operator detail
        exc = RegistryError(exc.code, UNAVAILABLE_MESSAGE)
    return registry_error_response(exc)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _CODE_BY_STATUS.get(status) or re.sub(r"\W+", "_", (exc.name or "error")).upper()
    message = exc.description or exc.name
    allowed = exc.valid_methods if isinstance(exc, MethodNotAllowed) else None
    if status == 404:
        message = f"no endpoint at {request.path}; see /openapi.json"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}" + (
            f"; use {', '.join(sorted(allowed))}" if allowed else ""
        )
    elif status == 413:
        limit = request.max_content_length
        message = "the request body is larger than the limit" + (
            f" of {limit // (1024 * 1024)} MB" if limit else ""
        )
    response = error_response(code, message, status)
    if status == 405 and allowed:
        response.headers["Allow"] = ", ".join(allowed)
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response("INTERNAL_ERROR", "internal error; the server log has the details", 500)


def native_answer(exc: Exception) -> Response:
    """The answer the app's handlers below give to ``exc``, for a protocol that reshapes
    the body but keeps the status, the headers and what is hidden (``api/oip.py``)."""
    if isinstance(exc, RegistryError):
        return _registry_error(exc)
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    return _unexpected(exc)


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(RegistryError, _registry_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
