"""Process-wide bootstrap fields: read where meshpy acts on them, taken where they only shape Envoy's
own statistics, refused (naming them) otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from meshpy.errors import ConfigError
from meshpy.model.process import NO_PROCESS_OPTIONS, ProcessOptions
from meshpy.xds.translate import load_bootstrap

ADMIN = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}}


def problems(extra: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_bootstrap({**ADMIN, **extra})
    return [str(i) for i in err.value.issues]


INTERNAL = "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"


def test_istio_process_fields_are_taken() -> None:
    config = load_bootstrap({
        **ADMIN, "application_log_config": {"log_format": {"text_format": "%l %v"}},
        "cluster_manager": {"outlier_detection": {"event_log_path": "/dev/stdout"},
                            "enable_deferred_cluster_creation": True},
        "stats_config": {"use_all_default_tags": False,
                         "stats_tags": [{"tag_name": "x", "regex": "^x(\\.(.+))$"}]},
        "deferred_stat_options": {"enable_deferred_creation_stats": True},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": INTERNAL,
            "value": {"buffer_size_kb": 64}}}],
        "default_regex_engine": {"name": "re2", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.regex_engines.v3.GoogleRE2"}}})
    assert config.process == ProcessOptions(log_pattern="%l %v", outlier_event_log="/dev/stdout")
    assert load_bootstrap(ADMIN).process == NO_PROCESS_OPTIONS


def test_what_meshpy_does_not_do_is_named() -> None:
    assert problems({"cluster_manager": {"upstream_bind_config": {"source_address": {
        "address": "127.0.0.1", "port_value": 0}}}}) == [
        "cluster_manager.upstream_bind_config: not supported by meshpy"]
    assert problems({"bootstrap_extensions": [{"name": "x", "typed_config": {"@type": INTERNAL}}, {
        "name": "y", "typed_config": {"@type": "type.googleapis.com/envoy.config.core.v3.Node"}}]}) == [
        "bootstrap_extensions[1].typed_config: envoy.config.core.v3.Node is not supported by meshpy"]
    assert problems({"application_log_config": {"log_format": {"json_format": {"a": 1}}}}) == [
        "application_log_config.log_format.json_format.a: must be a string (a log pattern)"]
