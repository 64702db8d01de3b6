"""`effdsl search`: step 1 of compound scaling, a grid search for α, β, γ with α·β²·γ² ≈ 2.

    grid = parse_grid("alpha=1.0:1.4:0.05,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05")
    result = search(net, grid=grid)                                   # ranked by exact MACs
    result = search(net, grid=grid, scorer="effdsl.proxy:train_score",
                    workers=2, results=Path("b0-search.jsonl"))       # ranked by a scorer
    write_spec("b0-searched.eff", net, result.best)                   # α, β, γ into the spec

The paper (Tan & Le, 2019, §3.3) scales in two steps: fix φ = 1 and grid-search α (depth),
β (width), γ (resolution) under α·β²·γ² ≈ 2 on the baseline; then fix them and grow φ
(`effdsl compile --phi`). Here every candidate is scaled at φ = 1 through the real rounding
rules (channels to a multiple of 8, repeats rounded up, pixels to the nearest) and costed
exactly, so the result shows the nominal α·β²·γ² next to the MACs ratio the rounding really
gives, which is rarely 2: rounding every stage's repeats up makes small α expensive.

Without a scorer, candidates are ranked by how close that real MACs ratio is to the target. With
one (`MODULE:FUNCTION`, called as `function(model, resolution) -> float`, higher is better), each
candidate is built with `effdsl.torch_build.build` and scored once, in spawned worker processes;
every score is appended to a JSON-lines results file as it arrives, keyed by (α, β, γ), so an
interrupted search resumes without recomputing what finished. Only scoring imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, TextIO

from effdsl import ast
from effdsl.cost import cost
from effdsl.errors import EffError, ScalingError
from effdsl.files import atomic_write
from effdsl.fmt import format as format_network
from effdsl.plan import lower
from effdsl.scaling import apply, multipliers
from effdsl.summary import human, table

AXES = ("alpha", "beta", "gamma")
SYMBOLS = {"alpha": "α", "beta": "β", "gamma": "γ"}
DEFAULT_GRID = "alpha=1.0:1.4:0.05,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05"
DEFAULT_TARGET = 2.0
DEFAULT_TOLERANCE = 0.1
PROXY = "effdsl.proxy:train_score"
SCORER_ALIASES = {"proxy": PROXY}
MAX_AXIS_POINTS = 1_000
MAX_GRID_POINTS = 1_000_000
# Grid values are decimals (1.05); their floating-point products land a hair either side of a
# decimal bound, so the tolerance test allows this much slack to keep 1.9 within 2 ± 0.1.
SLACK = 1e-9
SEED = 0  # every candidate's weights start from this seed, so scores are reproducible

Key = tuple[float, float, float]
Progress = Callable[[str], None]


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
    """Best first: highest score, then MACs ratio closest to `target`, then nominal closest,
    then smallest (α, β, γ), so that the order never depends on how the list came in."""

    def order(c: Candidate) -> tuple[float, ...]:
        score = -c.score if c.score is not None else 0.0
        return (score, abs(c.macs_ratio - target), abs(c.nominal - target), *c.key)

    return sorted(candidates, key=order)


# ---- the search ------------------------------------------------------------------------------


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
    workers: int | None = None,
    results: Path | None = None,
    progress: Progress | None = None,
) -> SearchResult:
    """Enumerate the candidates of `grid`, cost each at φ = 1, score them if asked, rank them."""
    if results is not None and scorer is None:
        raise EffError("--results records a scorer's results; it needs --score")
    if scorer is not None:
        scorer = SCORER_ALIASES.get(scorer, scorer)
    if workers is not None and workers < 1:
        raise EffError(f"--workers must be at least 1, got {workers}")
    grid = grid or parse_grid()
    points = enumerate_candidates(grid, target, tolerance)
    if not points:
        raise ScalingError(
            f"no (α, β, γ) on the grid has |α·β²·γ² − {target:g}| ≤ {tolerance:g}",
            hint="widen the grid or raise --tolerance",
        )
    base = baseline(network)
    candidates = [measure(network, point, base) for point in points]
    if scorer is not None:
        scores = score_candidates(
            network, candidates, scorer, workers=workers, results=results, progress=progress
        )
        candidates = [replace(c, score=scores[c.key]) for c in candidates]
    spec = network.scaling
    return SearchResult(
        network=network.name,
        spec=(spec.alpha, spec.beta, spec.gamma),
        grid=grid,
        target=target,
        tolerance=tolerance,
        scorer=scorer,
        base=base,
        ranked=tuple(rank(candidates, target)),
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


@dataclass(frozen=True)
class _Task:
    """What a worker needs to score one candidate (pickled to the worker)."""

    scorer: str
    network: ast.Network  # already scaled
    key: Key


@dataclass(frozen=True)
class _Outcome:
    """A worker's answer: a score, or why there is none."""

    key: Key
    score: float | None
    error: str | None
    where: str | None
    seconds: float


@cache
def _worker_scorer(name: str) -> Scorer:
    return load_scorer(name)


def _init_worker(threads: int) -> None:
    """Share the cores among the workers: each torch process would otherwise take them all."""
    import torch

    torch.set_num_threads(threads)


def score_one(task: _Task) -> _Outcome:
    """Build the candidate and call the scorer on it (runs in a worker process)."""
    import torch

    from effdsl.torch_build import build

    start = time.perf_counter()
    try:
        function = _worker_scorer(task.scorer)
        torch.manual_seed(SEED)
        model = build(task.network)
        value = function(model, task.network.input.size)
        score = _as_score(value)
    except EffError as error:
        return _Outcome(task.key, None, error.message, None, time.perf_counter() - start)
    except Exception as error:  # a scorer's failure becomes an EffError upstream
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
        message = f"{type(error).__name__}: {error}"
        return _Outcome(task.key, None, message, where, time.perf_counter() - start)
    return _Outcome(task.key, score, None, None, time.perf_counter() - start)


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


def score_candidates(
    network: ast.Network,
    candidates: list[Candidate],
    scorer: str,
    *,
    workers: int | None = None,
    results: Path | None = None,
    progress: Progress | None = None,
) -> dict[Key, float]:
    """The score of every candidate: from `results` when recorded there, else computed now."""
    scorer = SCORER_ALIASES.get(scorer, scorer)
    load_scorer(scorer)  # fail here, clearly, before any worker starts
    fingerprint = spec_fingerprint(network)
    scores = read_results(results, fingerprint, scorer) if results is not None else {}
    todo = [c for c in candidates if c.key not in scores]
    say = progress or (lambda message: None)
    if results is not None and scores:
        kept = len(candidates) - len(todo)
        say(f"resuming: {kept} of {len(candidates)} candidates already scored in {results}")
    if not todo:
        return scores
    count = min(workers or os.cpu_count() or 1, len(todo))
    say(f"scoring {_plural(len(todo), 'candidate')} with {scorer} in "
        f"{_plural(count, 'worker process')}")
    tasks = [
        _Task(scorer, scaled_at_phi_one(network, c.alpha, c.beta, c.gamma), c.key) for c in todo
    ]
    log = ResultsLog(results, fingerprint, scorer) if results is not None else None
    start = time.perf_counter()
    # closing() stops the workers as soon as this loop ends early (a failure, Ctrl-C), not
    # whenever the traceback that keeps the generator alive is freed
    with contextlib.closing(_run_pool(tasks, count)) as outcomes:
        for finished, outcome in enumerate(outcomes, 1):
            if outcome.score is None:
                raise _scorer_failed(scorer, outcome, results)
            scores[outcome.key] = outcome.score
            if log is not None:
                log.append(outcome)
            say(_progress_line(finished, len(todo), outcome, time.perf_counter() - start))
    return scores


def _plural(count: int, noun: str) -> str:
    suffix = "" if count == 1 else "es" if noun.endswith("s") else "s"
    return f"{count} {noun}{suffix}"


def _run_pool(tasks: list[_Task], workers: int) -> Generator[_Outcome, None, None]:
    """Outcomes as they finish, from `workers` spawned processes; stops them on early exit."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),  # fork and torch's threads do not mix
        initializer=_init_worker,
        initargs=(threads,),
    )
    pending: set[Future[_Outcome]] = {executor.submit(score_one, task) for task in tasks}
    finished = False
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: f.result().key):
                yield future.result()
        finished = True
    except BrokenProcessPool:
        raise EffError(
            "a worker process died while scoring (out of memory?)",
            hint="try fewer --workers; finished candidates are kept with --results",
        ) from None
    finally:
        if not finished:
            _stop(executor)
        executor.shutdown(wait=True, cancel_futures=True)


def _stop(executor: ProcessPoolExecutor) -> None:
    """Kill the workers now, rather than wait for the candidates they are training."""
    terminate = getattr(executor, "terminate_workers", None)  # Python ≥ 3.14
    if terminate is not None:
        terminate()
        return
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()


def _scorer_failed(scorer: str, outcome: _Outcome, results: Path | None) -> EffError:
    alpha, beta, gamma = outcome.key
    hints = []
    if outcome.where:
        hints.append(f"raised at {outcome.where}")
    if results is not None:
        hints.append(f"finished candidates are kept in {results}; rerun to resume")
    return EffError(
        f"scorer {scorer} failed on α={alpha:g}, β={beta:g}, γ={gamma:g}: {outcome.error}",
        hint="; ".join(hints) or None,
    )


def _progress_line(finished: int, total: int, outcome: _Outcome, elapsed: float) -> str:
    alpha, beta, gamma = outcome.key
    width = len(str(total))
    left = elapsed / finished * (total - finished)
    return (
        f"[{finished:>{width}}/{total}] α={alpha:g} β={beta:g} γ={gamma:g} "
        f"score={outcome.score:.6g} ({outcome.seconds:.1f} s; about {left:.0f} s left)"
    )


# ---- the results file ------------------------------------------------------------------------


def spec_fingerprint(network: ast.Network) -> str:
    """What a score depends on besides (α, β, γ): the network without coefficients or presets.

    Comments and layout are not part of it, so reformatting the spec, or writing the chosen
    coefficients back into it, keeps its results file valid.
    """
    exclude: Any = {"presets": True, "scaling": {"alpha": True, "beta": True, "gamma": True}}
    data = network.model_dump_json(exclude=exclude)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def read_results(path: Path, fingerprint: str, scorer: str) -> dict[Key, float]:
    """The scores recorded in a results file; a missing file has none.

    A last line cut short by an interruption is ignored (it will be scored again); any other
    malformed line, or a line from another spec or scorer, is an error rather than a guess.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise EffError(f"{path}: cannot read the results file: {error}") from None
    lines = text.split("\n")
    scores: dict[Key, float] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = result_key(float(row["alpha"]), float(row["beta"]), float(row["gamma"]))
            score = _as_score(row["score"])
        except (ValueError, KeyError, TypeError, EffError):
            if number == len(lines):  # no newline after it: cut short while being written
                continue
            raise EffError(
                f"{path}:{number}: not a line of effdsl search results",
                hint="use another --results file, or delete this one",
            ) from None
        if row.get("spec") != fingerprint or row.get("scorer") != scorer:
            raise EffError(
                f"{path}:{number}: results of another spec or scorer "
                f"({row.get('scorer')}), not of this search ({scorer})",
                hint="use another --results file for this search",
            )
        scores[key] = score
    return scores


class ResultsLog:
    """Appends one JSON line per scored candidate, each flushed to disk at once."""

    def __init__(self, path: Path, fingerprint: str, scorer: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.scorer = scorer
        _drop_partial_line(path)

    def append(self, outcome: _Outcome) -> None:
        alpha, beta, gamma = outcome.key
        row = {
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "score": outcome.score,
            "scorer": self.scorer,
            "seconds": round(outcome.seconds, 3),
            "spec": self.fingerprint,
        }
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())  # a score may cost minutes; keep it through a crash
        except OSError as error:
            raise EffError(f"{self.path}: cannot write results: {error.strerror}") from None


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that an interruption left without its newline, so appends stay valid."""
    try:
        with path.open("r+b") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        return
    except OSError as error:
        raise EffError(f"{path}: cannot write results: {error.strerror}") from None


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
        "",
    ]
    header = ["#", "α", "β", "γ", "α·β²·γ²", "MACs ratio", "MACs", "params", "px"]
    if result.scorer:
        header.append("score")
    rows = [header]
    for index, c in enumerate(_shown(result, top), 1):
        row = [
            str(index), f"{c.alpha:g}", f"{c.beta:g}", f"{c.gamma:g}", f"{c.nominal:.4f}",
            f"{c.macs_ratio:.4f}", human(c.macs), human(c.params), str(c.resolution),
        ]
        if c.score is not None:
            row.append(f"{c.score:.6g}")
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
        "|α·β²·γ² − T| ≤ E, cost each exactly, and rank them: by how close the "
        "real MACs ratio is to T, or by a scorer (--score). See docs/search.md.",
    )
    parser.add_argument("spec", metavar="SPEC")
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
    parser.add_argument(
        "--score", metavar="MODULE:FUNCTION",
        help="rank by function(model, resolution) -> float, higher is better; `proxy` is the "
        f"built-in smoke-level proxy ({PROXY}); imports torch",
    )
    parser.add_argument(
        "--top", type=_count, default=10, metavar="N", help="show the best N (default 10; 0: all)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--workers", type=_count, metavar="N", help="scoring processes (default: one per core)"
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE",
        help="JSON-lines file of scores, appended as they come; rerun to resume (with --score)",
    )
    parser.add_argument(
        "--write-spec", metavar="OUT",
        help="write SPEC with the best α, β, γ to OUT (.eff; may be SPEC itself)",
    )
    parser.set_defaults(run=run_search)


def run_search(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """`effdsl search`: search, print the ranking, optionally write the chosen spec."""
    from effdsl.parser import load

    out = stdout or sys.stdout
    network = load(args.spec)
    result = search(
        network,
        grid=parse_grid(args.grid),
        target=args.target,
        tolerance=args.tolerance,
        scorer=args.score,
        workers=args.workers,
        results=args.results,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(to_json(result, args.top), indent=2), file=out)
    else:
        out.write(to_text(result, args.top))
    if args.write_spec:
        best = result.best
        write_spec(args.write_spec, network, best)
        print(
            f"wrote {args.write_spec} (α={best.alpha:g}, β={best.beta:g}, γ={best.gamma:g})",
            file=sys.stderr if args.json else out,
        )
    return 0
