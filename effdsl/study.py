"""A scored search as an Optuna study: storages, claiming candidates, heartbeats, the table.

    storage = open_storage("b0.search.db", heartbeat=20)     # SQLite file, PostgreSQL/MySQL URL,
    study = open_study(storage, "b0", plan)                   #   or journal:FILE
    work(study, plan, score, reporter)                        # score what nobody has scored yet
    rows = read_rows(study, plan)                             # every candidate, scored or not

A study holds one trial per candidate of the constrained grid: Optuna's `GridSampler` over a
single categorical parameter, `candidate` (its value `alpha=1.2,beta=1.1,gamma=1.15`), gives
trial k the k-th grid point, so processes that share a storage (on one machine or many) each
take the next untaken candidate. The score is the trial's value (maximised); the candidate's
coefficients, MACs, parameters and resolution are its user attributes, and the study's user
attribute `effdsl` records what was searched (spec fingerprint, scorer, grid, costs), so
`--status` and `effdsl plot --study` need only the storage.

Failures and crashes. A scorer error marks the trial FAIL and stops that process; a process
that dies stops sending its trial's heartbeat, and after the grace period any other worker
marks the trial FAIL (`optuna.storages.fail_stale_trials`). A candidate whose trials all
failed is claimed again by the next worker that looks, with a new trial created with its
parameters. Should two workers claim one candidate at the same moment, the trial with the
lower number keeps it and the other is pruned unscored, so each candidate is scored once.

Optuna is an optional dependency (`pip install 'effdsl[search]'`); only a scored search, its
status and its plot import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdsl.errors import EffError

if TYPE_CHECKING:
    from optuna import Study
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

PARAM = "candidate"
STUDY_ATTR = "effdsl"
FORMAT = 1  # of the study attribute; a later effdsl that changes it refuses older studies
DEFAULT_STORAGE = "effdsl-search.db"
DEFAULT_HEARTBEAT = 20  # seconds between heartbeats; a trial silent for 3 of them is given up
GRACE_BEATS = 3
SAMPLER_SEED = 0  # every worker shuffles the grid alike, so trial k means one candidate to all
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_TIMEOUT = 60  # seconds a worker waits for another's write lock on a shared SQLite file
CREATE_ATTEMPTS = 5
INSTALL_HINT = "install it with: pip install 'effdsl[search]'"

Key = tuple[float, float, float]


def require_optuna() -> Any:
    """The `optuna` module, quietened, or an EffError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise EffError("a scored search needs Optuna", hint=INSTALL_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and fail_stale_trials are marked experimental; the warning says nothing to users
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ---- what a study searches -------------------------------------------------------------------


def choice_name(key: Key) -> str:
    """The value of the `candidate` parameter for (α, β, γ): `alpha=1.2,beta=1.1,gamma=1.15`."""
    alpha, beta, gamma = (round(x, 9) for x in key)
    return f"alpha={alpha!r},beta={beta!r},gamma={gamma!r}"


@dataclass(frozen=True)
class StudyPlan:
    """What a study searches, stored as its `effdsl` attribute; two workers must agree on it.

    `candidates` holds each candidate's exact cost at φ = 1 (α, β, γ, MACs, params, resolution
    and their ratios) as JSON-ready dicts, in grid order; `recipe` describes the scorer's
    settings (for `--data`: the training recipe and the data set's shape).
    """

    network: str
    fingerprint: str
    scorer: str
    grid: str
    target: float
    tolerance: float
    spec: Key
    base: dict[str, int]
    candidates: tuple[dict[str, Any], ...]
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def choices(self) -> list[str]:
        return [choice_name((c["alpha"], c["beta"], c["gamma"])) for c in self.candidates]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = FORMAT
        data["spec"] = list(self.spec)
        data["candidates"] = list(self.candidates)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyPlan:
        return cls(
            network=data["network"],
            fingerprint=data["fingerprint"],
            scorer=data["scorer"],
            grid=data["grid"],
            target=float(data["target"]),
            tolerance=float(data["tolerance"]),
            spec=tuple(float(x) for x in data["spec"]),  # type: ignore[arg-type]
            base={k: int(v) for k, v in data["base"].items()},
            candidates=tuple(data["candidates"]),
            recipe=dict(data.get("recipe") or {}),
        )


# what must match between a study and a worker joining it, with how to say it differs
_SAME = (
    ("fingerprint", "another network"),
    ("scorer", "another scorer"),
    ("recipe", "another recipe or data set"),
    ("grid", "another grid"),
    ("target", "another --target"),
    ("tolerance", "another --tolerance"),
)


# ---- storages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageRef:
    """A parsed `--storage`: an SQLite file, a database URL, or an Optuna journal file."""

    kind: str  # "sqlite", "url" or "journal"
    text: str  # the path for sqlite and journal, the URL otherwise
    shown: str  # how messages name it: the file, or the URL without its password


def parse_storage(text: str) -> StorageRef:
    """`b0.db` or `sqlite:///b0.db` → SQLite; `journal:FILE` → journal; `postgresql://…` → URL."""
    if not text:
        raise EffError("--storage is empty", hint=f"e.g. --storage {DEFAULT_STORAGE}")
    if text.startswith("journal:"):
        path = text.removeprefix("journal:")
        if not path:
            raise EffError("--storage journal: needs a file name", hint="e.g. journal:b0.log")
        return StorageRef("journal", path, path)
    if text.startswith("sqlite:///"):
        path = text.removeprefix("sqlite:///")
        return StorageRef("sqlite", path, path)
    if "://" in text:
        return StorageRef("url", text, _hide_password(text))
    return StorageRef("sqlite", text, text)


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:  # an unparsable URL: say nothing of what it holds
        return url.split("://", 1)[0] + "://…"


def check_not_foreign(ref: StorageRef) -> None:
    """Refuse, untouched, an existing file that is not an effdsl/Optuna storage of its kind.

    An empty file is accepted (there is nothing in it to lose). A results log of effdsl before
    the Optuna storage (JSON lines of `alpha`, `beta`, `gamma`, `score`) is named as such.
    """
    if ref.kind == "url" or ref.text == ":memory:":
        return
    path = Path(ref.text)
    if not path.exists():
        return
    if not path.is_file():
        raise EffError(f"{ref.shown}: not a regular file", hint="give a storage file or URL")
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as error:
        raise EffError(f"{ref.shown}: cannot read: {error.strerror}") from None
    if not head:
        return
    if ref.kind == "sqlite":
        if not head.startswith(SQLITE_MAGIC):
            raise _foreign(ref, head, "an SQLite database")
        tables = _sqlite_tables(path)
        if tables and "studies" not in tables:
            raise EffError(
                f"{ref.shown}: an SQLite database, but not an Optuna study storage "
                f"(it holds {', '.join(sorted(tables)[:3])}…); left untouched",
                hint="give a new file name to --storage",
            )
        return
    first = head.split(b"\n", 1)[0]
    try:
        row = json.loads(first)
    except ValueError:
        row = None
    if not (isinstance(row, dict) and "op_code" in row):
        raise _foreign(ref, head, "an Optuna journal")


def _foreign(ref: StorageRef, head: bytes, kind: str) -> EffError:
    first = head.split(b"\n", 1)[0]
    with contextlib.suppress(ValueError):
        row = json.loads(first)
        if isinstance(row, dict) and {"alpha", "beta", "gamma", "score"} <= row.keys():
            return EffError(
                f"{ref.shown}: a results log of an older effdsl search (JSON lines), not "
                f"{kind}; left untouched",
                hint="results now live in an Optuna storage; see CHANGELOG.md: rerun the "
                "search with a new --storage file",
            )
    return EffError(
        f"{ref.shown}: not {kind}; left untouched", hint="give a new file name to --storage"
    )


def _sqlite_tables(path: Path) -> set[str]:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {str(row[0]) for row in rows}
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise EffError(f"{path}: cannot read the SQLite database: {error}") from None


def open_storage(text: str, *, heartbeat: int | None = DEFAULT_HEARTBEAT,
                 create: bool = True) -> BaseStorage:
    """The Optuna storage that `text` names, with heartbeats every `heartbeat` seconds.

    `create=False` (for `--status` and plots) refuses a file that does not exist rather than
    creating an empty storage. A journal file has no heartbeats (Optuna supports them only on
    databases): a crashed worker's trial there stays running until the study is resumed.
    """
    require_optuna()
    ref = parse_storage(text)
    check_not_foreign(ref)
    if ref.kind != "url" and not create and not Path(ref.text).exists():
        raise EffError(f"{ref.shown}: no such storage", hint="check --storage")
    if heartbeat is not None and heartbeat < 1:
        raise EffError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    try:
        if ref.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(ref.text))
        url = ref.text if ref.kind == "url" else f"sqlite:///{ref.text}"
        kwargs: dict[str, Any] = {}
        if ref.kind == "sqlite":
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
        if heartbeat is not None:
            kwargs["heartbeat_interval"] = heartbeat
            kwargs["grace_period"] = GRACE_BEATS * heartbeat
        return _rdb_storage(url, kwargs)
    except ModuleNotFoundError as error:
        raise EffError(
            f"{ref.shown}: the database driver `{error.name}` is not installed",
            hint="for PostgreSQL: pip install psycopg2-binary; for MySQL: pip install PyMySQL "
            "(and a URL such as mysql+pymysql://…)",
        ) from None
    except Exception as error:  # the driver's or SQLAlchemy's: unreachable server, bad URL…
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EffError(f"{ref.shown}: cannot open the storage: {first}") from None


def _rdb_storage(url: str, kwargs: dict[str, Any]) -> BaseStorage:
    """An RDBStorage; workers that start together on a new database race to create its tables,
    and the losers see a constraint or lock error, or (PostgreSQL) `relation "alembic_version"
    already exists`: they try again, and find the tables made."""
    optuna = require_optuna()
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(CREATE_ATTEMPTS):
        try:
            storage: BaseStorage = optuna.storages.RDBStorage(url, **kwargs)
            return storage
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def study_names(storage: BaseStorage) -> list[str]:
    return sorted(s.study_name for s in storage.get_all_studies())


def resolve_study_name(storage: BaseStorage, name: str | None, shown: str) -> str:
    """`name`, or the only study of `storage`; an error lists the choices otherwise."""
    names = study_names(storage)
    if name is not None:
        if name not in names:
            listed = ", ".join(names) or "none"
            raise EffError(f"{shown}: no study {name!r}", hint=f"its studies: {listed}")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise EffError(f"{shown}: holds no study")
    raise EffError(f"{shown}: holds several studies; name one with --study",
                   hint=f"its studies: {', '.join(names)}")


def open_study(storage: BaseStorage, name: str, plan: StudyPlan) -> Study:
    """Create the study, or join it if it exists and searches the same thing as `plan`."""
    study: Study = require_optuna().create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=grid_sampler(plan),
        load_if_exists=True,
    )
    recorded = study.user_attrs.get(STUDY_ATTR)
    if recorded is None:
        if study.trials:
            raise EffError(f"study {name!r} exists and is not an effdsl search",
                           hint="pass another --study NAME")
        study.set_user_attr(STUDY_ATTR, plan.to_json())
        return study
    check_same_search(name, recorded, plan)
    return study


def grid_sampler(plan: StudyPlan) -> Any:
    optuna = require_optuna()
    return optuna.samplers.GridSampler({PARAM: plan.choices}, seed=SAMPLER_SEED)


def check_same_search(name: str, recorded: dict[str, Any], plan: StudyPlan) -> None:
    if recorded.get("format") != FORMAT:
        raise EffError(f"study {name!r} was written by another version of effdsl search",
                       hint="pass another --study NAME")
    mine = plan.to_json()
    for attribute, what in _SAME:
        if recorded.get(attribute) != mine[attribute]:
            raise EffError(
                f"study {name!r} holds a search of {what} ({attribute}: "
                f"{_short(recorded.get(attribute))}, here {_short(mine[attribute])})",
                hint="pass another --study NAME, or the same settings to resume it",
            )


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"


def load_plan(study: Study) -> StudyPlan:
    recorded = study.user_attrs.get(STUDY_ATTR)
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
        raise EffError(f"study {study.study_name!r} is not an effdsl search")
    try:
        return StudyPlan.from_json(recorded)
    except (KeyError, TypeError, ValueError):
        raise EffError(f"study {study.study_name!r}: its effdsl record is damaged") from None


def load_study(storage: BaseStorage, name: str) -> tuple[Study, StudyPlan]:
    """An existing study, for reading (`--status`, plots)."""
    study: Study = require_optuna().load_study(study_name=name, storage=storage)
    return study, load_plan(study)


# ---- the state of every candidate ------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One candidate of a study: its cost (from the plan) and where its scoring stands."""

    candidate: dict[str, Any]
    state: str  # "scored", "running", "failed" or "pending"
    score: float | None = None
    seconds: float | None = None
    worker: str | None = None
    error: str | None = None
    trials: int = 0

    @property
    def key(self) -> Key:
        c = self.candidate
        return (c["alpha"], c["beta"], c["gamma"])


def _candidate_of(trial: FrozenTrial) -> str | None:
    value = trial.params.get(PARAM)
    return value if isinstance(value, str) else None


def rows(trials: Sequence[FrozenTrial], plan: StudyPlan) -> list[Row]:
    """Every candidate of `plan` with the state of its trials, in grid order."""
    from optuna.trial import TrialState

    by_choice: dict[str, list[FrozenTrial]] = {choice: [] for choice in plan.choices}
    for trial in trials:
        choice = _candidate_of(trial)
        if choice in by_choice:
            by_choice[choice].append(trial)
    result = []
    for candidate, choice in zip(plan.candidates, plan.choices, strict=True):
        mine = sorted(by_choice[choice], key=_order)
        complete = [t for t in mine if t.state == TrialState.COMPLETE and t.value is not None]
        running = [t for t in mine if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        failed = [t for t in mine if t.state == TrialState.FAIL]
        counted = len(mine)
        if complete:
            t = complete[0]
            result.append(Row(candidate, "scored", t.value, t.user_attrs.get("seconds"),
                              t.user_attrs.get("worker"), trials=counted))
        elif running:
            t = running[0]
            result.append(Row(candidate, "running", worker=t.user_attrs.get("worker"),
                              trials=counted))
        elif failed:
            t = failed[-1]
            result.append(Row(candidate, "failed", worker=t.user_attrs.get("worker"),
                              error=t.user_attrs.get("error") or "worker stopped (heartbeat)",
                              trials=counted))
        else:
            result.append(Row(candidate, "pending", trials=counted))
    return result


def _order(trial: FrozenTrial) -> tuple[int, int]:
    return (trial.number, trial._trial_id)


def read_rows(study: Study, plan: StudyPlan) -> list[Row]:
    return rows(study.get_trials(deepcopy=False), plan)


# ---- working on a study ----------------------------------------------------------------------


class Reporter:
    """What a worker tells the user; `effdsl.progress.Bars` draws it."""

    def study(self, total: int, scored: int, best: tuple[float, Key] | None) -> None:
        """How far the study is, counting every worker's results."""

    def started(self, key: Key, trial: int) -> None:
        """This process starts scoring `key`."""

    def epoch(self, done: int, epochs: int, loss: float, right: int, seen: int) -> None:
        """An epoch of the candidate this process trains (the `--data` scorer reports them):
        its mean training loss, and `right` of the `seen` validation images classified right."""

    def finished(self, key: Key, score: float, seconds: float) -> None:
        """This process scored `key`."""

    def note(self, message: str) -> None:
        """A line worth saying (waiting for others, a trial given up)."""


# a scorer as the worker calls it: (the candidate's key) → score; raises EffError on failure
Score = Callable[[Key], float]


@dataclass
class WorkSummary:
    """What this process did."""

    scored: list[Key] = field(default_factory=list)
    given_up: list[Key] = field(default_factory=list)  # trials failed as stale while we ran them


def work(
    study: Study,
    plan: StudyPlan,
    score: Score,
    reporter: Reporter,
    *,
    poll: float = 2.0,
    rng: random.Random | None = None,
    idle: Callable[[float], None] = time.sleep,
) -> WorkSummary:
    """Score candidates of `study` until every one is scored.

    Each round: fail stale trials (their workers stopped beating), then claim a candidate nobody
    holds — the next grid point, else one whose trials all failed — and score it. When the rest
    are being scored elsewhere, wait for them (a worker that dies is then noticed and its
    candidate taken over); without heartbeats (a journal file) there is nothing to wait for.
    `idle(poll)` does the waiting (under torchrun, rank 0 also tells the other ranks it waits).
    """
    optuna = require_optuna()
    from optuna.storages import fail_stale_trials

    storage = study._storage
    heartbeat = _heartbeat_of(storage)
    rng = rng or random.Random()
    summary = WorkSummary()
    waiting_said = False
    while True:
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        board = rows(trials, plan)
        reporter.study(len(board), sum(r.state == "scored" for r in board), _best(board))
        open_ = [r for r in board if r.state in ("pending", "failed")]
        if len(trials) < len(plan.candidates):
            claimed = _claim_next(study, plan)
        elif open_:
            claimed = _claim_again(study, plan, rng.choice(open_))
        else:
            running = [r for r in board if r.state == "running"]
            if not running or heartbeat is None:
                if running:
                    reporter.note(f"{len(running)} candidates are still being scored elsewhere; "
                                  "this storage has no heartbeats to wait on")
                return summary
            if not waiting_said:
                reporter.note(f"waiting for {len(running)} candidates being scored elsewhere")
                waiting_said = True
            idle(poll)
            continue
        if claimed is None:
            continue
        trial_id, number, key = claimed
        waiting_said = False
        beating = _Heartbeat(storage, trial_id, heartbeat) if heartbeat else None
        with beating or contextlib.nullcontext():
            if _yield_to_earlier(study, trial_id, number, choice_name(key)):
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.PRUNED)
                continue
            if _run_trial(study, plan, trial_id, number, key, score, reporter):
                summary.scored.append(key)
            else:
                summary.given_up.append(key)


def _heartbeat_of(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval; None where it has none (a journal file)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    return int(interval) if interval else None


def _best(board: Sequence[Row]) -> tuple[float, Key] | None:
    scored = [(r.score, r.key) for r in board if r.score is not None]
    return max(scored, key=lambda pair: pair[0]) if scored else None


def _claim_next(study: Study, plan: StudyPlan) -> tuple[int, int, Key] | None:
    """A new trial; the grid sampler gives trial k the k-th candidate."""
    with warnings.catch_warnings():
        # "Heartbeat of storage is supposed to be used with Study.optimize": here the heartbeat
        # is ours, around the scorer, as Study.optimize would run it
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    choice = trial.suggest_categorical(PARAM, plan.choices)
    return trial._trial_id, trial.number, _key_of(plan, str(choice))


def _claim_again(study: Study, plan: StudyPlan, row: Row) -> tuple[int, int, Key] | None:
    """A new running trial for a candidate whose trials all failed, its parameter set at birth."""
    optuna = require_optuna()
    choice = choice_name(row.key)
    template = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING,
        params={PARAM: choice},
        distributions={PARAM: optuna.distributions.CategoricalDistribution(plan.choices)},
        system_attrs={"effdsl:retry": True},
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return trial_id, study._storage.get_trial_number_from_id(trial_id), row.key


def _key_of(plan: StudyPlan, choice: str) -> Key:
    index = plan.choices.index(choice)
    c = plan.candidates[index]
    return (c["alpha"], c["beta"], c["gamma"])


def _yield_to_earlier(study: Study, trial_id: int, number: int, choice: str) -> bool:
    """Whether an earlier live trial holds `choice` (then ours is the duplicate and yields).

    A trial whose parameter is not yet written (asked a moment ago) might hold it: look again
    shortly, for at most a few seconds.
    """
    from optuna.trial import TrialState

    mine = (number, trial_id)
    for _ in range(50):
        earlier = [
            t for t in study.get_trials(deepcopy=False)
            if _order(t) < mine and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
        ]
        if any(_candidate_of(t) == choice for t in earlier):
            return True
        if all(_candidate_of(t) is not None for t in earlier):
            return False
        time.sleep(0.1)
    return False


class _Heartbeat:
    """Records the trial's heartbeat now and every `interval` seconds, in a daemon thread."""

    def __init__(self, storage: Any, trial_id: int, interval: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="effdsl-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        self.storage.record_heartbeat(self.trial_id)  # before any work: a trial without a beat
        self.thread.start()  # is never found stale
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def _run_trial(
    study: Study,
    plan: StudyPlan,
    trial_id: int,
    number: int,
    key: Key,
    score: Score,
    reporter: Reporter,
) -> bool:
    """Score one claimed trial and tell the study; False when it was given up meanwhile."""
    optuna = require_optuna()
    storage = study._storage
    index = plan.choices.index(choice_name(key))
    for name, value in plan.candidates[index].items():
        storage.set_trial_user_attr(trial_id, name, value)
    storage.set_trial_user_attr(trial_id, "worker", f"{socket.gethostname()}:{os.getpid()}")
    reporter.started(key, number)
    start = time.perf_counter()
    try:
        value = score(key)
    except BaseException as error:
        reason = error.message if isinstance(error, EffError) else "interrupted"
        with contextlib.suppress(Exception):
            storage.set_trial_user_attr(trial_id, "error", reason)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        raise
    seconds = time.perf_counter() - start
    try:
        storage.set_trial_user_attr(trial_id, "seconds", round(seconds, 3))
        study.tell(number, value)
    except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        # GridSampler calls study.stop() after the last grid point, which raises outside
        # Study.optimize once the trial is recorded; any other failure here means the trial
        # was finished by someone else: too slow to beat, it was given up and taken over
        if storage.get_trial(trial_id).state != optuna.trial.TrialState.COMPLETE:
            reporter.note(f"trial {number} was given up as stale while it ran; its score "
                          f"{value:.6g} is not recorded")
            return False
    reporter.finished(key, value, seconds)
    return True
