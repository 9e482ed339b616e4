"""Envoy 1.40's own definitions of the few proto files whose xds-protos modules (PyPI xds-protos, the
newest there is) predate fields that real configs use and Envoy 1.40 accepts. README.md here says
which files, where they come from, and how to make them again (regenerate.py).

`install()`, run when meshpy is imported, puts a finder first on sys.meta_path that loads the modules
of those files (`envoy.config.route.v3.route_components_pb2`, ...) from here instead of from
xds-protos. Every module keeps importing them by their usual names, and the modules of xds-protos that
import them get these as well. The default descriptor pool can hold a file once: were xds-protos'
module of one of them loaded first, its definition would stay, so install() refuses to run late
rather than leave the older definition in place without saying so.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent


def vendored() -> dict[str, Path]:
    """The modules kept here, by name, and their files."""
    files = sorted(_HERE.glob("envoy/**/*_pb2.py"))
    return {".".join(p.relative_to(_HERE).with_suffix("").parts): p for p in files}


class NewerProtos:
    """A meta path finder for the modules kept here (importlib.abc.MetaPathFinder's protocol)."""

    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        file = self.modules.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def install() -> None:
    """Load the modules kept here in place of xds-protos' (once per process)."""
    if any(isinstance(finder, NewerProtos) for finder in sys.meta_path):
        return
    modules = vendored()
    early = sorted(name for name in modules if name in sys.modules)
    if early:
        raise ImportError(f"{', '.join(early)} was imported from xds-protos before meshpy: import meshpy "
                          "first, so that Envoy 1.40's definitions of those protos are the ones loaded")
    sys.meta_path.insert(0, NewerProtos(modules))
