"""An example HTTP filter: only requests that carry a known API key pass.

    filters:
      - python:
          class: config.filters.api_key:ApiKeyFilter
          config: {keys: [key-1, key-2], header: x-api-key}

A request without one of the keys gets 401 and never reaches the upstream; the key itself is removed
before forwarding (the upstream needs to know the caller passed, not its secret). Counts of refusals
are kept on the instance, which survives reloads while the config is unchanged.
"""

from __future__ import annotations

from typing import Any

from meshpy.filters import CONTINUE, HttpFilter, Request, Verdict


class ApiKeyFilter(HttpFilter):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        keys = config.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError("keys: a list of one or more non-empty strings is required")
        self.keys = frozenset(keys)
        self.header = str(config.get("header", "x-api-key")).lower()
        self.refused = 0

    def on_request(self, request: Request) -> Verdict:
        key = request.headers.get(self.header)
        if key not in self.keys:
            self.refused += 1
            return request.reply(401, b"missing or unknown API key\n",
                                 {"www-authenticate": f'ApiKey header="{self.header}"'})
        request.headers.remove(self.header)
        request.state["api_key"] = key  # for the filters after this one
        return CONTINUE
