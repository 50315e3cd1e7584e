"""Evidence files: what we accept is decided by the bytes, never by the name or the browser's
word for it, and stored outside static/ under a random name.

Accepted: PDF without active content, PNG and JPEG that parse. Everything else (an archive, a
script renamed .png, a PDF that runs JavaScript or launches a program, an image whose header
promises a billion pixels) is refused with a message the customer understands.
"""

from __future__ import annotations

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
_PDF_STREAM = re.compile(rb"stream\r?\n")


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
    return {
        _PDF_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), n) for n in _PDF_NAME.findall(chunk)
    }


def _refuse_active(chunk: bytes) -> None:
    if _pdf_names(chunk) & _ACTIVE_PDF_NAMES:
        raise EvidenceRefused(
            N_(
                "That PDF contains scripts, actions or attached files, which we do not accept. "
                "Please print it to a new PDF, or send a picture of it."
            )
        )


def _check_pdf(data: bytes) -> None:
    """A PDF header and end marker, no active content in the file or in its compressed
    streams (object streams can hide dictionaries), and no archive glued to it."""
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
        inflater = zlib.decompressobj()
        try:
            inflated = inflater.decompress(data[start:stop], budget + 1)
        except zlib.error:
            continue  # not Flate (an image's DCT data, say): nothing a viewer would run
        budget -= len(inflated)
        if budget < 0:
            raise EvidenceRefused(
                N_("That PDF unpacks to far more than its size. Please send a simpler one.")
            )
        _refuse_active(inflated)


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
