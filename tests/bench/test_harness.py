"""The benchmark harness's bookkeeping (bench/run.py, machine.py, report.py): no timing here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import load, machine, report, run
from bench.run import Measured, Target, round_plan


def _targets(n: int) -> list[Target]:
    return [Target(f"p{i}", f"Page {i}", f"/p{i}", "portal", True) for i in range(n)]


def test_every_page_sits_between_two_reference_runs_and_the_order_rotates() -> None:
    targets = _targets(3)
    first, second = round_plan(targets, 0), round_plan(targets, 1)
    for plan in (first, second):
        assert [t.key for t in plan[::2]] == ["reference"] * 4
        assert sorted(t.key for t in plan[1::2]) == ["p0", "p1", "p2"]
    assert [t.key for t in first[1::2]] == ["p0", "p1", "p2"]
    assert [t.key for t in second[1::2]] == ["p1", "p2", "p0"]


def _result(rps: float, p99: float = 10.0, errors: int = 0) -> load.WrkResult:
    return load.WrkResult(
        requests=int(rps * 6),
        seconds=6.0,
        p50_ms=1.0,
        p95_ms=2.0,
        p99_ms=p99,
        max_ms=p99,
        not_ok=errors,
        socket_errors=0,
        bytes=0,
    )


def test_a_pages_ratio_is_against_the_mean_of_the_reference_runs_beside_it() -> None:
    measured = [
        Measured("reference", 0, 0, _result(1000)),
        Measured("p0", 0, 1, _result(300)),
        Measured("reference", 0, 2, _result(500)),
        Measured("p1", 0, 3, _result(500)),
        Measured("reference", 0, 4, failure="answered 500"),
    ]
    run._ratios(measured)
    assert measured[1].ratio == pytest.approx(300 / 750)
    assert measured[3].ratio is None  # no ratio against a reference run that failed
    assert measured[0].ratio is None


def test_a_page_passes_on_the_medians_and_counts_the_rounds_that_met_the_target() -> None:
    runs = [Measured("p0", r, 1, _result(100, p99)) for r, p99 in enumerate((40.0, 45.0, 80.0))]
    for item, ratio in zip(runs, (0.6, 0.4, 0.7), strict=True):
        item.ratio = ratio
    page = report.PageSummary("p0", "Page", "/p0", runs)
    assert page.passes()  # median ratio 0.6, median p99 45 ms
    assert page.rounds_passing() == 1  # only the first round met both on its own
    runs[0].result = _result(100, 40.0, errors=1)
    assert not page.passes()


def test_spread_gives_median_then_lowest_and_highest() -> None:
    assert report.spread([3.0, 1.0, 2.0]) == "2.00 (1.00–3.00)"
    assert report.spread([]) == "–"


def test_other_processes_cpu_is_what_the_machine_used_beyond_this_runs_processes() -> None:
    sampler = machine.Sampler([])
    ticks = machine.TICKS
    before = machine.Sample(0.0, busy=0, steal=0, ours={1: 0}, rusage=0.0, load=(1, 1, 1))
    # 10 s on every core: 10 * cpus seconds of capacity; our process used 5 s, wrk 1 s.
    capacity = 10 * machine.cpu_count()
    after = machine.Sample(
        10.0,
        busy=int((6 + 0.25 * capacity) * ticks),
        steal=0,
        ours={1: 5 * ticks},
        rusage=1.0,
        load=(2, 1, 1),
    )
    window = sampler.window(before, after)
    assert window.foreign == pytest.approx(0.25, abs=0.01)
    assert window.load_before == (1, 1, 1) and window.load_after == (2, 1, 1)


def test_make_bench_rewrites_only_the_generated_part_of_benchmarks_md(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "ROOT", tmp_path)
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Kept\n\n{run.BEGIN}\nold numbers\n{run.END}\n\n## Also kept\n")
    run.write_generated("new numbers")
    text = path.read_text()
    assert "old numbers" not in text and "new numbers" in text
    assert text.startswith("# Kept\n") and text.endswith("## Also kept\n")


def test_a_cookie_inside_the_renewal_minute_is_kept_and_one_near_its_end_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ages = iter([10.0])
    monkeypatch.setattr(load, "cookie_age_s", lambda cookie: next(ages))
    server = None  # not reached: the cookie is young enough
    assert load.fresh_cookie(server, "/", "portal_session=x", 20, "a@b") == "portal_session=x"  # type: ignore[arg-type]

    monkeypatch.setattr(load, "cookie_age_s", lambda cookie: 50.0 if cookie.endswith("x") else 0.0)
    slept: list[float] = []
    monkeypatch.setattr(load.time, "sleep", slept.append)
    renewed = load.Check(200, "text/html", 1, "", "portal_session=y")
    monkeypatch.setattr(load, "check_page", lambda url, cookie: renewed)
    assert load.fresh_cookie(server, "/", "portal_session=x", 20, "a@b") == "portal_session=y"  # type: ignore[arg-type]
    assert slept and slept[0] >= load.TOUCH_S - 50.0
