"""Bootstrap fields about the process rather than a listener or a cluster.

Read and acted on: `application_log_config` (the format of meshpy's own log lines, Envoy's spdlog
pattern flags: meshpy.telemetry.app_log), `cluster_manager` (the outlier event log, the local cluster's
name), `bootstrap_extensions` of the internal listener (which only makes internal listeners possible;
meshpy refuses those where they are declared, so it changes nothing here), and `default_regex_engine`
(RE2, the only engine; meshpy checks every regex against RE2's syntax already).

Accepted because they only shape Envoy's own statistics, which meshpy does not produce (its metrics
are its own, docs/observability): `stats_config` (tag extraction, inclusion lists, histogram buckets),
`deferred_stat_options`; and `cluster_manager.enable_deferred_cluster_creation` (when Envoy builds a
cluster's worker state, not what it does).
"""

from __future__ import annotations

from typing import Any

from meshpy.model.process import NO_PROCESS_OPTIONS, ProcessOptions
from meshpy.telemetry.app_log import pattern_problem
from meshpy.xds.translate_base import Issues, child, item

FIELDS = frozenset({"application_log_config", "cluster_manager", "bootstrap_extensions", "stats_config",
                    "deferred_stat_options", "default_regex_engine"})
_INTERNAL_LISTENER = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
_RE2 = "envoy.extensions.regex_engines.v3.GoogleRE2"
_TYPED_STRUCTS = ("xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct")


def process_options(issues: Issues, msg: Any) -> ProcessOptions:
    pattern: str | None = None
    json_log: tuple[tuple[str, str], ...] = ()
    if msg.HasField("application_log_config"):
        app, where = msg.application_log_config, "application_log_config"
        issues.fields(app, where, {"log_format"})
        fmt, at = app.log_format, child(where, "log_format")
        issues.fields(fmt, at, {"text_format", "json_format"})
        if fmt.text_format:
            pattern = _checked(issues, fmt.text_format, child(at, "text_format"))
        elif fmt.HasField("json_format"):
            pairs = []
            for key, value in fmt.json_format.fields.items():
                if value.WhichOneof("kind") != "string_value":
                    issues.add(child(at, f"json_format.{key}"), "must be a string (a log pattern)")
                    continue
                pairs.append((key, _checked(issues, value.string_value, child(at, f"json_format.{key}"))))
            json_log = tuple(pairs)
    event_log: str | None = None
    local = ""
    if msg.HasField("cluster_manager"):
        cm, where = msg.cluster_manager, "cluster_manager"
        issues.fields(cm, where, {"local_cluster_name", "outlier_detection",
                                  "enable_deferred_cluster_creation"})
        local = cm.local_cluster_name
        if cm.HasField("outlier_detection"):
            od = cm.outlier_detection
            issues.fields(od, child(where, "outlier_detection"), {"event_log_path"})
            event_log = od.event_log_path or None
    _extensions(issues, msg)
    if msg.HasField("default_regex_engine"):
        engine = msg.default_regex_engine
        if engine.typed_config.TypeName() != _RE2:
            issues.add("default_regex_engine.typed_config",
                       f"{engine.typed_config.TypeName() or 'an empty typed_config'}: only RE2 is supported")
    if pattern is None and not json_log and event_log is None and not local:
        return NO_PROCESS_OPTIONS
    return ProcessOptions(log_pattern=pattern, json_log=json_log, outlier_event_log=event_log,
                          local_cluster=local)


def _checked(issues: Issues, pattern: str, path: str) -> str:
    problem = pattern_problem(pattern)
    if problem is not None:
        issues.add(path, problem)
    return pattern


def _extensions(issues: Issues, msg: Any) -> None:
    for i, ext in enumerate(msg.bootstrap_extensions):
        at = item("bootstrap_extensions", i)
        type_name = ext.typed_config.TypeName()
        if type_name in _TYPED_STRUCTS:
            from udpa.type.v1 import typed_struct_pb2 as udpa_ts
            from xds.type.v3 import typed_struct_pb2 as xds_ts

            ts = (xds_ts if type_name.startswith("xds.") else udpa_ts).TypedStruct()
            ext.typed_config.Unpack(ts)
            type_name = ts.type_url.rpartition("/")[2]
        if type_name != _INTERNAL_LISTENER:
            issues.add(child(at, "typed_config"), f"{type_name or 'an empty typed_config'} is not supported "
                                                  "by meshpy")

