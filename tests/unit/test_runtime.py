"""Envoy's layered runtime (meshpy.runtime): how values read, how layers merge, how a disk layer is
walked and noticed swapped, the admin layer, which values meshpy refuses, and the data plane's reads
(faults, the local rate limit, connection limits). The expected readings are what Envoy 1.40 showed
for the same values (tests/integration/test_runtime_envoy.py compares the two live)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpy.model.limits import ConnectionLimits
from meshpy.model.routes import Fault, FaultKeys, LocalRateLimit
from meshpy.model.runtime import Entry, LayeredRuntime, RuntimeLayer
from meshpy.runtime import EMPTY, Runtime
from meshpy.runtime.disk import MAX_DEPTH, file_value, read_directory, signature
from meshpy.runtime.features import DEFAULTS, INERT, refusal
from meshpy.runtime.loader import NO_ADMIN_LAYER
from meshpy.runtime.snapshot import Layer, Snapshot
from meshpy.runtime.values import RuntimeValueError, entry, flatten, from_text
from meshpy.stack.guards import CompiledFault, TokenBucket
from meshpy.transport.admission import Gate, Overload

FLAG = "envoy.reloadable_features.http_reject_path_with_fragment"


# -- values ----------------------------------------------------------------------------------------

def test_a_static_layer_flattens_to_dotted_keys_as_envoy_shows_them() -> None:
    values = flatten({"envoy": {"resource_limits": {"listener": {"web": {"connection_limit": 10000.0}}}},
                      "a": {"flag": True, "s": "str", "half": 0.5, "big": 4294967295.0, "m": 1000000.0,
                            "g": {"numerator": 5.0, "denominator": "TEN_THOUSAND"}, "empty": {}},
                      "x.y": 10.0})
    assert values["envoy.resource_limits.listener.web.connection_limit"] == Entry(
        "10000", boolean=True, integer=10000, number=10000.0)
    assert values["a.flag"] == Entry("true", boolean=True)
    assert values["a.s"] == Entry("str")
    assert values["a.half"] == Entry("0.5", integer=0, number=0.5)  # Envoy truncates: reads as 0
    assert values["a.big"].raw == "4294967295" and values["a.big"].boolean is None
    assert values["a.m"].raw == "1e+06"  # absl's six digits, as Envoy shows an int32 number
    assert values["a.g"].fraction == (5, 10_000)
    assert values["a.g"].raw.endswith('key: "numerator"\n  value {\n    number_value: 5\n  }\n}\n')
    assert values["a.empty"].fraction == (0, 100)  # an empty map is a 0% fraction
    assert values["x.y"].integer == 10


@pytest.mark.parametrize("bad", [{"a": [1]}, {"a": {"b": None}}])
def test_lists_and_nulls_are_refused_as_envoy_refuses_them(bad: dict[str, object]) -> None:
    with pytest.raises(RuntimeValueError, match="Invalid runtime entry value for a"):
        flatten(bad)


def test_a_key_given_twice_through_a_nested_map_is_refused() -> None:
    with pytest.raises(RuntimeValueError, match=r"a\.b is given twice"):
        flatten({"a": {"b": 1.0}, "a.b": 2.0})


@pytest.mark.parametrize(("text", "boolean", "integer", "fraction"), [
    ("true", True, None, None), ("Yes", True, None, None), ("off", False, None, None),
    ("yEs", None, None, None),  # yaml-cpp: neither all lower, all upper nor capitalised
    ("100", True, 100, None), ("0x1F", True, 31, None), ("010", True, 8, None), ("-5", True, None, None),
    ("1e3", True, 1000, None), ("4294967296", None, 4294967296, None),
    ('"5"', None, None, None),  # a quoted string is read as a double from its whole text: none
    ("[1,2]", None, None, None), ("~", None, None, None),
    ("numerator: 5\ndenominator: TEN_THOUSAND", None, None, (5, 10_000)),
    ("{numerator: 50}", None, None, (50, 100)),
])
def test_text_reads_as_yaml_cpp_and_envoy_read_it(text: str, boolean: bool | None, integer: int | None,
                                                  fraction: tuple[int, int] | None) -> None:
    e = from_text(text)
    assert (e.raw, e.boolean, e.integer, e.fraction) == (text, boolean, integer, fraction)


def test_strings_read_as_doubles_only() -> None:
    """Envoy 1.40 reads a string value as a double and nothing else: "true" is no boolean."""
    assert entry("true") == Entry("true")
    assert entry("{numerator: 100}").fraction is None
    assert entry(" 42 ") == Entry(" 42 ", boolean=True, integer=42, number=42.0)


def test_text_that_is_not_yaml_is_an_error() -> None:
    with pytest.raises(RuntimeValueError, match="not YAML"):
        from_text("{")


# -- disk layers -----------------------------------------------------------------------------------

def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_directory_reads_as_envoy_reads_it(tmp_path: Path) -> None:
    write(tmp_path, "fault/http/abort/abort_percent", "100\n")
    write(tmp_path, "fault/http/abort/http_status", "# a comment\n503\n")
    write(tmp_path, "a/str", "hello world  \n\n")
    write(tmp_path, "a/multi", "line1\nline2\n# c\nline3")
    (tmp_path / "linked").symlink_to(tmp_path / "a" / "str")
    os.mkfifo(tmp_path / "fifo")  # neither file nor directory: skipped, as Envoy skips it
    values = read_directory(str(tmp_path))
    assert values is not None
    assert {k: e.raw for k, e in values.items()} == {
        "fault.http.abort.abort_percent": "100", "fault.http.abort.http_status": "503",
        "a.str": "hello world", "a.multi": "line1\nline2\nline3", "linked": "hello world"}
    assert values["fault.http.abort.abort_percent"].integer == 100


def test_file_values_keep_envoys_quirks() -> None:
    assert file_value("") == ""
    assert file_value("a  \n") == "a"
    assert file_value("a\nb \n") == "a\nb"
    assert file_value("a\na") == "aa"  # every line equal to the last one is trimmed and not joined


def test_a_missing_directory_is_no_layer_and_a_broken_one_fails(tmp_path: Path) -> None:
    assert read_directory(str(tmp_path / "absent")) is None
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OSError):
        read_directory(str(tmp_path))


def test_walks_no_deeper_than_envoy(tmp_path: Path) -> None:
    write(tmp_path, "/".join(["d"] * (MAX_DEPTH - 1)) + "/k", "1")
    assert read_directory(str(tmp_path)) is not None  # the layer's own directory is the first of 16
    write(tmp_path, "/".join(["d"] * MAX_DEPTH) + "/k", "1")
    with pytest.raises(RuntimeValueError, match="depth exceeded 16"):
        read_directory(str(tmp_path))


def test_swapping_the_symlink_changes_the_signature_and_writing_in_place_does_not(tmp_path: Path) -> None:
    root = tmp_path / "current"
    assert signature(str(root)) is None
    write(tmp_path, "v1/k", "1")
    swap(tmp_path, "v1")
    first = signature(str(root))
    write(tmp_path, "v1/k", "2")
    assert signature(str(root)) == first
    swap(tmp_path, "v1")  # the same target, as Envoy's fault-injection scripts do
    assert signature(str(root)) != first


def swap(base: Path, target: str) -> None:
    """`ln -s target new && mv -T new current`."""
    (base / "new").symlink_to(base / target)
    os.replace(base / "new", base / "current")


# -- snapshots and the runtime ----------------------------------------------------------------------

def test_later_layers_win_and_the_view_has_envoys_shape() -> None:
    snap = Snapshot((Layer("static", {"a": from_text("1"), "b": from_text("x")}),
                     Layer("disk", {"a": from_text("2")}), Layer("admin", {})))
    assert snap.get("a") == "2" and snap.get_int("a", 0) == 2 and snap.get("b") == "x"
    assert snap.get_int("b", 7) == 7 and snap.get_bool("missing", True) is True
    assert snap.view() == {"layers": ["static", "disk", "admin"], "entries": {
        "a": {"final_value": "2", "layer_values": ["1", "2", ""]},
        "b": {"final_value": "x", "layer_values": ["x", "", ""]}}}


def test_fraction_reads_percentages_and_fractions_as_envoy_does() -> None:
    snap = Snapshot((Layer("l", {"n": from_text("25"), "big": from_text("150"), "f": from_text(
        "numerator: 5\ndenominator: TEN_THOUSAND"), "s": from_text("abc")}),))
    assert snap.fraction("n", 0.9) == 0.25
    assert snap.fraction("big", 0.0) == 1.0  # over 100: everything
    assert snap.fraction("f", 0.9) == 0.0005
    assert snap.fraction("s", 0.9) == 0.9 and snap.fraction("absent", 0.3) == 0.3


def static(name: str, **values: str) -> RuntimeLayer:
    return RuntimeLayer(name=name, kind="static", values=tuple((k, from_text(v)) for k, v in values.items()))


def test_without_a_layered_runtime_there_is_no_layer_and_no_admin_layer() -> None:
    runtime = Runtime()
    runtime.configure(LayeredRuntime())
    assert runtime.view() == {"entries": {}, "layers": []}
    assert runtime.modify([("a", "1")]) == NO_ADMIN_LAYER  # Envoy 1.40's answer, word for word


def test_the_admin_layer_sets_removes_and_takes_all_or_nothing() -> None:
    runtime = Runtime()
    runtime.configure(LayeredRuntime(layers=(static("s", a="1"), RuntimeLayer(name="admin", kind="admin"))))
    assert runtime.modify([("a", "5"), ("b", "x")]) is None
    before = runtime.snapshot
    assert before.get_int("a", 0) == 5 and before.get("b") == "x"
    error = runtime.modify([("c", "1"), ("d", "{")])
    assert error is not None and error.startswith("d: not YAML")
    assert runtime.snapshot is before  # nothing taken
    assert runtime.modify([("a", "")]) is None  # an empty value removes the override
    assert runtime.snapshot.get_int("a", 0) == 1
    assert runtime.view()["layers"] == ["s", "admin"]
    # A reload that keeps an admin layer keeps its values; one without drops them.
    runtime.configure(LayeredRuntime(layers=(static("s", a="2"), RuntimeLayer(name="admin", kind="admin"))))
    assert runtime.snapshot.get("b") == "x"
    runtime.configure(LayeredRuntime(layers=(static("s", a="2"),)))
    assert runtime.snapshot.get("b") is None


def test_the_admin_layer_refuses_what_meshpy_cannot_follow() -> None:
    runtime = Runtime()
    runtime.configure(LayeredRuntime(layers=(RuntimeLayer(name="admin", kind="admin"),)))
    flag = "envoy.reloadable_features.strict_chunk_parsing"
    error = runtime.modify([(flag, "true")])
    assert error is not None and flag in error and "default is false" in error
    assert runtime.snapshot.get(flag) is None
    assert runtime.modify([(FLAG, "false")]) is None


def disk_runtime(tmp_path: Path) -> tuple[Runtime, LayeredRuntime]:
    layer = RuntimeLayer(name="disk", kind="disk", directory=f"{tmp_path}/current/envoy",
                         symlink_root=f"{tmp_path}/current")
    return Runtime(), LayeredRuntime(layers=(static("s", **{"fault.http.abort.abort_percent": "0"}), layer))


def test_a_disk_layer_is_read_again_when_its_symlink_is_swapped(tmp_path: Path) -> None:
    runtime, model = disk_runtime(tmp_path)
    runtime.configure(model)
    assert runtime.view()["layers"] == ["s"]  # no directory yet: left out, as in Envoy
    write(tmp_path, "v1/envoy/fault/http/abort/abort_percent", "100")
    assert not runtime.poll()
    swap(tmp_path, "v1")
    assert runtime.poll()
    assert runtime.snapshot.get_int("fault.http.abort.abort_percent", 0) == 100
    write(tmp_path, "v1/envoy/fault/http/abort/abort_percent", "50")
    assert not runtime.poll()  # written in place: Envoy does not notice either
    swap(tmp_path, "v1")
    assert runtime.poll() and runtime.snapshot.get_int("fault.http.abort.abort_percent", 0) == 50


def test_a_swapped_disk_layer_with_a_refused_value_keeps_the_old_values(tmp_path: Path) -> None:
    runtime, model = disk_runtime(tmp_path)
    write(tmp_path, "v1/envoy/k", "1")
    swap(tmp_path, "v1")
    runtime.configure(model)
    write(tmp_path, "v2/envoy/k", "2")
    write(tmp_path, "v2/envoy/circuit_breakers/backend/default/max_connections", "1")
    swap(tmp_path, "v2")
    errors = runtime.errors
    assert not runtime.poll()
    assert runtime.snapshot.get("k") == "1" and runtime.errors == errors + 1
    assert not runtime.poll()  # said once per swap


def test_a_refused_disk_value_at_start_is_a_config_error(tmp_path: Path) -> None:
    runtime, model = disk_runtime(tmp_path)
    write(tmp_path, "v1/envoy/envoy/reloadable_features/strict_chunk_parsing", "true")
    swap(tmp_path, "v1")
    from meshpy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"layers\[1\].disk_layer: .*strict_chunk_parsing"):
        runtime.prepare(model)


# -- what meshpy takes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "refused"), [
    (FLAG, "false", False),  # followed both ways
    ("envoy.reloadable_features.strict_chunk_parsing", "true", True),  # default false, not followed
    ("envoy.reloadable_features.strict_chunk_parsing", "false", False),  # its default
    ("envoy.reloadable_features.strict_chunk_parsing", "0", False),  # a number reads as a boolean too
    ("envoy.reloadable_features.strict_chunk_parsing", "1", True),
    ("envoy.reloadable_features.strict_chunk_parsing", "maybe", False),  # no boolean: Envoy ignores it
    ("envoy.reloadable_features.coalesce_lb_rebuilds_on_batch_update", "false", False),  # inside Envoy
    ("envoy.reloadable_features.quic_reject_all", "true", False),  # QUIC, which meshpy has not got
    ("envoy.reloadable_features.no_such_flag", "true", False),  # a removed guard: Envoy ignores it
    ("envoy.deprecated_features:envoy.config.listener.v3.Listener.x", "true", False),
    ("re2.max_program_size.error_level", "32768", False),
    ("circuit_breakers.backend.default.max_connections", "10", True),
    ("upstream.healthy_panic_threshold", "0", True),
    ("my.own.key", "anything", False),
])
def test_which_values_meshpy_takes(key: str, value: str, refused: bool) -> None:
    assert (refusal(key, from_text(value)) is not None) == refused


def test_the_feature_table_is_envoy_140s() -> None:
    assert len(DEFAULTS) == 174
    assert DEFAULTS[FLAG] is True and DEFAULTS["envoy.reloadable_features.fixed_heap_use_allocated"] is False
    assert "envoy.reloadable_features.fixed_heap_use_allocated" in INERT


# -- the data plane's reads -------------------------------------------------------------------------

def runtime_with(**values: str) -> Runtime:
    runtime = Runtime()
    runtime.configure(LayeredRuntime(layers=(static("s", **values),)))
    return runtime


def test_faults_follow_the_runtime_keys() -> None:
    fault = Fault(abort_status=503, abort_percent=0.0, delay=1.0, delay_percent=0.0)
    compiled = CompiledFault(fault, runtime_with())
    assert compiled.plan([]) is None  # an empty runtime: the config alone
    compiled.runtime = runtime_with(**{"fault.http.abort.abort_percent": "100",
                                       "fault.http.abort.http_status": "418"})
    plan = compiled.plan([])
    assert plan is not None and (plan.delay, plan.abort) == (None, 418)
    compiled.runtime = runtime_with(**{"fault.http.delay.fixed_delay_percent": "100",
                                       "fault.http.delay.fixed_duration_ms": "250"})
    plan = compiled.plan([])
    assert plan is not None and (plan.delay, plan.abort) == (0.25, None)
    compiled.runtime = runtime_with(**{"fault.http.delay.fixed_delay_percent": "100",
                                       "fault.http.delay.fixed_duration_ms": "0"})
    assert compiled.plan([]) is None  # 0 ms: no delay


def test_a_downstream_cluster_reads_its_own_keys() -> None:
    compiled = CompiledFault(Fault(abort_status=503, abort_percent=0.0), runtime_with(**{
        "fault.http.abort.abort_percent": "100", "fault.http.foo.abort.http_status": "421"}))
    cluster = [(b"x-envoy-downstream-service-cluster", b"foo")]
    assert compiled.plan(cluster) is None  # its percentage key is absent: the configured 0%
    compiled.runtime = runtime_with(**{"fault.http.foo.abort.abort_percent": "100",
                                       "fault.http.abort.http_status": "500",
                                       "fault.http.foo.abort.http_status": "421"})
    plan = compiled.plan(cluster)
    assert plan is not None and plan.abort == 421
    assert compiled.plan([]) is None


def test_renamed_keys_and_max_active_from_the_runtime() -> None:
    fault = Fault(abort_status=503, abort_percent=0.0, max_active=5, keys=FaultKeys(abort_percent="my.abort"))
    renamed = runtime_with(**{"my.abort": "100", "fault.http.abort.abort_percent": "0"})
    compiled = CompiledFault(fault, renamed)
    assert compiled.plan([]) is not None
    compiled.runtime = runtime_with(**{"my.abort": "100", "fault.http.max_active_faults": "0"})
    assert compiled.plan([]) is None  # no fault may be active


def test_the_rate_limit_is_enabled_and_enforced_as_the_runtime_says() -> None:
    limit = LocalRateLimit(max_tokens=1, tokens_per_fill=1, fill_interval=60.0, enabled_percent=0.0,
                           enabled_key="rl.on")
    bucket = TokenBucket(limit, runtime_with())
    assert bucket.gated and not bucket.share(bucket.enabled_key, bucket.enabled)
    bucket.runtime = runtime_with(**{"rl.on": "100"})
    assert bucket.share(bucket.enabled_key, bucket.enabled)
    plain = TokenBucket(LocalRateLimit(max_tokens=1, tokens_per_fill=1, fill_interval=60.0))
    assert not plain.gated  # 100% / 100% and no keys: no draw per request


def test_connection_limits_from_the_runtime() -> None:
    runtime = runtime_with(**{"envoy.resource_limits.listener.web.connection_limit": "2",
                              "overload.global_downstream_max_connections": "3"})
    overload = Overload(runtime)
    gate = Gate(overload)
    gate.configure(ConnectionLimits(), "web")
    assert gate.admit(1, "p") == "" and gate.admit(2, "p") == "cx_overflow"
    other = Gate(overload)
    other.configure(ConnectionLimits(), "other")
    assert other.admit(0, "p") == "" and other.admit(1, "p") == ""
    assert other.admit(2, "p") == "cx_overload_rejected"  # a fourth connection over every listener
    assert overload.rejected == 1
    assert Overload().admit() and Overload(Runtime()).admit()  # no runtime, or an empty one: no limit


def test_the_empty_snapshot_costs_one_falsy_dict() -> None:
    assert not EMPTY.values and EMPTY.view() == {"entries": {}, "layers": []}


# -- properties -------------------------------------------------------------------------------------

@given(st.text(max_size=60))
def test_any_text_reads_or_is_refused_with_a_reason(text: str) -> None:
    """An admin value or a file is whatever bytes someone wrote: it reads as an entry showing that text,
    or fails as RuntimeValueError (a 503 naming the key), never otherwise."""
    try:
        e = from_text(text)
    except RuntimeValueError:
        return
    assert e.raw == text
    assert e.integer is None or e.integer >= 0


_names = st.text("abc_", min_size=1, max_size=4)
_leaves = st.one_of(st.booleans(), st.integers(-10**6, 10**6).map(float), st.text("xyz ", max_size=5))
_trees = st.recursive(_leaves, lambda inner: st.dictionaries(_names, inner, min_size=1, max_size=3),
                      max_leaves=12)


@given(st.dictionaries(_names, _trees, max_size=4))
def test_flattening_keeps_every_leaf_under_its_dotted_path(struct: dict[str, object]) -> None:
    def leaves(node: object, prefix: str) -> dict[str, object]:
        if isinstance(node, dict):
            out: dict[str, object] = {}
            for k, v in node.items():
                out.update(leaves(v, f"{prefix}.{k}" if prefix else k))
            return out
        return {prefix: node}

    expected = leaves(struct, "")
    try:
        values = flatten(struct)
    except RuntimeValueError as exc:
        assert "given twice" in str(exc)  # `a.b` both as a key and through `a: {b: ...}`
        return
    assert set(values) == set(expected)
    for key, leaf in expected.items():
        assert values[key] == entry(leaf)
