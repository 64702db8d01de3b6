"""Writing a compiled network to a file, in the format its extension names.

    write_output("b3.py", network, plan)     # standalone PyTorch source (no torch needed to write)
    write_output("b3.eff", network, plan)    # the scaled spec, in canonical form
    write_output("b3.pt2", network, plan)    # torch.export program
    write_output("b3.onnx", network, plan)   # ONNX (needs `pip install 'effdsl[onnx]'`)
    write_output("b3.pt", network, plan)     # TorchScript

Every file appears whole or not at all (`effdsl.files.atomic_path`). The three graph formats
are built with `effdsl.torch_build.build`, optionally loaded with a state_dict (`weights=`) and
optimised for inference, then exported to a temporary file, **reloaded and run** on a random
input beside the eager module; only when the outputs agree is the file moved into place.

Only the graph formats import torch, and only when they are written.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdsl.arguments import checked
from effdsl.ast import Network
from effdsl.codegen import one_line, to_python
from effdsl.errors import CheckpointError, EffError, OutputError, ToolMissingError
from effdsl.files import atomic_path, atomic_write, open_input
from effdsl.fmt import format as format_spec
from effdsl.parser import parse
from effdsl.plan import ConvOp, Plan
from effdsl.scaling import Multipliers
from effdsl.version import __version__

if TYPE_CHECKING:
    import torch

#: The output formats, by extension.
FORMATS = {
    ".py": "standalone PyTorch source",
    ".eff": "the scaled spec",
    ".pt2": "torch.export program",
    ".onnx": "ONNX model",
    ".pt": "TorchScript module",
}

#: How far a reloaded graph's outputs may stray from the eager module's, relative to the
#: largest output: fp32 kernels may sum in another order, nothing more.
TOLERANCE = 1e-4

_BATCH = 2  # the example batch a graph is traced with (1 would be specialised, not dynamic)


# ---- names ----------------------------------------------------------------------------------


# ---- the writers ----------------------------------------------------------------------------


def output_format(path: str | Path) -> str:
    """The format `path` names by its extension (`.py`, `.eff`, `.pt2`, `.onnx`, `.pt`).

    Raises `OutputError` listing the formats for any other; callers can check a path before
    doing the work that `write_output` would finish.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(f"{ext} ({what})" for ext, what in FORMATS.items())
        raise OutputError(
            f"{target}: unknown output format `{suffix or target.name}`",
            hint=f"use one of {known}",
        )
    return suffix


@checked
def write_output(
    path: str | Path,
    network: Network,
    plan: Plan,
    *,
    weights: str | Path | None = None,
    inference: bool = False,
    spec_text: str | None = None,
    source_name: str | None = None,
) -> Path:
    """Write `network` (already scaled) lowered as `plan` to `path`, in its extension's format.

    `weights` is a state_dict file to load (strictly) into the graph formats; `inference=True`
    folds batch norm into the convs before exporting them. `spec_text` and `source_name` (the
    original spec and its path) are recorded in a `.py`'s docstring. Returns the path written.
    """
    target = Path(path)
    suffix = output_format(target)
    if suffix in (".py", ".eff"):
        _refuse_graph_options(target, weights, inference)
        text = (
            to_python(plan, source_name=source_name, spec_text=spec_text)
            if suffix == ".py"
            else scaled_spec(network, plan.scaling, source_name)
        )
        atomic_write(target, text)
        return target
    _write_graph(target, suffix, plan, weights, inference)
    return target


def _refuse_graph_options(target: Path, weights: str | Path | None, inference: bool) -> None:
    """A source file holds the architecture only; silently dropping weights would surprise."""
    option = "--weights" if weights is not None else "--inference" if inference else None
    if option is not None:
        raise OutputError(
            f"{target}: {option} applies to the exported graphs (.pt2, .onnx, .pt), "
            f"not to a {target.suffix} file",
            hint="a .py file holds no weights: load them with "
            "model.load_state_dict(torch.load(path, weights_only=True))",
        )


@checked
def scaled_spec(network: Network, factors: Multipliers, source_name: str | None = None) -> str:
    """The canonical text of `network`, after a comment saying how it was scaled.

    It is parsed back before it is returned, so a spec that would not read back as
    `network` is never written.
    """
    origin = f" from {source_name!r}" if source_name is not None else ""
    comment = (
        f"# Scaling: {factors.describe()} (width ×{factors.width:.6g}, depth "
        f"×{factors.depth:.6g}, input {network.input.size}){origin} by effdsl {__version__}."
    )
    # a preset's name may hold a newline; in a comment it must not end the line
    text = one_line(comment) + "\n" + format_spec(network)
    if parse(text) != network:
        raise OutputError("the scaled spec does not read back as the network (a bug in effdsl)")
    return text


# ---- graph formats --------------------------------------------------------------------------


def _write_graph(
    target: Path, suffix: str, plan: Plan, weights: str | Path | None, inference: bool
) -> None:
    if suffix == ".onnx":
        _refuse_routed_convs(target, plan)
        _require_onnx()
    import torch

    from effdsl.limits import check_memory
    from effdsl.torch_build import build, optimize_for_inference

    # the file is verified by running it beside the eager module, on one image
    check_memory(plan, images=1, doing=f"export and verify {target.name}")
    model = build(plan)
    if weights is not None:
        load_weights(model, weights)
    model.eval()
    if inference:
        model = optimize_for_inference(model)
    save, load = _GRAPH_FORMATS[suffix]
    generator = torch.Generator().manual_seed(0)
    shape = (plan.in_channels, plan.resolution, plan.resolution)
    example = torch.randn(_BATCH, *shape, generator=generator)
    # one image: cheap for big nets, and a batch size other than the trace's
    probe = torch.randn(1, *shape, generator=generator)
    with atomic_path(target) as temp:
        with _as_output_error(target, f"export to {FORMATS[suffix]}"):
            save(model, example, temp)
        with _as_output_error(target, f"reload the {FORMATS[suffix]}"):
            run = load(temp)
        verify(target, model, run, probe)


def _refuse_routed_convs(target: Path, plan: Plan) -> None:
    """ONNX's Conv takes its group count as a constant, but a CondConv conv runs the batch as
    one conv of batch·groups groups: with a dynamic batch ONNX cannot say it."""
    routed = next((op for op in plan.ops() if isinstance(op, ConvOp) and op.experts), None)
    if routed is not None:
        raise OutputError(
            f"{target}: ONNX cannot express the CondConv conv `{routed.path}` (its per-sample "
            "kernels make the conv's group count depend on the batch size)",
            hint="export it as .pt2 or .pt, which keep the batch dynamic",
        )


@contextlib.contextmanager
def _as_output_error(target: Path, doing: str) -> Iterator[None]:
    """Errors from torch or an exporter become an `OutputError` naming the file."""
    try:
        yield
    except EffError:
        raise
    except Exception as error:
        raise OutputError(
            f"{target}: could not {doing}: {type(error).__name__}: {error}"
        ) from error


def verify(
    target: Path,
    model: torch.nn.Module,
    run: Callable[[torch.Tensor], torch.Tensor],
    probe: torch.Tensor,
) -> None:
    """Compare the reloaded graph `run` with the eager `model` on `probe`; raise on mismatch."""
    import torch

    with torch.no_grad():
        expected = model(probe)
        with _as_output_error(target, "run the reloaded graph"):
            got = run(probe)
    if got.shape != expected.shape:
        raise OutputError(
            f"{target}: the reloaded graph gives shape {tuple(got.shape)}, the module "
            f"{tuple(expected.shape)}"
        )
    # relative to the largest output: a freshly initialised network's logits can be 1e-14
    scale = float(expected.abs().max())
    error = float((got - expected).abs().max()) / (scale if scale > 0 else 1.0)
    if not error <= TOLERANCE:  # `not <=` so that NaN fails too
        raise OutputError(
            f"{target}: the reloaded graph's outputs differ from the module's by {error:.3g} "
            f"(relative), more than {TOLERANCE:g}; nothing was written"
        )


def _dynamic_batch() -> tuple[dict[int, Any], ...]:
    from torch.export import Dim

    return ({0: Dim("batch")},)


def _save_pt2(model: torch.nn.Module, example: torch.Tensor, temp: Path) -> None:
    import torch

    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
    # through a file object: given a path, torch.export warns unless it ends in .pt2
    with temp.open("wb") as handle, warnings.catch_warnings():
        # channels_last weights (--inference) are not "complete" in torch.export's grouping of
        # storages, and it warns that weights off the CPU might suffer; these are on the CPU,
        # and the reload below checks what was saved
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, handle)


def _load_pt2(temp: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    with temp.open("rb") as handle:
        module: Callable[[torch.Tensor], torch.Tensor] = torch.export.load(handle).module()
    return module


def _save_onnx(model: torch.nn.Module, example: torch.Tensor, temp: Path) -> None:
    import torch

    # the exporter reports progress on stdout, which belongs to the CLI (`compile --json`)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=_dynamic_batch(),
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
        )
    if program is None:  # pragma: no cover - only the legacy exporter returns None
        raise OutputError("the ONNX exporter returned no program")
    # one self-contained file: the weights inside, not in a `.data` file beside it
    program.save(temp, external_data=False)


def _load_onnx(temp: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(temp), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(["logits"], {"image": x.numpy()})
        return torch.from_numpy(logits)

    return run


def _save_torchscript(model: torch.nn.Module, example: torch.Tensor, temp: Path) -> None:
    import torch

    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but .pt is what the user asked for
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(temp))


def _load_torchscript(temp: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        module: Callable[[torch.Tensor], torch.Tensor] = torch.jit.load(  # type: ignore[no-untyped-call]
            str(temp)
        )
    return module


_Save = Callable[["torch.nn.Module", "torch.Tensor", Path], None]
_Load = Callable[[Path], Callable[["torch.Tensor"], "torch.Tensor"]]

_GRAPH_FORMATS: dict[str, tuple[_Save, _Load]] = {
    ".pt2": (_save_pt2, _load_pt2),
    ".onnx": (_save_onnx, _load_onnx),
    ".pt": (_save_torchscript, _load_torchscript),
}


def _require_onnx() -> None:
    missing = []
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ToolMissingError(
            f"writing .onnx needs the package{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}",
            hint="pip install 'effdsl[onnx]'",
        )


# ---- weights --------------------------------------------------------------------------------


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the state_dict saved at `path` into `model`, strictly.

    Every key of the model must be there with its shape, and nothing else: the error names the
    first key that is missing, has the wrong shape, or is unexpected.
    """
    import torch

    try:
        with open_input(path, "checkpoint") as handle:
            state = torch.load(handle, weights_only=True, map_location="cpu")
    except EffError as error:
        raise CheckpointError(error.message, hint=error.hint) from None
    except Exception as error:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) cannot read it: {error}",
            hint="save weights with torch.save(model.state_dict(), path)",
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise CheckpointError(
            f"{path}: not a state_dict (a mapping of names to tensors)",
            hint="save weights with torch.save(model.state_dict(), path)",
        )
    problems = _state_dict_problems(model.state_dict(), state)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path}: {problems[0]}{more}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as error:  # what the checks above did not foresee, still the file's fault
        raise CheckpointError(
            f"{path}: cannot load it: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None


def _state_dict_problems(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> list[str]:
    """What keeps `given` from loading strictly where `expected` is, in the model's key order."""
    problems = []
    for key, tensor in expected.items():
        if key not in given:
            problems.append(f"missing key `{key}`")
        elif given[key].shape != tensor.shape:
            problems.append(
                f"`{key}` has shape {tuple(given[key].shape)}, the network's is "
                f"{tuple(tensor.shape)}"
            )
    problems += [f"unexpected key `{key}`" for key in given if key not in expected]
    for key, tensor in expected.items():
        if key in given and given[key].shape == tensor.shape:
            problem = tensor_problem(given[key], tensor)
            if problem is not None:
                problems.append(f"`{key}` {problem}")
    return problems


def tensor_problem(given: torch.Tensor, expected: torch.Tensor) -> str | None:
    """Why `given` cannot stand in for `expected` (a dense, finite CPU tensor of its kind)."""
    import torch

    if given.is_meta or given.device.type != "cpu":
        return f"is on the {given.device.type} device, not stored in the file"
    if given.layout != torch.strided:
        return f"is a {str(given.layout).removeprefix('torch.')} tensor, not a dense one"
    if given.is_quantized:
        return "is a quantized tensor; the network needs plain floating-point weights"
    if given.is_complex() or given.dtype.is_floating_point != expected.dtype.is_floating_point:
        return f"has dtype {str(given.dtype).removeprefix('torch.')}, the network's is " + str(
            expected.dtype
        ).removeprefix("torch.")
    if given.dtype.is_floating_point and not bool(torch.isfinite(given).all()):
        return "holds NaN or infinite values"
    return None
