"""Access logs as config: where the lines go, what a line says (Envoy's substitution format strings),
and which requests get one (Envoy's access-log filters).

A format is kept as written (a format string, or a JSON template whose string values hold operators)
and checked here against the grammar and the operators meshpy can fill, so that both loaders report a
bad format with its path; meshpy.telemetry.accesslog_format compiles it for the running proxy.

The grammar is Envoy's: `%COMMAND%`, `%COMMAND(ARGUMENT)%`, `%COMMAND(ARGUMENT):LENGTH%`, and `%%`
for a literal `%` (the command names upper case letters, digits and `_`; the argument ends at the
first `)` that the optional length and the closing `%` follow).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from meshpy.model.routes import HeaderMatch

# Envoy's default format (source/common/formatter/substitution_formatter.cc), for HTTP and TCP alike.
ENVOY_DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)


@dataclass(frozen=True, slots=True)
class JsonObject:
    """A JSON object of a json_format template, its keys sorted (Envoy writes them sorted)."""

    fields: tuple[tuple[str, JsonValue], ...]


# A template value: a string may hold operators; numbers are floats; a list is a tuple.
JsonValue: TypeAlias = "str | float | bool | JsonObject | tuple[JsonValue, ...] | None"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFormat:
    """Exactly one of `text` (a format string) and `json` (a template)."""

    text: str | None = None
    json: JsonObject | None = None
    omit_empty_values: bool = False  # an operator without a value writes "" (text) or no key (json)


ENVOY_TEXT = LogFormat(text=ENVOY_DEFAULT_FORMAT)

# meshpy's own JSON line (meshpy YAML's default). It is written by a template of its own
# (meshpy.telemetry.accesslog: fixed key order, TLS keys on TLS connections only); this is the same
# line in Envoy's terms, which is what an Envoy receiving it from meshpy's control plane writes.
MESHPY_JSON = LogFormat(json=JsonObject(fields=tuple(sorted({
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream_host": "%UPSTREAM_HOST%",
    "x_request_id": "%REQ(X-REQUEST-ID)%",
    "downstream_remote_address": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
}.items()))))

ComparisonOp = Literal["eq", "ge", "le", "ne"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusFilter:
    """Envoy's status_code_filter: the response code compared with `value`."""

    op: ComparisonOp
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DurationFilter:
    """Envoy's duration_filter: the request's duration in milliseconds compared with `value`."""

    op: ComparisonOp
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NotHealthCheckFilter:
    """Envoy's not_health_check_filter: leaves out requests its health_check filter answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderFilter:
    """Envoy's header_filter: a request header matcher, on the headers as the proxy forwarded them."""

    header: HeaderMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFlagFilter:
    """Envoy's response_flag_filter: any of `flags` set; any flag at all when empty."""

    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AndFilter:
    filters: tuple[LogFilter, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OrFilter:
    filters: tuple[LogFilter, ...]


LogFilter: TypeAlias = (
    "StatusFilter | DurationFilter | NotHealthCheckFilter | HeaderFilter | ResponseFlagFilter | AndFilter"
    " | OrFilter"
)

LOG_FILTERS = (StatusFilter, DurationFilter, NotHealthCheckFilter, HeaderFilter, ResponseFlagFilter,
               AndFilter, OrFilter)

# Envoy's response flags, short names and long names (what RESPONSE_FLAGS_LONG writes), in its order.
RESPONSE_FLAGS: dict[str, str] = {
    "LH": "FailedLocalHealthCheck", "UH": "NoHealthyUpstream", "UT": "UpstreamRequestTimeout",
    "LR": "LocalReset", "UR": "UpstreamRemoteReset", "UF": "UpstreamConnectionFailure",
    "UC": "UpstreamConnectionTermination", "UO": "UpstreamOverflow", "NR": "NoRouteFound",
    "DI": "DelayInjected", "FI": "FaultInjected", "RL": "RateLimited",
    "UAEX": "UnauthorizedExternalService", "RLSE": "RateLimitServiceError",
    "DC": "DownstreamConnectionTermination", "URX": "UpstreamRetryLimitExceeded",
    "SI": "StreamIdleTimeout", "IH": "InvalidEnvoyRequestHeaders", "DPE": "DownstreamProtocolError",
    "UMSDR": "UpstreamMaxStreamDurationReached", "RFCF": "ResponseFromCacheFilter",
    "NFCF": "NoFilterConfigFound", "DT": "DurationTimeout", "UPE": "UpstreamProtocolError",
    "NC": "NoClusterFound", "OM": "OverloadManager", "DF": "DnsResolutionFailed", "DO": "DropOverLoad",
    "DR": "DownstreamRemoteReset", "UDO": "UnconditionalDropOverload",
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLog:
    """Where the lines go (`path` None, "-" or "stdout": stdout; "/dev/stderr": stderr; else a file,
    appended to), what each says and which requests get one (None: all)."""

    path: str | None = None
    format: LogFormat = field(default=MESHPY_JSON)
    filter: LogFilter | None = None


# -- the grammar -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Command:
    """One operator of a format string."""

    name: str
    arg: str | None
    length: int | None


Segment: TypeAlias = "str | Command"

_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?%")
_NO_ARG, _ARG, _OPTIONAL_ARG = 0, 1, 2
# What meshpy fills, with Envoy's syntax rule for each: argument (none, required, optional), and
# whether a maximum length may follow.
OPERATORS: dict[str, tuple[int, bool]] = {
    "START_TIME": (_OPTIONAL_ARG, False),
    "REQ": (_ARG, True), "RESP": (_ARG, True), "TRAILER": (_ARG, True),
    **dict.fromkeys((
        "PROTOCOL", "RESPONSE_CODE", "RESPONSE_CODE_DETAILS", "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG",
        "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "REQUEST_DURATION", "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION", "UPSTREAM_HOST", "UPSTREAM_CLUSTER", "UPSTREAM_LOCAL_ADDRESS",
        "UPSTREAM_TRANSPORT_FAILURE_REASON", "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_REMOTE_PORT", "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_PORT",
        "REQUESTED_SERVER_NAME", "ROUTE_NAME", "HOSTNAME", "CONNECTION_ID", "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_TLS_CIPHER", "DOWNSTREAM_PEER_URI_SAN",
        "DOWNSTREAM_PEER_DNS_SAN", "DOWNSTREAM_PEER_SUBJECT", "DOWNSTREAM_LOCAL_URI_SAN",
    ), (_NO_ARG, False)),
}  # fmt: skip
_HEADER_COMMANDS = frozenset({"REQ", "RESP", "TRAILER"})


def parse_format(text: str) -> list[Segment]:
    """The literal pieces and operators of a format string, in order; ValueError says what is wrong
    (Envoy refuses the same strings)."""
    out: list[Segment] = []
    literal: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        at = text.find("%", pos)
        if at < 0:
            literal.append(text[pos:])
            break
        literal.append(text[pos:at])
        if text.startswith("%%", at):
            literal.append("%")
            pos = at + 2
            continue
        m = _COMMAND.match(text, at)
        if m is None:
            raise ValueError(f"no valid operator at position {at} (write %% for a literal %)")
        name, arg, length = m.group(1), m.group(2), m.group(3)
        _check_command(name, arg, length)
        if "".join(literal):
            out.append("".join(literal))
        literal = []
        out.append(Command(name, arg, int(length) if length is not None else None))
        pos = m.end()
    if literal and "".join(literal):
        out.append("".join(literal))
    return out


def _check_command(name: str, arg: str | None, length: str | None) -> None:
    rule = OPERATORS.get(name)
    if rule is None:
        raise ValueError(f"operator %{name}% is not supported by meshpy")
    kind, length_allowed = rule
    if kind == _NO_ARG and (arg or length is not None):
        raise ValueError(f"%{name}% takes no argument and no length")
    if kind == _ARG and not arg:
        raise ValueError(f"%{name}% needs an argument")
    if length is not None and not length_allowed:
        raise ValueError(f"%{name}% takes no length")
    if name in _HEADER_COMMANDS:
        assert arg is not None
        if arg.count("?") > 1:
            raise ValueError(f"%{name}({arg})%: at most one alternative header (X?Y)")
        if "\n" in arg or "\r" in arg or "\0" in arg:
            raise ValueError(f"%{name}%: a header name cannot hold a newline")
    if name == "START_TIME" and arg and re.search(r"%[-_0^#]*[1-9]*[EO]?n", arg):
        raise ValueError("%START_TIME%: the time format cannot hold a newline (%n)")


def format_issues(fmt: LogFormat) -> list[tuple[str, str]]:
    """(sub-path, reason) for each problem of `fmt`: "" for the format string itself, the key path
    (`nested.key`, `list[1]`) for a JSON template value."""
    if (fmt.text is None) == (fmt.json is None):
        return [("", "needs a text format or a JSON format, not both")]
    if fmt.text is not None:
        return _text_issues(fmt.text, "")
    assert fmt.json is not None
    found: list[tuple[str, str]] = []
    _json_issues(fmt.json, "", found)
    return found


def _text_issues(text: str, where: str) -> list[tuple[str, str]]:
    try:
        parse_format(text)
    except ValueError as err:
        return [(where, str(err))]
    return []


def _json_issues(value: JsonValue, where: str, found: list[tuple[str, str]]) -> None:
    if isinstance(value, str):
        if "%" in value:
            found.extend(_text_issues(value, where))
    elif isinstance(value, JsonObject):
        for key, v in value.fields:
            _json_issues(v, f"{where}.{key}" if where else key, found)
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            _json_issues(v, f"{where}[{i}]", found)


def json_object(data: Mapping[str, object], where: str = "") -> JsonObject:
    """A template from plain data (a YAML mapping, a protobuf Struct as a dict); keys sorted, numbers
    as floats. ValueError for what JSON cannot hold."""
    return JsonObject(fields=tuple((str(k), _json_value(v, f"{where}.{k}" if where else str(k)))
                                   for k, v in sorted(data.items(), key=lambda kv: str(kv[0]))))


def _json_value(value: object, where: str) -> JsonValue:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return json_object(value, where)
    if isinstance(value, (list, tuple)):
        return tuple(_json_value(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise ValueError(f"{where}: a JSON format holds strings, numbers, booleans, null, lists and mappings")
