"""Uploads that are small on the wire and huge decoded: what the image-memory tests and
`make bench-hostile` send."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

SIDE = 6324  # the largest square within limits.max_image_pixels (40,000,000)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_zeros(width: int, height: int, depth: int, colour: int, channels: int) -> bytes:
    """A PNG of zeros, written row by row (Pillow cannot write 16-bit colour): what a
    decompression bomb looks like, 77 KB for the 6300 x 6300 16-bit grey one."""
    row = b"\0" + bytes(width * channels * depth // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def text_bomb() -> bytes:
    """An 8 x 8 PNG with 66 compressed text chunks of 1 MB each (Pillow's cap is 64 MB in all)."""
    png = encoded(Image.new("L", (8, 8)))
    text = zlib.compress(b"a" * 1_000_000, 9)
    return png[:33] + b"".join(_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(66)) + png[33:]
