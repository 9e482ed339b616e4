"""libnghttp2 through cffi: meshpy's default HTTP/2 codec (meshpy.codec.nghttp2.session)."""

from meshpy.codec.nghttp2._abi import version
from meshpy.codec.nghttp2.binding import load
from meshpy.codec.nghttp2.session import Nghttp2Session

__all__ = ["Nghttp2Session", "load", "native", "version"]


def native() -> bool:
    """Whether the compiled binding is the one in use (else ABI mode)."""
    return load().native
