"""The real `effdsl` command in a subprocess: exit codes, stdout, stderr, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, SPECS

B0 = str(SPECS / "b0.eff")


def effdsl(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "effdsl", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        input=stdin,
        timeout=120,
    )


def test_check_clean_specs() -> None:
    specs = sorted(SPECS.glob("*.eff"))
    result = effdsl("check", *map(str, specs))
    assert result.returncode == 0, result.stderr
    assert f"{len(specs)} files ok" in result.stdout
    assert result.stderr == ""


def test_check_reports_every_error_with_caret(tmp_path: Path) -> None:
    bad = tmp_path / "bad.eff"
    bad.write_text(
        "network t {\n  input size=32\n  stem conv k3 s2 c8\n"
        "  stage mbconv e6 k4 s2 c24 x2 kernal=3\n  head conv k1 c16\n  classifier classes=10\n}\n"
    )
    result = effdsl("check", str(bad), B0)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}:4:19: error: kernel must be odd, got 4"
    assert lines[1] == "    stage mbconv e6 k4 s2 c24 x2 kernal=3"
    assert lines[2] == "                    ^^"
    assert f"{bad}:4:32: error: unknown attribute `kernal` in `stage`" in result.stderr
    assert "hint: did you mean `kernel`?" in result.stderr
    assert lines[-1] == "2 errors in 1 of 2 files"
    assert "Traceback" not in result.stderr


def test_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = effdsl("check", str(tmp_path / "nope.eff"))
    assert result.returncode == 1
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_usage_error_exits_2() -> None:
    result = effdsl("compile")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_fmt_check_and_write(tmp_path: Path) -> None:
    messy = tmp_path / "messy.eff"
    messy.write_text(
        "network t {\nclassifier classes=10\n  input   size=32\n stem conv k3 s2 c8\n"
        "stage mbconv e1 k3 s1 c8 x1  # keep me\nhead conv k1 c16\n}\n"
    )
    assert effdsl("fmt", "--check", str(messy)).returncode == 1
    printed = effdsl("fmt", str(messy))
    assert printed.returncode == 0 and "# keep me" in printed.stdout
    assert effdsl("fmt", "--write", str(messy)).returncode == 0
    assert messy.read_text() == printed.stdout
    assert effdsl("fmt", "--check", str(messy)).returncode == 0
    assert effdsl("fmt", "-", stdin=printed.stdout).stdout == printed.stdout


def test_fmt_write_keeps_the_original_on_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.eff"
    original = "network t {\n  input size=3x\n"
    broken.write_text(original)
    result = effdsl("fmt", "--write", str(broken))
    assert result.returncode == 1
    assert broken.read_text() == original
    assert list(tmp_path.iterdir()) == [broken]


def test_schema_is_json_schema() -> None:
    result = effdsl("schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "Network"
    assert {"stages", "stem", "head", "classifier", "input"} <= set(schema["properties"])


def test_compile_json_summary() -> None:
    result = effdsl("compile", B0, "--preset", "b3", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["params"] == 12_233_232
    assert summary["resolution"] == 300
    assert [s["repeats"] for s in summary["stages"]] == [2, 3, 3, 5, 5, 6, 2]


def test_compile_text_summary_dry_run() -> None:
    result = effdsl("compile", B0, "--phi", "3", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "efficientnet_b0 (phi=3) at 341×341" in result.stdout
    assert "2→4" in result.stdout and "≈ 2^φ = 8.000" in result.stdout


def test_compile_budget_says_which_phi() -> None:
    result = effdsl("compile", B0, "--macs", "1G", "--json")
    assert result.returncode == 0, result.stderr
    assert "chose phi=" in result.stderr
    assert json.loads(result.stdout)["macs"] <= 1e9


def test_compile_scaling_errors_are_clean() -> None:
    for args in (["--preset", "b99"], ["--phi", "1000"], ["--phi", "1", "--preset", "b1"]):
        result = effdsl("compile", B0, *args, "--json")
        assert result.returncode == 1, args
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["check", B0],
        ["fmt", B0],
        ["compile", B0, "--phi", "3", "--json"],
        ["compile", B0, "--phi", "3", "-o", "-"],
        ["compile", B0, "--preset", "b7", "-o", "{tmp}/b7.py"],
        ["render", B0, "--preset", "b3", "--compare", "-o", "{tmp}/b3.dot"],
        ["search", B0, "--json"],
        ["plot", B0, "-o", "{tmp}/scaling.svg"],
    ],
    ids=["check", "fmt", "compile-json", "compile-stdout", "compile-py", "render-dot", "search",
         "plot"],
)
def test_fast_paths_do_not_import_torch(args: list[str], tmp_path: Path) -> None:
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    code = (
        "import sys\n"
        "from effdsl.cli import main\n"
        f"code = main({args!r})\n"
        "sys.stdout.flush()\n"
        "loaded = [m for m in ('torch', 'graphviz') if m in sys.modules]\n"
        "print('EXIT', code, 'LOADED', loaded, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert "EXIT 0 LOADED []" in result.stderr, result.stderr[-2000:]


def test_misspelt_flag_gets_the_subcommand_usage_and_a_suggestion() -> None:
    result = effdsl("compile", B0, "--preest", "b3")
    assert result.returncode == 2
    assert "usage: effdsl compile" in result.stderr
    assert "did you mean --preset?" in result.stderr


def test_check_quiet_prints_nothing_on_success() -> None:
    result = effdsl("check", "-q", B0)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dry_run_writes_nothing_even_with_an_output(tmp_path: Path) -> None:
    result = effdsl("compile", B0, "--preset", "b3", "-o", str(tmp_path / "x.py"), "-n")
    assert result.returncode == 0, result.stderr
    assert "12,233,232" in result.stdout
    assert list(tmp_path.iterdir()) == []
