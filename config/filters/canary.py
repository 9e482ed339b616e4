"""An example HTTP filter: a header-based canary. A request that asks for the canary (a header, by
default `x-canary: always`) or falls in the configured share is marked for the canary upstream with
`x-canary: 1`; the answer tells the client which it got.

    filters:
      - name: canary
        python:
          class: config.filters.canary:CanaryFilter
          config: {percent: 10, header: x-canary}

The marking is deterministic per request id, so a retried request lands on the same side.
"""

from __future__ import annotations

import zlib
from typing import Any

from meshpy.filters import CONTINUE, HttpFilter, Request, Response, Verdict


class CanaryFilter(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        percent = config.get("percent", 0)
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ValueError("percent must be a number from 0 to 100")
        self.percent = float(percent)
        self.header = str(config.get("header", "x-canary")).lower()

    def on_request(self, request: Request) -> Verdict:
        asked = request.headers.get(self.header)
        rid = request.headers.get("x-request-id") or request.path
        share = zlib.crc32(rid.encode()) % 10000 < self.percent * 100
        chosen = asked == "always" or (asked != "never" and share)
        request.headers.set(self.header, "1" if chosen else "0")
        request.state["canary"] = chosen
        return CONTINUE

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.set("x-canary", "1" if request.state.get("canary") else "0")
