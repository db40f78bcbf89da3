"""A small, deterministic PNG encoder (zlib only, no Pillow).

Why our own: the bytes we store and hash must depend only on the pixels and the metadata, never
on which imaging library (or which version of it) a worker happens to have. The encoder writes
one fixed layout: IHDR, the text chunks in the caller's order, one IDAT (filter 0 on every row,
zlib level 6), IEND. The tests read it back with their own decoder (``tests/pngdecode.py``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from types import MappingProxyType

SIGNATURE = b"\x89PNG\r\n\x1a\n"

_BIT_DEPTH = 8
_COLOR_RGB = 2
_ZLIB_LEVEL = 6
# PNG caps dimensions at 2**31 - 1; anything bigger is a corrupt header, not a big image.
_MAX_DIM = 2**31 - 1
_NO_TEXT: Mapping[str, str] = MappingProxyType({})


# --- writing -------------------------------------------------------------------------------------


def encode(width: int, height: int, rgb: bytes, text: Mapping[str, str] = _NO_TEXT) -> bytes:
    """8-bit RGB PNG from row-major pixels; the same inputs always give the same bytes."""
    _check_size(width, height)
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"rgb has {len(rgb)} bytes, expected {stride * height} for {width}x{height}")
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOR_RGB, 0, 0, 0)
    parts = [SIGNATURE, _chunk(b"IHDR", header)]
    parts.extend(_text_chunk(key, value) for key, value in text.items())
    parts.append(_chunk(b"IDAT", zlib.compress(_filter_none(rgb, stride, height), _ZLIB_LEVEL)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _check_size(width: int, height: int) -> None:
    if not (0 < width <= _MAX_DIM and 0 < height <= _MAX_DIM):
        raise ValueError(f"invalid PNG size {width}x{height}")


def _filter_none(rgb: bytes, stride: int, height: int) -> bytes:
    # Filter type 0 on every row: no adaptive filter choice, so nothing heuristic can vary.
    view = memoryview(rgb)
    return b"".join(b"\x00" + view[y * stride : (y + 1) * stride] for y in range(height))


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _text_chunk(key: str, value: str) -> bytes:
    keyword = _keyword(key)
    if "\x00" in value:
        raise ValueError(f"PNG text value for {key!r} contains a NUL character")
    try:
        # tEXt is Latin-1 only; it is what every reader understands, so prefer it.
        return _chunk(b"tEXt", keyword + b"\x00" + value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    # iTXt: keyword NUL, compression flag 0, method 0, empty language tag NUL, empty
    # translated keyword NUL, then UTF-8 text (left uncompressed to stay trivially readable).
    return _chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))


def _keyword(key: str) -> bytes:
    # Keywords are 1-79 Latin-1 characters without NUL, in tEXt and iTXt alike.
    try:
        raw = key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG text keyword {key!r} must be Latin-1") from None
    if not 1 <= len(raw) <= 79 or b"\x00" in raw:
        raise ValueError(f"PNG text keyword {key!r} must be 1-79 characters without NUL")
    return raw
