"""Which binding of libnghttp2 this process uses: the compiled one (cffi API mode, built by
meshpy.codec.nghttp2.native_build) where it was built, else ABI mode (no compiler needed). Both call
the same library; the compiled one crosses between C and Python less often."""

from __future__ import annotations

from typing import Any

from meshpy.codec.nghttp2 import _abi


class Binding:
    __slots__ = ("ffi", "lib", "native")

    def __init__(self, ffi: Any, lib: Any, native: bool) -> None:
        self.ffi = ffi
        self.lib = lib
        self.native = native


_binding: Binding | None = None


def load(native: bool | None = None) -> Binding:
    """The binding, chosen once (`native`: None takes the compiled one when it loads; tests ask for
    either). OSError when libnghttp2 cannot be loaded at all."""
    global _binding
    if native is None and _binding is not None:
        return _binding
    chosen: Binding | None = None
    if native is not False:
        try:
            from meshpy.codec.nghttp2 import _native  # type: ignore[attr-defined]
        except ImportError:
            if native:
                raise
        else:
            info = _native.lib.nghttp2_version(0)
            if info.version_num >= _abi.MIN_VERSION:
                chosen = Binding(_native.ffi, _native.lib, True)
    if chosen is None:
        chosen = Binding(_abi.ffi, _abi.load(), False)
    if native is None:
        _binding = chosen
    return chosen
