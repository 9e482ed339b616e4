"""Helpers shared by the meshpy YAML loader tests: load text written in parts, collect its issues."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from meshpy.errors import ConfigError
from meshpy.model.meshpy_yaml import load_meshpy
from meshpy.model.types import Config

CLUSTERS = "clusters: {backend: 127.0.0.1:9000, v1: 127.0.0.1:9001, v2: 127.0.0.1:9002}\n"


def load(*parts: str) -> Config:
    """Load YAML written in parts (each dedented on its own, so indented text and CLUSTERS mix)."""
    return load_meshpy(yaml.safe_load("".join(textwrap.dedent(part) for part in parts)))


def issues(*parts: str) -> list[str]:
    """Every issue of a config that must fail, as `path: reason` lines."""
    with pytest.raises(ConfigError) as info:
        load(*parts)
    return [str(issue) for issue in info.value.issues]


def route_yaml(route: str) -> str:
    """A config with one http listener whose single route is `route` (YAML flow or block text)."""
    body = textwrap.indent(textwrap.dedent(route).strip(), " " * 8)
    return f"listeners:\n  - address: 127.0.0.1:10000\n    routes:\n      - {body.lstrip()}\n" + CLUSTERS
