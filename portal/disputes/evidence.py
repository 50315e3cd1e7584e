"""Evidence files: what we accept is decided by the bytes, never by the name or the browser's
word for it, and stored outside static/ under a random name.

Accepted: PDF without active content, PNG and JPEG that parse. Everything else (an archive, a
script renamed .png, a PDF that runs JavaScript or launches a program, an image whose header
promises a billion pixels) is refused with a message the customer understands.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import secrets
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from portal.errors import N_, ValidationFailed

PDF, PNG, JPEG = "application/pdf", "image/png", "image/jpeg"
EXTENSIONS = {PDF: "pdf", PNG: "png", JPEG: "jpg"}
# NOTE: a photo from a phone is 12-50 megapixels; more is a decompression bomb.
MAX_PIXELS = 80_000_000
MAX_SIDE = 20_000
# How much of a PDF's compressed streams we unpack to look for active content.
MAX_PDF_INFLATED = 64 * 1024 * 1024

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZIP_END = b"PK\x05\x06"
_ARCHIVE_STARTS = (
    b"PK\x03\x04",  # zip, docx, xlsx, jar, apk
    b"PK\x05\x06",
    b"Rar!\x1a\x07",
    b"7z\xbc\xaf\x27\x1c",
    b"\x1f\x8b",  # gzip
    b"BZh",
    b"\xfd7zXZ\x00",
    b"MZ",  # Windows programs
    b"\x7fELF",
)
# NOTE: PDF names that make a viewer do something: run script, act on opening, start a
# program, carry files, submit or import data. A name may spell characters as #xx escapes
# ("/J#61vaScript"), so names are decoded before they are compared.
_ACTIVE_PDF_NAMES = frozenset(
    {
        b"/JavaScript",
        b"/JS",
        b"/OpenAction",
        b"/Launch",
        b"/AA",
        b"/EmbeddedFile",
        b"/EmbeddedFiles",
        b"/RichMedia",
        b"/SubmitForm",
        b"/ImportData",
        b"/XFA",
    }
)
_PDF_NAME = re.compile(rb"/[^\s/<>\[\]()%{}]+")
_PDF_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
# NOTE: the keyword alone, not the end of "endstream" followed by a line break.
_PDF_STREAM = re.compile(rb"(?<![A-Za-z])stream\r?\n")
_PDF_FILTER = re.compile(rb"/Filter\s*(\[[^\]]*\]|/[^\s/<>\[\]()%{}]+)")
_PDF_EARLY_CHANGE = re.compile(rb"/EarlyChange\s+0\b")
# The short names are those of inline images; some viewers accept them on streams too.
_FILTER_ALIASES = {
    b"/Fl": b"/FlateDecode",
    b"/AHx": b"/ASCIIHexDecode",
    b"/A85": b"/ASCII85Decode",
    b"/LZW": b"/LZWDecode",
    b"/RL": b"/RunLengthDecode",
}
# NOTE: a PDF may hold this many objects before we stop walking it (real evidence has
# hundreds; a file made of millions of tiny objects is a way to keep a worker busy).
MAX_PDF_OBJECTS = 200_000


@dataclass(frozen=True)
class Evidence:
    """A file that passed the checks: its type as its content says, and its extension."""

    content_type: str
    extension: str


class EvidenceRefused(ValidationFailed):
    """An upload we do not keep; the message says why in the customer's words."""


def inspect(data: bytes, *, max_bytes: int) -> Evidence:
    """Decide what `data` is from its bytes; refuse anything but a clean PDF, PNG or JPEG."""
    if not data:
        raise EvidenceRefused(N_("That file is empty."))
    if len(data) > max_bytes:
        raise EvidenceRefused(
            N_("That file is larger than %(limit)s MB. Please send a smaller one."),
            params={"limit": max(1, max_bytes // (1024 * 1024))},
        )
    if data.startswith(PNG_SIGNATURE):
        _check_png(data)
        return Evidence(PNG, EXTENSIONS[PNG])
    if data.startswith(b"\xff\xd8\xff"):
        _check_jpeg(data)
        return Evidence(JPEG, EXTENSIONS[JPEG])
    if data.startswith(b"%PDF-"):
        _check_pdf(data)
        return Evidence(PDF, EXTENSIONS[PDF])
    if data.startswith(_ARCHIVE_STARTS):
        raise EvidenceRefused(
            N_("Archives and programs cannot be attached. Please send PDF, PNG or JPEG files.")
        )
    raise EvidenceRefused(
        N_("Only PDF, PNG and JPEG files can be attached, and this file is none of them.")
    )


def _not_readable() -> EvidenceRefused:
    return EvidenceRefused(
        N_("That file is damaged or not what its type says. Please send a PDF, PNG or JPEG.")
    )


def _refuse_hidden_archive(data: bytes) -> None:
    # NOTE: a zip is read from its end, so "a picture with a zip glued on" opens as an archive.
    if _ZIP_END in data[-(65535 + 22) :]:
        raise EvidenceRefused(
            N_("Archives and programs cannot be attached. Please send PDF, PNG or JPEG files.")
        )


def _check_dimensions(width: int, height: int) -> None:
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise EvidenceRefused(N_("That picture is too large to open. Please send a smaller one."))


def _check_png(data: bytes) -> None:
    """Walk every chunk: lengths inside the file, each CRC right, IHDR first, IEND last."""
    offset, seen_header, ended = len(PNG_SIGNATURE), False, False
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        end = offset + 12 + length
        if end > len(data):
            raise _not_readable()
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise _not_readable()
        if not seen_header:
            if kind != b"IHDR" or length != 13:
                raise _not_readable()
            width, height = struct.unpack(">II", body[:8])
            _check_dimensions(width, height)
            seen_header = True
        offset = end
        if kind == b"IEND":
            ended = True
            break
    if not ended or data[offset:].strip(b"\x00"):
        raise _not_readable()
    _verify_image(data)


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE})


def _check_jpeg(data: bytes) -> None:
    """Walk the markers up to the image data; a frame header with sane dimensions must come."""
    offset, frame = 2, False
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise _not_readable()
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0xD9:  # end of image before any scan
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if length < 2 or offset + 2 + length > len(data):
            raise _not_readable()
        if marker in _SOF_MARKERS:
            if length < 8:
                raise _not_readable()
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            _check_dimensions(width, height)
            frame = True
        if marker == 0xDA:  # start of scan: the picture itself follows
            break
        offset += 2 + length
    if not frame:
        raise _not_readable()
    _refuse_hidden_archive(data)
    _verify_image(data)


def _verify_image(data: bytes) -> None:
    """Let Pillow parse the file too (a second, independent reader of the format)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise _not_readable()
            _check_dimensions(*image.size)
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as error:
        raise _not_readable() from error
    except Image.DecompressionBombError as error:
        raise EvidenceRefused(
            N_("That picture is too large to open. Please send a smaller one.")
        ) from error


def _pdf_names(chunk: bytes) -> set[bytes]:
    return {_decode_name(n) for n in _PDF_NAME.findall(chunk)}


def _active_content() -> EvidenceRefused:
    return EvidenceRefused(
        N_(
            "That PDF contains scripts, actions or attached files, which we do not accept. "
            "Please print it to a new PDF, or send a picture of it."
        )
    )


def _refuse_active(chunk: bytes) -> None:
    if _pdf_names(chunk) & _ACTIVE_PDF_NAMES:
        raise _active_content()


def _check_pdf(data: bytes) -> None:
    """A PDF header and end marker, no archive glued to it, and no active content: not in the
    file's bytes, not in any stream once its filters are undone (object streams hide
    dictionaries), and not in the document as a PDF reader sees it (pypdf, which also reads
    object streams written with predictors, and cross-reference streams)."""
    if not re.match(rb"%PDF-[12]\.\d", data[:16]) or b"%%EOF" not in data[-2048:]:
        raise _not_readable()
    _refuse_hidden_archive(data)
    _refuse_active(data)
    budget = MAX_PDF_INFLATED
    for match in _PDF_STREAM.finditer(data):
        start = match.end()
        stop = data.find(b"endstream", start)
        if stop < 0:
            raise _not_readable()
        filters, early = _stream_filters(data, match.start())
        decoded = _undo_filters(data[start:stop], filters, budget, early_change=early)
        budget -= len(decoded)
        _refuse_active(decoded)
    _walk_pdf(data)


def _stream_dictionary(data: bytes, end: int) -> bytes | None:
    """The dictionary written just before the `stream` keyword at `end` (nested ones kept)."""
    stop = len(data[:end].rstrip())
    if data[stop - 2 : stop] != b">>":
        return None
    depth, index = 0, stop
    floor = max(0, stop - 64 * 1024)
    while index > floor:
        pair = data[index - 2 : index]
        if pair == b">>":
            depth += 1
            index -= 2
        elif pair == b"<<":
            depth -= 1
            index -= 2
            if depth == 0:
                return data[index:stop]
        else:
            index -= 1
    return None


def _stream_filters(data: bytes, keyword: int) -> tuple[list[bytes] | None, bool]:
    """The stream's filter chain (None when its dictionary cannot be read), and whether LZW
    changes code width early (the default)."""
    dictionary = _stream_dictionary(data, keyword)
    if dictionary is None:
        return None, True
    # NOTE: only the stream's own /Filter, not one of a nested /DecodeParms dictionary.
    found = _PDF_FILTER.search(dictionary)
    names = [_decode_name(n) for n in _PDF_NAME.findall(found.group(1))] if found else []
    early = _PDF_EARLY_CHANGE.search(dictionary) is None
    return [_FILTER_ALIASES.get(n, n) for n in names], early


def _decode_name(name: bytes) -> bytes:
    return _PDF_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), name)


def _too_big() -> EvidenceRefused:
    return EvidenceRefused(
        N_("That PDF unpacks to far more than its size. Please send a simpler one.")
    )


def _undo_filters(
    raw: bytes, filters: list[bytes] | None, budget: int, *, early_change: bool = True
) -> bytes:
    """A stream's bytes with its filters undone in order, as far as they decode: a viewer
    shows what a damaged stream yields before the damage, so that part is checked too.

    An unreadable dictionary is tried as Flate (the common case). A picture filter ends the
    chain: what it yields is pixels. More than `budget` bytes in all refuses the file.
    """
    data = raw
    for name in [b"/FlateDecode"] if filters is None else filters:
        if name == b"/FlateDecode":
            data = _inflate(data, budget)
        elif name == b"/ASCIIHexDecode":
            data = _ascii_hex(data)
        elif name == b"/ASCII85Decode":
            data = _ascii85(data)
        elif name == b"/LZWDecode":
            data = _lzw(data, budget, early_change=early_change)
        elif name == b"/RunLengthDecode":
            data = _run_length(data, budget)
        else:
            # NOTE: a picture filter yields pixels; one no viewer knows (or /Crypt, whose
            # key we do not have) yields nothing a viewer reads as PDF syntax.
            break
        if len(data) > budget:
            raise _too_big()
    return data if data is not raw else b""


def _inflate(data: bytes, budget: int) -> bytes:
    inflater = zlib.decompressobj()
    out = bytearray()
    # NOTE: fed in pieces, so a stream damaged half-way keeps what came before the damage.
    for at in range(0, len(data), 16384):
        try:
            out += inflater.decompress(data[at : at + 16384], budget + 1 - len(out))
        except zlib.error:
            break
        if len(out) > budget:
            raise _too_big()
        if inflater.eof:
            break
    return bytes(out)


def _ascii_hex(data: bytes) -> bytes:
    digits = re.sub(rb"[^0-9A-Fa-f]", b"", data.split(b">", 1)[0])
    if len(digits) % 2:
        digits += b"0"  # NOTE: an odd last digit stands for digit-then-zero (PDF 32000 7.4.2)
    return binascii.unhexlify(digits)


def _ascii85(data: bytes) -> bytes:
    text = re.sub(rb"\s", b"", data)
    text = text.removeprefix(b"<~").split(b"~>", 1)[0]
    try:
        return base64.a85decode(text)
    except ValueError:
        # A damaged group: decode the whole groups before it.
        good = re.match(rb"(?:z|[!-u]{5})*", text)
        return base64.a85decode(good.group(0)) if good else b""


def _run_length(data: bytes, budget: int) -> bytes:
    out = bytearray()
    index = 0
    while index < len(data):
        length = data[index]
        if length == 128:
            break
        if length < 128:
            out += data[index + 1 : index + 2 + length]
            index += 2 + length
        else:
            out += data[index + 1 : index + 2] * (257 - length)
            index += 2
        if len(out) > budget:
            raise _too_big()
    return bytes(out)


def _lzw(data: bytes, budget: int, *, early_change: bool = True) -> bytes:
    """LZW as PDF writes it: 9 to 12 bit codes, most significant bit first, 256 clears the
    table, 257 ends the data."""
    early = 1 if early_change else 0
    out = bytearray()
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    width, buffer, bits = 9, 0, 0
    previous: bytes | None = None
    for byte in data:
        buffer = (buffer << 8) | byte
        bits += 8
        while bits >= width:
            bits -= width
            code = (buffer >> bits) & ((1 << width) - 1)
            buffer &= (1 << bits) - 1
            if code == 256:
                del table[258:]
                width, previous = 9, None
                continue
            if code == 257:
                return bytes(out)
            if code < len(table):
                entry = table[code]
                if previous is not None:
                    table.append(previous + entry[:1])
            elif code == len(table) and previous is not None:
                entry = previous + previous[:1]
                table.append(entry)
            else:
                return bytes(out)  # a code that cannot come next: the data is damaged here
            out += entry
            if len(out) > budget:
                raise _too_big()
            previous = entry
            if len(table) + early >= (1 << width) and width < 12:
                width += 1
    return bytes(out)


_ACTIVE_VALUES = frozenset({b"/JavaScript", b"/Launch", b"/EmbeddedFile", b"/RichMedia"})


def _walk_pdf(data: bytes) -> None:
    """Read every object the file's cross-reference names, as a PDF reader would, and refuse
    active content in any dictionary (a key like /JS, or an action like /S /Launch)."""
    import logging

    from pypdf import PdfReader
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise EvidenceRefused(
                N_("That PDF is protected by a password. Please send it without one.")
            )
        numbers = {n for table in reader.xref.values() for n in table}
        numbers |= set(reader.xref_objStm)
        if len(numbers) > MAX_PDF_OBJECTS:
            raise _too_big()
        pending: list[object] = [reader.trailer]
        pending += [reader.get_object(number) for number in sorted(numbers)]
        seen: set[int] = set()
        while pending:
            item = pending.pop()
            if isinstance(item, IndirectObject):
                item = item.get_object()
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, DictionaryObject):
                for key, value in item.items():
                    if key.encode() in _ACTIVE_PDF_NAMES or (
                        isinstance(value, NameObject) and value.encode() in _ACTIVE_VALUES
                    ):
                        raise _active_content()
                    if not isinstance(value, IndirectObject):
                        pending.append(value)
            elif isinstance(item, ArrayObject):
                pending.extend(v for v in item if not isinstance(v, IndirectObject))
    except EvidenceRefused:
        raise
    except Exception as error:  # a reader of hostile bytes fails in many ways
        raise _not_readable() from error


class EvidenceStore:
    """Files on disk under a random name (instance/attachments/<key>), never under static/."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.saved: list[str] = []

    def save(self, data: bytes) -> str:
        """Write the bytes under a new random key and return the key."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_hex(16)
        path = self.root / key
        with open(path, "xb") as handle:
            handle.write(data)
        path.chmod(0o600)
        self.saved.append(key)
        return key

    def discard_saved(self) -> None:
        """Remove the files this store wrote (their rows were rolled back with a refusal)."""
        for key in self.saved:
            self.path(key).unlink(missing_ok=True)
        self.saved.clear()

    def path(self, key: str) -> Path:
        """Where a key's file lives; a key that is not one of ours names nothing."""
        if not re.fullmatch(r"[0-9a-f]{32}", key):
            raise FileNotFoundError(key)
        return self.root / key
