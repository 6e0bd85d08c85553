"""Real, tiny image files of one colour: a PNG (zlib) and a lossless WEBP (VP8L).

The local provider serves these as generation outputs, so an ``<img>`` in a gallery
renders. Both are exact encodings at the announced width and height, with no
third-party encoder: a one-colour VP8L image needs no pixel data at all (every prefix
code has a single symbol, which costs zero bits per pixel).
"""

from __future__ import annotations

import functools
import struct
import zlib

__all__ = ["png", "webp"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


@functools.lru_cache(maxsize=64)
def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """Return a ``width`` x ``height`` PNG filled with ``rgb`` (8-bit truecolour)."""
    row = b"\x00" + bytes(rgb) * width  # filter type 0 (None), then the pixels
    raw = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")
    )


class _Bits:
    """Write a VP8L bitstream: values least significant bit first."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= (value & ((1 << bits) - 1)) << self.count
        self.count += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def _single_symbol_code(bits: _Bits, symbol: int) -> None:
    bits.put(1, 1)  # a simple prefix code
    bits.put(0, 1)  # with one symbol
    if symbol < 2:
        bits.put(0, 1)  # 1-bit symbol
        bits.put(symbol, 1)
    else:
        bits.put(1, 1)  # 8-bit symbol
        bits.put(symbol, 8)


@functools.lru_cache(maxsize=64)
def webp(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """Return a ``width`` x ``height`` lossless WEBP filled with ``rgb``."""
    if not (1 <= width <= 16384 and 1 <= height <= 16384):
        raise ValueError("WEBP sides are 1 to 16384 pixels")
    red, green, blue = rgb
    bits = _Bits()
    bits.put(0x2F, 8)  # VP8L signature
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(0, 1)  # alpha unused
    bits.put(0, 3)  # version 0
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    # Green (and lengths), red, blue, alpha, distance: one symbol each.
    for symbol in (green, red, blue, 255, 0):
        _single_symbol_code(bits, symbol)
    data = bits.bytes()
    # The chunk size counts the payload; RIFF pads the chunk itself to an even size.
    chunk = b"VP8L" + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
