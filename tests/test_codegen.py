"""The generated `.py`: deterministic, torch-free to generate, valid whatever the names, and the
same network as `effdsl.build` (same state_dict layout, same logits) in a fresh interpreter."""

from __future__ import annotations

import ast as pyast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import effdsl
from effdsl.codegen import class_name, scaling_label, to_python, top_level_names
from effdsl.errors import EffSemanticError
from effdsl.plan import Plan
from effdsl.scaling import Multipliers
from tests.conftest import ROOT, SPECS
from tests.strategies import networks
from tests.test_torch_build import randomise_batch_norm

TINY = """\
network tiny {
  input    size=32 channels=3
  defaults act=silu se=0.25 drop_path=0.2
  preset   p1 width=1.5 depth=2 resolution=40

  stem  conv      k3 s2 c8
  stage mbconv e1 k3 s1 c8  x1
  stage mbconv e4 k5 s2 c16 x2 name=second
  head  conv      k1    c32
  classifier dropout=0.2 classes=10
}
"""

# V2-S's block kinds at a small size: fused with expansion 1 (a single conv), fused with
# expansion and no SE, MBConv with SE, and a `conv` stage.
V2_LIKE = """\
network v2_like {
  input    size=48 channels=3
  defaults act=silu bn_eps=0.001 drop_path=0.2

  stem  conv             k3 s2 c16
  stage fused_mbconv e1  k3 s1 c16 x2
  stage fused_mbconv e4  k3 s2 c24 x2
  stage mbconv       e4  k3 s2 c32 x2 se=0.25
  stage conv             k3 s1 c32 x2 act=relu6
  head  conv             k1    c64
  classifier dropout=0.2 classes=7
}
"""

# TF "same" padding on even sizes (asymmetric), other activations and options, names to escape.
SAME = """\
network "same \\"pad\\"" {
  input    size=32 channels=1
  defaults act=hardswish se=0.25 padding=same bn_eps=0.001 bn_momentum=0.01 drop_path=0.1

  stem  conv      k3 s2 c8  act=gelu
  stage mbconv e3 k5 s2 c12 x2 name="a \\"quoted\\" stage"
  stage mbconv e6 k3 s2 c16 x1 se=none act=relu skip=no
  stage fused_mbconv e2 k3 s1 c16 x2
  head  conv      k1    c40
  classifier classes=5
}
"""

# MixConv and CondConv with SAME padding: kernel lists, grouped 1×1 convs, expert kernels, a
# CondConv without expansion.
MIXED_KINDS = """\
network mixed_kinds {
  input    size=32 channels=3
  defaults act=silu se=0.25 padding=same drop_path=0.1

  stem  conv        k3     s2 c8
  stage mixconv  e3 k3.5.7 s2 c16 x2 expand_groups=2 project_groups=2
  stage condconv e4 k5     s2 c16 x1 experts=3
  stage condconv e1 k3     s1 c16 x1 experts=2 se=none
  stage mixconv  e1 k3.5   s1 c24 x1
  head  conv        k1        c32
  classifier classes=5
}
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These nets are tiny: one thread beats two that contend, and much more on a busy box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lowered(text: str, **scaling: Any) -> Plan:
    network = effdsl.parse(text)
    factors = effdsl.multipliers(network, **scaling)
    return effdsl.lower(effdsl.scale(network, **scaling), factors)


def load_generated(source: str, name: str = "generated") -> ModuleType:
    module = ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def model_of(module: ModuleType, plan: Plan) -> torch.nn.Module:
    model: torch.nn.Module = getattr(module, class_name(plan))()
    return model


def generated_model(plan: Plan) -> torch.nn.Module:
    """The model class of the standalone module generated for `plan`, instantiated."""
    return model_of(load_generated(to_python(plan)), plan)


def _is_main_guard(node: pyast.stmt) -> bool:
    return pyast.unparse(node) == "if __name__ == '__main__':\n    main()"


def defined_names(source: str) -> set[str]:
    """The names a module's top-level statements bind."""
    names: set[str] = set()
    for node in pyast.parse(source).body:
        if isinstance(node, pyast.ClassDef | pyast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, pyast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, pyast.Name))
        elif isinstance(node, pyast.Import | pyast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif _is_main_guard(node):
            continue  # `if __name__ == "__main__": main()` binds nothing
        elif not (isinstance(node, pyast.Expr) and isinstance(node.value, pyast.Constant)):
            raise AssertionError(f"unexpected top-level statement: {pyast.dump(node)[:80]}")
    return names


# ---- the text -------------------------------------------------------------------------------


def test_same_plan_gives_the_same_bytes() -> None:
    b0 = (SPECS / "b0.eff").read_text()
    first = to_python(lowered(b0, phi=3), source_name="specs/b0.eff", spec_text=b0)
    second = to_python(lowered(b0, phi=3), source_name="specs/b0.eff", spec_text=b0)
    assert first == second


def test_generation_imports_no_torch_and_is_deterministic_across_processes() -> None:
    """`compile -o x.py` is a fast path: it must not import torch, whatever the hash seed."""
    script = textwrap.dedent(
        """
        import sys
        import effdsl, effdsl.codegen
        net = effdsl.load(sys.argv[1])
        factors = effdsl.multipliers(net, phi=3)
        plan = effdsl.lower(effdsl.scale(net, phi=3), factors)
        sys.stdout.write(effdsl.codegen.to_python(plan, source_name="specs/b0.eff"))
        assert "torch" not in sys.modules, "generating code imported torch"
        """
    )
    expected = to_python(lowered((SPECS / "b0.eff").read_text(), phi=3), source_name="specs/b0.eff")
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", script, str(SPECS / "b0.eff")],
            capture_output=True, text=True, cwd=ROOT, check=False,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected


def test_imports_only_torch_and_the_standard_library() -> None:
    source = to_python(lowered(SAME))
    roots: set[str] = set()
    for node in pyast.walk(pyast.parse(source)):
        if isinstance(node, pyast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, pyast.ImportFrom):
            assert node.module is not None and node.level == 0
            roots.add(node.module.split(".")[0])
    assert roots == {"math", "torch"}
    assert roots - {"torch"} <= sys.stdlib_module_names


def test_defines_the_classes_it_uses_and_nothing_else() -> None:
    b0 = to_python(lowered((SPECS / "b0.eff").read_text()))
    assert defined_names(b0) == {
        "math", "torch", "nn", "ACTIVATIONS", "drop_path", "ConvBNAct", "SqueezeExcite", "GATES",
        "MBConv", "Stage", "EfficientnetB0", "main",
    }
    v2 = lowered(V2_LIKE)
    assert defined_names(to_python(v2)) == top_level_names(v2) >= {"ConvBlock", "FusedMBConv"}
    assert "SqueezeExcite" not in defined_names(to_python(lowered(TINY.replace("se=0.25", ""))))


def test_forward_reads_one_operation_per_line_with_shapes() -> None:
    source = to_python(lowered(TINY))
    assert source[source.rindex("    def forward(") : source.index("\n\n\ndef main(") + 1] == (
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 32, 32)\n"
        "        x = self.stem(x)        # (N, 8, 16, 16)\n"
        "        x = self.stages[0](x)   # (N, 8, 16, 16)\n"
        "        x = self.stages[1](x)   # (N, 16, 8, 8)\n"
        "        x = self.head(x)        # (N, 32, 8, 8)\n"
        "        x = x.mean((2, 3))      # (N, 32)\n"
        "        x = self.dropout(x)     # (N, 32)\n"
        "        x = self.classifier(x)  # (N, 10)\n"
        "        return x\n"
    )


def test_docs_excerpt_is_what_b0_generates() -> None:
    source = to_python(lowered((SPECS / "b0.eff").read_text())).splitlines()
    docs = (ROOT / "docs" / "codegen.md").read_text(encoding="utf-8")
    excerpts = [block.split("```")[0] for block in docs.split("```python\n")[1:]]
    lines = [line for block in excerpts[:2] for line in block.splitlines() if line.strip() != "..."]
    assert len(lines) > 30
    assert [line for line in lines if line not in source] == []


def test_header_names_the_network_scaling_and_cost() -> None:
    text = (SPECS / "b0.eff").read_text()
    plan = lowered(text, preset="b3")
    source = to_python(plan, source_name="b0.eff", spec_text=text)
    docstring = pyast.get_docstring(pyast.parse(source))
    assert docstring is not None
    report = effdsl.cost(plan)
    for fact in ("'efficientnet_b0'", "preset b3", "width ×1.2", "depth ×1.4", "3×300×300",
                 f"{report.params:,}", f"{report.macs:,}", "'b0.eff'", "effdsl",
                 "stage mbconv e6 k5 s2 c40"):
        assert fact in docstring


@pytest.mark.parametrize(
    ("name", "scaling", "expected"),
    [
        ("efficientnet_b0", {"phi": 3}, "EfficientnetB0Phi3"),
        ("efficientnet_b0", {"phi": -1.5}, "EfficientnetB0Phim1p5"),
        ("efficientnet_b0", {"preset": "p1"}, "EfficientnetB0P1"),
        ("efficientnet_b0", {"width": 1.2, "depth": 1.4}, "EfficientnetB0W1p2D1p4"),
        ("efficientnet_b0", {"resolution": 300}, "EfficientnetB0R300"),
        ("efficientnet_b0", {}, "EfficientnetB0"),
        ("3net", {}, "Net3net"),
        ("None", {}, "NoneModel"),
        ("stage", {}, "StageModel"),
        ('"""', {}, "Network"),
        ("ünïcode net", {}, "NCodeNet"),
    ],
)
def test_class_name(name: str, scaling: dict[str, Any], expected: str) -> None:
    network = effdsl.parse(TINY).model_copy(update={"name": name})
    factors = effdsl.multipliers(network, **scaling)
    plan = effdsl.lower(effdsl.scaling.apply(network, factors), factors)
    assert class_name(plan) == expected
    assert expected.isidentifier()


@pytest.mark.parametrize(
    ("factors", "label"),
    [
        (Multipliers(), ""),
        (Multipliers(width=1.331, depth=1.728, resolution=341, phi=3), "phi3"),
        (Multipliers(phi=-1), "phi-1"),
        (Multipliers(phi=1.5), "phi1.5"),
        (Multipliers(width=1.2, depth=1.4, resolution=300, preset="b3"), "b3"),
        (Multipliers(preset="../a b/\n"), ".._a_b__"),
        (Multipliers(width=1.2, depth=1.4), "w1.2_d1.4"),
        (Multipliers(width=1.2), "w1.2"),
        (Multipliers(resolution=300), "r300"),
        (Multipliers(depth=2, resolution=96), "d2_r96"),
    ],
)
def test_scaling_label(factors: Multipliers, label: str) -> None:
    assert scaling_label(factors) == label


# ---- names that could break out of their quotes ---------------------------------------------

awkward = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(['"""', "'''", '\\', 'a\\', '"', 'x"', "\n", "\r\n# coding: latin-1\n",
                     "class", "None", "import os", "\x00", "\u2028", "é🚀", "\\N{x}"]),
    st.lists(st.sampled_from(['"', "'", "\\", "\n", "#", "x", "ü", "\x0c"]), min_size=1,
             max_size=12).map("".join),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network_name=awkward, stage_name=awkward, preset_name=awkward, source=awkward)
def test_any_names_give_a_valid_module_defining_only_its_names(
    network_name: str, stage_name: str, preset_name: str, source: str
) -> None:
    base = effdsl.parse(TINY)
    network = base.model_copy(
        update={
            "name": network_name,
            "presets": (base.presets[0].model_copy(update={"name": preset_name}),),
            "stages": (base.stages[0].model_copy(update={"name": stage_name}), base.stages[1]),
        }
    )
    factors = effdsl.multipliers(network, preset=preset_name)
    plan = effdsl.lower(effdsl.scaling.apply(network, factors), factors)
    spec_text = f"# {source}\n{effdsl.format(network)}"
    code = to_python(plan, source_name=source, spec_text=spec_text)
    code.encode("utf-8")  # no lone surrogates reach the file
    tree = pyast.parse(code)
    assert defined_names(code) == top_level_names(plan)
    docstring = pyast.get_docstring(tree, clean=False)
    assert docstring is not None and repr(network_name) in docstring
    model_class = load_generated(code).__dict__[class_name(plan)]
    assert model_class.network == network_name
    assert model_class.scaling == factors.describe()


# ---- the same network as effdsl.build -------------------------------------------------------


CASES = {
    "b0": ((SPECS / "b0.eff").read_text(), {"resolution": 64}),
    "v2_like": (V2_LIKE, {}),
    "same_padding": (SAME, {}),
    "mixed_kinds": (MIXED_KINDS, {}),
}

# Runs every case's generated file in one fresh interpreter (one torch import, not three):
# its layout, its logits with build's weights loaded, a training step, and what it imported.
FRESH_INTERPRETER = """
import importlib.util, json, sys
import torch

report = {}
for case, path, class_name in json.loads(sys.argv[1]):
    spec = importlib.util.spec_from_file_location(case, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = getattr(module, class_name)()
    layout = {key: list(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(torch.load(path + ".state", weights_only=True))
    x = torch.load(path + ".input", weights_only=True)
    with torch.no_grad():
        torch.save(model.eval()(x), path + ".out")
    model.train()(x).sum().backward()  # drop_path and batch statistics run too
    report[case] = layout
print(json.dumps({"layouts": report, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Each case's generated file run in a fresh interpreter, beside `effdsl.build`."""
    directory = tmp_path_factory.mktemp("fresh")
    cases, references = [], {}
    for case, (text, scaling) in CASES.items():
        plan = lowered(text, **scaling)
        path = directory / f"{case}.py"
        path.write_text(to_python(plan), encoding="utf-8")
        torch.manual_seed(0)
        reference = effdsl.build(plan).eval()
        randomise_batch_norm(reference)  # so that loading the statistics matters
        x = torch.randn(2, plan.in_channels, plan.resolution, plan.resolution)
        torch.save(reference.state_dict(), f"{path}.state")
        torch.save(x, f"{path}.input")
        with torch.no_grad():
            references[case] = (reference, reference(x), path)
        cases.append((case, str(path), class_name(plan)))
    result = subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER, json.dumps(cases)],
        capture_output=True, text=True, check=False, cwd=directory,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {
        case: {
            "layout": report["layouts"][case],
            "modules": report["modules"],
            "expected_layout": {k: list(v.shape) for k, v in reference.state_dict().items()},
            "expected": expected,
            "got": torch.load(f"{path}.out", weights_only=True),
        }
        for case, (reference, expected, path) in references.items()
    }


@pytest.mark.parametrize("case", CASES)
def test_fresh_interpreter_has_builds_state_dict_layout(
    fresh_runs: dict[str, dict[str, Any]], case: str
) -> None:
    run = fresh_runs[case]
    assert list(run["layout"].items()) == list(run["expected_layout"].items())
    assert not any(name == "effdsl" or name.startswith("effdsl.") for name in run["modules"])


@pytest.mark.parametrize("case", CASES)
def test_fresh_interpreter_gives_builds_logits(
    fresh_runs: dict[str, dict[str, Any]], case: str
) -> None:
    run = fresh_runs[case]
    scale = max(1.0, float(run["expected"].abs().max()))
    assert float((run["got"] - run["expected"]).abs().max()) <= 1e-5 * scale


def test_same_padding_uses_asymmetric_pads() -> None:
    source = to_python(lowered(SAME))
    assert "(0, 1, 0, 1)" in source and "(1, 2, 1, 2)" in source
    assert "nn.ZeroPad2d" in source
    assert "nn.ZeroPad2d" not in to_python(lowered(TINY))


def test_drop_path_drops_whole_samples_only_in_training() -> None:
    module = load_generated(to_python(lowered(TINY)))
    x = torch.ones(4000, 2, 3, 3)
    assert module.drop_path(x, 0.25, False) is x
    dropped = module.drop_path(x, 0.25, True)
    per_sample = dropped.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # a sample is dropped whole or kept whole
    assert set(per_sample[:, 0].unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}
    assert abs(float(dropped.mean()) - 1.0) < 0.05


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network=networks(max_stages=4), size=st.integers(8, 12))
def test_any_network_generates_the_module_build_makes(network: effdsl.Network, size: int) -> None:
    network = network.model_copy(update={"input": network.input.model_copy(update={"size": size})})
    try:
        plan = effdsl.lower(network)
    except EffSemanticError as error:  # an anti-aliasing pool on a 1×1 map at this size
        assert "needs maps of at least" in str(error), error  # and nothing else refused
        assume(False)
    model = model_of(load_generated(to_python(plan)), plan).eval()
    reference = effdsl.build(plan).eval()
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, plan.in_channels, size, size)
    with torch.no_grad():
        expected = reference(x)
        # relative to the logits' size, but never below float32 noise: a 1-channel layer norm
        # turns rounding noise into outputs of 1e-7 whose digits mean nothing
        scale = max(float(expected.abs().max()), 1.0)
        assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-6 * scale)


def test_generated_file_is_ruff_clean_but_for_long_rows(tmp_path: Path) -> None:
    version = [sys.executable, "-m", "ruff", "--version"]
    if subprocess.run(version, capture_output=True, check=False).returncode != 0:
        pytest.skip("ruff is not installed")
    for name, text in (("tiny", TINY), ("v2", V2_LIKE), ("same", SAME), ("mixed", MIXED_KINDS)):
        (tmp_path / f"{name}.py").write_text(to_python(lowered(text), spec_text=text))
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
         str(ROOT / "pyproject.toml"), "--ignore", "E501", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout


def test_generated_file_run_as_a_script_prints_its_size_and_runs_once(tmp_path: Path) -> None:
    plan = lowered(TINY)
    path = tmp_path / "model.py"
    path.write_text(to_python(plan), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, check=False, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    size = f"{plan.in_channels}×{plan.resolution}×{plan.resolution}"
    assert result.stdout.splitlines() == [
        f"{class_name(plan)}: {effdsl.cost(plan).params:,} parameters (as generated), "
        f"input {size}",
        f"one forward pass on random input: output (1, {plan.classifier.classes})",
    ]
