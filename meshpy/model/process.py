"""Process-wide settings of an Envoy bootstrap that are not about one listener or cluster: the format
of the proxy's own log lines (application_log_config), where outlier ejections are logged
(cluster_manager.outlier_detection.event_log_path), and the cluster the proxy itself belongs to
(cluster_manager.local_cluster_name)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessOptions:
    # The proxy's log lines as Envoy's spdlog pattern says (`%Y-%m-%dT%T.%fZ %l %n: %v`), or as a JSON
    # object whose values are such patterns (json_log: (key, pattern) pairs). Neither: meshpy's own.
    log_pattern: str | None = None
    json_log: tuple[tuple[str, str], ...] = ()
    outlier_event_log: str | None = None  # a file path (/dev/stdout too): one JSON event per line
    local_cluster: str = ""


NO_PROCESS_OPTIONS = ProcessOptions()
