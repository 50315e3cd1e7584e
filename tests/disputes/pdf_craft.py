"""Hand-made PDFs for the evidence checks: streams under each standard filter (and chains of
them), and documents whose objects live in a compressed object stream with a PNG predictor,
indexed by a cross-reference stream, the way PDF 1.5+ writers save them."""

from __future__ import annotations

import base64
import binascii
import struct
import zlib

CATALOG_PAGES = b"/Type /Pages /Kids [3 0 R] /Count 1"
PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"


def lzw_encode(data: bytes) -> bytes:
    """LZW as PDF reads it (9-12 bit codes, MSB first, early change), to feed the decoder."""
    table = {bytes([i]): i for i in range(256)}
    width, codes = 9, [256]
    current = b""
    for byte in data:
        candidate = current + bytes([byte])
        if candidate in table:
            current = candidate
            continue
        codes.append(table[current])
        table[candidate] = len(table) + 2
        current = bytes([byte])
        if len(table) + 2 >= 4095:
            codes.append(256)
            table = {bytes([i]): i for i in range(256)}
    if current:
        codes.append(table[current])
    codes.append(257)
    # Pack with the width the decoder will be using at each code (it grows one code early).
    out, buffer, bits, size = bytearray(), 0, 0, 258
    previous_was_clear = False
    for code in codes:
        buffer = (buffer << width) | code
        bits += width
        while bits >= 8:
            bits -= 8
            out.append((buffer >> bits) & 0xFF)
        buffer &= (1 << bits) - 1
        if code == 256:
            size, width, previous_was_clear = 258, 9, True
            continue
        if code != 257 and not previous_was_clear:
            size += 1
        previous_was_clear = False
        if size + 1 >= (1 << width) and width < 12:
            width += 1
    if bits:
        out.append((buffer << (8 - bits)) & 0xFF)
    return bytes(out)


def run_length_encode(data: bytes, run: int = 2) -> bytes:
    """Literal runs of `run` bytes: a length byte every two bytes splits every name."""
    out = bytearray()
    for at in range(0, len(data), run):
        chunk = data[at : at + run]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out + b"\x80")


ENCODERS = {
    b"/FlateDecode": zlib.compress,
    b"/ASCIIHexDecode": lambda d: binascii.hexlify(d) + b">",
    b"/ASCII85Decode": lambda d: base64.a85encode(d) + b"~>",
    b"/LZWDecode": lzw_encode,
    b"/RunLengthDecode": run_length_encode,
}


ALIASES = {b"/AHx": b"/ASCIIHexDecode", b"/Fl#61teDecode": b"/FlateDecode"}


def encoded(content: bytes, filters: list[bytes]) -> bytes:
    """`content` under the chain `filters` (the first is undone first, as PDF lists them)."""
    data = content
    for name in reversed(filters):
        data = ENCODERS[ALIASES.get(name, name)](data)
    return data


def stream_object(content: bytes, filters: list[bytes]) -> bytes:
    data = encoded(content, filters)
    chain = filters[0] if len(filters) == 1 else b"[" + b" ".join(filters) + b"]"
    return b"<< /Length %d /Filter %s >>\nstream\n" % (len(data), chain) + data + b"\nendstream"


def classic_pdf(objects: list[bytes]) -> bytes:
    """Objects 1.. in order, a classic xref table and trailer (object 1 is the catalog)."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def with_stream(content: bytes, filters: list[bytes]) -> bytes:
    """A valid one-page PDF whose page has a content stream `content` under `filters`."""
    return classic_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< " + CATALOG_PAGES + b" >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
            stream_object(content, filters),
        ]
    )


def _png_sub_rows(data: bytes, columns: int) -> bytes:
    """PNG "Sub" predictor rows: each byte minus the one before it in its row."""
    data += b"\x00" * (-len(data) % columns)
    out = bytearray()
    for at in range(0, len(data), columns):
        row = data[at : at + columns]
        out.append(1)
        out += bytes((row[i] - (row[i - 1] if i else 0)) & 0xFF for i in range(columns))
    return bytes(out)


def object_stream_pdf(catalog: bytes) -> bytes:
    """PDF 1.5: the catalog (object 1) inside a Flate object stream with a PNG predictor, so
    none of its names appear in the file or in the stream once merely inflated."""
    columns = 8
    inner = b"1 0 "
    body = inner + catalog
    packed = zlib.compress(_png_sub_rows(body, columns))
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    offsets[2] = len(out)
    out += b"2 0 obj\n<< " + CATALOG_PAGES + b" >>\nendobj\n"
    offsets[3] = len(out)
    out += b"3 0 obj\n" + PAGE + b"\nendobj\n"
    offsets[4] = len(out)
    out += (
        b"4 0 obj\n<< /Type /ObjStm /N 1 /First %d /Filter /FlateDecode "
        b"/DecodeParms << /Predictor 12 /Columns %d >> /Length %d >>\nstream\n"
        % (len(inner), columns, len(packed))
        + packed
        + b"\nendstream\nendobj\n"
    )
    offsets[5] = len(out)
    rows = [struct.pack(">BIH", 0, 0, 65535), struct.pack(">BIH", 2, 4, 0)]
    rows += [struct.pack(">BIH", 1, offsets[n], 0) for n in (2, 3, 4, 5)]
    entries = b"".join(rows)
    out += (
        b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 2] /Root 1 0 R /Length %d >>\nstream\n"
        % len(entries)
        + entries
        + b"\nendstream\nendobj\n"
    )
    out += b"startxref\n%d\n%%%%EOF\n" % offsets[5]
    return bytes(out)
