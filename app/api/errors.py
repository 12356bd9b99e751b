"""Every failure becomes a JSON error with a message that says what is wrong; never a stack
trace, never SQL. Database trouble is 503 with Retry-After (the client may retry), not 500.

Domain errors are answered by one handler: each is a QsimError (app/core/errors.py) carrying its own
status, message, field, extra body fields, headers and metric, so this module imports no domain
package and a new error needs no new handler here."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app.core.errors import InvalidRequest, QsimError, Unavailable

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    errors: list[FieldError]


class ConflictBody(ErrorBody):
    external_ids: list[str] | None = None
    question_ids: list[int] | None = Field(None, description="the questions holding those external ids, in order")
    id: int | None = Field(None, description="the existing question's id, when one external id clashed")
    job_id: str | None = None


_DESCRIPTIONS = {
    401: ("missing or wrong admin token", ErrorBody),
    403: ("the admin API is disabled (no QSIM_ADMIN_TOKEN)", ErrorBody),
    404: ("no such question or job", ErrorBody),
    409: ("conflict: external_id taken, or a reindex already running", ConflictBody),
    413: ("request body too large", ErrorBody),
    422: ("invalid request: the message names the field", ValidationErrorBody),
    503: ("overloaded, loading, or database unavailable: retry after Retry-After seconds", ErrorBody),
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI documentation of the error answers a route can give."""
    return {code: {"description": _DESCRIPTIONS[code][0], "model": _DESCRIPTIONS[code][1]} for code in codes}


def _location(loc) -> str:
    return ".".join(str(part) for part in loc)


def validation_message(errors: list[dict]) -> str:
    return "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors[:5])


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


_QUESTION_PATH = re.compile(r"/questions/[^/]+")


def _routes(routes):
    """Every route, looking into included routers (FastAPI >= 0.16x wraps them)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app takes at this path (several routes may share a path)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            methods |= set(route_methods)
    if "GET" in methods:
        methods.add("HEAD")  # HeadAsGet answers HEAD wherever GET is answered
    return sorted(methods)


def _message(validation_error: dict) -> str:
    """The error's message, with the JSON parser's reason where FastAPI keeps it aside (its
    "JSON decode error" alone says where the body broke, not what is wrong there), and a lone
    surrogate named as such (as the metadata check names it)."""
    message = validation_error["msg"]
    if validation_error["type"] == "string_unicode":  # pydantic's words for a lone surrogate in JSON text
        return "must be valid Unicode text (it contains a lone surrogate, e.g. \\ud800 without its pair)"
    reason = (validation_error.get("ctx") or {}).get("error")
    if validation_error["type"] == "json_invalid" and message == "JSON decode error" and isinstance(reason, str) and reason:
        return f"{message}: {reason}"
    return message


def install_error_handlers(app: FastAPI, retry_after_seconds: int) -> None:
    retry = {"Retry-After": str(retry_after_seconds)}

    def invalid(errors: list[dict], headers: dict | None = None, **extra) -> JSONResponse:
        return error(422, validation_message(errors), headers=headers, errors=jsonable_encoder(errors), **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid([{"loc": list(e["loc"]), "msg": _message(e), "type": e["type"]} for e in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, ClientDisconnect):
            return await _disconnected(request, exc.__cause__)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and exc.detail == "Not Found" and _QUESTION_PATH.fullmatch(request.url.path):
            # /questions/{question_id:int} only matches digits (so that /questions/similar is a 405,
            # not a question id): another segment there is a bad id, said as for any bad field.
            return invalid([{"loc": ["path", "question_id"], "msg": "must be a positive integer id",
                             "type": "int_parsing"}])
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            return error(405, f"method {request.method} not allowed here; this path takes {', '.join(allowed)}", headers=headers)
        return error(exc.status_code, str(exc.detail), headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _disconnected(request: Request, _: ClientDisconnect) -> Response:
        # Nobody is left to answer and nothing failed here: not an error, not a 500. 499 is the
        # status proxies log for "client closed the request"; it only reaches the metrics.
        logger.info("client disconnected before its request body arrived: %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(QsimError)
    async def _domain(request: Request, exc: QsimError) -> JSONResponse:
        """Every domain error, answered from what it carries."""
        if exc.counter is not None:
            getattr(request.app.state.metrics, exc.counter).inc()
        headers = {**retry, **exc.headers()} if isinstance(exc, Unavailable) else exc.headers()
        if isinstance(exc, InvalidRequest):  # shaped as every other 422: where in the request, and why
            where = ["body", exc.field] if exc.field else ["body"]
            return invalid([{"loc": where, "msg": str(exc), "type": "value_error"}], headers or None, **exc.extra())
        return error(exc.status_code, str(exc), headers=headers or None, **exc.extra())

    @app.exception_handler(SQLAlchemyError)
    async def _database(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        logger.warning("database error: %s", exc.__class__.__name__, exc_info=logger.isEnabledFor(logging.DEBUG))
        return error(503, "database unavailable, retry shortly", headers=retry)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error(500, "internal error")
