"""`effdsl search`: candidates, exact costs, ranking, scorers in workers, resuming, output."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import effdsl
from effdsl import search as s
from effdsl.cost import cost
from effdsl.errors import EffError, ScalingError
from effdsl.plan import lower

from .conftest import ROOT, SPECS

TINY = """\
network tiny {
  input size=32
  scaling alpha=1.1 beta=1.1 gamma=1.1  # keep me
  defaults act=silu se=0.25
  preset big width=1.2 depth=1.2 resolution=40
  stem  conv      k3 s2 c8
  stage mbconv e1 k3 s1 c8  x1
  stage mbconv e4 k3 s2 c16 x2
  head  conv      k1 c32
  classifier classes=10
}
"""
SMALL_GRID = "alpha=1:1.2:0.1,beta=1:1.2:0.1,gamma=1:1.2:0.1"
# Every (α, β, γ) of SMALL_GRID with |α·β²·γ² − 1.5| ≤ 0.2, by hand: the products are
# 1.44, 1.4641, 1.44, 1.331, 1.584, 1.331, 1.61051, 1.584, 1.452, 1.452; the rest are at most
# 1.21 or at least 1.728.
SMALL_CANDIDATES = [
    (1.0, 1.0, 1.2),
    (1.0, 1.1, 1.1),
    (1.0, 1.2, 1.0),
    (1.1, 1.0, 1.1),
    (1.1, 1.0, 1.2),
    (1.1, 1.1, 1.0),
    (1.1, 1.1, 1.1),
    (1.1, 1.2, 1.0),
    (1.2, 1.0, 1.1),
    (1.2, 1.1, 1.0),
]
SCORERS = "tests.search_scorers"


@pytest.fixture
def tiny() -> effdsl.Network:
    return effdsl.parse(TINY, filename="tiny.eff")


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many times the test scorers have been called, in any process."""
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("EFFDSL_TEST_CALLS", str(path))
    return lambda: len(path.read_text().splitlines()) if path.exists() else 0


# ---- the grid and the candidate set --------------------------------------------------------


def test_grid_values_are_exact_decimals() -> None:
    grid = s.parse_grid("alpha=1.0:1.4:0.05,beta=1.1,gamma=1:1.3:0.1")
    assert grid.alpha == (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4)
    assert grid.beta == (1.1,)
    assert grid.gamma == (1.0, 1.1, 1.2, 1.3)
    assert grid.size == 36


def test_axes_left_out_keep_the_default_range() -> None:
    grid = s.parse_grid("alpha=1.2")
    default = s.parse_grid()
    assert grid.alpha == (1.2,)
    assert (grid.beta, grid.gamma) == (default.beta, default.gamma)
    assert grid.text == "alpha=1.2,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05"


def test_candidate_set_of_a_small_grid_is_exactly_the_expected_one() -> None:
    points = s.enumerate_candidates(s.parse_grid(SMALL_GRID), target=1.5, tolerance=0.2)
    assert points == SMALL_CANDIDATES


def test_decimal_bounds_are_inclusive_despite_float_noise() -> None:
    # 1.2² = 1.44 in decimal but 1.4399999999999999 in binary
    points = s.enumerate_candidates(s.parse_grid(SMALL_GRID), target=1.44, tolerance=0)
    assert points == [(1.0, 1.0, 1.2), (1.0, 1.2, 1.0)]


def test_default_search_on_b0_holds_the_papers_coefficients() -> None:
    points = s.enumerate_candidates(s.parse_grid(), target=2.0, tolerance=0.1)
    assert len(points) == 63
    assert (1.2, 1.1, 1.15) in points
    assert all(abs(a * b * b * g * g - 2) <= 0.1 + 1e-9 for a, b, g in points)
    assert all(min(p) >= 1 for p in points)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alpha=1.0:1.4", "neither VALUE nor START:STOP:STEP"),
        ("alpha=1.0:1.4:0", "STEP must be positive"),
        ("alpha=0.9:1.4:0.1", "values must be ≥ 1"),
        ("alpha=1.4:1.0:0.1", "STOP 1.0 is below START 1.4"),
        ("alpha=one", "not a number"),
        ("alpha=nan", "not finite"),
        ("delta=1.1", "unknown grid axis 'delta'"),
        ("alpha=1.1,alpha=1.2", "given twice"),
        ("alpha", "bad grid item"),
        ("alpha=1.1,", "bad grid item"),
        ("alpha=1:1.5:0.0001", "more than 1,000"),
    ],
)
def test_bad_grids_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ScalingError, match=message):
        s.parse_grid(text)


def test_a_grid_without_candidates_is_an_error(tiny: effdsl.Network) -> None:
    with pytest.raises(ScalingError, match=r"no .* on the grid") as caught:
        s.search(tiny, grid=s.parse_grid("alpha=1,beta=1,gamma=1"))
    assert caught.value.hint == "widen the grid or raise --tolerance"


@pytest.mark.parametrize(("target", "tolerance"), [(0.0, 0.1), (2.0, -0.1), (float("nan"), 0.1)])
def test_bad_target_or_tolerance(tiny: effdsl.Network, target: float, tolerance: float) -> None:
    with pytest.raises(ScalingError):
        s.search(tiny, target=target, tolerance=tolerance)


# ---- exact costs and ranking by MACs -------------------------------------------------------


def test_candidates_carry_the_exact_cost_of_the_phi_one_network(tiny: effdsl.Network) -> None:
    result = s.search(tiny, grid=s.parse_grid(SMALL_GRID), target=1.5, tolerance=0.2)
    base = cost(lower(tiny))
    assert (result.base.macs, result.base.params, result.base.resolution) == (
        base.macs, base.params, 32
    )
    for c in result.ranked:
        scaled = effdsl.scale(tiny, phi=1, alpha=c.alpha, beta=c.beta, gamma=c.gamma)
        report = cost(lower(scaled))
        assert (c.macs, c.params, c.resolution) == (report.macs, report.params, scaled.input.size)
        assert c.macs_ratio == report.macs / base.macs
        assert c.nominal == pytest.approx(c.alpha * c.beta**2 * c.gamma**2)


def test_rounding_makes_the_real_ratio_differ_from_the_nominal_one() -> None:
    b0 = effdsl.load(SPECS / "b0.eff")
    result = s.search(b0)
    paper = result.ranked[result.spec_rank() - 1]  # type: ignore[operator]
    assert (paper.alpha, paper.beta, paper.gamma) == (1.2, 1.1, 1.15)
    assert paper.nominal == pytest.approx(1.92027)
    # every stage's repeats round up at α = 1.2 (x1 → 2, x2 → 3, ...): 2.57×, not 1.92×
    assert paper.macs_ratio == pytest.approx(992_629_472 / 385_814_752)
    assert paper.resolution == 258


def test_ranking_by_macs_is_deterministic_and_ordered(tiny: effdsl.Network) -> None:
    grid = s.parse_grid(SMALL_GRID)
    first = s.search(tiny, grid=grid, target=1.5, tolerance=0.2)
    distances = [abs(c.macs_ratio - 1.5) for c in first.ranked]
    assert distances == sorted(distances)
    assert sorted(c.key for c in first.ranked) == SMALL_CANDIDATES
    shuffled = s.rank(reversed(first.ranked), target=1.5)
    assert tuple(shuffled) == first.ranked
    # ties on the MACs ratio are broken by the nominal product, then by (α, β, γ)
    tied = [c for c in first.ranked if c.macs_ratio == first.ranked[2].macs_ratio]
    keys = [(abs(c.nominal - 1.5), c.key) for c in tied]
    assert keys == sorted(keys)


def test_default_search_on_b0_ranks_by_the_real_macs_ratio() -> None:
    result = s.search(effdsl.load(SPECS / "b0.eff"))
    best = result.best
    assert (best.alpha, best.beta, best.gamma) == (1.0, 1.1, 1.3)
    assert best.macs_ratio == pytest.approx(2.1431, abs=1e-4)
    assert result.spec_rank() == 24


# ---- scorers (each search here is an Optuna study in a fresh SQLite file) --------------------


def scored(
    network: effdsl.Network, scorer: str, storage: Path, study: str | None = None
) -> s.SearchResult:
    return s.search(
        network, grid=s.parse_grid(SMALL_GRID), target=1.5, tolerance=0.2,
        scorer=scorer, storage=str(storage), study=study,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "study.db"


def test_a_scorer_is_called_once_per_candidate_and_its_ranking_respected(
    tiny: effdsl.Network, calls: Callable[[], int], db: Path
) -> None:
    result = scored(tiny, f"{SCORERS}:fewest_params", db)
    assert calls() == len(SMALL_CANDIDATES)
    scores = [c.score for c in result.ranked]
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    # the scorer counted the built module's parameters: the cost model's figure, negated
    assert all(c.score == -c.params for c in result.ranked)
    assert result.best.params == min(c.params for c in result.ranked)
    assert result.study is not None and result.study.counts["scored"] == len(SMALL_CANDIDATES)
    assert result.study.name == "tiny"  # the network's name by default


def test_an_interrupted_search_resumes_without_recomputing(
    tiny: effdsl.Network, db: Path, calls: Callable[[], int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    scorer = f"{SCORERS}:fails_on_size"
    # only α=1.1, β=1.2, γ=1 has 21,474 parameters: the search stops there
    monkeypatch.setenv("EFFDSL_TEST_FAIL_AT", "21474")
    with pytest.raises(EffError, match=r"failed on α=1\.1, β=1\.2, γ=1: ValueError: no score") as e:
        scored(tiny, scorer, db)
    assert "search_scorers.py:" in (e.value.hint or "")  # where the scorer raised
    assert "rerun to resume" in (e.value.hint or "")
    kept = calls()
    middle = s.status(str(db))
    assert middle.study is not None and middle.study.counts["scored"] == kept
    assert middle.study.counts["failed"] == 1
    failed = next(c for c in middle.ranked if c.state == "failed")
    assert failed.key == (1.1, 1.2, 1.0)
    monkeypatch.delenv("EFFDSL_TEST_FAIL_AT")
    result = scored(tiny, scorer, db)
    assert calls() - kept == len(SMALL_CANDIDATES) - kept  # the rest, and only the rest
    assert all(c.score == -c.params for c in result.ranked)
    before = calls()
    scored(tiny, scorer, db)  # all scored: a rerun only reads the study
    assert calls() == before


def test_a_study_of_another_spec_scorer_or_grid_is_refused(
    tiny: effdsl.Network, db: Path
) -> None:
    scored(tiny, f"{SCORERS}:fewest_params", db)
    with pytest.raises(EffError, match="holds a search of another scorer") as e:
        scored(tiny, f"{SCORERS}:forward_loss", db)
    assert "--study" in (e.value.hint or "")
    wider = tiny.model_copy(update={"head": tiny.head.model_copy(update={"channels": 64})})
    with pytest.raises(EffError, match="holds a search of another network"):
        scored(wider, f"{SCORERS}:fewest_params", db)
    with pytest.raises(EffError, match="holds a search of another grid"):
        s.search(tiny, grid=s.parse_grid("alpha=1:1.2:0.1,beta=1,gamma=1:1.2:0.1"), target=1.5,
                 tolerance=0.2, scorer=f"{SCORERS}:fewest_params", storage=str(db))
    # under another name the same storage holds a second study
    other = scored(tiny, f"{SCORERS}:forward_loss", db, study="by-loss")
    assert other.study is not None and other.study.name == "by-loss"


def test_fingerprint_ignores_coefficients_presets_and_comments(tiny: effdsl.Network) -> None:
    other = s.with_coefficients(tiny, 1.3, 1.0, 1.2).model_copy(update={"presets": ()})
    assert s.spec_fingerprint(other) == s.spec_fingerprint(tiny)
    wider = tiny.model_copy(update={"head": tiny.head.model_copy(update={"channels": 64})})
    assert s.spec_fingerprint(wider) != s.spec_fingerprint(tiny)


@pytest.mark.parametrize(
    ("scorer", "message"),
    [
        ("no_colon", "is not MODULE:FUNCTION"),
        ("no_such_module_xyz:f", "cannot import scorer module `no_such_module_xyz`"),
        (f"{SCORERS}:missing", "has no `missing`"),
        (f"{SCORERS}:os_module", "is not callable"),
    ],
)
def test_bad_scorers_are_clear_errors(
    tiny: effdsl.Network, scorer: str, message: str, db: Path
) -> None:
    with pytest.raises(EffError, match=message):
        scored(tiny, scorer, db)
    assert not db.exists()  # refused before any storage was opened


def test_a_scorer_returning_nonsense_is_an_error(tiny: effdsl.Network, db: Path) -> None:
    with pytest.raises(EffError, match="returned 'excellent', not a number"):
        scored(tiny, f"{SCORERS}:not_a_number", db)


def test_storage_and_study_need_a_scorer(tiny: effdsl.Network, db: Path) -> None:
    with pytest.raises(EffError, match="need --score or --data"):
        s.search(tiny, storage=str(db))
    with pytest.raises(EffError, match="give one"):
        s.search(tiny, scorer="proxy", data="somewhere")


# ---- the proxy scorer ----------------------------------------------------------------------


def test_proxy_trains_a_tiny_net_on_a_tiny_budget(tiny: effdsl.Network) -> None:
    import torch

    from effdsl.proxy import train_score
    from effdsl.torch_build import build

    def score() -> float:
        torch.manual_seed(0)
        return train_score(build(tiny), 32, steps=3, image_size=16, batch=8)

    first = score()
    assert -20 < first < 0  # a negative cross-entropy
    assert score() == first  # fixed seeds: the same net scores the same


def test_proxy_knobs_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from effdsl import proxy

    monkeypatch.setenv("EFFDSL_PROXY_STEPS", "7")
    assert proxy._knob(None, "EFFDSL_PROXY_STEPS", 30, 1, 100) == 7
    assert proxy._knob(3, "EFFDSL_PROXY_STEPS", 30, 1, 100) == 3
    monkeypatch.setenv("EFFDSL_PROXY_STEPS", "lots")
    with pytest.raises(EffError, match="not an integer"):
        proxy._knob(None, "EFFDSL_PROXY_STEPS", 30, 1, 100)


def test_proxy_scores_candidates_through_the_search(
    tiny: effdsl.Network, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EFFDSL_PROXY_STEPS", "2")
    monkeypatch.setenv("EFFDSL_PROXY_RESOLUTION", "16")
    monkeypatch.setenv("EFFDSL_PROXY_BATCH", "4")
    result = s.search(
        tiny, grid=s.parse_grid("alpha=1:1.1:0.1,beta=1,gamma=1:1.1:0.1"), target=1.2,
        tolerance=0.11, scorer="proxy", storage=str(tmp_path / "proxy.db"),
    )
    assert result.scorer == s.PROXY
    assert len(result.ranked) == 2 and all(c.score is not None for c in result.ranked)


# ---- writing the spec back -----------------------------------------------------------------


def test_write_spec_carries_the_chosen_coefficients(tiny: effdsl.Network, tmp_path: Path) -> None:
    result = s.search(tiny, grid=s.parse_grid(SMALL_GRID), target=1.5, tolerance=0.2)
    out = tmp_path / "chosen.eff"
    s.write_spec(out, tiny, result.best)
    written = effdsl.load(out)
    best = result.best
    assert (written.scaling.alpha, written.scaling.beta, written.scaling.gamma) == best.key
    # everything else is the spec as it was, presets included
    assert written == s.with_coefficients(tiny, *best.key)
    assert written.preset("big") is not None
    assert effdsl.format(written) == out.read_text()
    assert "# keep me" in out.read_text()  # the user's comment survives
    scaling_line = next(line for line in out.read_text().splitlines() if "scaling" in line)
    assert scaling_line.split("#")[0].split() == [
        "scaling", f"alpha={best.alpha:g}", f"beta={best.beta:g}", f"gamma={best.gamma:g}"
    ]


def test_write_spec_marks_a_spec_without_comment(tmp_path: Path) -> None:
    network = effdsl.parse(TINY.replace("  # keep me", ""))
    chosen = s.with_coefficients(network, 1.0, 1.1, 1.3)
    assert chosen.scaling.trailing_comment == s.SEARCH_COMMENT
    assert effdsl.parse(effdsl.format(chosen)) == chosen


# ---- output and the command ----------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """A CLI parser with just `search`, as cli.build_parser() will register it."""
    root = argparse.ArgumentParser(prog="effdsl")
    s.register_search(root.add_subparsers(dest="command", required=True))
    return root


def run(*argv: str) -> str:
    args = parser().parse_args(["search", *argv])
    out = io.StringIO()
    assert s.run_search(args, stdout=out) == 0
    return out.getvalue()


def test_table_output(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.eff"
    spec.write_text(TINY)
    text = run(str(spec), "--grid", SMALL_GRID, "--target", "1.5", "--tolerance", "0.2",
               "--top", "3")
    lines = text.splitlines()
    assert lines[0] == "tiny: compound-scaling search at φ = 1, |α·β²·γ² − 1.5| ≤ 0.2"
    assert "27 points, 10 candidates, ranked by |MACs ratio − 1.5|" in lines[1]
    assert lines[4].split() == ["#", "α", "β", "γ", "α·β²·γ²", "MACs", "ratio", "MACs", "params",
                                "px"]
    assert [line.split()[0] for line in lines[5:8]] == ["1", "2", "3"]
    assert lines[8] == ""
    assert lines[9].startswith("the spec's own α=1.1, β=1.1, γ=1.1: rank ")


def test_json_output_and_write_spec(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.eff"
    spec.write_text(TINY)
    out = tmp_path / "out.eff"
    data = json.loads(run(str(spec), "--grid", SMALL_GRID, "--target", "1.5", "--tolerance",
                          "0.2", "--json", "--top", "0", "--write-spec", str(out)))
    assert data["count"] == 10 and len(data["candidates"]) == 10
    assert data["ranked_by"] == "macs_ratio" and data["scorer"] is None
    assert [c["rank"] for c in data["candidates"]] == list(range(1, 11))
    best = data["candidates"][0]
    written = effdsl.load(out).scaling
    assert (written.alpha, written.beta, written.gamma) == (best["alpha"], best["beta"],
                                                             best["gamma"])



def test_cli_progress_goes_to_stderr_as_lines_without_a_terminal(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.eff"
    spec.write_text(TINY)
    result = subprocess.run(
        [sys.executable, "-m", "effdsl", "search", str(spec), "--grid", "alpha=1:1.1:0.1,beta=1,"
         "gamma=1:1.1:0.1", "--target", "1.2", "--tolerance", "0.11", "--score",
         f"{SCORERS}:fewest_params", "--storage", str(tmp_path / "r.db"), "--threads", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("[1/2] α=") and "score=" in line for line in lines), lines
    assert any(line.startswith("[2/2] α=") and "best " in line for line in lines), lines
    assert "\r" not in result.stderr  # no bar redrawing into a log
    assert "score" in result.stdout.splitlines()[5]
    assert result.stdout.splitlines()[3] == f"study tiny in {tmp_path / 'r.db'}: 2 of 2 scored"


def test_the_old_results_flag_says_what_replaced_it(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.eff"
    spec.write_text(TINY)
    args = parser().parse_args(["search", str(spec), "--score", "proxy", "--results", "r.jsonl"])
    with pytest.raises(EffError, match="--results is gone") as e:
        s.run_search(args)
    assert "--storage" in (e.value.hint or "")
