"""Every error at once: `effdsl.check_text`, `effdsl check` on files and directories, and the
small stumbles of a first hour (hints, signed shorthands, did-you-mean, collapsing maps)."""

from __future__ import annotations

from pathlib import Path

import pytest

import effdsl
from effdsl.check import collapse_warnings

from .conftest import SPECS
from .test_cli import B0
from .test_cli import effdsl as run

#: one per-line error (k4) and three whole-network ones (se on a conv stem, a duplicate stage
#: name, an mbconv head), in a file that used to report only the first
FOUR_ERRORS = """\
network four {
  input size=224 channels=3
  stem conv k3 s2 c32 se=0.25
  stage mbconv e1 k4 s1 c16 x1
  stage mbconv e6 k3 s2 c24 x2 name=a
  stage mbconv e6 k5 s2 c40 x2 name=a
  head mbconv k1 s1 c1280
  classifier dropout=0.2 classes=1000
}
"""

EXPECTED = [
    (3, 26, "a `conv` block has no squeeze-and-excitation"),
    (4, 19, "kernel must be odd, got 4"),
    (6, 37, "duplicate stage name `a`"),
    (7, 8, "the head must be a `conv` block, not `mbconv`"),
]


def test_check_text_returns_every_error_sorted_by_position() -> None:
    problems = effdsl.check_text(FOUR_ERRORS, "four.eff")
    assert [(p.span.line, p.span.column, p.message) for p in problems if p.span] == EXPECTED
    assert all(p.kind == "error" and p.source == FOUR_ERRORS for p in problems)


def test_parse_raises_the_same_four_errors() -> None:
    with pytest.raises(effdsl.EffErrors) as caught:
        effdsl.parse(FOUR_ERRORS, "four.eff")
    assert [e.message for e in caught.value.errors] == [m for *_, m in EXPECTED]


def test_check_text_of_a_clean_spec_is_empty() -> None:
    assert effdsl.check_text((SPECS / "b0.eff").read_text()) == []


def test_check_text_reports_a_syntax_error_as_one_item() -> None:
    (problem,) = effdsl.check_text("network t {\n  input size=224\n")
    assert problem.span is not None and "end of file" in problem.message


def test_cli_prints_all_four_in_one_run(tmp_path: Path) -> None:
    spec = tmp_path / "four.eff"
    spec.write_text(FOUR_ERRORS)
    result = run("check", str(spec))
    assert result.returncode == 1
    headers = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert headers == [f"{spec}:{line}:{column}: error: {m}" for line, column, m in EXPECTED]
    assert "hint: write `head conv k1 s1 c1280`" in result.stderr  # the head's example
    assert result.stderr.splitlines()[-1] == "4 errors in 1 of 1 file"


def test_stem_hint_keeps_the_stem_example() -> None:
    (problem,) = effdsl.check_text(
        FOUR_ERRORS.replace("stem conv k3 s2 c32 se=0.25", "stem mbconv k3 s2 c32")
        .replace("k4", "k3")
        .replace("c40 x2 name=a", "c40 x2")
        .replace("head mbconv", "head conv")
    )
    assert problem.hint == "write `stem conv k3 s2 c32`, and put mbconv blocks in stages"


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("c-80 x1", "channels must be ≥ 1, got -80"),
        ("c16 x-2", "repeats must be ≥ 1, got -2"),
        ("c+16 x1", None),  # a plus sign is just a number
    ],
)
def test_signed_shorthand_gets_the_bound_message(shape: str, message: str | None) -> None:
    text = (SPECS / "b0.eff").read_text().replace("e1 k3 s1 c16   x1", f"e1 k3 s1 {shape}", 1)
    assert shape in text
    problems = effdsl.check_text(text)
    assert [p.message for p in problems] == ([message] if message else [])


def test_check_a_directory_checks_every_spec_inside(tmp_path: Path) -> None:
    result = run("check", str(SPECS))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{len(list(SPECS.glob('*.eff')))} files ok\n"
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "four.eff").write_text(FOUR_ERRORS)
    (tmp_path / "notes.txt").write_text("not a spec")
    result = run("check", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "4 errors in 1 of 1 file"


def test_check_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    result = run("check", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path}: no .eff files in this directory\n"


def test_misspelt_command_gets_did_you_mean() -> None:
    result = run("comple", B0)
    assert result.returncode == 2
    assert "unknown command `comple` (did you mean `compile`?)" in result.stderr


def test_preset_in_the_wrong_case_gets_did_you_mean() -> None:
    result = run("compile", B0, "--preset", "B3", "-n")
    assert result.returncode == 1
    assert "no preset `B3`" in result.stderr
    assert "hint: did you mean `b3`? (its presets: b0, b1" in result.stderr


def test_out_indices_error_names_the_valid_range() -> None:
    from effdsl.errors import BuildError

    with pytest.raises(BuildError, match=r"7 is not a stage .*valid indices are 0 to 6 \(or -7"):
        effdsl.build(effdsl.load(B0), features_only=True, out_indices=(7,))


# ---- feature maps that collapse ------------------------------------------------------------


def test_a_net_scaled_far_down_warns_that_its_maps_collapse() -> None:
    plan = effdsl.lower(effdsl.scale(effdsl.load(B0), phi=-20))
    (warning,) = collapse_warnings(plan)
    assert warning.kind == "warning"
    assert warning.message == (
        "feature maps collapse: stage 2 (`stage2`) runs a 5×5 conv on 4×4 maps (input 14 px)"
    )
    assert warning.hint == "at least 65 px keeps every map as large as its kernel"
    bigger = effdsl.lower(effdsl.scale(effdsl.load(B0), phi=-20, resolution=65))
    assert collapse_warnings(bigger) == []
    assert collapse_warnings(effdsl.lower(effdsl.scale(effdsl.load(B0), phi=-20, resolution=64)))


def test_a_mixconv_collapses_when_its_smallest_kernel_outgrows_the_map() -> None:
    mixnet = effdsl.load(SPECS / "mixnet-s.eff")  # 9×9 slices on 7×7 maps at 224 px: no warning
    (warning,) = collapse_warnings(effdsl.lower(effdsl.scale(mixnet, resolution=64)))
    assert warning.message.endswith("runs a 3×3 conv on 2×2 maps (input 64 px)")


def test_reference_specs_do_not_warn() -> None:
    for spec in SPECS.glob("*.eff"):
        assert collapse_warnings(effdsl.lower(effdsl.load(spec))) == [], spec


def test_compile_prints_the_warning_and_still_succeeds() -> None:
    result = run("compile", B0, "--phi", "-20", "-n")
    assert result.returncode == 0
    assert result.stderr.startswith("warning: feature maps collapse: stage 2")


def test_check_warns_at_the_input_size_and_exits_zero(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.eff"
    spec.write_text((SPECS / "b0.eff").read_text().replace("size=224", "size=32"))
    (warning,) = effdsl.check_text(spec.read_text(), str(spec))
    assert warning.kind == "warning" and warning.span is not None
    result = run("check", str(spec))
    assert result.returncode == 0
    assert f"{spec}:{warning.span.line}:{warning.span.column}: warning: feature maps" in (
        result.stderr
    )
    assert result.stdout == "1 file ok, 1 warning\n"


# ---- the summary prints only what applies ----------------------------------------------------


def test_unscaled_summary_has_no_ratios() -> None:
    result = run("compile", B0, "-n")
    assert result.returncode == 0
    for absent in ("resolution  ", "multipliers", "MACs ratio", "α·β²·γ²"):
        assert absent not in result.stdout


def test_preset_summary_has_ratio_but_no_phi_prediction() -> None:
    out = run("compile", B0, "--preset", "b3", "-n").stdout
    assert "resolution  224 → 300" in out and "MACs ratio  4.736×" in out
    assert "α·β²·γ²" not in out and "predicts" not in out
    out = run("compile", B0, "--phi", "1", "-n").stdout
    assert "the paper predicts" in out and "α·β²·γ²     1.9203" in out
