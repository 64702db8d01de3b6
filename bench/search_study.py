"""The 6-candidate `--data` study of docs/search.md, timed: synthetic textures at 32 px.

    python bench/search_study.py --processes 2      # two workers sharing one SQLite study
    python bench/search_study.py --processes 1 --threads 2   # one worker, both cores

Writes a data set of three texture classes (tests/textures.py, 100 images each, 32 px) and the
tiny spec of tests/test_search.py to a temporary directory, starts PROCESSES `effdsl search`
workers against one SQLite file (`--threads 1` each unless told), and prints the final table,
the wall time, the workers' CPU time (which other jobs on a shared machine do not inflate) and the
machine's load before and after. The grid: alpha, beta, gamma over 1:1.2:0.1 with
|α·β²·γ² − 1.55| ≤ 0.1, which holds six candidates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_search import TINY  # noqa: E402
from tests.textures import make_textures  # noqa: E402

GRID = ["--grid", "alpha=1:1.2:0.1,beta=1:1.2:0.1,gamma=1:1.2:0.1", "--target", "1.55",
        "--tolerance", "0.1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--plot", type=Path, help="also draw the study (effdsl plot --study)")
    parser.add_argument("--storage", type=Path,
                        help="keep the study in this new SQLite file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = make_textures(root / "textures", per_class=args.per_class)
        spec = root / "tiny.eff"
        spec.write_text(TINY)
        storage = args.storage or root / "study.db"
        if storage.exists():
            sys.exit(f"{storage} exists: the measurement needs a new study")
        command = [sys.executable, "-m", "effdsl", "search", str(spec), *GRID, "--data",
                   str(data), "--epochs", str(args.epochs), "--batch", "32", "--threads",
                   str(args.threads), "--storage", str(storage)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        load_before = os.getloadavg()
        start = time.perf_counter()
        # the first worker's progress shows here (bars in a terminal); the others' go to logs,
        # so that their bars do not draw over it
        with contextlib.ExitStack() as files:
            logs = [None, *(files.enter_context((root / f"worker{i}.log").open("w"))
                            for i in range(1, args.processes))]
            workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log,
                                        text=True) for log in logs]
            outputs = [w.communicate()[0] for w in workers]
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if any(w.returncode for w in workers):
            for i in range(1, args.processes):
                sys.stderr.write((root / f"worker{i}.log").read_text())
            sys.exit("a worker failed")
        print(outputs[0])
        if args.plot is not None:
            subprocess.run([sys.executable, "-m", "effdsl", "plot", "--study", "tiny", "--storage",
                            str(storage), "-o", str(args.plot)], env=env, check=True)
        print(f"{args.processes} processes × {args.threads} threads, {args.epochs} epochs, "
              f"{3 * args.per_class} images: "
              f"{wall:.1f} s wall, {usage.ru_utime + usage.ru_stime:.1f} s CPU (all workers, "
              f"imports included); load average before {load_before[0]:.1f}, after "
              f"{load_after[0]:.1f} (1 min), {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
