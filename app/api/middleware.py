"""ASGI middleware (plain ASGI, not BaseHTTPMiddleware, to stay off the hot path's back)."""

from __future__ import annotations

import asyncio
import json
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import Metrics


class BodySizeLimit:
    """413 for bodies over `max_bytes`, announced (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = self.max_bytes + 1
                if announced > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing as it is (anything
                    # else would become a 400) and reaches the JSON error handler.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited_receive, send)

    @property
    def message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": self.message}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})


class BodyTimeout:
    """408 when a request's body has not fully arrived `seconds` after the first read: a client
    that stalls mid-body (or a slow-loris one) does not hold a worker slot indefinitely. Reads
    after the body is complete (waiting for a disconnect) are not timed."""

    def __init__(self, app: ASGIApp, seconds: float):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete
            if complete:
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.seconds
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {self.seconds:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)


HEAD_KEY = "qsim.head"
_CONVERTOR = re.compile(r":\w+}")  # /questions/{question_id:int} -> /questions/{question_id}


class HeadAsGet:
    """HEAD answers like GET without the body, on every GET route (FastAPI routes take only the
    methods they declare). Innermost middleware: the metrics still see HEAD."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        scope["method"] = "GET"
        scope[HEAD_KEY] = True

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The server reads the method from this same scope when the response starts: as
                # GET it would wait for the Content-Length bytes of a body that never comes.
                scope["method"] = "HEAD"
            elif message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, without_body)
        finally:
            # An unexpected error is answered outside this middleware (ServerErrorMiddleware): the
            # server must see HEAD then too, or it writes that answer's body after a HEAD.
            scope["method"] = "HEAD"


class RequestMetrics:
    """Counts and times requests per route template (not per raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = _CONVERTOR.sub("}", getattr(route, "path", None) or "unmatched")
            method = "HEAD" if scope.get(HEAD_KEY) else scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
