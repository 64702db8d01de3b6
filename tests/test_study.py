"""Scored searches as Optuna studies: workers sharing a storage, crashes, resuming, `--status`,
refusing foreign files, the `--data` scorer on a synthetic image folder, and `plot --study`."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import effdsl
from effdsl import search as s
from effdsl.errors import EffError
from effdsl.study import open_storage, parse_storage
from effdsl.study_plot import pareto_front, study_svg
from effdsl.train import ImageData, Recipe, train_score

from .conftest import ROOT
from .test_search import TINY
from .textures import CLASSES, make_textures

pytest.importorskip("optuna")

# five candidates: |α·β²·γ² − 1.45| ≤ 0.02 on this grid holds (1, 1, 1.2), (1, 1.1, 1.1),
# (1, 1.2, 1), (1.2, 1, 1.1), (1.2, 1.1, 1); their (params, resolution) pairs are all distinct
GRID = ["--grid", "alpha=1:1.2:0.1,beta=1:1.2:0.1,gamma=1:1.2:0.1", "--target", "1.45",
        "--tolerance", "0.02"]
FIVE = 5
HANG_PARAMS = "13704"  # the parameters of (1, 1.2, 1), the candidate a worker hangs on
SCORER = "tests.search_scorers:slow_params"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.eff"
    path.write_text(TINY)
    return path


def worker(spec: Path, storage: Path | str, log: Path, *extra: str,
           env: dict[str, str] | None = None, scorer: str = SCORER) -> subprocess.Popen[str]:
    """An `effdsl search` process scoring with `slow_params`, sharing `storage`.

    Heartbeats every 2 s: a trial is taken over after 6 s of silence, short enough for the
    killed-worker test, long enough that a worker starved by a loaded machine is not."""
    return subprocess.Popen(
        [sys.executable, "-m", "effdsl", "search", str(spec), *GRID, "--score", scorer,
         "--storage", str(storage), "--study", "shared", "--heartbeat", "2", "--threads", "1",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EFFDSL_TEST_LOG": str(log),
             "EFFDSL_TEST_SLEEP": "0.5", **(env or {})},
        # a shell's background job ignores SIGINT, and so would the worker (Python then
        # installs no KeyboardInterrupt): give it Ctrl-C back, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def started(log: Path) -> list[tuple[str, str]]:
    """(pid, "params resolution") of every scoring that started, from the scorer's log."""
    if not log.exists():
        return []
    return [(line.split()[0], " ".join(line.split()[1:])) for line in log.read_text().splitlines()]


def wait_for(condition: object, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def status_json(storage: Path) -> dict[str, object]:
    args = ["search", "--status", "--storage", str(storage), "--json", "--top", "0"]
    done = subprocess.run([sys.executable, "-m", "effdsl", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# ---- several workers on one storage ----------------------------------------------------------


@pytest.mark.slow
def test_two_concurrent_workers_score_each_candidate_exactly_once(
    spec: Path, tmp_path: Path
) -> None:
    storage, log = tmp_path / "shared.db", tmp_path / "log.txt"
    first, second = worker(spec, storage, log), worker(spec, storage, log)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    for process, (out, err) in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, err
        assert "study shared in" in out and f"{FIVE} of {FIVE} scored" in out
    runs = Counter(candidate for _, candidate in started(log))
    assert len(runs) == FIVE and set(runs.values()) == {1}, runs  # each once, the union whole
    data = status_json(storage)
    assert data["study"] == {"name": "shared", "storage": str(storage), "scored": FIVE,
                             "running": 0, "failed": 0, "pending": 0}
    scores = [c["score"] for c in data["candidates"]]  # type: ignore[attr-defined,index]
    assert scores == sorted(scores, reverse=True)
    # both processes print the same final ranking
    assert outputs[0][0] == outputs[1][0]


@pytest.mark.slow
def test_a_killed_workers_candidate_is_finished_by_another(spec: Path, tmp_path: Path) -> None:
    storage, log = tmp_path / "shared.db", tmp_path / "log.txt"
    doomed = worker(spec, storage, log, env={"EFFDSL_TEST_HANG_AT": HANG_PARAMS})
    wait_for(lambda: any(c.startswith(HANG_PARAMS) for _, c in started(log)))
    survivor = worker(spec, storage, log)
    doomed.send_signal(signal.SIGKILL)  # mid-trial: no chance to say anything to the storage
    doomed.wait(timeout=600)
    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    assert f"{FIVE} of {FIVE} scored" in out
    runs = Counter(candidate for _, candidate in started(log))
    assert len(runs) == FIVE
    hung = next(c for c in runs if c.startswith(HANG_PARAMS))
    assert runs[hung] == 2  # started by the killed worker, finished by the survivor
    assert all(count == 1 for c, count in runs.items() if c != hung)
    by_pid = {pid for pid, c in started(log) if c == hung}
    assert by_pid == {str(doomed.pid), str(survivor.pid)}


@pytest.mark.slow
def test_an_interrupted_worker_resumes_where_it_stopped(spec: Path, tmp_path: Path) -> None:
    storage, log = tmp_path / "alone.db", tmp_path / "log.txt"
    first = worker(spec, storage, log, env={"EFFDSL_TEST_HANG_AT": HANG_PARAMS})
    wait_for(lambda: any(c.startswith(HANG_PARAMS) for _, c in started(log)))
    first.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = first.communicate(timeout=600)
    assert first.returncode == 130 and err.strip().endswith("interrupted"), err
    before = len(started(log))
    data = status_json(storage)
    study = data["study"]
    assert study["failed"] == 1 and study["scored"] == before - 1  # type: ignore[index]
    failed = [c for c in data["candidates"] if c["state"] == "failed"]  # type: ignore[attr-defined]
    assert [(c["alpha"], c["beta"], c["gamma"]) for c in failed] == [(1.0, 1.2, 1.0)]
    again = worker(spec, storage, log)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert f"{FIVE} of {FIVE} scored" in out
    # the rerun scored only what was left: the interrupted candidate and the untouched ones
    rerun = started(log)[before:]
    assert len(rerun) == FIVE - (before - 1)
    assert sum(c.startswith(HANG_PARAMS) for _, c in rerun) == 1


def test_status_reads_the_storage_alone(spec: Path, tmp_path: Path) -> None:
    storage = tmp_path / "s.db"
    network = effdsl.load(spec)
    s.search(network, grid=s.parse_grid("alpha=1:1.2:0.1,beta=1:1.2:0.1,gamma=1:1.2:0.1"),
             target=1.45, tolerance=0.02, scorer="tests.search_scorers:fewest_params",
             storage=str(storage), study="first")
    text = s.to_text(s.status(str(storage)))
    assert f"study first in {storage}: {FIVE} of {FIVE} scored" in text
    assert "ranked by score (tests.search_scorers:fewest_params)" in text
    with pytest.raises(EffError, match="no study 'other'") as e:
        s.status(str(storage), "other")
    assert "first" in (e.value.hint or "")
    with pytest.raises(EffError, match="no such storage"):
        s.status(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()


# ---- foreign files given as a storage are refused, untouched (issue 13, item 3) ----------------


@pytest.mark.parametrize("prefix", ["", "sqlite:///", "journal:"])
def test_a_file_that_is_not_a_storage_is_refused_untouched(
    spec: Path, tmp_path: Path, prefix: str
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"notes")  # printf 'notes' > notes.txt
    before = notes.stat()
    done = subprocess.run(
        [sys.executable, "-m", "effdsl", "search", str(spec), "--score", "proxy",
         "--storage", prefix + str(notes)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: {notes}: not ") and "left untouched" in done.stderr
    assert "Traceback" not in done.stderr
    assert notes.read_bytes() == b"notes" and notes.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tiny.eff"]


def test_an_old_results_log_and_a_foreign_database_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "b0.jsonl"
    old.write_text('{"alpha": 1.0, "beta": 1.1, "gamma": 1.3, "score": -1.2, "scorer": "x", '
                   '"spec": "3f9c"}\n')
    with pytest.raises(EffError, match="a results log of an older effdsl search") as e:
        open_storage(str(old))
    assert "CHANGELOG" in (e.value.hint or "")
    database = tmp_path / "other.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE accounts (name TEXT)")
    data = database.read_bytes()
    with pytest.raises(EffError, match="an SQLite database, but not an Optuna study storage"):
        open_storage(str(database))
    assert database.read_bytes() == data
    directory = tmp_path / "folder"
    directory.mkdir()
    with pytest.raises(EffError, match="not a regular file"):
        open_storage(str(directory))


def test_storage_urls_are_parsed_and_passwords_kept_out_of_messages() -> None:
    assert parse_storage("b0.db").kind == "sqlite"
    assert parse_storage("sqlite:///b0.db").text == "b0.db"
    assert parse_storage("journal:b0.log").kind == "journal"
    url = parse_storage("postgresql://me:secret@db.example/effdsl")
    assert url.kind == "url" and "secret" not in url.shown
    with pytest.raises(EffError, match="cannot open the storage") as e:
        open_storage("postgresql://me:secret@127.0.0.1:1/none")
    assert "secret" not in str(e.value)


def test_a_journal_file_holds_a_study_too(spec: Path, tmp_path: Path) -> None:
    journal = tmp_path / "b0.log"
    network = effdsl.load(spec)
    grid = s.parse_grid("alpha=1:1.2:0.1,beta=1:1.2:0.1,gamma=1:1.2:0.1")
    result = s.search(network, grid=grid, target=1.45, tolerance=0.02,
                      scorer="tests.search_scorers:fewest_params", storage=f"journal:{journal}")
    assert result.study is not None and result.study.counts["scored"] == FIVE
    assert s.status(f"journal:{journal}").best.key == result.best.key
    open_storage(f"journal:{journal}")  # ours: accepted again


# ---- the --data scorer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def textures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_textures(tmp_path_factory.mktemp("data") / "textures", per_class=30)


def test_an_image_folder_is_split_per_class_with_a_fixed_seed(
    textures: Path, tmp_path: Path
) -> None:
    data = ImageData.open(textures, Recipe())
    assert data.classes == CLASSES and data.split == "seeded"
    assert len(data.val) == 3 * 6 and len(data.train) == 3 * 24  # 20% of each class
    assert ImageData.open(textures, Recipe()) == data  # the same split every time
    assert not set(data.train) & set(data.val)
    given = make_textures(tmp_path / "given", per_class=4, val_per_class=2)
    split = ImageData.open(given, Recipe())
    assert split.split == "given" and (len(split.train), len(split.val)) == (12, 6)
    (given / "val").rename(given / "elsewhere")
    with pytest.raises(EffError, match="has train/ but no val/"):
        ImageData.open(given, Recipe())
    with pytest.raises(EffError, match="not a directory"):
        ImageData.open(tmp_path / "nothing", Recipe())


def test_training_scores_tell_a_good_candidate_from_a_clearly_bad_one(textures: Path) -> None:
    import torch

    torch.set_num_threads(1)
    network = effdsl.parse(TINY)
    recipe = Recipe(epochs=4, batch=16)
    data = ImageData.open(textures, recipe)
    epochs: list[tuple[int, int, int]] = []
    good = train_score(network, data, recipe, report=lambda e, n, loss, right, seen: epochs.append(
        (e, right, seen)))
    # the same net looking at 8-pixel thumbnails (the smallest input a spec allows): most
    # stripes blur into grey
    blind = network.model_copy(update={"input": network.input.model_copy(update={"size": 8})})
    bad = train_score(blind, data, recipe)
    assert [e for e, _, _ in epochs] == [1, 2, 3, 4]
    assert {seen for _, _, seen in epochs} == {len(data.val)}
    assert good == epochs[-1][1] / len(data.val)  # the score is the last epoch's top-1
    assert good >= 0.9, good
    assert bad <= 0.7 and good - bad >= 0.3, (good, bad)  # three classes: chance is 1/3
    assert train_score(network, data, recipe) == good  # fixed seeds: the same score again


@pytest.mark.slow
def test_images_load_in_worker_processes(textures: Path) -> None:
    import pickle

    from torchvision import transforms

    from effdsl.train import Files

    recipe = Recipe(epochs=1, batch=16, workers=1)
    data = ImageData.open(textures, recipe)
    # what `spawn` (macOS, Windows) sends each data-loading process
    files = pickle.loads(pickle.dumps(Files(data.val, transforms.ToTensor())))
    image, label = files[0]
    assert len(files) == len(data.val) and image.shape == (3, 32, 32) and label == data.val[0][1]
    seen: list[int] = []
    top1 = train_score(effdsl.parse(TINY), data, recipe,
                       report=lambda e, n, loss, right, count: seen.append(count))
    assert seen == [len(data.val)] and 0 <= top1 <= 1


@pytest.mark.slow
def test_a_data_study_from_the_cli(spec: Path, textures: Path, tmp_path: Path) -> None:
    storage = tmp_path / "data.db"
    done = subprocess.run(
        [sys.executable, "-m", "effdsl", "search", str(spec), *GRID, "--data", str(textures),
         "--epochs", "2", "--batch", "16", "--threads", "1", "--storage", str(storage),
         "--write-spec", str(tmp_path / "best.eff")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "ranked by score (data)" in done.stdout and f"{FIVE} of {FIVE} scored" in done.stdout
    assert "epoch 2/2: loss" in done.stderr  # plain progress lines: stderr is not a terminal
    best = effdsl.load(tmp_path / "best.eff").scaling
    top = s.status(str(storage)).best
    assert (best.alpha, best.beta, best.gamma) == top.key
    # the recipe is part of the study: another one is refused rather than mixed in
    again = subprocess.run(
        [sys.executable, "-m", "effdsl", "search", str(spec), *GRID, "--data", str(textures),
         "--epochs", "3", "--storage", str(storage)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert again.returncode == 1 and "another recipe or data set" in again.stderr


def test_training_options_need_data(spec: Path) -> None:
    from effdsl.cli import main

    assert main(["search", str(spec), "--epochs", "3"]) == 1


# ---- plot --study ----------------------------------------------------------------------------


def test_plot_of_a_study_marks_the_front_and_is_deterministic(spec: Path, tmp_path: Path) -> None:
    from effdsl.cli import main

    storage = tmp_path / "s.db"
    network = effdsl.load(spec)
    result = s.search(network, grid=s.parse_grid("alpha=1:1.2:0.1,beta=1:1.2:0.1,"
                                                 "gamma=1:1.2:0.1"),
                      target=1.5, tolerance=0.2, scorer="tests.search_scorers:fewest_params",
                      storage=str(storage))
    front = pareto_front(result.ranked)
    # fewest parameters is the score: the front runs from the cheapest candidate to the best
    assert front[0].macs == min(c.macs for c in result.ranked)
    pairs = itertools.pairwise(front)
    assert all(a.macs < b.macs and a.score < b.score for a, b in pairs)  # type: ignore[operator]
    out = tmp_path / "study.svg"
    assert main(["plot", "--study", "tiny", "--storage", str(storage), "-o", str(out)]) == 0
    svg = out.read_text()
    assert svg == study_svg(s.status(str(storage)))
    assert svg.count("<circle") == len(result.ranked) + 1 + 3  # dots, the spec's ring, legend
    assert 'r="8" fill="none"' in svg  # the spec's own α, β, γ (1.1, 1.1, 1.1) is a candidate
    assert main(["plot", "--study", "tiny", "--storage", str(storage), "-o",
                 str(out)]) == 0 and out.read_text() == svg
    assert main(["plot", "--study", "tiny", "--storage", str(storage), "-o",
                 str(storage.with_suffix(".svg")), str(spec)]) == 1


# ---- PostgreSQL: a throwaway server from Debian's `postgresql` (tools/system-deps.sh) ----------


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The URL of a PostgreSQL server started for these tests on a Unix socket, stopped after."""
    pytest.importorskip("psycopg2")
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (tools/system-deps.sh installs it)")
    # not under pytest's temporary root: that is private to this user, and the server (run as
    # `postgres` when we are root) must reach its directory; a short path also keeps the
    # socket's name within the 107 characters Unix sockets allow
    root = Path(tempfile.mkdtemp(prefix="effdsl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's `postgres`
        os.chmod(root, 0o777)
        as_user = ["su", "postgres", "-s", "/bin/sh", "-c"]

    def run(*command: str) -> None:
        line = " ".join(f"'{part}'" for part in command)
        argv = [*as_user, line] if as_user else ["sh", "-c", line]
        subprocess.run(argv, check=True, capture_output=True, timeout=600)

    data, port = root / "data", "54329"  # the port only names the socket, in our directory
    try:
        run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        run(str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
            f"-k {root} -c listen_addresses= -p {port}", "start")
        try:
            run(str(binaries / "createdb"), "-h", str(root), "-p", port, "-U", "postgres",
                "effdsl")
            yield f"postgresql+psycopg2://postgres@/effdsl?host={root}&port={port}"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(
    spec: Path, tmp_path: Path, postgres: str
) -> None:
    log = tmp_path / "log.txt"
    first, second = worker(spec, postgres, log), worker(spec, postgres, log)
    for process in (first, second):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert f"{FIVE} of {FIVE} scored" in out
    runs = Counter(candidate for _, candidate in started(log))
    assert len(runs) == FIVE and set(runs.values()) == {1}, runs
    assert s.status(postgres, "shared").study.counts["scored"] == FIVE  # type: ignore[union-attr]


def test_progress_draws_bars_in_a_terminal_and_writes_lines_elsewhere() -> None:
    import io

    from effdsl.progress import Bars

    def follow(bars: Bars) -> None:
        bars.study(3, 1, (0.5, (1.0, 1.0, 1.2)))
        bars.started((1.1, 1.0, 1.0), 4)
        bars.epoch(1, 2, 0.9, 3, 5)
        bars.epoch(2, 2, 0.5, 4, 5)
        bars.finished((1.1, 1.0, 1.0), 0.8, 2.0)
        bars.close()

    terminal = io.StringIO()
    follow(Bars(terminal, bars=True))
    drawn = terminal.getvalue()
    assert "\r" in drawn and "candidates" in drawn and "2/3" in drawn
    assert "best 0.8 at α=1.1 β=1 γ=1" in drawn and "epochs" in drawn and "top-1" in drawn
    log = io.StringIO()
    follow(Bars(log, bars=False))
    assert log.getvalue().splitlines()[:3] == [
        "[2/3] α=1.1 β=1 γ=1: scoring (trial 4)",
        "    epoch 1/2: loss 0.9000, val top-1 0.6000 (3/5)",
        "    epoch 2/2: loss 0.5000, val top-1 0.8000 (4/5)",
    ]
    assert log.getvalue().splitlines()[3].startswith(
        "[2/3] α=1.1 β=1 γ=1 score=0.8 (2.0 s; best 0.8 at α=1.1 β=1 γ=1; about ")


def test_bars_show_on_a_terminal_that_reports_no_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import pty

    from effdsl.progress import Bars

    # `script` and `docker run -t` give a pseudo-terminal of 0 × 0, as a new one is here: tqdm
    # reads the size of stderr, and with none it would draw no bar at all
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        bars = Bars(sys.stderr)
        assert bars.bars  # a terminal
        bars.study(2, 0, None)
        bars.started((1.0, 1.0, 1.0), 0)
        bars.epoch(1, 3, 0.9, 3, 5)
        bars.close()
    chunks = []
    with contextlib.suppress(OSError):  # EIO: everything written has been read
        while chunk := os.read(master, 65536):
            chunks.append(chunk)
    os.close(master)
    drawn = b"".join(chunks).decode()
    assert "candidates:   0%" in drawn and "epochs:  33%" in drawn and "top-1 0.600" in drawn


def test_a_trial_given_up_as_stale_while_it_ran_is_scored_again(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a worker starved for three heartbeats (a loaded machine) finds, when its scorer returns,
    # that another worker failed its trial as stale: it says so and goes on, and the candidate
    # is scored again rather than the worker stopping with an error
    import optuna

    storage = tmp_path / "stale.db"
    calls: list[tuple[float, float, float]] = []

    def starved(network: object, name: str) -> object:
        def score(key: tuple[float, float, float]) -> float:
            calls.append(key)
            if len(calls) == 1:  # what fail_stale_trials in another worker does
                other = optuna.storages.RDBStorage(f"sqlite:///{storage}")
                (running,) = [t for t in other.get_all_trials(other.get_all_studies()[0]._study_id)
                              if t.state == optuna.trial.TrialState.RUNNING]
                other.set_trial_state_values(running._trial_id, optuna.trial.TrialState.FAIL)
            return 1.0

        return score

    monkeypatch.setattr(s, "_custom_score", starved)
    notes: list[str] = []

    class Notes(s.Reporter):
        def note(self, message: str) -> None:
            notes.append(message)

    result = s.search(effdsl.load(spec), grid=s.parse_grid("alpha=1:1.2:0.1,beta=1:1.2:0.1,"
                                                             "gamma=1:1.2:0.1"),
                      target=1.45, tolerance=0.02, scorer="tests.search_scorers:fewest_params",
                      storage=str(storage), reporter=Notes())
    assert result.study is not None and result.study.counts["scored"] == FIVE
    assert len(calls) == FIVE + 1 and calls.count(calls[0]) == 2  # the first one, twice
    assert len(notes) == 1 and "was given up as stale while it ran" in notes[0]
