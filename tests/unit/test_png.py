from __future__ import annotations

import io
import struct
import zlib

import pytest

from difflane import png
from tests import pngdecode


def _gradient(width: int, height: int) -> bytes:
    return bytes((x * 7 + y * 13 + c * 50) % 256 for y in range(height) for x in range(width) for c in range(3))


def test_round_trip_pixels_and_text() -> None:
    rgb = _gradient(5, 3)
    text = {"prompt": "a café at dusk", "negative": "日本語 ✓ émoji 🙂", "seed": "42"}
    data = png.encode(5, 3, rgb, text)

    info = pngdecode.read_info(data)
    assert (info.width, info.height) == (5, 3)
    assert info.text == text
    assert list(info.text) == list(text)  # the mapping's order is kept
    assert pngdecode.decode_rgb(data) == (5, 3, rgb)


def test_latin1_text_uses_text_chunk_and_other_text_uses_itxt() -> None:
    data = png.encode(1, 1, b"\x00\x00\x00", {"a": "naïve", "b": "Ωmega"})
    kinds = [kind for kind, _ in _chunk_list(data)]
    assert kinds == [b"IHDR", b"tEXt", b"iTXt", b"IDAT", b"IEND"]


def test_layout_is_one_idat_with_filter_zero_rows() -> None:
    rgb = _gradient(4, 4)
    chunks = dict(_chunk_list(png.encode(4, 4, rgb)))
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 4 * 3 + 1
    assert [raw[y * stride] for y in range(4)] == [0, 0, 0, 0]
    assert struct.unpack(">IIBBBBB", chunks[b"IHDR"]) == (4, 4, 8, 2, 0, 0, 0)


def test_encoding_is_deterministic() -> None:
    rgb = _gradient(16, 9)
    text = {"k": "v", "u": "ü→"}
    assert png.encode(16, 9, rgb, text) == png.encode(16, 9, bytes(rgb), dict(text))
    assert png.encode(16, 9, rgb, text) != png.encode(16, 9, rgb, {"u": "ü→", "k": "v"})


def test_encode_rejects_wrong_length_and_bad_keywords() -> None:
    with pytest.raises(ValueError):
        png.encode(2, 2, b"\x00" * 11)
    with pytest.raises(ValueError):
        png.encode(0, 1, b"")
    with pytest.raises(ValueError):
        png.encode(1, 1, b"\x00\x00\x00", {"": "empty keyword"})
    with pytest.raises(ValueError):
        png.encode(1, 1, b"\x00\x00\x00", {"clé→": "keyword not latin-1"})
    with pytest.raises(ValueError):
        png.encode(1, 1, b"\x00\x00\x00", {"k": "nul\x00inside"})


def test_rejects_bad_signature() -> None:
    data = png.encode(2, 2, _gradient(2, 2))
    with pytest.raises(ValueError, match="signature"):
        pngdecode.read_info(b"\x89PNX" + data[4:])
    with pytest.raises(ValueError):
        pngdecode.decode_rgb(b"GIF89a" + data[6:])


def test_rejects_bad_crc() -> None:
    data = bytearray(png.encode(2, 2, _gradient(2, 2), {"k": "value"}))
    text_at = data.index(b"tEXt")
    data[text_at + 5] ^= 0x01  # flip a bit inside the tEXt payload
    with pytest.raises(ValueError, match="CRC"):
        pngdecode.read_info(bytes(data))


@pytest.mark.parametrize("cut", [10, 30, -20, -12, -1])
def test_rejects_truncated(cut: int) -> None:
    data = png.encode(3, 3, _gradient(3, 3), {"k": "v"})
    with pytest.raises(ValueError):
        pngdecode.read_info(data[:cut])
    with pytest.raises(ValueError):
        pngdecode.decode_rgb(data[:cut])


def test_decodes_every_filter_type() -> None:
    width, height = 6, 5
    rgb = _gradient(width, height)
    stride = width * 3
    rows = [rgb[y * stride : (y + 1) * stride] for y in range(height)]
    filtered = b"".join(
        bytes([kind]) + _apply_filter(kind, rows[y], rows[y - 1] if y else bytes(stride))
        for y, kind in enumerate([1, 2, 3, 4, 0])
    )
    data = _png_from_idat(width, height, zlib.compress(filtered))
    assert pngdecode.decode_rgb(data) == (width, height, rgb)


def test_decodes_split_idat_chunks() -> None:
    rgb = _gradient(8, 8)
    raw = b"".join(b"\x00" + rgb[y * 24 : (y + 1) * 24] for y in range(8))
    compressed = zlib.compress(raw)
    data = _png_from_idat(8, 8, compressed[:10], compressed[10:])
    assert pngdecode.decode_rgb(data) == (8, 8, rgb)


def test_decode_rejects_unsupported_formats() -> None:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # RGBA
    data = png.SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 5)) + _chunk(b"IEND", b"")
    assert pngdecode.read_info(data).width == 1
    with pytest.raises(ValueError, match="unsupported"):
        pngdecode.decode_rgb(data)


def test_decodes_pillow_output_and_pillow_reads_ours() -> None:
    image_mod = pytest.importorskip("PIL.Image")
    png_info_mod = pytest.importorskip("PIL.PngImagePlugin")
    width, height = 31, 17
    rgb = _gradient(width, height)

    meta = png_info_mod.PngInfo()
    meta.add_text("plain", "hello")
    meta.add_itxt("unicode", "ünïcödé ✓", zip=True)  # compressed iTXt, which we never write
    buffer = io.BytesIO()
    # Pillow picks row filters adaptively (Sub and Paeth for this gradient); every filter type is
    # also covered by test_decodes_every_filter_type.
    image_mod.frombytes("RGB", (width, height), rgb).save(buffer, format="PNG", pnginfo=meta)
    pillow_png = buffer.getvalue()
    assert pngdecode.decode_rgb(pillow_png) == (width, height, rgb)
    assert pngdecode.read_info(pillow_png).text == {"plain": "hello", "unicode": "ünïcödé ✓"}

    ours = png.encode(width, height, rgb, {"prompt": "a 🦊"})
    with image_mod.open(io.BytesIO(ours)) as opened:
        opened.load()
        assert opened.mode == "RGB"
        assert opened.tobytes() == rgb
        assert opened.text == {"prompt": "a 🦊"}


# --- helpers: build PNGs by hand so the reader is checked against independent bytes ---------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_from_idat(width: int, height: int, *idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return png.SIGNATURE + _chunk(b"IHDR", header) + b"".join(_chunk(b"IDAT", d) for d in idat) + _chunk(b"IEND", b"")


def _chunk_list(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _apply_filter(kind: int, row: bytes, prev: bytes, bpp: int = 3) -> bytes:
    out = bytearray()
    for i, value in enumerate(row):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        upleft = prev[i - bpp] if i >= bpp else 0
        if kind == 0:
            predictor = 0
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = up
        elif kind == 3:
            predictor = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
        out.append((value - predictor) % 256)
    return bytes(out)
