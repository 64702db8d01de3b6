"""Progress of a scored search: bars in a terminal, plain lines otherwise, always on stderr.

    bars = Bars(sys.stderr)          # tqdm bars when stderr is a terminal, else one line per event
    work(study, plan, score, bars)   # the study reports candidates; the trainer reports epochs

The candidates bar counts every worker's results (it is refreshed from the storage), with the
best score so far; while this process trains a candidate a second bar counts its epochs, with
the loss and validation top-1. Without a terminal (a log file, CI) each finished candidate and
each epoch is one line, so a log reads as a record.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, TextIO

from effdsl.study import Key, Reporter


def _size() -> dict[str, int]:
    """tqdm's `ncols` and `nrows`: the terminal's, or 100 × 24 where it reports 0 × 0 (a
    pseudo-terminal given no size, as `script` or `docker run -t` make). Left to itself, tqdm
    reads such a terminal's rows as -1 and draws no bar at all."""
    columns, rows = shutil.get_terminal_size((100, 24))
    return {"ncols": columns or 100, "nrows": rows or 24}


def coefficients(key: Key) -> str:
    alpha, beta, gamma = key
    return f"α={alpha:g} β={beta:g} γ={gamma:g}"


class Bars(Reporter):
    """Reports a study's progress to `stream`: tqdm bars on a terminal, else plain lines."""

    def __init__(self, stream: TextIO, *, bars: bool | None = None) -> None:
        self.stream = stream
        self.bars = stream.isatty() if bars is None else bars
        self.total = 0
        self.scored = 0
        self.best: tuple[float, Key] | None = None
        self.start = time.perf_counter()
        self.mine = 0
        self._began = time.time()  # when this process started its current candidate
        self._outer: Any = None
        self._inner: Any = None

    # ---- the study --------------------------------------------------------------------------

    def study(self, total: int, scored: int, best: tuple[float, Key] | None) -> None:
        self.total, self.scored, self.best = total, scored, best
        if not self.bars:
            return
        if self._outer is None:
            from tqdm import tqdm

            self._outer = tqdm(total=total, initial=scored, desc="candidates", unit="cand",
                               file=self.stream, position=0, mininterval=0, **_size())
        self._outer.set_postfix_str(self._best_text(), refresh=False)
        self._outer.update(scored - self._outer.n)

    def started(self, key: Key, trial: int) -> None:
        self._began = time.time()
        if not self.bars:
            self._line(f"[{self.scored + 1}/{self.total}] {coefficients(key)}: scoring "
                       f"(trial {trial})")

    def epoch(self, done: int, epochs: int, loss: float, right: int, seen: int) -> None:
        """One epoch of the candidate this process trains (called by the `--data` scorer)."""
        top1 = right / max(seen, 1)
        if not self.bars:
            self._line(f"    epoch {done}/{epochs}: loss {loss:.4f}, val top-1 {top1:.4f} "
                       f"({right}/{seen})")
            return
        if self._inner is None:
            from tqdm import tqdm

            self._inner = tqdm(total=epochs, desc="  epochs", unit="ep", file=self.stream,
                               position=1, leave=False, mininterval=0, **_size())
            # drawn at the first epoch's end, but timed from the candidate's start, so that
            # its rate and time left count that epoch
            self._inner.start_t = self._inner.last_print_t = self._began
        self._inner.set_postfix_str(f"loss {loss:.3f} top-1 {top1:.3f}", refresh=False)
        self._inner.update(done - self._inner.n)

    def finished(self, key: Key, score: float, seconds: float) -> None:
        self.mine += 1
        self.scored += 1
        if self.best is None or score > self.best[0]:
            self.best = (score, key)
        if self._inner is not None:
            self._inner.close()
            self._inner = None
        if self.bars:
            self._outer.set_postfix_str(self._best_text(), refresh=False)
            self._outer.update(self.scored - self._outer.n)
            return
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.mine * max(self.total - self.scored, 0)
        self._line(f"[{self.scored}/{self.total}] {coefficients(key)} score={score:.6g} "
                   f"({seconds:.1f} s; {self._best_text()}; about {left:.0f} s left)")

    def note(self, message: str) -> None:
        if self.bars and self._outer is not None:
            self._outer.write(message, file=self.stream)
        else:
            self._line(message)

    def close(self) -> None:
        for bar in (self._inner, self._outer):
            if bar is not None:
                bar.close()
        self._inner = self._outer = None

    # ---- helpers ----------------------------------------------------------------------------

    def _best_text(self) -> str:
        if self.best is None:
            return "best: none yet"
        score, key = self.best
        return f"best {score:.4g} at {coefficients(key)}"

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
