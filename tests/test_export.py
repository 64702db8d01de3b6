"""Outputs by extension: each format reloads and matches the eager module, weights load strictly,
a failure anywhere leaves no file and the old target intact, and `.py`/`.eff` need no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import effdsl
from effdsl import export
from effdsl.codegen import to_python
from effdsl.errors import CheckpointError, OutputError, ToolMissingError
from effdsl.export import load_weights, output_format, write_output
from effdsl.plan import Plan
from tests.conftest import ROOT
from tests.test_codegen import TINY, one_thread  # noqa: F401 - an autouse fixture
from tests.test_torch_build import randomise_batch_norm


@pytest.fixture(scope="module")
def tiny() -> tuple[effdsl.Network, Plan]:
    network = effdsl.parse(TINY)
    return network, effdsl.lower(network)


@pytest.fixture(scope="module")
def trained(
    tiny: tuple[effdsl.Network, Plan], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, torch.nn.Module]:
    """A state_dict file that is not the fresh initialisation, and the eager module holding it."""
    _, plan = tiny
    torch.manual_seed(1)
    model = effdsl.build(plan)
    randomise_batch_norm(model)  # batch norms that do something, as after training
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max()) / float(expected.abs().max())


def probe(plan: Plan, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, plan.in_channels, plan.resolution, plan.resolution)


# ---- each format reloads with its own runtime -----------------------------------------------


def run_pt2(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    module: Callable[[torch.Tensor], torch.Tensor] = torch.export.load(path).module()
    return module


def run_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def run_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    module: Callable[[torch.Tensor], torch.Tensor] = torch.jit.load(  # type: ignore[no-untyped-call]
        str(path)
    )
    return module


RUNTIMES = {".pt2": run_pt2, ".onnx": run_onnx, ".pt": run_torchscript}


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("extension", RUNTIMES)
def test_graph_outputs_embed_the_weights_and_match_the_module(
    tiny: tuple[effdsl.Network, Plan],
    trained: tuple[Path, torch.nn.Module],
    tmp_path: Path,
    extension: str,
) -> None:
    network, plan = tiny
    weights, reference = trained
    target = tmp_path / f"tiny{extension}"
    assert write_output(target, network, plan, weights=weights) == target
    run = RUNTIMES[extension](target)
    for batch in (1, 4):  # the batch dimension is dynamic
        x = probe(plan, batch)
        with torch.no_grad():
            assert relative_error(run(x), reference(x)) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temporary left


def test_inference_export_folds_batch_norm_and_still_matches(
    tiny: tuple[effdsl.Network, Plan], trained: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    network, plan = tiny
    weights, reference = trained
    target = tmp_path / "tiny.pt2"
    write_output(target, network, plan, weights=weights, inference=True)
    program = torch.export.load(target)
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("batch_norm" in op for op in ops)
    x = probe(plan)
    with torch.no_grad():
        assert relative_error(program.module()(x), reference(x)) < 1e-4


# ---- source formats -------------------------------------------------------------------------


def test_py_output_is_the_generated_source(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path
) -> None:
    network, plan = tiny
    target = write_output(
        tmp_path / "tiny.py", network, plan, spec_text=TINY, source_name="tiny.eff"
    )
    assert target.read_text(encoding="utf-8") == to_python(
        plan, source_name="tiny.eff", spec_text=TINY
    )


def test_eff_output_is_the_scaled_spec_with_its_scaling(tmp_path: Path) -> None:
    network = effdsl.parse(TINY)
    factors = effdsl.multipliers(network, preset="p1")
    scaled = effdsl.scaling.apply(network, factors)
    target = write_output(
        tmp_path / "tiny.eff", scaled, effdsl.lower(scaled, factors), source_name="tiny.eff"
    )
    text = target.read_text(encoding="utf-8")
    assert text.splitlines()[0] == (
        f"# Scaling: preset p1 (width ×1.5, depth ×2, input 40) from 'tiny.eff' by effdsl "
        f"{effdsl.__version__}."
    )
    assert effdsl.parse(text) == scaled
    assert effdsl.parse(text).presets == ()  # they described the unscaled network


def test_source_outputs_import_no_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import effdsl
        from effdsl.export import write_output
        net = effdsl.scale(effdsl.parse(sys.stdin.read()), phi=1)
        plan = effdsl.lower(net)
        for name in ("a.py", "a.eff"):
            write_output(name, net, plan)
        assert "torch" not in sys.modules, "writing source outputs imported torch"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=TINY, capture_output=True, text=True,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"a.py", "a.eff"}


@pytest.mark.parametrize("extension", [".py", ".eff"])
@pytest.mark.parametrize("option", [{"weights": "w.pth"}, {"inference": True}])
def test_source_outputs_refuse_graph_options(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path, extension: str, option: dict[str, Any]
) -> None:
    network, plan = tiny
    with pytest.raises(OutputError, match="applies to the exported graphs"):
        write_output(tmp_path / f"tiny{extension}", network, plan, **option)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["tiny.h5", "tiny", "tiny.py.bak"])
def test_unknown_extension_lists_the_formats(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path, name: str
) -> None:
    network, plan = tiny
    with pytest.raises(OutputError):
        output_format(name)  # checkable before any work is done
    with pytest.raises(OutputError) as caught:
        write_output(tmp_path / name, network, plan)
    assert all(ext in (caught.value.hint or "") for ext in (".py", ".eff", ".pt2", ".onnx", ".pt"))
    assert not list(tmp_path.iterdir())


# ---- failures leave nothing behind ----------------------------------------------------------


def test_a_failing_export_leaves_the_old_target_and_no_temporary(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network, plan = tiny
    target = tmp_path / "tiny.pt2"
    target.write_text("the previous model")

    def half_written(model: torch.nn.Module, example: torch.Tensor, temp: Path) -> None:
        temp.write_bytes(b"PK\x03\x04 half of an archive")
        raise RuntimeError("disk full")

    monkeypatch.setitem(export._GRAPH_FORMATS, ".pt2", (half_written, export._load_pt2))
    with pytest.raises(OutputError, match="disk full"):
        write_output(target, network, plan)
    assert target.read_text() == "the previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.pt2"]


def test_a_graph_that_disagrees_with_the_module_is_not_written(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network, plan = tiny
    save, load = export._GRAPH_FORMATS[".pt"]

    def off_by_a_bit(temp: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        run = load(temp)
        return lambda x: run(x) * 1.001

    monkeypatch.setitem(export._GRAPH_FORMATS, ".pt", (save, off_by_a_bit))
    with pytest.raises(OutputError, match="differ"):
        write_output(tmp_path / "tiny.pt", network, plan)
    assert not list(tmp_path.iterdir())


def test_onnx_without_its_packages_says_how_to_install_them(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network, plan = tiny
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` raises
    with pytest.raises(ToolMissingError, match="onnxscript") as caught:
        write_output(tmp_path / "tiny.onnx", network, plan)
    assert caught.value.hint == "pip install 'effdsl[onnx]'"
    assert not list(tmp_path.iterdir())


# ---- weights --------------------------------------------------------------------------------


def _state(plan: Plan) -> dict[str, torch.Tensor]:
    return dict(effdsl.build(plan).state_dict())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.pop("stages.1.blocks.0.se.reduce.bias"),
         "missing key `stages.1.blocks.0.se.reduce.bias`"),
        (lambda s: s.update({"head.conv.weight": torch.zeros(32, 16, 3, 3)}),
         r"`head.conv.weight` has shape \(32, 16, 3, 3\), the network's is \(32, 16, 1, 1\)"),
        (lambda s: s.update({"features.0.0.weight": torch.zeros(1)}),
         "unexpected key `features.0.0.weight`"),
        (lambda s: (s.pop("stem.conv.weight"), s.pop("classifier.bias")),
         r"missing key `stem.conv.weight` \(and 1 more\)"),
    ],
)
def test_weights_load_strictly_and_name_the_first_bad_key(
    tiny: tuple[effdsl.Network, Plan],
    tmp_path: Path,
    damage: Callable[[dict[str, torch.Tensor]], object],
    message: str,
) -> None:
    _, plan = tiny
    state = _state(plan)
    damage(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        load_weights(effdsl.build(plan), tmp_path / "bad.pth")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"not a pickle", "cannot read it"),
        ([torch.zeros(1)], "not a state_dict"),
    ],
)
def test_unreadable_weights_are_checkpoint_errors(
    tiny: tuple[effdsl.Network, Plan], tmp_path: Path, content: object, message: str
) -> None:
    network, plan = tiny
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        write_output(tmp_path / "tiny.pt", network, plan, weights=path)
    assert not (tmp_path / "tiny.pt").exists()


