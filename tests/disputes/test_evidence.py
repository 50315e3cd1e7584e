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


# -- PDFs whose active content hides behind filters or in object streams ---------------------

SCRIPT = b"<< /Type /Action /S /JavaScript /JS (app.alert(document.cookie)) >>"
HARMLESS = b"BT /F1 12 Tf 20 100 Td (Invoice ALS-0012, line 1) Tj ET"
CHAINS = [
    [b"/FlateDecode"],
    [b"/ASCIIHexDecode"],
    [b"/ASCII85Decode"],
    [b"/LZWDecode"],
    [b"/RunLengthDecode"],
    [b"/ASCII85Decode", b"/FlateDecode"],
    [b"/ASCIIHexDecode", b"/LZWDecode", b"/RunLengthDecode"],
    [b"/AHx"],  # the short name
    [b"/Fl#61teDecode"],  # the name spelt with a #xx escape
]
CHAIN_IDS = [b"+".join(chain).decode().replace("/", "") for chain in CHAINS]


@pytest.mark.parametrize("chain", CHAINS, ids=CHAIN_IDS)
def test_a_script_under_any_filter_chain_is_refused(chain: list[bytes]) -> None:
    from tests.disputes.pdf_craft import encoded, with_stream

    data = with_stream(SCRIPT, chain)
    assert b"JavaScript" not in data and b"/JS" not in encoded(SCRIPT, chain)
    with pytest.raises(EvidenceRefused, match="scripts"):
        inspect(data, max_bytes=LIMIT)


@pytest.mark.parametrize("chain", CHAINS, ids=CHAIN_IDS)
def test_a_harmless_stream_under_the_same_chain_is_accepted(chain: list[bytes]) -> None:
    from tests.disputes.pdf_craft import with_stream

    assert inspect(with_stream(HARMLESS, chain), max_bytes=LIMIT).content_type == PDF_TYPE


PDF_TYPE = "application/pdf"


def test_an_action_inside_a_compressed_object_stream_with_a_predictor_is_refused() -> None:
    """PDF 1.5 writers keep the catalog in an object stream; with a PNG predictor its names
    are not even in the inflated bytes: only reading the document as a viewer does finds it."""
    from tests.disputes.pdf_craft import object_stream_pdf

    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction " + SCRIPT + b" >>"
    data = object_stream_pdf(catalog)
    inflated = zlib.decompress(data.split(b"stream\n")[1].split(b"\nendstream")[0])
    assert b"OpenAction" not in data and b"OpenAction" not in inflated
    with pytest.raises(EvidenceRefused, match="scripts"):
        inspect(data, max_bytes=LIMIT)
    clean = object_stream_pdf(b"<< /Type /Catalog /Pages 2 0 R >>")
    assert inspect(clean, max_bytes=LIMIT).content_type == PDF_TYPE


@pytest.mark.parametrize(
    "catalog_extra",
    [
        b"/AA << /WC << /S /Launch /F (cmd.exe) >> >>",
        b"/Names << /EmbeddedFiles << /Names [(a.exe) << /EF << /F 6 0 R >> >>] >> >>",
        b"/Extra << /S /Launch /F (calc.exe) >>",
    ],
    ids=["additional-actions", "embedded-file", "launch-action"],
)
def test_each_kind_of_active_content_is_found_in_an_object_stream(catalog_extra: bytes) -> None:
    from tests.disputes.pdf_craft import object_stream_pdf

    data = object_stream_pdf(b"<< /Type /Catalog /Pages 2 0 R " + catalog_extra + b" >>")
    with pytest.raises(EvidenceRefused, match="scripts"):
        inspect(data, max_bytes=LIMIT)


def test_a_real_pdf_with_streams_is_accepted() -> None:
    """What a customer sends: a PDF printed by a real writer (streams ending with "endstream"
    then a line break, which the stream scan once took for the start of a stream)."""
    import weasyprint

    data = weasyprint.HTML(string="<h1>Receipt</h1><p>Paid $49.00</p>").write_pdf()
    assert b"endstream\n" in data or b"endstream\r\n" in data
    assert inspect(data, max_bytes=LIMIT).content_type == PDF_TYPE


@pytest.mark.parametrize("chain", [[b"/LZWDecode"], [b"/RunLengthDecode"]], ids=["lzw", "rle"])
def test_a_stream_that_unpacks_past_the_budget_is_refused(
    monkeypatch: pytest.MonkeyPatch, chain: list[bytes]
) -> None:
    from portal.disputes import evidence
    from tests.disputes.pdf_craft import with_stream

    monkeypatch.setattr(evidence, "MAX_PDF_INFLATED", 1000)
    with pytest.raises(EvidenceRefused, match="unpacks"):
        inspect(with_stream(b"0" * 5000, chain), max_bytes=LIMIT)


def test_our_lzw_reads_what_pypdf_reads() -> None:
    from pypdf.filters import LZWDecode

    from portal.disputes.evidence import _lzw
    from tests.disputes.pdf_craft import lzw_encode

    text = SCRIPT * 200 + bytes(range(256)) * 40  # long enough to widen codes and clear
    packed = lzw_encode(text)
    assert LZWDecode.decode(packed) == text
    assert _lzw(packed, 10**7) == text


def test_a_pdf_no_reader_can_parse_is_refused_as_damaged() -> None:
    data = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R\nstartxref\n999999\n%%EOF\n"
    with pytest.raises(EvidenceRefused, match="damaged"):
        inspect(data, max_bytes=LIMIT)
