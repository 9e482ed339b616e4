"""One root error; subclasses say who is at fault and carry their wire mapping.

Config errors carry a YAML path so that `meshpy validate` can print `path: reason` lines. Traffic errors
carry the HTTP status and the Envoy response flag the proxy answers with, so the hot path never needs a
table to map an exception onto the wire.
"""

from __future__ import annotations

from collections.abc import Iterable


class MeshError(Exception):
    """Root of every error meshpy raises on purpose."""


class ConfigIssue:
    """One problem in a config file: where it is and what is wrong."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason

    def __repr__(self) -> str:
        return f"ConfigIssue({self.path!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigIssue) and (self.path, self.reason) == (other.path, other.reason)

    def __hash__(self) -> int:
        return hash((self.path, self.reason))


class ConfigError(MeshError):
    """A config that cannot be used. Holds every issue found, each with its path."""

    def __init__(self, issues: Iterable[ConfigIssue] | str, path: str = "") -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(path, issues)]
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    @classmethod
    def at(cls, path: str, reason: str) -> ConfigError:
        return cls([ConfigIssue(path, reason)])


class ProxyError(MeshError):
    """An answer the proxy makes itself instead of forwarding one from upstream."""

    status = 503
    flag = ""
    body = b"upstream error"


class NoRoute(ProxyError):
    status = 404
    flag = "NR"
    body = b"no route"


class NoHealthyUpstream(ProxyError):
    status = 503
    flag = "UH"
    body = b"no healthy upstream"


class UpstreamConnectFailure(ProxyError):
    status = 503
    flag = "UF"
    body = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"


class UpstreamOverflow(ProxyError):
    """A circuit breaker of the cluster is full (max_requests, max_pending_requests): answered at once."""

    status = 503
    flag = "UO"
    body = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


class UpstreamReset(ProxyError):
    status = 503
    flag = "UC"
    body = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"


class UpstreamTimeout(ProxyError):
    status = 504
    flag = "UT"
    body = b"upstream request timeout"


class UpstreamProtocolError(ProxyError):
    status = 502
    flag = "UPE"
    body = b"upstream sent a malformed response"


class ClusterNotFound(ProxyError):
    status = 503
    flag = "NC"
    body = b"cluster not found"


class BadRequest(ProxyError):
    """The downstream client broke the protocol; the connection closes after the answer."""

    status = 400
    flag = "DPE"
    body = b"bad request"

    def __init__(self, reason: str = "bad request", status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.body = reason.encode()
