"""The outlier detection event log (Envoy's cluster_manager.outlier_detection.event_log_path): one JSON
object per line for each ejection and each return to service, in the shape of Envoy's
envoy.data.cluster.v3.OutlierDetectionEvent (proto field names, every field written), so tools that
read Envoy's log read meshpy's.

One log for the process, as in Envoy's bootstrap: `configure` opens it (or closes it) when a config
says so; the detectors call `ejected` and `returned`, which cost nothing while no log is set.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

from envoy.data.cluster.v3 import outlier_detection_event_pb2 as events
from google.protobuf import json_format

if TYPE_CHECKING:
    from meshpy.upstream.cluster import Host

log = logging.getLogger("meshpy.upstream")
_TYPES = {"consecutive_5xx": events.CONSECUTIVE_5XX,
          "consecutive_gateway_failure": events.CONSECUTIVE_GATEWAY_FAILURE,
          "consecutive_local_origin_failure": events.CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
          "success_rate": events.SUCCESS_RATE, "failure_percentage": events.FAILURE_PERCENTAGE}


class _Log:
    def __init__(self, path: str) -> None:
        self.path = path
        self.file: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the config
        self.last: dict[int, float] = {}  # id(host) -> when it was last ejected or returned
        self.reasons: dict[int, str] = {}  # id(host) -> why it was last ejected (its return says it too)

    def write(self, cluster: str, host: Host, action: int, reason: str, enforced: bool,
              rates: tuple[float, float, float] | None) -> None:
        now = time.monotonic()
        event = events.OutlierDetectionEvent(
            type=_TYPES.get(reason, events.CONSECUTIVE_5XX), cluster_name=cluster, upstream_url=host.label,
            action=action, num_ejections=host.eject_count, enforced=enforced)
        moment = datetime.now(UTC).replace(tzinfo=None)
        # Milliseconds, as Envoy writes them.
        event.timestamp.FromDatetime(moment.replace(microsecond=moment.microsecond // 1000 * 1000))
        last = self.last.get(id(host))
        if last is not None:
            event.secs_since_last_action.value = int(now - last)
        self.last[id(host)] = now
        if action == events.EJECT:
            self.reasons[id(host)] = reason
        if reason == "success_rate" and rates is not None:
            sr = event.eject_success_rate_event
            sr.host_success_rate = round(rates[0])
            sr.cluster_average_success_rate = round(rates[1])
            sr.cluster_success_rate_ejection_threshold = round(rates[2])
        elif reason == "failure_percentage":
            event.eject_failure_percentage_event.host_success_rate = round(rates[0]) if rates else 0
        elif action == events.EJECT:
            event.eject_consecutive_event.SetInParent()
        data = json_format.MessageToDict(event, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        # Envoy's line: compact, in the proto's field order.
        line = json.dumps({f.name: data[f.name] for f in event.DESCRIPTOR.fields if f.name in data},
                          separators=(",", ":"))
        try:
            self.file.write(line + "\n")
        except OSError as err:  # a full disk must not reach the request path
            log.warning("outlier event log %s: %s", self.path, err)

    def close(self) -> None:
        self.file.close()


_current: list[_Log] = []


def configure(path: str | None) -> None:
    """Log to `path` from now on (None: no log). Unchanged paths keep their file."""
    if _current and _current[0].path == path:
        return
    while _current:
        _current.pop().close()
    if path:
        try:
            _current.append(_Log(path))
        except OSError as err:
            log.error("outlier event log %s cannot be opened: %s", path, err)


def ejected(cluster: str, host: Host, reason: str, enforced: bool,
            rates: tuple[float, float, float] | None = None) -> None:
    if _current:
        _current[0].write(cluster, host, events.EJECT, reason, enforced, rates)


def returned(cluster: str, host: Host) -> None:
    if _current:
        sink = _current[0]
        sink.write(cluster, host, events.UNEJECT, sink.reasons.get(id(host), ""), True, None)
