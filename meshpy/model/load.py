"""Read a config file: parse YAML (or JSON), tell a meshpy config from an Envoy bootstrap, load it.

Both formats are YAML documents, so the format is told from the content, not the file name: an Envoy
bootstrap has top-level keys a meshpy config never has (`static_resources`, `node`, ...) or an
`admin.address` written as an Envoy `{socket_address: ...}`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import yaml

from meshpy.errors import ConfigError
from meshpy.model.meshpy_yaml import load_meshpy
from meshpy.model.types import Config
from meshpy.model.yaml_values import yaml_kind

try:  # libyaml is several times faster; the pure-Python loader behaves the same
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

# Top-level keys only an Envoy bootstrap has. `admin` is not here: both formats use it, so it is told
# apart by the shape of its address (see `detect_format`).
ENVOY_KEYS = frozenset(
    {
        "static_resources",
        "dynamic_resources",
        "node",
        "layered_runtime",
        "stats_config",
        "cluster_manager",
        "overload_manager",
        "stats_sinks",
        "bootstrap_extensions",
    }
)


class StrictLoader(_SafeLoader):
    """A safe loader that refuses duplicate keys. Plain PyYAML keeps the last one silently, which turns
    a pasted second `cluster:` into a config that routes somewhere the author never meant."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            # Keys merged in with `<<: *anchor` may be overridden on purpose; only literal keys count.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# A config that loads but makes a proxy that does nothing: said (by validate and run), not refused, since
# a placeholder config is legitimate; a silent one was a mistake found late.
NOTHING_TO_SERVE = "no listeners, and no xDS to bring any: a proxy with this config serves nothing"


def detect_format(data: Mapping[str, Any]) -> Literal["meshpy", "envoy"]:
    """`envoy` for an Envoy v3 bootstrap, `meshpy` for everything else (which then fails loudly on
    anything it does not know, so a misdetected file still gets a clear error)."""
    if any(key in data for key in ENVOY_KEYS):
        return "envoy"
    admin = data.get("admin")
    address = admin.get("address") if isinstance(admin, Mapping) else None
    if isinstance(address, Mapping) and ("socket_address" in address or "pipe" in address):
        return "envoy"
    return "meshpy"


def parse_yaml(text: str, origin: str = "") -> Any:
    """The parsed document; a syntax error becomes ConfigError naming the line and column."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_syntax_reason(exc, text, origin)) from None
    except yaml.YAMLError as exc:
        where = f" in {origin}" if origin else ""
        raise ConfigError(f"invalid YAML{where}: {exc}") from None


def _syntax_reason(exc: yaml.MarkedYAMLError, text: str, origin: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" in {origin}" if origin else ""
    line = ""
    if mark is not None:
        where += f" at line {mark.line + 1}, column {mark.column + 1}"
        lines = text.splitlines()
        line = lines[mark.line] if mark.line < len(lines) else ""
    problem = exc.problem or exc.context or "syntax error"
    # The usual cause of alias errors is an unquoted `*.example.com`: `*` starts a YAML alias. libyaml
    # and the pure-Python parser word it differently, hence the two patterns.
    if "*" in line and ("alias" in problem or "alphabetic or numeric" in problem):
        problem += " (quote values that start with *, e.g. '*.example.com')"
    return f"invalid YAML{where}: {problem}"


# What a document may grow to once its YAML aliases are expanded: far beyond any real config (a large
# generated bootstrap has some 10^5 values), far below what would take the readers minutes (10^9 from
# ten lines of nested aliases, the "billion laughs").
MAX_EXPANDED_VALUES = 1_000_000


def check_aliases(data: object) -> None:
    """ConfigError for a document that contains itself (`&a [*a]`: every reader of it would recurse
    until RecursionError) or that aliases expand past MAX_EXPANDED_VALUES. Each container is visited
    once, so a document with aliases costs no more than one without (found by fuzzing)."""
    sizes: dict[int, int] = {}  # containers done: their expanded size
    open_: set[int] = set()  # containers on the current path
    stack: list[tuple[object, str, bool]] = [(data, "", False)]
    while stack:
        node, path, leaving = stack.pop()
        children = list(node.items()) if isinstance(node, Mapping) else \
            list(enumerate(node)) if isinstance(node, list) else None
        if children is None:
            continue
        key = id(node)
        if leaving:
            open_.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(v), 1) for _, v in children)
            continue
        if key in sizes:
            continue
        if key in open_:
            raise ConfigError.at(path, "contains itself (a YAML alias inside its own anchor)")
        open_.add(key)
        stack.append((node, path, True))
        in_list = isinstance(node, list)
        for k, v in reversed(children):
            where = f"{path}[{k}]" if in_list else f"{path}.{k}" if path else str(k)
            stack.append((v, where, False))
    total = sizes.get(id(data), 1)
    if total > MAX_EXPANDED_VALUES:
        raise ConfigError(f"the document expands to {total} values through its YAML aliases "
                          f"(at most {MAX_EXPANDED_VALUES})")


# Envoy's --service-node, --service-cluster and --service-zone: node.id, node.cluster and
# node.locality.zone of every Envoy bootstrap this process loads, over what the bootstrap says (as in
# Envoy), at start and on every reload alike.
_node_overrides: dict[str, str] = {}


def set_node_overrides(node_id: str | None = None, cluster: str | None = None,
                       zone: str | None = None) -> None:
    _node_overrides.clear()
    for key, value in (("id", node_id), ("cluster", cluster), ("zone", zone)):
        if value is not None:
            _node_overrides[key] = value


def _with_node(data: Mapping[str, Any]) -> Mapping[str, Any]:
    node = data.get("node")
    node = dict(node) if isinstance(node, Mapping) else {}
    for key in ("id", "cluster"):
        if key in _node_overrides:
            node[key] = _node_overrides[key]
    if "zone" in _node_overrides:
        locality = node.get("locality")
        locality = dict(locality) if isinstance(locality, Mapping) else {}
        node["locality"] = {**locality, "zone": _node_overrides["zone"]}
    return {**data, "node": node}


def load_data(data: object, origin: str = "") -> Config:
    """Load an already parsed document in either format."""
    if data is None:
        raise ConfigError(f"{origin or 'the config'} is empty")
    if not isinstance(data, Mapping):
        raise ConfigError(f"the top level must be a mapping, got a {yaml_kind(data)}")
    check_aliases(data)
    if detect_format(data) == "envoy":
        # Imported here, by name: the translator pulls in the Envoy protos, which a meshpy config never
        # needs, and imports this package itself; importing it by name also keeps `mypy meshpy/model`
        # independent of the xds package.
        translate = importlib.import_module("meshpy.xds.translate")
        load_bootstrap: Callable[[Mapping[str, Any]], Config] = translate.load_bootstrap
        if _node_overrides:
            data = _with_node(data)
        config = load_bootstrap(data)
        return config
    return load_meshpy(data)


def load_text(text: str, origin: str = "") -> Config:
    """Load a config from YAML or JSON text; `origin` (a file name) is used in syntax errors."""
    return load_data(parse_yaml(text, origin), origin)


def load_file(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return load_text(text, origin=path)
