"""Route class shared by the API routers: the checks FastAPI leaves vague, made precise.

- a body that is not UTF-8 (UTF-16 and UTF-32 included), or holds a raw NUL: 422 saying so (FastAPI
  alone answers a vague 400, or decodes UTF-16);
- a path ending in a line break matches no route but those of `{name:text}` (Starlette's patterns
  would read /questions/1%0A as /questions/1);
- a `{name:text}` path that is not UTF-8 once percent-decoded: 422 saying so (the server decodes it
  with replacement characters, so /by-external-id/%FF and /%FE were one id);
- a body sent as anything but JSON (text/plain, a form): 415 naming application/json (FastAPI
  alone validates the raw bytes and answers "Input should be a valid dictionary");
- JSON nested deeper than the parser can follow: 400 saying so (FastAPI: "error parsing the body");
- a query parameter the route does not take (`?offset=5`): 422 naming it, instead of ignoring it.

It also registers the `{name:text}` path convertor: the rest of the path, whatever it holds.
"""

from __future__ import annotations

import email.message
import functools
import sys
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope


class TextConvertor(PathConvertor):
    """`{name:text}`: the rest of the path, line breaks included. Starlette's `path` stops at a line
    break, so an external id holding one (a body may store it) answered 404 by path, and one ending
    in a newline was read as the id without it."""

    regex = "(?s:.*)"


register_url_convertor("text", TextConvertor())


class UnsupportedMediaType(HTTPException):
    def __init__(self, content_type: str):
        super().__init__(
            415, f"request body must be JSON: send it with 'Content-Type: application/json' (got {content_type!r})"
        )


@functools.lru_cache(maxsize=256)  # parsing a header costs ~20 µs; desks send the same few
def is_json(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def query_names(dependant) -> set[str]:
    """The query parameter names a route's dependant (and its dependencies) declare."""
    names, pending = set(), [dependant]
    while pending:
        current = pending.pop()
        names |= {param.alias for param in current.query_params}
        pending.extend(current.dependencies)
    return names


def _check_utf8_path(scope: Scope) -> None:
    """422 when the raw path is not UTF-8 once percent-decoded (a decoded path holding U+FFFD may be
    a replacement, or the character itself sent as its UTF-8 bytes)."""
    raw = scope.get("raw_path")
    if raw is None:
        return
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestValidationError(
            [{"loc": ("path",), "msg": f"the path is not valid UTF-8 once percent-decoded (byte {error.start}); "
              "percent-encode the UTF-8 bytes of each character", "type": "utf8_invalid"}]
        ) from None


class Utf8BodyRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable, **kwargs):
        self._takes_text = ":text}" in path  # before APIRoute.__init__, which builds the route handler
        super().__init__(path, endpoint, **kwargs)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # Starlette ends every route pattern with `$`, which also matches before a final newline:
        # /questions/1%0A would read, change or delete question 1.
        if not self._takes_text and scope.get("path", "").endswith("\n"):
            return Match.NONE, {}
        return super().matches(scope)

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        known_query = query_names(self.dependant)
        takes_body = self.body_field is not None

        takes_text = self._takes_text

        async def route(request: Request) -> Response:
            if takes_text and "\ufffd" in request.scope.get("path", ""):
                _check_utf8_path(request.scope)
            unknown = [name for name in request.query_params if name not in known_query]
            if unknown:
                takes = ", ".join(sorted(known_query)) or "none"
                raise RequestValidationError(
                    [{"loc": ("query", name), "msg": f"unknown query parameter (this route takes: {takes})",
                      "type": "extra_forbidden"} for name in unknown]
                )
            if takes_body and request.method in ("POST", "PUT", "PATCH"):
                body = await request.body()  # cached: the handler reads it again for free
                content_type = request.headers.get("content-type")
                if body and content_type and not is_json(content_type):
                    raise UnsupportedMediaType(content_type)
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise RequestValidationError(
                        [{"loc": ("body",), "msg": f"request body is not valid UTF-8 (byte {error.start})",
                          "type": "utf8_invalid"}]
                    ) from None
                nul = text.find("\x00")
                if 0 <= nul < 4:  # where json.loads guesses the encoding: it would decode UTF-16 or UTF-32
                    raise RequestValidationError(
                        [{"loc": ("body",), "msg": "request body must be UTF-8 JSON (its NUL bytes look like UTF-16 or UTF-32)",
                          "type": "utf8_invalid"}]
                    )
                if nul >= 0:  # never valid JSON
                    raise RequestValidationError(
                        [{"loc": ("body", nul), "msg": "JSON decode error: a raw NUL character (inside a string write \\u0000)",
                          "type": "json_invalid"}]
                    )
            try:
                return await handler(request)
            except HTTPException as error:
                if error.status_code == 400 and isinstance(error.__cause__, RecursionError):
                    raise HTTPException(
                        400, "request body nests JSON arrays or objects too deeply to parse; "
                        "no qsim request needs more than a few levels",
                    ) from None
                if error.status_code == 400 and isinstance(error.__cause__, ValueError) and "digits" in str(error.__cause__):
                    raise RequestValidationError(
                        [{"loc": ("body",), "msg": f"JSON decode error: a number with more than "
                          f"{sys.get_int_max_str_digits()} digits", "type": "json_invalid"}]
                    ) from None
                raise

        return route
