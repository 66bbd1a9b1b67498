"""One error type for the registry and the API, and one table from code to HTTP status."""

from __future__ import annotations

from typing import Any

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
}


class RegistryError(Exception):
    """A failure a user can act on: a code from STATUS_BY_CODE and a message naming the entity.

    ``details`` lists individual problems (``{"record": 3, "field": "x", "problem": "missing"}``).
    """

    def __init__(self, code: str, message: str, details: list[dict[str, Any]] | None = None):
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []

    @classmethod
    def refusing(cls, exc: ContractError) -> RegistryError:
        """INVALID_INPUT for a value the run contract refused, naming its field."""
        return cls("INVALID_INPUT", str(exc), [{"field": exc.field, "problem": exc.problem}])

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def __str__(self) -> str:
        return self.message
