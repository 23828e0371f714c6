"""Test images built in memory with Pillow: no fixture files, nothing downloaded.

Each builder returns encoded bytes. The decompression bomb is a tiny PNG whose IHDR declares a huge
size (with its CRC recomputed), so it costs nothing to build and would cost gigabytes to decode.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image

TEXT_BYTES = b"name,sku\nBlue Shirt,BS-1\nThis is a text file, not a picture.\n"


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """Open and fully load encoded bytes (raises if they are not a whole image)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def photo(size: tuple[int, int] = (640, 480), mode: str = "RGB") -> Image.Image:
    """Noise, so encoders produce enough data to cut in the middle, and a thumbnail must shrink it."""
    return Image.effect_noise(size, 64).convert(mode)


def jpeg(size: tuple[int, int] = (640, 480), quality: int = 85) -> bytes:
    return encode(photo(size), "JPEG", quality=quality)


def png(size: tuple[int, int] = (640, 480), mode: str = "RGB") -> bytes:
    return encode(photo(size, mode), "PNG")


def webp(size: tuple[int, int] = (640, 480)) -> bytes:
    return encode(photo(size), "WEBP", quality=80)


def png_with_alpha(size: tuple[int, int] = (300, 200)) -> bytes:
    """RGBA: opaque red on the left half, fully transparent on the right half."""
    img = Image.new("RGBA", size, (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (size[0] // 2, 0, size[0], size[1]))
    return encode(img, "PNG")


def cmyk_jpeg(size: tuple[int, int] = (200, 100)) -> bytes:
    return encode(Image.new("CMYK", size, (0, 255, 255, 0)), "JPEG", quality=90)  # red in CMYK


def exif_rotated_jpeg(size: tuple[int, int] = (400, 200), orientation: int = 6) -> bytes:
    """A JPEG stored ``size`` wide/high whose EXIF says to rotate it (6: 90° clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(size), "JPEG", quality=85, exif=exif.tobytes())


def truncated_png(size: tuple[int, int] = (400, 300)) -> bytes:
    data = png(size)
    return data[: len(data) // 2]


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """Patch the IHDR of a PNG to declare another size, with a valid CRC."""
    assert data[12:16] == b"IHDR"
    patched = bytearray(data)
    struct.pack_into(">II", patched, 16, width, height)
    struct.pack_into(">I", patched, 29, zlib.crc32(bytes(patched[12:29])))
    return bytes(patched)


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    return with_png_size(encode(Image.new("L", (8, 8)), "PNG"), width, height)
