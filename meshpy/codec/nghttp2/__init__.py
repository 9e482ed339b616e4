"""libnghttp2 through cffi: meshpy's default HTTP/2 codec (meshpy.codec.nghttp2.session)."""

from meshpy.codec.nghttp2._abi import load, version
from meshpy.codec.nghttp2.session import Nghttp2Session

__all__ = ["Nghttp2Session", "load", "version"]
