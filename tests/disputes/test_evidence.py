"""Evidence files are judged by their bytes: clean PDF, PNG and JPEG only."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from portal.disputes.evidence import EvidenceRefused, EvidenceStore, inspect
from tests.factories import jpeg_bytes, pdf_bytes, png_bytes

LIMIT = 5 * 1024 * 1024


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.txt", b"0" * 1_000_000)
    return buffer.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + body
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND") & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def test_real_pictures_and_documents_are_accepted() -> None:
    assert inspect(png_bytes(), max_bytes=LIMIT).content_type == "image/png"
    assert inspect(jpeg_bytes(), max_bytes=LIMIT).content_type == "image/jpeg"
    assert inspect(pdf_bytes(), max_bytes=LIMIT).content_type == "application/pdf"


def flate_stream(content: bytes) -> bytes:
    packed = zlib.compress(content)
    return (
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"
    )


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("empty", b"", "empty"),
        ("a shell script renamed .png", b"#!/bin/sh\nrm -rf ~\n", "none of them"),
        ("html renamed .png", b"<html><script>alert(1)</script></html>", "none of them"),
        (
            "svg renamed .png",
            b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
            "none of them",
        ),
        ("a zip renamed .pdf", zip_bytes(), "Archives"),
        ("a program", b"MZ\x90\x00" + b"\x00" * 60, "Archives"),
        ("a PNG signature and nothing else", b"\x89PNG\r\n\x1a\n", "damaged"),
        ("a PNG with a broken checksum", png_bytes()[:-5] + b"\x00" + png_bytes()[-4:], "damaged"),
        ("a PNG with a zip glued on", png_bytes() + zip_bytes(), "damaged"),
        ("a PNG promising a billion pixels", png_with_header(40_000, 40_000), "too large"),
        ("a JPEG header and nothing else", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "damaged"),
        ("a JPEG with a zip glued on", jpeg_bytes() + zip_bytes(), "Archives"),
        ("a PDF with JavaScript", pdf_bytes(b"/Names << /JavaScript 4 0 R >> "), "scripts"),
        (
            "a PDF with /JS",
            pdf_bytes(b"/AA << /O << /S /JavaScript /JS (app.alert(1)) >> >> "),
            "scripts",
        ),
        (
            "a PDF acting on opening",
            pdf_bytes(b"/OpenAction << /S /Launch /F (calc.exe) >> "),
            "scripts",
        ),
        ("a PDF launching a program", pdf_bytes(b"/Launch 5 0 R "), "scripts"),
        ("a PDF hiding the name in #escapes", pdf_bytes(b"/J#61vaScript 4 0 R "), "scripts"),
        (
            "a PDF hiding the action in a compressed stream",
            pdf_bytes(b"/Extra " + flate_stream(b"<< /OpenAction << /S /JavaScript >> >>") + b" "),
            "scripts",
        ),
        ("a PDF with attached files", pdf_bytes(b"/Names << /EmbeddedFiles 4 0 R >> "), "scripts"),
        ("a PDF without its end", pdf_bytes()[:-7], "damaged"),
        ("a PDF with a zip glued on", pdf_bytes() + zip_bytes(), "Archives"),
    ],
)
def test_what_is_not_a_clean_pdf_png_or_jpeg_is_refused(name: str, data: bytes, why: str) -> None:
    with pytest.raises(EvidenceRefused) as refused:
        inspect(data, max_bytes=LIMIT)
    assert why in refused.value.message, (name, refused.value.message)


def test_a_file_over_the_limit_is_refused_before_it_is_parsed() -> None:
    data = png_bytes()
    with pytest.raises(EvidenceRefused, match="larger than 1 MB"):
        inspect(data + b"\x00" * (1024 * 1024), max_bytes=1024 * 1024)
    assert inspect(data, max_bytes=len(data)).content_type == "image/png"


def test_a_pdf_that_inflates_far_beyond_its_size_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from portal.disputes import evidence

    monkeypatch.setattr(evidence, "MAX_PDF_INFLATED", 1000)
    data = pdf_bytes(b"/Extra " + flate_stream(b" " * 5000) + b" ")
    with pytest.raises(EvidenceRefused, match="unpacks"):
        inspect(data, max_bytes=LIMIT)


def test_files_are_stored_under_random_names_only_we_can_read(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "attachments")
    first, second = store.save(b"one"), store.save(b"one")
    assert first != second and len(first) == 32
    assert store.path(first).read_bytes() == b"one"
    assert store.path(first).stat().st_mode & 0o777 == 0o600
    for bad in ("../../etc/passwd", "", "A" * 32, first + "/x"):
        with pytest.raises(FileNotFoundError):
            store.path(bad)
