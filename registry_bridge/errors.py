"""One error type for the registry and the API, and one table from code to HTTP status."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pymongo.errors import ConnectionFailure, PyMongoError

from conf.contract import ContractError

# The only place an error code meets an HTTP status (DESIGN.md, "HTTP API").
STATUS_BY_CODE: dict[str, int] = {
    "INVALID_INPUT": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "INTERNAL_ERROR": 500,
    "NO_ACTIVE_MODEL": 503,
    "REGISTRY_UNAVAILABLE": 503,
    "BUSY": 503,  # the server chose not to start more work now; the client may retry
}


class RegistryError(Exception):
    """A failure a user can act on: a code from STATUS_BY_CODE and a message naming the entity.

    ``details`` lists individual problems (``{"record": 3, "field": "x", "problem": "missing"}``).
    ``message`` (and ``to_dict()``) is what any client may read; ``operator_detail`` says where
    and why for whoever runs the process (the masked database URI, its host and port, the
    driver's text): ``str()`` appends it, for the CLI's one line and the logs, and no HTTP
    answer or page shows it.
    """

    def __init__(
        self,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        operator_detail: str | None = None,
    ):
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []
        self.operator_detail = operator_detail

    @classmethod
    def refusing(cls, exc: ContractError) -> RegistryError:
        """INVALID_INPUT for a value the run contract refused, naming its field."""
        return cls("INVALID_INPUT", str(exc), [{"field": exc.field, "problem": exc.problem}])

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body of this error (:func:`error_body`)."""
        return error_body(self.code, self.message, self.details)

    def __str__(self) -> str:
        return f"{self.message} {self.operator_detail}" if self.operator_detail else self.message


T = TypeVar("T")

# What a warning, a report or an operator detail quotes of an exception's text, at most.
FIRST_LINE_MAX_CHARS = 300


def openapi_responses(codes: tuple[str, ...], schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``responses`` for error ``codes``: one entry per status, naming its codes,
    each answering ``schema`` (the native error body or the Open Inference Protocol's)."""
    responses: dict[str, Any] = {}
    for code in codes:
        status = str(STATUS_BY_CODE[code])
        entry = responses.setdefault(
            status, {"description": "", "content": {"application/json": {"schema": schema}}}
        )
        entry["description"] = " or ".join(filter(None, [entry["description"], code]))
    return responses


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``{"error": {"code", "message", "details"?}}``: the one JSON error body (DESIGN.md).

    Every answer uses it: ``RegistryError.to_dict``, the Flask handlers (api/errors.py)
    and the answers the server's event loop writes itself (api/front.py). ``details`` only
    when there are some.
    """
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def first_line(exc: BaseException) -> str:
    """What a one-line report quotes of an exception: its first non-empty line, bounded.

    pymongo's appended timeouts and topology dump are cut, and so are Spark's and MLflow's
    stack traces (the lines after the first); an exception without text gives its type.
    """
    text = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:FIRST_LINE_MAX_CHARS]


def translate_driver_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Turn driver errors escaping a method into one RegistryError; ``self.uri_label`` and the
    driver's text go in its operator detail only.

    For the store and the artifacts classes, whose ``uri_label`` is the masked server URI.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except ConnectionFailure as exc:
            raise RegistryError(
                "REGISTRY_UNAVAILABLE",
                "cannot reach the registry database",
                operator_detail=f"at {self.uri_label}: {first_line(exc)}",
            ) from None
        except PyMongoError as exc:
            raise RegistryError(
                "REGISTRY_UNAVAILABLE",
                f"the registry database refused {method.__name__}",
                operator_detail=f"(at {self.uri_label}: {first_line(exc)})",
            ) from None

    return wrapper
