"""The stylesheets parse: a rule left open (a merge that dropped a closing brace) silently swallows
every rule after it, which no page test notices but every customer sees."""

from __future__ import annotations

from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "static"


def _depths(text: str) -> list[int]:
    depth, seen = 0, []
    in_comment = False
    i = 0
    while i < len(text):
        pair = text[i : i + 2]
        if in_comment:
            if pair == "*/":
                in_comment = False
                i += 1
        elif pair == "/*":
            in_comment = True
            i += 1
        elif text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            seen.append(depth)
        i += 1
    seen.append(depth)
    return seen


@pytest.mark.parametrize("path", sorted(STATIC.rglob("*.css")), ids=lambda p: p.name)
def test_every_rule_is_closed(path: Path) -> None:
    depths = _depths(path.read_text(encoding="utf-8"))
    assert min(depths) >= 0, f"{path.name}: a closing brace without its rule"
    assert depths[-1] == 0, f"{path.name}: {depths[-1]} rule(s) left open"


def test_an_open_rule_is_noticed() -> None:
    assert _depths(".a {\n  color: red;\n.b { color: blue; }\n")[-1] == 1
