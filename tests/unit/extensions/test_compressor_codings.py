"""The compression libraries of the compressor and decompressor filters: streams that round-trip
through the reference decoders, flush what each piece brought (gzip, brotli; zstd only at the end, as
Envoy's), honour the library options, and stop at compression bombs where Envoy 1.40 stops (the
figures measured against it, see tests/integration/test_compressor_envoy.py)."""

from __future__ import annotations

import gzip
import random
import zlib
from typing import Any

import brotlicffi
import pytest
import zstandard
from envoy.config.core.v3 import extension_pb2
from google.protobuf import json_format

from meshpy.extensions.codings import compressor_library, decompressor_library

C = "type.googleapis.com/envoy.extensions.compression.{0}.compressor.v3.{1}"
D = "type.googleapis.com/envoy.extensions.compression.{0}.decompressor.v3.{1}"
KINDS = [("gzip", "Gzip"), ("brotli", "Brotli"), ("zstd", "Zstd")]
REFERENCE = {"gzip": gzip.decompress, "br": brotlicffi.decompress,
             "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}


def ext(url: str, **fields: Any) -> Any:
    msg = extension_pb2.TypedExtensionConfig()
    json_format.ParseDict({"name": "lib", "typed_config": {"@type": url, **fields}}, msg)
    return msg


def text(n: int) -> bytes:
    rnd = random.Random(n)
    return " ".join(str(rnd.random()) for _ in range(n)).encode()  # about 2:1, like a JSON body


def compress_all(url: str, pieces: list[bytes], **fields: Any) -> tuple[str, list[bytes], bytes]:
    lib = compressor_library(ext(url, **fields))
    stream = lib.new()
    outs = [stream.compress(p, False) for p in pieces]
    return lib.encoding, outs, stream.compress(b"", True)


@pytest.mark.parametrize(("module", "name"), KINDS)
def test_streams_round_trip(module: str, name: str) -> None:
    body = text(30000)
    pieces = [body[i:i + 16384] for i in range(0, len(body), 16384)]
    encoding, outs, tail = compress_all(C.format(module, name), pieces)
    whole = b"".join(outs) + tail
    assert len(whole) < len(body) * 0.6
    assert REFERENCE[encoding](whole) == body
    decoder = decompressor_library(ext(D.format(module, name))).new()
    assert b"".join(decoder.decompress(whole[i:i + 16384]) for i in range(0, len(whole), 16384)) == body


@pytest.mark.parametrize(("module", "name"), KINDS[:2])
def test_gzip_and_brotli_flush_every_piece(module: str, name: str) -> None:
    """What a piece brought can be read before the next one comes (a stream, not a buffer)."""
    pieces = [text(500), text(501)]
    encoding, outs, _ = compress_all(C.format(module, name), pieces)
    if encoding == "gzip":
        d = zlib.decompressobj(31)
        assert d.decompress(outs[0]) == pieces[0]
    else:
        assert brotlicffi.Decompressor().decompress(outs[0]) == pieces[0]


def test_zstd_continues_the_frame_as_envoy_does() -> None:
    _, outs, tail = compress_all(C.format("zstd", "Zstd"), [text(500), text(501)])
    assert outs == [b"", b""] and tail  # nothing before the end, as with ZSTD_e_continue


@pytest.mark.parametrize(("fields", "check"), [
    ({"window_bits": 9, "compression_level": "BEST_SPEED", "memory_level": 1},
     lambda z: z[:3] == b"\x1f\x8b\x08" and z[8] == 4),  # gzip's XFL 4: the fastest level
    ({"compression_level": "BEST_COMPRESSION"}, lambda z: z[8] == 2),
    ({"compression_strategy": "HUFFMAN_ONLY"}, lambda z: True),
])
def test_gzip_options(fields: dict[str, Any], check: Any) -> None:
    body = text(3000)
    _, outs, tail = compress_all(C.format("gzip", "Gzip"), [body], **fields)
    whole = b"".join(outs) + tail
    assert gzip.decompress(whole) == body and check(whole)


def test_gzip_window_bits_are_used() -> None:
    # A stream compressed with a 512-byte window inflates with one; one with 32 KiB does not.
    body = text(3000)
    _, outs, tail = compress_all(C.format("gzip", "Gzip"), [body], window_bits=9)
    small = zlib.decompressobj(9 + 16)
    assert small.decompress(b"".join(outs) + tail) == body
    _, outs, tail = compress_all(C.format("gzip", "Gzip"), [body], window_bits=15)
    with pytest.raises(zlib.error):
        zlib.decompressobj(9 + 16).decompress(b"".join(outs) + tail)


def test_brotli_and_zstd_options_change_the_stream() -> None:
    rnd = random.Random(1)
    words = ["".join(rnd.choice("abcdefghij") for _ in range(rnd.randint(2, 9))) for _ in range(300)]
    body = " ".join(rnd.choice(words) for _ in range(40000)).encode() + bytes(range(256)) * 200
    sizes = {}
    for fields in ({}, {"quality": 0}, {"quality": 9},
                   {"quality": 9, "disable_literal_context_modeling": True},
                   {"encoder_mode": "TEXT", "window_bits": 10, "input_block_bits": 16}):
        _, outs, tail = compress_all(C.format("brotli", "Brotli"), [body], **fields)
        whole = b"".join(outs) + tail
        assert brotlicffi.decompress(whole) == body
        sizes[str(fields)] = len(whole)
    assert len(set(sizes.values())) == len(sizes), sizes
    def zstd(**fields: Any) -> bytes:
        _, outs, tail = compress_all(C.format("zstd", "Zstd"), [body], **fields)
        whole = b"".join(outs) + tail
        assert REFERENCE["zstd"](whole) == body
        return whole

    plain = zstd()
    assert len(zstd(enable_checksum=True)) == len(plain) + 4  # the frame's checksum
    assert len(zstd(compression_level=99)) < len(plain)  # (clamped to 22)
    assert zstd(strategy="BTULTRA2") != plain and zstd(compression_level=1) != plain


# Output of one piece holding a whole bomb of zeros: what Envoy 1.40 gave for the same input.
@pytest.mark.parametrize(("module", "name", "size", "expected"), [
    ("gzip", "Gzip", 100_000, 16384),  # 132 bytes in: 13,200 allowed, four 4 KiB blocks
    ("gzip", "Gzip", 1_000_000, 102400),
    ("zstd", "Zstd", 1_000_000, 131072),  # one 128 KiB block
    ("zstd", "Zstd", 100_000, 100_000),  # (under one block: the whole of it)
])
def test_bombs_stop_where_envoys_do(module: str, name: str, size: int, expected: int) -> None:
    packed = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress}[module](bytes(size))
    decoder = decompressor_library(ext(D.format(module, name))).new()
    assert len(decoder.decompress(packed)) == expected
    assert decoder.decompress(packed) == b""  # and nothing after


def test_brotli_bomb_bound_follows_the_chunk_size() -> None:
    packed = brotlicffi.compress(bytes(1_000_000))  # 14 bytes: 1,400 allowed
    assert len(decompressor_library(ext(D.format("brotli", "Brotli"))).new().decompress(packed)) == 16384
    big = decompressor_library(ext(D.format("brotli", "Brotli"), chunk_size=8192)).new()
    assert len(big.decompress(packed)) == 32768


def test_gzip_max_inflate_ratio() -> None:
    packed = gzip.compress(bytes(1_000_000))  # 1,003 bytes
    generous = decompressor_library(ext(D.format("gzip", "Gzip"), max_inflate_ratio=1032)).new()
    assert len(generous.decompress(packed)) == 1_000_000
    tight = decompressor_library(ext(D.format("gzip", "Gzip"), max_inflate_ratio=5, chunk_size=8192)).new()
    assert len(tight.decompress(packed)) == 8192  # one block passes 5,015


@pytest.mark.parametrize(("module", "name"), KINDS)
def test_corrupt_input_ends_the_output(module: str, name: str) -> None:
    _, outs, tail = compress_all(C.format(module, name), [text(4000)])
    whole = b"".join(outs) + tail
    decoder = decompressor_library(ext(D.format(module, name))).new()
    decoder.decompress(whole[:40])
    decoder.decompress(b"\xff" * 64)
    assert decoder.decompress(whole[40:]) == b""  # the stream failed: the rest is not decoded


def test_gzip_window_bits_for_decompression() -> None:
    body = text(3000)
    packed = gzip.compress(body)  # a 32 KiB window
    narrow = decompressor_library(ext(D.format("gzip", "Gzip"), window_bits=9)).new()
    out = narrow.decompress(packed)  # zlib stops at the first distance past 512 bytes, as for Envoy
    assert len(out) < len(body) and body.startswith(out)
    assert decompressor_library(ext(D.format("gzip", "Gzip"))).new().decompress(packed) == body
