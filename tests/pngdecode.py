"""A PNG reader for the tests: checks what ``difflane.png`` wrote (and what Pillow writes).

Decodes 8-bit RGB, non-interlaced images with any of the five row filters, and reads the text
chunks (tEXt, zTXt, iTXt). Raises ValueError for anything that is not a well-formed PNG. The
product only writes PNGs, so this lives with the tests.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from difflane.png import SIGNATURE

_BIT_DEPTH = 8
_COLOR_RGB = 2
# PNG caps dimensions at 2**31 - 1; anything bigger is a corrupt header, not a big image.
_MAX_DIM = 2**31 - 1


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    text: dict[str, str] = field(default_factory=dict)


def _check_size(width: int, height: int) -> None:
    if not (0 < width <= _MAX_DIM and 0 < height <= _MAX_DIM):
        raise ValueError(f"invalid PNG size {width}x{height}")


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int


def read_info(data: bytes) -> PngInfo:
    """Size and text metadata; raises ValueError unless ``data`` is a well-formed PNG."""
    header, text, _ = _parse(data)
    return PngInfo(width=header.width, height=header.height, text=text)


def decode_rgb(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, row-major RGB bytes) of an 8-bit RGB, non-interlaced PNG."""
    header, _, idat = _parse(data)
    if (header.bit_depth, header.color_type, header.interlace) != (_BIT_DEPTH, _COLOR_RGB, 0):
        raise ValueError(
            "unsupported PNG: only 8-bit RGB non-interlaced images are decoded "
            f"(bit depth {header.bit_depth}, color type {header.color_type}, interlace {header.interlace})"
        )
    try:
        raw = zlib.decompress(idat)
    except zlib.error as exc:
        raise ValueError(f"corrupt PNG image data: {exc}") from None
    return header.width, header.height, _unfilter(raw, header.width * 3, header.height, bpp=3)


def _parse(data: bytes) -> tuple[_Header, dict[str, str], bytes]:
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG: bad signature")
    header: _Header | None = None
    text: dict[str, str] = {}
    idat: list[bytes] = []
    for kind, body in _chunks(data):
        if header is None:
            if kind != b"IHDR":
                raise ValueError("corrupt PNG: first chunk is not IHDR")
            header = _parse_header(body)
        elif kind == b"IHDR":
            raise ValueError("corrupt PNG: more than one IHDR")
        elif kind == b"IDAT":
            idat.append(body)
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, value = _parse_text(kind, body)
            text[key] = value
        elif kind == b"IEND":
            if not idat:
                raise ValueError("corrupt PNG: no IDAT chunk")
            return header, text, b"".join(idat)
    raise ValueError("truncated PNG: no IEND chunk")


def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("truncated PNG: incomplete chunk header")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated PNG: chunk {kind!r} runs past the end")
        body = data[pos + 8 : end]
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise ValueError(f"corrupt PNG: bad CRC in chunk {kind!r}")
        yield kind, body
        pos = end + 4


def _parse_header(body: bytes) -> _Header:
    if len(body) != 13:
        raise ValueError("corrupt PNG: IHDR must be 13 bytes")
    width, height, depth, color, compression, filter_method, interlace = struct.unpack(">IIBBBBB", body)
    _check_size(width, height)
    if compression != 0 or filter_method != 0 or interlace not in (0, 1):
        raise ValueError("corrupt PNG: unknown compression, filter or interlace method")
    return _Header(width, height, depth, color, interlace)


def _parse_text(kind: bytes, body: bytes) -> tuple[str, str]:
    key_raw, sep, rest = body.partition(b"\x00")
    if not sep or not key_raw:
        raise ValueError(f"corrupt PNG: {kind!r} chunk without keyword")
    key = key_raw.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        return key, _inflate(rest[1:], kind).decode("latin-1")
    return key, _parse_itxt_value(rest)


def _parse_itxt_value(rest: bytes) -> str:
    if len(rest) < 2:
        raise ValueError("corrupt PNG: short iTXt chunk")
    compressed = rest[0] == 1
    # Skip the language tag and the translated keyword (both NUL-terminated).
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) != 3:
        raise ValueError("corrupt PNG: malformed iTXt chunk")
    payload = _inflate(parts[2], b"iTXt") if compressed else parts[2]
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("corrupt PNG: iTXt text is not UTF-8") from None


def _inflate(payload: bytes, kind: bytes) -> bytes:
    try:
        return zlib.decompress(payload)
    except zlib.error as exc:
        raise ValueError(f"corrupt PNG: bad compressed {kind!r} text: {exc}") from None


def _unfilter(raw: bytes, stride: int, height: int, *, bpp: int) -> bytes:
    if len(raw) != (stride + 1) * height:
        raise ValueError(f"corrupt PNG: image data is {len(raw)} bytes, expected {(stride + 1) * height}")
    out = bytearray(stride * height)
    prev = bytearray(stride)  # the row above the first row is all zeros
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter_row(kind, row, prev, bpp)
        out[y * stride : (y + 1) * stride] = row
        prev = row
    return bytes(out)


def _unfilter_row(kind: int, row: bytearray, prev: bytearray, bpp: int) -> None:
    """Undo one row's filter in place; ``prev`` is the already reconstructed row above."""
    n = len(row)
    if kind == 0:
        return
    if kind == 1:  # Sub
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:  # Up
        for i in range(n):
            row[i] = (row[i] + prev[i]) & 0xFF
    elif kind == 3:  # Average
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif kind == 4:  # Paeth
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            upleft = prev[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + _paeth(left, prev[i], upleft)) & 0xFF
    else:
        raise ValueError(f"corrupt PNG: unknown row filter {kind}")


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
