"""meshpy's own YAML, in process: `load_text` (meshpy.model.load: format detection, the strict YAML
loader, meshpy_yaml and its route, match, policy and value readers), then the compile steps of
config_checks.

Property: a config loads, or ConfigError says why (each issue with its reason; a path where there is
one); the loaded config compiles or ConfigError says why; no other exception, no hang.

The structured mutator parses the input as YAML and edits the tree: a value swapped for an odd one
(wrong type, edge number, odd duration, size or address, a regex), a key dropped or added (keys taken
from every seed), a list item repeated, a subtree spliced in from another seed. Byte edits of the
text run a third of the time.
"""

from __future__ import annotations

import math
import random
from typing import Any

import yaml
from config_checks import check_issues, compile_config
from fuzzkit import Target, corpus

from meshpy.errors import ConfigError
from meshpy.model.load import check_aliases, load_text

ODD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 2, 100, 65535, 65536, 2**31, 2**63, 2**64, 1.5, -0.0, math.inf, -math.inf,
    math.nan, "", " ", "x", "0", "-1", "0s", "1s", "-1s", "1ms", "0.0001ms", "1e400s", "99999999h", "1.5.5s",
    "off", "on", "yes", "null", "~", "1KiB", "0KiB", "8193KiB", "1.5KiB", "9999999999GiB", "100%", "101%",
    "-5%", "nan%", "127.0.0.1:0", "127.0.0.1:65536", "0.0.0.0:-1", "[::1]:80", "[::1", "::1", "host:port",
    "a.test:", "*", "*.example.com", "*.", "**", "/", "/a/../b", "a\x00b", "a\r\nb: c", "^(a+)+$", "(", "[",
    "\\", "%zz", "http://x/", "é", "x" * 300, [], {}, [None], [1, 2], {"": 1}, {"a": {"b": []}},
)

_POOL: dict[str, tuple[list[str], list[Any]]] = {}


def _walk(node: Any, path: tuple[Any, ...], out: list[tuple[tuple[Any, ...], Any]]) -> None:
    out.append((path, node))
    if isinstance(node, dict):
        for k, v in node.items():
            _walk(v, (*path, k), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, (*path, i), out)


def _pool(corpus_name: str) -> tuple[list[str], list[Any]]:
    """Every key and every subtree of the seeds (loaded once)."""
    if corpus_name not in _POOL:
        keys: set[str] = set()
        nodes: list[Any] = []
        for _, data in corpus(corpus_name):
            try:
                tree = _load(data)
            except (yaml.YAMLError, ConfigError):
                continue
            found: list[tuple[tuple[Any, ...], Any]] = []
            _walk(tree, (), found)
            for path, node in found:
                nodes.append(node)
                if path and isinstance(path[-1], str):
                    keys.add(path[-1])
        _POOL[corpus_name] = (sorted(keys), nodes)
    return _POOL[corpus_name]


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return tree


def mutate_tree(tree: Any, rng: random.Random, corpus_name: str) -> Any:
    keys, nodes = _pool(corpus_name)
    for _ in range(rng.randint(1, 3)):
        found: list[tuple[tuple[Any, ...], Any]] = []
        _walk(tree, (), found)
        path, node = rng.choice(found)
        op = rng.randrange(7)
        if op <= 1:
            tree = _set(tree, path, rng.choice(ODD_VALUES))
        elif op == 2 and nodes:
            tree = _set(tree, path, _copy(rng.choice(nodes)))
        elif op == 3 and path:
            parent = tree
            for p in path[:-1]:
                parent = parent[p]
            del parent[path[-1]]
        elif op == 4 and isinstance(node, dict) and keys:
            value = _copy(rng.choice(nodes)) if nodes and rng.random() < 0.7 else rng.choice(ODD_VALUES)
            node[rng.choice(keys)] = value
        elif op == 5 and isinstance(node, list) and node:
            node.insert(rng.randrange(len(node) + 1), _copy(rng.choice(node)))
        elif op == 6:  # change the shape: a scalar in a list, a list's first item, a mapping's values
            if isinstance(node, list):
                tree = _set(tree, path, node[0] if node else None)
            elif isinstance(node, dict):
                tree = _set(tree, path, list(node.values()))
            else:
                tree = _set(tree, path, [node])
    return tree


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _load(data: bytes) -> Any:
    """The YAML tree, unless its aliases make it contain itself or expand past meshpy's limit: walking
    or dumping such a tree (the regress-aliases-* seeds) would take the mutator minutes and gigabytes."""
    tree = yaml.safe_load(data.decode("utf-8", "replace"))
    check_aliases(tree)
    return tree


def mutator(corpus_name: str) -> Any:
    def mutate(data: bytes, rng: random.Random) -> bytes:
        tree = _load(data)
        tree = mutate_tree(tree, rng, corpus_name)
        text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=1000)
        return text.encode()

    return mutate


def run(data: bytes) -> None:
    try:
        config = load_text(data.decode("utf-8", "replace"), "fuzz.yaml")
    except ConfigError as err:
        check_issues(err)
        return
    compile_config(config)


DICTIONARY = (b"listeners:\n", b"clusters:\n", b"routes:\n", b"  - ", b": ", b"{", b"}", b"[", b"]", b"&a ",
              b"*a", b"<<: *a", b"!!binary ", b"!!python/object ", b"---\n", b"match: ", b"cluster: ",
              b"virtual_hosts:", b"timeout: ", b"retry:", b"split:", b"regex: ", b"headers:", b"'", b'"')

TARGET = Target(name="meshpy_yaml", run=run, mutate=mutator("meshpy_yaml"), dictionary=DICTIONARY,
                max_len=16384, time_limit=5.0)
