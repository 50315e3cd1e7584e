"""`python -m bench` writes each part's section between its own markers in BENCHMARKS.md."""

from pathlib import Path

from bench.__main__ import write_part


def test_a_part_is_appended_once_then_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written\n", encoding="utf-8")

    write_part("billing", "## Billing run\nfirst", path)
    write_part("mail", "## Mail\nmail one", path)
    write_part("billing", "## Billing run\nsecond", path)

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nhand-written\n")
    assert "first" not in text
    assert text.count("## Billing run\nsecond") == 1
    assert text.index("second") < text.index("mail one")  # replaced where it was
