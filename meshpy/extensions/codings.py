"""The compression libraries of Envoy's compressor and decompressor filters: gzip (zlib), brotli (the
brotli C library through brotlicffi's binding) and zstd (zstandard). Each is an Envoy config message
(`envoy.extensions.compression.{gzip,brotli,zstd}.{compressor,decompressor}.v3.*`), checked as Envoy
checks it (the fields meshpy acts on, the message's validation rules), and a factory of streams.

Streams work piece by piece, as Envoy's do:
- a compressor flushes after every body piece (gzip Z_SYNC_FLUSH, brotli FLUSH), so what arrived is
  sent at once, and finishes the stream at the end; zstd, as in Envoy, only continues the frame with
  each piece (its output may lag) and ends it at the end;
- a decompressor stops at a compression bomb as Envoy's does: per piece of input it gives at most about
  `ratio` times that piece's size (100; gzip's `max_inflate_ratio`), in output blocks of `chunk_size`
  (zstd: 128 KiB, as Envoy's), and nothing more after that or after corrupt input (Envoy counts a data
  error and the body is cut there).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import zstandard
from brotlicffi._brotlicffi import ffi, lib  # type: ignore[import-untyped]  # the C library's binding
from envoy.extensions.compression.brotli.compressor.v3 import brotli_pb2 as brotli_c
from envoy.extensions.compression.brotli.decompressor.v3 import brotli_pb2 as brotli_d
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2 as gzip_c
from envoy.extensions.compression.gzip.decompressor.v3 import gzip_pb2 as gzip_d
from envoy.extensions.compression.zstd.compressor.v3 import zstd_pb2 as zstd_c
from envoy.extensions.compression.zstd.decompressor.v3 import zstd_pb2 as zstd_d
from validate import validate_pb2

from meshpy.xds.translate_base import Issues, child, enum_name, wrapped

DEFAULT_CHUNK = 4096
BOMB_RATIO = 100  # Envoy's output bound per input byte (gzip: max_inflate_ratio's default)
ZSTD_BLOCK = zstandard.DECOMPRESSION_RECOMMENDED_OUTPUT_SIZE  # Envoy's zstd output block (128 KiB)


class Compressing(Protocol):
    def compress(self, data: bytes, end: bool) -> bytes:
        """The compressed form of `data`, flushed; with `end`, the stream's end too."""


class Decompressing(Protocol):
    def decompress(self, data: bytes) -> bytes:
        """What `data` decompresses to, within the bomb bound; b"" once the stream failed."""


@dataclass(frozen=True, slots=True)
class Library:
    """A configured library: its content coding and a maker of one stream per body."""

    encoding: str
    new: Callable[[], Any]


# -- checks ------------------------------------------------------------------------------------------
def _rules(issues: Issues, msg: Any, path: str) -> None:
    """The message's protoc-gen-validate rules that its fields here use (uint32 ranges, defined enums)."""
    for field, value in msg.ListFields():
        options = field.GetOptions()
        if not options.HasExtension(validate_pb2.rules):
            continue
        rules = options.Extensions[validate_pb2.rules]
        kind = rules.WhichOneof("type")
        at = child(path, field.name)
        if kind == "uint32":
            number = value.value if field.message_type is not None else value
            r = rules.uint32
            if (r.HasField("gte") and number < r.gte) or (r.HasField("lte") and number > r.lte):
                low = r.gte if r.HasField("gte") else 0
                issues.add(at, f"must be from {low} to {r.lte}, got {number}")
        elif kind == "enum" and rules.enum.defined_only:
            name = enum_name(msg, field.name)
            if name.startswith("value "):
                issues.add(at, f"{name} is not defined")


def _checked(issues: Issues, msg: Any, path: str, understood: set[str]) -> None:
    issues.fields(msg, path, understood)
    _rules(issues, msg, path)


_COMPRESSORS: dict[str, tuple[type[Any], set[str]]] = {
    "envoy.extensions.compression.gzip.compressor.v3.Gzip": (
        gzip_c.Gzip, {"memory_level", "compression_level", "compression_strategy", "window_bits",
                      "chunk_size"}),
    "envoy.extensions.compression.brotli.compressor.v3.Brotli": (
        brotli_c.Brotli, {"quality", "encoder_mode", "window_bits", "input_block_bits", "chunk_size",
                          "disable_literal_context_modeling"}),
    # dictionary: not supported (a trained zstd dictionary from a DataSource)
    "envoy.extensions.compression.zstd.compressor.v3.Zstd": (
        zstd_c.Zstd, {"compression_level", "enable_checksum", "strategy", "chunk_size"}),
}
_DECOMPRESSORS: dict[str, tuple[type[Any], set[str]]] = {
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip": (
        gzip_d.Gzip, {"window_bits", "chunk_size", "max_inflate_ratio"}),
    # disable_ring_buffer_reallocation: not supported (the binding cannot set the decoder's parameter)
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli": (brotli_d.Brotli, {"chunk_size"}),
    # dictionaries: not supported
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd": (zstd_d.Zstd, {"chunk_size"}),
}


def _library_message(issues: Issues, ext: Any, path: str,
                     known: dict[str, tuple[type[Any], set[str]]], what: str) -> Any | None:
    """The library config of a TypedExtensionConfig (`compressor_library`, `decompressor_library`),
    checked; None (and an issue) when it is not one of `known`."""
    issues.fields(ext, path, {"name", "typed_config"})
    if not ext.name:
        issues.add(child(path, "name"), "is required (at least 1 character)")
    at = child(path, "typed_config")
    if not ext.HasField("typed_config"):
        issues.add(at, "is required")
        return None
    entry = known.get(ext.typed_config.TypeName())
    if entry is None:
        issues.add(at, f"{ext.typed_config.TypeName() or 'an empty typed_config'} is not a {what} "
                       f"library meshpy has (gzip, brotli, zstd)")
        return None
    msg = entry[0]()
    ext.typed_config.Unpack(msg)
    _checked(issues, msg, at, entry[1])
    return msg


def check_compressor_library(issues: Issues, ext: Any, path: str) -> None:
    _library_message(issues, ext, path, _COMPRESSORS, "compressor")


def check_decompressor_library(issues: Issues, ext: Any, path: str) -> None:
    _library_message(issues, ext, path, _DECOMPRESSORS, "decompressor")


def compressor_library(ext: Any) -> Library:
    """The library of a checked `compressor_library`."""
    issues = Issues()
    msg = _library_message(issues, ext, "", _COMPRESSORS, "compressor")
    if msg is None or issues.items:
        raise ValueError("; ".join(f"{i.path}: {i.reason}" for i in issues.items))
    if isinstance(msg, gzip_c.Gzip):
        level = msg.compression_level or zlib.Z_DEFAULT_COMPRESSION  # (the enum's numbers are zlib's)
        wbits = wrapped(msg, "window_bits", 12) | 16  # 16: a gzip header and trailer
        memory = wrapped(msg, "memory_level", 5)
        strategy = msg.compression_strategy  # (numbered as zlib's: filtered 1, huffman 2, rle 3, fixed 4)
        return Library("gzip", lambda: GzipCompressor(level, wbits, memory, strategy))
    if isinstance(msg, brotli_c.Brotli):
        # Envoy's modes: DEFAULT and GENERIC are the library's generic mode, then text, font.
        params = ((_QUALITY, wrapped(msg, "quality", 3)), (_LGWIN, wrapped(msg, "window_bits", 18)),
                  (_LGBLOCK, wrapped(msg, "input_block_bits", 24)),
                  (_NO_CONTEXT_MODELING, int(msg.disable_literal_context_modeling)),
                  (_MODE, max(msg.encoder_mode - 1, 0)))
        chunk = wrapped(msg, "chunk_size", DEFAULT_CHUNK)
        return Library("br", lambda: BrotliCompressor(params, chunk))
    level = wrapped(msg, "compression_level", 3) or 3  # 0 is zstd's default level
    # As Envoy sets them: the level (zstd clamps it), the checksum flag, and a strategy only when one
    # is named (numbered as zstd's); the rest follows from the level.
    zparams = zstandard.ZstdCompressionParameters(
        compression_level=min(level, zstandard.MAX_COMPRESSION_LEVEL),
        write_checksum=int(msg.enable_checksum), strategy=msg.strategy)
    return Library("zstd", lambda: ZstdCompressor(zparams))


def decompressor_library(ext: Any) -> Library:
    """The library of a checked `decompressor_library`."""
    issues = Issues()
    msg = _library_message(issues, ext, "", _DECOMPRESSORS, "decompressor")
    if msg is None or issues.items:
        raise ValueError("; ".join(f"{i.path}: {i.reason}" for i in issues.items))
    chunk = wrapped(msg, "chunk_size", DEFAULT_CHUNK)
    if isinstance(msg, gzip_d.Gzip):
        wbits = wrapped(msg, "window_bits", 15) | 16
        ratio = wrapped(msg, "max_inflate_ratio", BOMB_RATIO)
        return Library("gzip", lambda: GzipDecompressor(wbits, chunk, ratio))
    if isinstance(msg, brotli_d.Brotli):
        return Library("br", lambda: BrotliDecompressor(chunk))
    return Library("zstd", ZstdDecompressor)


# -- gzip ----------------------------------------------------------------------------------------------
class GzipCompressor:
    __slots__ = ("_z",)

    def __init__(self, level: int, wbits: int, memory: int, strategy: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, wbits, memory, strategy)

    def compress(self, data: bytes, end: bool) -> bytes:
        z = self._z
        out = z.compress(data) if data else b""
        return out + z.flush(zlib.Z_FINISH if end else zlib.Z_SYNC_FLUSH)


class GzipDecompressor:
    __slots__ = ("_chunk", "_failed", "_ratio", "_z")

    def __init__(self, wbits: int, chunk: int, ratio: int) -> None:
        self._z = zlib.decompressobj(wbits)
        self._chunk = chunk
        self._ratio = ratio
        self._failed = False

    def decompress(self, data: bytes) -> bytes:
        z = self._z
        if self._failed or z.eof or not data:
            return b""
        chunk = self._chunk
        limit = self._ratio * len(data)
        out: list[bytes] = []
        whole = 0
        try:
            while True:
                piece = z.decompress(data, chunk)
                data = z.unconsumed_tail
                if piece:
                    out.append(piece)
                if z.eof or len(piece) < chunk:
                    break  # the stream's end (Envoy checks no bound there), or the input is used up
                whole += chunk
                if whole > limit:  # Envoy's bomb check, after each full output block
                    self._failed = True
                    break
        except zlib.error:
            self._failed = True
        return b"".join(out)


# -- brotli (the C library's streaming API, as Envoy drives it) ----------------------------------------
_MODE, _QUALITY, _LGWIN, _LGBLOCK, _NO_CONTEXT_MODELING = 0, 1, 2, 3, 4  # BrotliEncoderParameter
_PROCESS, _FLUSH, _FINISH = 0, 1, 2  # BrotliEncoderOperation
_DECODER_ERROR, _DECODER_SUCCESS = 0, 1  # BrotliDecoderResult


class BrotliCompressor:
    __slots__ = ("_buf", "_chunk", "_in", "_left", "_out", "_room", "_s")

    def __init__(self, params: tuple[tuple[int, int], ...], chunk: int) -> None:
        s = lib.BrotliEncoderCreateInstance(ffi.NULL, ffi.NULL, ffi.NULL)
        if s == ffi.NULL:
            raise MemoryError("brotli encoder")
        self._s = ffi.gc(s, lib.BrotliEncoderDestroyInstance)
        for param, value in params:
            if not lib.BrotliEncoderSetParameter(self._s, param, value):
                raise ValueError(f"brotli parameter {param}: {value}")
        self._chunk = chunk
        self._buf = ffi.new("uint8_t[]", chunk)
        self._left = ffi.new("size_t *")
        self._in = ffi.new("uint8_t **")
        self._room = ffi.new("size_t *")
        self._out = ffi.new("uint8_t **")

    def _step(self, op: int, out: list[bytes]) -> None:
        chunk = self._chunk
        self._room[0] = chunk
        self._out[0] = self._buf
        if not lib.BrotliEncoderCompressStream(self._s, op, self._left, self._in, self._room, self._out,
                                               ffi.NULL):
            raise ValueError("brotli compression failed")
        made = chunk - self._room[0]
        if made:
            out.append(ffi.buffer(self._buf, made)[:])

    def compress(self, data: bytes, end: bool) -> bytes:
        out: list[bytes] = []
        view = ffi.from_buffer(data)
        self._left[0] = len(data)
        self._in[0] = ffi.cast("uint8_t *", view)
        while self._left[0]:
            self._step(_PROCESS, out)
        self._step(_FINISH if end else _FLUSH, out)
        while lib.BrotliEncoderHasMoreOutput(self._s):
            self._step(_FINISH if end else _FLUSH, out)
        return b"".join(out)


class BrotliDecompressor:
    __slots__ = ("_buf", "_chunk", "_failed", "_in", "_left", "_out", "_room", "_s")

    def __init__(self, chunk: int) -> None:
        s = lib.BrotliDecoderCreateInstance(ffi.NULL, ffi.NULL, ffi.NULL)
        if s == ffi.NULL:
            raise MemoryError("brotli decoder")
        self._s = ffi.gc(s, lib.BrotliDecoderDestroyInstance)
        self._chunk = chunk
        self._buf = ffi.new("uint8_t[]", chunk)
        self._left = ffi.new("size_t *")
        self._in = ffi.new("uint8_t **")
        self._room = ffi.new("size_t *")
        self._out = ffi.new("uint8_t **")
        self._failed = False

    def decompress(self, data: bytes) -> bytes:
        if self._failed or not data:
            return b""
        chunk = self._chunk
        limit = BOMB_RATIO * len(data)
        blocks: list[bytes] = []
        whole = 0
        view = ffi.from_buffer(data)
        self._left[0] = len(data)
        self._in[0] = ffi.cast("uint8_t *", view)
        self._room[0] = chunk
        self._out[0] = self._buf

        def step() -> bool:
            nonlocal whole
            result = lib.BrotliDecoderDecompressStream(self._s, self._left, self._in, self._room, self._out,
                                                       ffi.NULL)
            # The bound, on the blocks given so far: Envoy 1.40 stops two blocks after the one that
            # passed it (measured, for several chunk sizes and ratios), and so does this.
            if result == _DECODER_ERROR or whole - 2 * chunk > limit:
                return False
            if result == _DECODER_SUCCESS and self._left[0]:
                self._left[0] = 0  # bytes after the stream's end: nothing to make of them
            if self._room[0] == 0:
                blocks.append(ffi.buffer(self._buf, chunk)[:])
                whole += chunk
                self._room[0] = chunk
                self._out[0] = self._buf
            return True

        ok = True
        while ok and self._left[0]:
            ok = step()
        if ok:  # the input is in; what it unfolds to may not have fitted the blocks yet
            ok = step()
            while ok and lib.BrotliDecoderHasMoreOutput(self._s):
                ok = step()
        self._failed = not ok
        made = chunk - self._room[0]
        if made:
            blocks.append(ffi.buffer(self._buf, made)[:])
        return b"".join(blocks)


# -- zstd ----------------------------------------------------------------------------------------------
class ZstdCompressor:
    __slots__ = ("_z",)

    def __init__(self, params: zstandard.ZstdCompressionParameters) -> None:
        self._z = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes, end: bool) -> bytes:
        out = self._z.compress(data) if data else b""
        # As Envoy: the frame only goes on with each piece (ZSTD_e_continue); the end ends it.
        return out + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH) if end else out


class _Bounded:
    """The zstd writer's sink: output blocks, up to the bound of the piece being decompressed."""

    __slots__ = ("blocks", "limit", "size")

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.size = 0
        self.limit = 0

    def write(self, data: bytes) -> int:
        self.blocks.append(bytes(data))
        self.size += len(data)
        if self.size > self.limit:
            raise OverflowError
        return len(data)


class ZstdDecompressor:
    __slots__ = ("_failed", "_sink", "_w")

    def __init__(self) -> None:
        self._sink = _Bounded()
        self._w = zstandard.ZstdDecompressor().stream_writer(
            self._sink, write_size=ZSTD_BLOCK, write_return_read=True,  # type: ignore[arg-type]  # (a sink)
            closefd=False)
        self._failed = False

    def decompress(self, data: bytes) -> bytes:
        if self._failed or not data:
            return b""
        sink = self._sink
        sink.blocks, sink.size, sink.limit = [], 0, BOMB_RATIO * len(data)
        try:
            self._w.write(data)
        except (OverflowError, zstandard.ZstdError):
            self._failed = True
        return b"".join(sink.blocks)
