"""The one hierarchy of errors a request can end in. Each domain raises a subclass; the HTTP layer
has one handler that reads the status, the message and the extra fields from the error itself, so
it imports no domain's exceptions and a new error needs no new handler.

`field` names the request field at fault (a 422 says where); `extra()` adds documented fields to the
JSON body (a 409 names the existing question); `headers()` adds response headers (Retry-After);
`counter` names the metric (an attribute of app.core.metrics.Metrics) each answer with this error
increments.
"""

from __future__ import annotations

from typing import Any


class QsimError(Exception):
    status_code: int = 400
    counter: str | None = None

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field

    def extra(self) -> dict[str, Any]:
        return {}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(QsimError, ValueError):
    """What was asked cannot be answered as asked (HTTP 422, naming the field when one is at fault)."""

    status_code = 422


class NotFoundError(QsimError, LookupError):
    """The thing asked for does not exist (HTTP 404)."""

    status_code = 404


class ConflictError(QsimError):
    """The request clashes with the current state: an id taken, a job running (HTTP 409)."""

    status_code = 409


class Unauthorized(QsimError, PermissionError):
    status_code = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(QsimError, PermissionError):
    status_code = 403


class Unavailable(QsimError):
    """Not now, but soon: loading, overloaded, database away (HTTP 503 with Retry-After)."""

    status_code = 503
