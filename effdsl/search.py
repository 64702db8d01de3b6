"""`effdsl search`: step 1 of compound scaling, a grid search for α, β, γ with α·β²·γ² ≈ 2.

    grid = parse_grid("alpha=1.0:1.4:0.05,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05")
    result = search(net, grid=grid)                                   # ranked by exact MACs
    result = search(net, grid=grid, data="textures/", storage="b0.db")  # trained and scored
    result = search(net, grid=grid, scorer="my_scorers:accuracy")     # your own scorer
    write_spec("b0-searched.eff", net, result.best)                   # α, β, γ into the spec

The paper (Tan & Le, 2019, §3.3) scales in two steps: fix φ = 1 and grid-search α (depth),
β (width), γ (resolution) under α·β²·γ² ≈ 2 on the baseline; then fix them and grow φ
(`effdsl compile --phi`). Here every candidate is scaled at φ = 1 through the real rounding
rules (channels to a multiple of 8, repeats rounded up, pixels to the nearest) and costed
exactly, so the result shows the nominal α·β²·γ² next to the MACs ratio the rounding really
gives, which is rarely 2: rounding every stage's repeats up makes small α expensive.

Without a scorer, candidates are ranked by how close that real MACs ratio is to the target, and
nothing imports torch or Optuna. With one — `--data DIR` trains each candidate on an image
folder (`effdsl.train`), `--score MODULE:FUNCTION` calls `function(model, resolution) -> float`
— each candidate is a trial of an Optuna study in a storage (an SQLite file by default, a
PostgreSQL/MySQL URL or a journal file for many machines), so any number of processes share the
grid, each candidate is scored once, a crashed worker's candidate is taken over, and rerunning
resumes (`effdsl.study`). Launched by torchrun, the processes of one `--data` search train each
candidate together, rank 0 alone using the storage (`effdsl.distributed`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from effdsl import ast, distributed
from effdsl.cost import cost
from effdsl.errors import EffError, ScalingError
from effdsl.files import atomic_write
from effdsl.fmt import format as format_network
from effdsl.plan import lower
from effdsl.progress import Bars
from effdsl.scaling import apply, multipliers
from effdsl.study import (
    DEFAULT_HEARTBEAT,
    DEFAULT_STORAGE,
    GRACE_BEATS,
    Reporter,
    Row,
    StudyPlan,
    load_study,
    open_storage,
    open_study,
    parse_storage,
    read_rows,
    resolve_study_name,
    work,
)
from effdsl.summary import human, table
from effdsl.train import OPTIMIZERS, ImageData, Recipe

AXES = ("alpha", "beta", "gamma")
SYMBOLS = {"alpha": "α", "beta": "β", "gamma": "γ"}
DEFAULT_GRID = "alpha=1.0:1.4:0.05,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05"
DEFAULT_TARGET = 2.0
DEFAULT_TOLERANCE = 0.1
PROXY = "effdsl.proxy:train_score"
SCORER_ALIASES = {"proxy": PROXY}
DATA_SCORER = "data"  # the scorer's name in a study scored by --data
MAX_AXIS_POINTS = 1_000
MAX_GRID_POINTS = 1_000_000
# Grid values are decimals (1.05); their floating-point products land a hair either side of a
# decimal bound, so the tolerance test allows this much slack to keep 1.9 within 2 ± 0.1.
SLACK = 1e-9
SEED = 0  # every candidate's weights start from this seed, so scores are reproducible

Key = tuple[float, float, float]


# ---- the grid --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The values tried for each coefficient; `text` is the canonical description."""

    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    gamma: tuple[float, ...]
    text: str

    @property
    def size(self) -> int:
        return len(self.alpha) * len(self.beta) * len(self.gamma)

    def points(self) -> Iterator[Key]:
        """Every (α, β, γ) of the grid, α slowest, each axis ascending."""
        return itertools.product(self.alpha, self.beta, self.gamma)


def parse_grid(text: str = DEFAULT_GRID) -> Grid:
    """`alpha=1.0:1.4:0.05,beta=1.1,...` → a `Grid`; axes left out keep `DEFAULT_GRID`'s range.

    Each axis is `NAME=VALUE` or `NAME=START:STOP:STEP`, STOP included. Values are decimals,
    so `1.0:1.4:0.05` gives exactly 1.0, 1.05, …, 1.4.
    """
    ranges = _axis_texts(DEFAULT_GRID)
    given = _axis_texts(text)
    ranges.update(given)
    values = {name: _axis_values(name, ranges[name]) for name in AXES}
    total = math.prod(len(v) for v in values.values())
    if total > MAX_GRID_POINTS:
        raise ScalingError(
            f"the grid has {total:,} points, more than {MAX_GRID_POINTS:,}",
            hint="use a coarser step or narrower ranges",
        )
    canonical = ",".join(f"{name}={ranges[name]}" for name in AXES)
    return Grid(alpha=values["alpha"], beta=values["beta"], gamma=values["gamma"], text=canonical)


def _axis_texts(text: str) -> dict[str, str]:
    """`alpha=1:2:0.1,beta=1.1` → {"alpha": "1:2:0.1", "beta": "1.1"}; unknown or repeated axes
    are errors."""
    axes: dict[str, str] = {}
    for item in text.split(","):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not value:
            raise ScalingError(
                f"bad grid item {item.strip()!r}",
                hint="write NAME=START:STOP:STEP or NAME=VALUE, e.g. alpha=1.0:1.4:0.05,beta=1.1",
            )
        if name not in AXES:
            raise ScalingError(
                f"unknown grid axis {name!r}", hint="the axes are alpha, beta, gamma"
            )
        if name in axes:
            raise ScalingError(f"grid axis {name!r} is given twice")
        axes[name] = value
    return axes


def _axis_values(name: str, text: str) -> tuple[float, ...]:
    """The values of one axis, from `VALUE` or `START:STOP:STEP` (STOP included)."""
    parts = text.split(":")
    try:
        numbers = [Decimal(part.strip()) for part in parts]
    except InvalidOperation:
        raise ScalingError(f"grid axis {name}: not a number in {text!r}") from None
    if len(numbers) == 1:
        start = stop = numbers[0]
        step = Decimal(1)
    elif len(numbers) == 3:
        start, stop, step = numbers
    else:
        raise ScalingError(
            f"grid axis {name}: {text!r} is neither VALUE nor START:STOP:STEP",
            hint=f"e.g. {name}=1.0:1.4:0.05",
        )
    if not all(n.is_finite() for n in numbers):
        raise ScalingError(f"grid axis {name}: {text!r} has a value that is not finite")
    if start < 1:
        # α, β, γ < 1 would shrink that dimension as φ grows: not compound scaling
        raise ScalingError(f"grid axis {name}: values must be ≥ 1, got {start}")
    if stop < start:
        raise ScalingError(f"grid axis {name}: STOP {stop} is below START {start}")
    if stop > Decimal(ast.MAX_MULTIPLIER):
        raise ScalingError(f"grid axis {name}: values must be ≤ {ast.MAX_MULTIPLIER:g}")
    if step <= 0:
        raise ScalingError(f"grid axis {name}: STEP must be positive, got {step}")
    count = int((stop - start) / step) + 1
    if count > MAX_AXIS_POINTS:
        raise ScalingError(
            f"grid axis {name}: {count:,} values, more than {MAX_AXIS_POINTS:,}",
            hint="use a larger step",
        )
    return tuple(float(start + i * step) for i in range(count))


def flops_constant(alpha: float, beta: float, gamma: float) -> float:
    """α·β²·γ²: the paper's factor by which FLOPs grow per unit of φ."""
    return alpha * beta**2 * gamma**2


def enumerate_candidates(grid: Grid, target: float, tolerance: float) -> list[Key]:
    """The grid points with |α·β²·γ² − target| ≤ tolerance, in grid order."""
    _check_target(target, tolerance)
    return [
        point
        for point in grid.points()
        if abs(flops_constant(*point) - target) <= tolerance + SLACK
    ]


def _check_target(target: float, tolerance: float) -> None:
    if not (math.isfinite(target) and target > 0):
        raise ScalingError(f"--target must be a positive number, got {target}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ScalingError(f"--tolerance must be a number ≥ 0, got {tolerance}")


# ---- exact costs at φ = 1 ----------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """The unscaled network (φ = 0): what every candidate's ratios are relative to."""

    macs: int
    params: int
    resolution: int


@dataclass(frozen=True)
class Candidate:
    """One (α, β, γ), its φ = 1 network's exact cost, and its score when a scorer ran."""

    alpha: float
    beta: float
    gamma: float
    macs: int
    params: int
    resolution: int
    macs_ratio: float  # exact MACs at φ = 1 over φ = 0
    params_ratio: float
    score: float | None = None
    state: str | None = None  # in a study: "scored", "running", "failed" or "pending"

    @property
    def key(self) -> Key:
        return result_key(self.alpha, self.beta, self.gamma)

    @property
    def nominal(self) -> float:
        """α·β²·γ²: the MACs ratio the paper's formula predicts at φ = 1."""
        return flops_constant(self.alpha, self.beta, self.gamma)


def result_key(alpha: float, beta: float, gamma: float) -> Key:
    """The key of a candidate in a results file: its coefficients, free of float noise."""
    return (round(alpha, 9), round(beta, 9), round(gamma, 9))


def baseline(network: ast.Network) -> Baseline:
    """The cost of `network` at φ = 0 (which is the unscaled network)."""
    factors = multipliers(network, phi=0)
    report = cost(lower(apply(network, factors)))
    return Baseline(macs=report.macs, params=report.params, resolution=network.input.size)


def scaled_at_phi_one(network: ast.Network, alpha: float, beta: float, gamma: float) -> ast.Network:
    """`network` scaled with φ = 1 and these coefficients: depth α, width β, resolution γ."""
    factors = multipliers(network, phi=1, alpha=alpha, beta=beta, gamma=gamma)
    return apply(network, factors)


def measure(network: ast.Network, point: Key, base: Baseline) -> Candidate:
    """The exact cost of one candidate, through the rounding rules."""
    alpha, beta, gamma = point
    scaled = scaled_at_phi_one(network, alpha, beta, gamma)
    report = cost(lower(scaled))
    return Candidate(
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        macs=report.macs,
        params=report.params,
        resolution=scaled.input.size,
        macs_ratio=report.macs / base.macs,
        params_ratio=report.params / base.params,
    )


def rank(candidates: Iterable[Candidate], target: float) -> list[Candidate]:
    """Best first: highest score (unscored candidates of a study last), then MACs ratio closest
    to `target`, then nominal closest, then smallest (α, β, γ), so that the order never depends
    on how the list came in."""

    def order(c: Candidate) -> tuple[float, ...]:
        unscored = float(c.score is None and c.state is not None)
        score = -c.score if c.score is not None else 0.0
        return (unscored, score, abs(c.macs_ratio - target), abs(c.nominal - target), *c.key)

    return sorted(candidates, key=order)



# ---- the search ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyInfo:
    """Where a scored search's results live, and how far the study is."""

    name: str
    storage: str
    counts: dict[str, int]  # scored, running, failed, pending

    def line(self) -> str:
        total = sum(self.counts.values())
        parts = [f"{self.counts['scored']} of {total} scored"]
        parts += [f"{self.counts[s]} {s}" for s in ("running", "failed", "pending")
                  if self.counts[s]]
        return f"study {self.name} in {self.storage}: " + ", ".join(parts)


@dataclass(frozen=True)
class SearchResult:
    """All candidates, ranked, with what produced them."""

    network: str
    spec: Key  # the coefficients the spec itself carries
    grid: Grid
    target: float
    tolerance: float
    scorer: str | None
    base: Baseline
    ranked: tuple[Candidate, ...]
    study: StudyInfo | None = None

    @property
    def best(self) -> Candidate:
        return self.ranked[0]

    def spec_rank(self) -> int | None:
        """The 1-based rank of the spec's own (α, β, γ), when the grid holds them."""
        wanted = result_key(*self.spec)
        return next((i for i, c in enumerate(self.ranked, 1) if c.key == wanted), None)


def search(
    network: ast.Network,
    *,
    grid: Grid | None = None,
    target: float = DEFAULT_TARGET,
    tolerance: float = DEFAULT_TOLERANCE,
    scorer: str | None = None,
    data: str | Path | None = None,
    recipe: Recipe | None = None,
    storage: str | None = None,
    study: str | None = None,
    heartbeat: int = DEFAULT_HEARTBEAT,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> SearchResult:
    """Enumerate the candidates of `grid`, cost each at φ = 1, score them if asked, rank them.

    With `scorer` (`MODULE:FUNCTION` or `proxy`) or `data` (an image-folder directory, trained
    with `recipe`), candidates are scored as trials of the Optuna study `study` (default: the
    network's name) in `storage` (default `effdsl-search.db`), shared with any other process
    that runs the same search against it; see `effdsl.study`. `threads` caps torch's CPU
    threads in this process (1 suits a shared machine, with one process per core).
    """
    if scorer is not None and data is not None:
        raise EffError("--score and --data are two ways to score; give one")
    scored = scorer is not None or data is not None
    if not scored and (storage is not None or study is not None):
        raise EffError("--storage and --study hold a scored search; they need --score or --data")
    if recipe is not None and data is None:
        raise EffError("a training recipe (--epochs, --batch, --lr, …) needs --data")
    grid = grid or parse_grid()
    points = enumerate_candidates(grid, target, tolerance)
    if not points:
        raise ScalingError(
            f"no (α, β, γ) on the grid has |α·β²·γ² − {target:g}| ≤ {tolerance:g}",
            hint="widen the grid or raise --tolerance",
        )
    base = baseline(network)
    candidates = [measure(network, point, base) for point in points]
    spec = network.scaling
    result = SearchResult(
        network=network.name,
        spec=(spec.alpha, spec.beta, spec.gamma),
        grid=grid,
        target=target,
        tolerance=tolerance,
        scorer=None,
        base=base,
        ranked=tuple(rank(candidates, target)),
    )
    if not scored:
        return result
    reporter = reporter or Reporter()
    if data is None:
        assert scorer is not None
        if distributed.launched():
            raise EffError("under torchrun, only --data trains a candidate across processes",
                           hint="start --score workers as separate effdsl search processes")
        name = SCORER_ALIASES.get(scorer, scorer)
        score = _custom_score(network, name)
        if threads is not None:
            score = _with_threads(score, threads)
        plan = _plan(result, candidates, spec_fingerprint(network), name, {})
        return _run_study(plan, score, reporter, storage, study, heartbeat, None)
    recipe = recipe or Recipe()
    images = ImageData.open(data, recipe)
    identity = {"recipe": recipe.identity(), "data": images.identity()}
    plan = _plan(result, candidates, spec_fingerprint(network), DATA_SCORER, identity)
    with distributed.join() as group:  # the processes torchrun started, or this one alone
        recipe.check_split(group.world)
        if not group.leader:
            reporter = Reporter()  # rank 0 alone reports
        score = _data_score(network, images, recipe, reporter, group)
        if threads is not None:
            score = _with_threads(score, threads)
        if not group.leader:
            final: SearchResult = distributed.follow(group, score)
            return final
        return _run_study(plan, score, reporter, storage, study, heartbeat, group)


def _run_study(plan: StudyPlan, score: Callable[[Key], float], reporter: Reporter,
               storage: str | None, study: str | None, heartbeat: int,
               group: distributed.Group | None) -> SearchResult:
    """Open the study and score its candidates (rank 0 of a group sends each to the others)."""
    with distributed.Leader(group) as leader:
        opened = open_storage(storage or DEFAULT_STORAGE, heartbeat=heartbeat)
        shown = parse_storage(storage or DEFAULT_STORAGE).shown
        running = open_study(opened, study or plan.network, plan)
        work(running, plan, leader.scores(score), reporter, idle=leader.idle)
        final = study_result(running.study_name, shown, plan, read_rows(running, plan))
        leader.finish(final)
        return final


def status(storage: str, study: str | None = None) -> SearchResult:
    """The table so far of a scored search, from its storage alone (`effdsl search --status`)."""
    opened = open_storage(storage, heartbeat=None, create=False)
    shown = parse_storage(storage).shown
    name = resolve_study_name(opened, study, shown)
    loaded, plan = load_study(opened, name)
    return study_result(name, shown, plan, read_rows(loaded, plan))


def _plan(result: SearchResult, candidates: list[Candidate], fingerprint: str, scorer: str,
          recipe: dict[str, Any]) -> StudyPlan:
    base = result.base
    return StudyPlan(
        network=result.network,
        fingerprint=fingerprint,
        scorer=scorer,
        grid=result.grid.text,
        target=result.target,
        tolerance=result.tolerance,
        spec=result.spec,
        base={"macs": base.macs, "params": base.params, "resolution": base.resolution},
        candidates=tuple(_cost_json(c) for c in candidates),
        recipe=recipe,
    )


def _cost_json(c: Candidate) -> dict[str, Any]:
    return {
        "alpha": c.alpha, "beta": c.beta, "gamma": c.gamma, "macs": c.macs, "params": c.params,
        "resolution": c.resolution, "macs_ratio": c.macs_ratio, "params_ratio": c.params_ratio,
    }


def study_result(name: str, storage: str, plan: StudyPlan, rows: list[Row]) -> SearchResult:
    """A study's candidates, ranked: the scored by score, then the rest."""
    candidates = [
        Candidate(**row.candidate, score=row.score, state=row.state) for row in rows
    ]
    counts = {state: sum(r.state == state for r in rows)
              for state in ("scored", "running", "failed", "pending")}
    base = plan.base
    return SearchResult(
        network=plan.network,
        spec=plan.spec,
        grid=parse_grid(plan.grid),
        target=plan.target,
        tolerance=plan.tolerance,
        scorer=plan.scorer,
        base=Baseline(macs=base["macs"], params=base["params"], resolution=base["resolution"]),
        ranked=tuple(rank(candidates, plan.target)),
        study=StudyInfo(name, storage, counts),
    )


# ---- scorers ---------------------------------------------------------------------------------

Scorer = Callable[[Any, int], Any]


def load_scorer(name: str) -> Scorer:
    """Import `MODULE:FUNCTION` (or an alias such as `proxy`); errors say what went wrong.

    The working directory is importable, as with `python -m`, so a scorer beside the spec works.
    """
    name = SCORER_ALIASES.get(name, name)
    module_name, colon, function_name = name.partition(":")
    if not colon or not module_name or not function_name:
        raise EffError(
            f"--score {name!r} is not MODULE:FUNCTION",
            hint=f"e.g. --score {PROXY} (or --score proxy), or my_scorers:accuracy",
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any failure to import is the user's to fix
        raise EffError(
            f"cannot import scorer module `{module_name}`: {type(error).__name__}: {error}",
            hint="the module must be importable from the working directory or PYTHONPATH",
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise EffError(f"scorer module `{module_name}` has no `{function_name}`")
    if not callable(function):
        raise EffError(f"scorer `{name}` is not callable")
    return function  # type: ignore[no-any-return]


def _custom_score(network: ast.Network, name: str) -> Callable[[Key], float]:
    """Score a candidate with `MODULE:FUNCTION` on the module effdsl builds (seeded weights)."""
    function = load_scorer(name)  # fail here, clearly, before the study is opened

    def score(key: Key) -> float:
        import torch

        from effdsl.torch_build import build

        scaled = scaled_at_phi_one(network, *key)
        try:
            torch.manual_seed(SEED)
            return _as_score(function(build(scaled), scaled.input.size))
        except EffError as error:
            raise _scorer_failed(name, key, error.message, None) from None
        except Exception as error:  # a scorer's failure, reported as an EffError
            frames = traceback.extract_tb(error.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
            raise _scorer_failed(name, key, f"{type(error).__name__}: {error}", where) from None

    return score


def _with_threads(score: Callable[[Key], float], threads: int) -> Callable[[Key], float]:
    if not 1 <= threads <= 1024:
        raise EffError(f"--threads must be in [1, 1024], got {threads}")

    def limited(key: Key) -> float:
        import torch

        torch.set_num_threads(threads)
        return score(key)

    return limited


def _data_score(network: ast.Network, images: ImageData, recipe: Recipe,
                reporter: Reporter, group: distributed.Group) -> Callable[[Key], float]:
    """Score a candidate by training it on `images` (`effdsl.train`) with the `group`."""
    from effdsl.train import train_score

    def score(key: Key) -> float:
        return train_score(scaled_at_phi_one(network, *key), images, recipe,
                           report=reporter.epoch, group=group)

    return score


def _scorer_failed(scorer: str, key: Key, message: str, where: str | None) -> EffError:
    alpha, beta, gamma = key
    hints = [f"raised at {where}"] if where else []
    hints.append("scored candidates are kept in the study; rerun to resume")
    return EffError(
        f"scorer {scorer} failed on α={alpha:g}, β={beta:g}, γ={gamma:g}: {message}",
        hint="; ".join(hints),
    )


def _as_score(value: object) -> float:
    """A scorer's return value as a finite float (a 0-d tensor or numpy scalar is fine)."""
    if isinstance(value, bool):
        raise EffError(f"the scorer returned {value!r}, not a number")
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EffError(f"the scorer returned {value!r}, not a number") from None
    if not math.isfinite(score):
        raise EffError(f"the scorer returned {score}, not a finite number")
    return score


def spec_fingerprint(network: ast.Network) -> str:
    """What a score depends on besides (α, β, γ): the network without coefficients or presets.

    Comments and layout are not part of it, so reformatting the spec, or writing the chosen
    coefficients back into it, keeps its study valid.
    """
    exclude: Any = {"presets": True, "scaling": {"alpha": True, "beta": True, "gamma": True}}
    data = network.model_dump_json(exclude=exclude)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


# ---- writing the chosen coefficients back ----------------------------------------------------

SEARCH_COMMENT = "# α, β, γ chosen by `effdsl search`"


def with_coefficients(network: ast.Network, alpha: float, beta: float, gamma: float) -> ast.Network:
    """`network` with its scaling coefficients replaced; everything else, presets too, kept."""
    update: dict[str, Any] = {"alpha": alpha, "beta": beta, "gamma": gamma}
    current = network.scaling.trailing_comment
    if current is None or current.startswith(SEARCH_COMMENT):
        update["trailing_comment"] = SEARCH_COMMENT
    return network.model_copy(update={"scaling": network.scaling.model_copy(update=update)})


def write_spec(path: str | Path, network: ast.Network, candidate: Candidate) -> None:
    """Write `network` with `candidate`'s coefficients as a canonical `.eff` file, atomically."""
    chosen = with_coefficients(network, candidate.alpha, candidate.beta, candidate.gamma)
    atomic_write(path, format_network(chosen))


# ---- output ----------------------------------------------------------------------------------


def _shown(result: SearchResult, top: int) -> tuple[Candidate, ...]:
    return result.ranked if top <= 0 else result.ranked[:top]


def to_text(result: SearchResult, top: int = 10) -> str:
    """The human report: what was searched, the baseline, and the best `top` candidates."""
    base = result.base
    ranked_by = f"score ({result.scorer})" if result.scorer else f"|MACs ratio − {result.target:g}|"
    lines = [
        f"{result.network}: compound-scaling search at φ = 1, "
        f"|α·β²·γ² − {result.target:g}| ≤ {result.tolerance:g}",
        f"grid {result.grid.text}: {result.grid.size} points, {len(result.ranked)} candidates, "
        f"ranked by {ranked_by}",
        f"baseline (φ = 0): {human(base.macs)} MACs, {human(base.params)} params, "
        f"{base.resolution} px",
    ]
    if result.study is not None:
        lines.append(result.study.line())
    lines.append("")
    header = ["#", "α", "β", "γ", "α·β²·γ²", "MACs ratio", "MACs", "params", "px"]
    if result.scorer:
        header.append("score")
    rows = [header]
    for index, c in enumerate(_shown(result, top), 1):
        row = [
            str(index), f"{c.alpha:g}", f"{c.beta:g}", f"{c.gamma:g}", f"{c.nominal:.4f}",
            f"{c.macs_ratio:.4f}", human(c.macs), human(c.params), str(c.resolution),
        ]
        if result.scorer:
            row.append(f"{c.score:.6g}" if c.score is not None else c.state or "")
        rows.append(row)
    lines += table(rows)
    lines.append("")
    lines.append(_spec_line(result))
    return "\n".join(lines) + "\n"


def _spec_line(result: SearchResult) -> str:
    alpha, beta, gamma = result.spec
    coefficients = f"α={alpha:g}, β={beta:g}, γ={gamma:g}"
    position = result.spec_rank()
    if position is None:
        return f"the spec's own {coefficients} is not among the candidates"
    c = result.ranked[position - 1]
    return (
        f"the spec's own {coefficients}: rank {position} of {len(result.ranked)}, "
        f"α·β²·γ² {c.nominal:.4f}, MACs ratio {c.macs_ratio:.4f}"
    )


def _candidate_json(c: Candidate, rank_: int) -> dict[str, Any]:
    return {
        "rank": rank_,
        "alpha": c.alpha,
        "beta": c.beta,
        "gamma": c.gamma,
        "alpha_beta2_gamma2": c.nominal,
        "macs_ratio": c.macs_ratio,
        "params_ratio": c.params_ratio,
        "macs": c.macs,
        "params": c.params,
        "resolution": c.resolution,
        "score": c.score,
        "state": c.state,
    }


def to_json(result: SearchResult, top: int = 10) -> dict[str, Any]:
    """The report as JSON-ready data (`effdsl search --json`)."""
    alpha, beta, gamma = result.spec
    return {
        "network": result.network,
        "phi": 1,
        "target": result.target,
        "tolerance": result.tolerance,
        "grid": result.grid.text,
        "grid_points": result.grid.size,
        "count": len(result.ranked),
        "ranked_by": "score" if result.scorer else "macs_ratio",
        "scorer": result.scorer,
        "base": {
            "macs": result.base.macs,
            "params": result.base.params,
            "resolution": result.base.resolution,
        },
        "spec": {"alpha": alpha, "beta": beta, "gamma": gamma, "rank": result.spec_rank()},
        "study": None if result.study is None else {
            "name": result.study.name, "storage": result.study.storage, **result.study.counts,
        },
        "candidates": [_candidate_json(c, i) for i, c in enumerate(_shown(result, top), 1)],
    }



# ---- the command -----------------------------------------------------------------------------


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def register_search(subparsers: Any) -> None:
    """Add `effdsl search` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "search",
        help="grid-search α, β, γ under α·β²·γ² ≈ 2 (step 1 of compound scaling)",
        description="Scale SPEC at φ = 1 with every (α, β, γ) of the grid that satisfies "
        "|α·β²·γ² − T| ≤ E, cost each exactly, and rank them: by how close the real MACs "
        "ratio is to T, or by a score (--score, --data) computed as trials of an Optuna study "
        "that several processes, on one machine or many, can share. See docs/search.md.",
    )
    parser.add_argument("spec", metavar="SPEC", nargs="?",
                        help="the spec to search (not needed with --status)")
    parser.add_argument(
        "--grid", default=DEFAULT_GRID, metavar="AXES",
        help="NAME=START:STOP:STEP or NAME=VALUE for alpha, beta, gamma, comma-separated; "
        f"axes left out keep the default (default {DEFAULT_GRID})",
    )
    parser.add_argument(
        "--target", type=_number, default=DEFAULT_TARGET, metavar="T",
        help=f"the wanted α·β²·γ² (default {DEFAULT_TARGET:g}: twice the FLOPs per unit of φ)",
    )
    parser.add_argument(
        "--tolerance", type=_number, default=DEFAULT_TOLERANCE, metavar="E",
        help=f"keep |α·β²·γ² − T| ≤ E (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("--top", type=_count, default=10, metavar="N",
                        help="show the best N (default 10; 0: all)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--write-spec", metavar="OUT",
        help="write SPEC with the best α, β, γ to OUT (.eff; may be SPEC itself)",
    )
    scoring = parser.add_argument_group("scoring (needs effdsl[search])")
    scoring.add_argument(
        "--score", metavar="MODULE:FUNCTION",
        help="rank by function(model, resolution) -> float, higher is better; `proxy` is the "
        f"built-in smoke-level proxy ({PROXY})",
    )
    scoring.add_argument(
        "--data", metavar="DIR",
        help="rank by validation top-1 after training each candidate on the image folder DIR "
        "(DIR/CLASS/* split with a fixed seed, or DIR/train/CLASS/* and DIR/val/CLASS/*); "
        "launched by `torchrun --nproc-per-node N -m effdsl search ...`, the N processes train "
        "each candidate together (DDP: NCCL on GPUs, gloo on the CPU; --batch is split "
        "between them; rank 0 alone uses the storage and prints)",
    )
    scoring.add_argument(
        "--storage", metavar="URL",
        help=f"the Optuna storage of the study: an SQLite file (default {DEFAULT_STORAGE}), "
        "sqlite:///FILE, postgresql://… or mysql+pymysql://…, or journal:FILE",
    )
    scoring.add_argument("--study", metavar="NAME",
                         help="the study's name (default: the network's name)")
    scoring.add_argument(
        "--heartbeat", type=_count, default=DEFAULT_HEARTBEAT, metavar="S",
        help=f"seconds between a worker's heartbeats (default {DEFAULT_HEARTBEAT}); a trial "
        f"silent for {GRACE_BEATS}×S is taken over by another worker",
    )
    scoring.add_argument(
        "--threads", type=_count, metavar="N",
        help="torch CPU threads of this process (default: torch's choice; on a shared or busy "
        "machine use 1, and one process per core)",
    )
    scoring.add_argument(
        "--status", action="store_true",
        help="print the table so far of the study in --storage (no SPEC needed) and exit",
    )
    training = parser.add_argument_group("training recipe (with --data)")
    training.add_argument("--epochs", type=_count, metavar="N",
                          help=f"epochs per candidate (default {Recipe.epochs})")
    training.add_argument("--batch", type=_count, metavar="N",
                          help=f"images per step, all processes together under torchrun "
                          f"(default {Recipe.batch})")
    training.add_argument("--lr", type=_number, metavar="LR",
                          help="peak learning rate (default 0.1·batch/256 for SGD, "
                          "0.016·batch/256 for RMSprop)")
    training.add_argument("--optimizer", choices=OPTIMIZERS,
                          help="sgd (Nesterov, default) or rmsprop (the paper's)")
    training.add_argument("--val-fraction", type=_number, metavar="F",
                          help="share of each class held out when DIR has no val/ "
                          f"(default {Recipe.val_fraction:g})")
    training.add_argument("--workers", type=_count, metavar="N",
                          help=f"data-loading processes (default {Recipe.workers})")
    parser.add_argument("--results", help=argparse.SUPPRESS)  # replaced by --storage
    parser.set_defaults(run=run_search)


def _recipe(args: argparse.Namespace) -> Recipe | None:
    given = {
        "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "optimizer": args.optimizer,
        "val_fraction": args.val_fraction, "workers": args.workers,
    }
    given = {name: value for name, value in given.items() if value is not None}
    if args.data is None:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise EffError(f"{flags}: training options need --data")
        return None
    return Recipe(**given)


def run_search(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """`effdsl search`: search, print the ranking, optionally write the chosen spec."""
    from effdsl.parser import load

    out = stdout or sys.stdout
    if args.results is not None:
        raise EffError(
            "--results is gone: scores now live in an Optuna study",
            hint="use --storage FILE (an SQLite file) instead; see CHANGELOG.md",
        )
    if args.status:
        if args.write_spec:
            raise EffError("--status only reads the study; --write-spec needs a SPEC to search")
        result = status(args.storage or DEFAULT_STORAGE, args.study)
    else:
        if args.spec is None:
            raise EffError("no SPEC given", hint="effdsl search SPEC, or --status to read a study")
        network = load(args.spec)
        reporter = Bars(sys.stderr)
        try:
            result = search(
                network,
                grid=parse_grid(args.grid),
                target=args.target,
                tolerance=args.tolerance,
                scorer=args.score,
                data=args.data,
                recipe=_recipe(args),
                storage=args.storage,
                study=args.study,
                heartbeat=args.heartbeat,
                threads=args.threads,
                reporter=reporter,
            )
        finally:
            reporter.close()
    if not distributed.is_leader():
        return 0  # under torchrun, rank 0 prints the result and writes the spec
    if args.json:
        print(json.dumps(to_json(result, args.top), indent=2), file=out)
    else:
        out.write(to_text(result, args.top))
    if args.write_spec:
        best = result.best
        if result.scorer and best.score is None:
            raise EffError("no candidate is scored yet: nothing to write",
                           hint="let the study finish, then rerun")
        write_spec(args.write_spec, network, best)
        print(
            f"wrote {args.write_spec} (α={best.alpha:g}, β={best.beta:g}, γ={best.gamma:g})",
            file=sys.stderr if args.json else out,
        )
    return 0
