"""Route class shared by the API routers."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute


class Utf8BodyRoute(APIRoute):
    """A body that is not UTF-8 is a 422 that says so (FastAPI alone answers a vague 400)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                body = await request.body()  # cached: the handler reads it again for free
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise RequestValidationError(
                        [{"loc": ("body",), "msg": f"request body is not valid UTF-8 (byte {error.start})",
                          "type": "utf8_invalid"}]
                    ) from None
            return await handler(request)

        return route
