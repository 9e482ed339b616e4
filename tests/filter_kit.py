"""HTTP filters for the filter tests (imported by meshpy as tests.filter_kit:<Class>): ones that
raise, hold and resume, count across reloads, refuse their config, and edit responses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from meshpy.filters import CONTINUE, HOLD, HttpFilter, Request, Response, Verdict


class Boom(HttpFilter):
    """Raises where the request's `x-boom` header says: request, response or complete."""

    def on_request(self, request: Request) -> Verdict:
        if request.headers.get("x-boom") == "request":
            raise RuntimeError("boom on the request")
        return CONTINUE

    def on_response(self, request: Request, response: Response) -> None:
        if request.headers.get("x-boom") == "response":
            raise RuntimeError("boom on the response")

    def on_complete(self, request: Request) -> None:
        if request.headers.get("x-boom") == "complete":
            raise RuntimeError("boom at completion")


class Later(HttpFilter):
    """Holds every request `delay` seconds, then resumes it (or answers 403 for `x-deny: 1`)."""

    def on_request(self, request: Request) -> Verdict:
        deny = request.headers.get("x-deny") == "1"
        loop = asyncio.get_running_loop()
        if deny:
            loop.call_later(self.config.get("delay", 0.05), request.reply, 403, b"denied later\n")
        else:
            loop.call_later(self.config.get("delay", 0.05), request.resume)
        return HOLD


class Counter(HttpFilter):
    """Counts the requests it saw since it was made; the count goes out as `x-seen`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.seen = 0

    def on_request(self, request: Request) -> Verdict:
        self.seen += 1
        request.state["seen"] = self.seen
        return CONTINUE

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.set("x-seen", str(request.state.get("seen", 0)))
        response.headers.set("x-label", str(self.config.get("label", "")))


class Picky(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        if "must" not in config:
            raise ValueError("`must` is required")


class NotAFilter:
    pass


class Tricky(HttpFilter):
    """Misuses of the API, chosen by the request's `x-mode` header."""

    def on_request(self, request: Request) -> Verdict:
        mode = request.headers.get("x-mode")
        if mode == "inject":
            return request.reply(200, b"x", {"x-a": "a\r\nx-injected: yes"})
        if mode == "ctype":
            return request.reply(200, b"{}", {"content-type": "application/json"})
        if mode == "early-resume":
            request.resume()  # before HOLD is even returned
            return HOLD
        if mode == "forever":
            return HOLD
        if mode == "rid":
            request.headers.set("x-request-id", "mine")
        return CONTINUE

    def on_response(self, request: Request, response: Response) -> None:
        if request.headers.get("x-mode") == "reply-late":
            request.reply(418, b"too late")


class WhoAmI(HttpFilter):
    """Answers with what it knows of the client connection, as JSON."""

    def on_request(self, request: Request) -> Verdict:
        c = request.connection
        body = {"peer": c.peer, "peer_port": c.peer_port, "local": c.local, "local_port": c.local_port,
                "original_destination": c.original_destination, "listener": c.listener,
                "direction": c.direction, "protocol": request.protocol}
        return request.reply(200, json.dumps(body).encode(), {"content-type": "application/json"})


class Upper(HttpFilter):
    """Upper-cases request and response bodies, and adds `config["suffix"]` (bytes as text) at each end;
    `x-boom: request-body` or `response-body` makes it raise there, `x-body-reply` answers from the
    request body hook. Counts what it saw in `request.state`."""

    def on_request_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        if request.headers.get("x-boom") == "request-body":
            raise RuntimeError("boom on the request body")
        if request.headers.get("x-body-reply") and b"STOP" in chunk:
            request.reply(422, b"stopped by the body\n")
            return None
        request.state["in"] = request.state.get("in", 0) + len(chunk)
        return (chunk.upper() + self.config.get("suffix", "").encode()) if end else chunk.upper()

    def on_response_body(self, request: Request, chunk: bytes, end: bool) -> bytes | None:
        if request.headers.get("x-boom") == "response-body":
            raise RuntimeError("boom on the response body")
        if end:
            return self.config.get("suffix", "").encode()
        return chunk.upper()
