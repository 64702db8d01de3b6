"""Benchmark: effdsl's EfficientNets against torchvision's and timm's, same weights, one process.

    python bench/models.py                   # B0: the CPU rows, then the GPU rows if CUDA is there
    python bench/models.py --net b3          # b0, b3, b7 (presets of specs/b0.eff) or v2s
    python bench/models.py --quick           # 3 rounds, no torch.compile rows
    python bench/models.py --gpu-path-on-cpu # run the GPU script path on the CPU at toy sizes
                                             # (checks the code; its numbers mean nothing)

All three modules hold the same weights (effdsl's, converted with `effdsl.convert_state_dict`),
with batch-norm statistics calibrated on random images so that folding has real work to do;
their parameter counts must be equal and their outputs must agree before anything is timed.
Cases of a row run interleaved (round r starts with case r mod n), and the tables give medians
over rounds and `peer time / effdsl time` (> 1: effdsl is faster).

CPU rows (fp32, `--batch` 8 at `--size` 224):
  eval eager        build() vs torchvision vs timm, NCHW input as a user would pass it
  train eager       forward, cross-entropy, backward, SGD step
  eval optimised    optimize_for_inference() vs torchvision with batch norm folded by hand
                    (module surgery, below) + channels_last, and torchvision eager beside them
  eval compiled     the same two under torch.compile (inductor), then with inductor's freezing
                    (weights prepacked for oneDNN, activations fused), torchvision eager beside
  eval onnxruntime  ONNX Runtime (CPU provider, intra-op threads = torch's, spinning off) on
                    effdsl's own `.onnx` export and on torchvision's export of the same
                    weights, beside optimize_for_inference() and torchvision eager
                    (`--onnx-only`: this row alone; `--no-onnx`: without it); run it
                    with OMP_WAIT_POLICY=PASSIVE so that torch's threads do not spin either
  train memory      peak resident memory of a training step above the steady state, each model
                    in its own child process (glibc told to return freed blocks at once)

GPU rows (bf16 autocast, channels_last, `torch.backends.cudnn.benchmark`), one script path
that starts no compilation with less than 90 s of `--gpu-budget` left (default 390 s, so that
it ends within 8 minutes, start-up included):
  eval eager bs 256, eval compiled (effdsl's inference copy, timm, torchvision; then effdsl's
  inference copy with CUDA graphs), train eager bs 128 and train compiled, with the peak of
  `torch.cuda.max_memory_allocated` above what was allocated before the step.

Memory: by default (`--malloc reuse`) glibc is told to keep freed blocks for reuse, so no case
pays page faults for fresh memory and no case's time depends on what ran before it; with
`--malloc glibc` its defaults stand (big blocks mmap()ed fresh per call, thresholds that adapt
to the history). `--profile` prints torch.profiler's busiest ops for each CPU eval case.

Results go to bench/results/models-NET-cpu.json (with `--malloc glibc`: models-NET-cpu-glibc)
and models-NET-cuda.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torchvision
from harness import ROOT, interleave, load_average, median, spread, table, write_json
from harness import machine as describe_machine
from torch import nn
from torch.nn import functional as F

import effdsl

# ---- the networks and their peers -----------------------------------------------------------


@dataclass(frozen=True)
class Net:
    spec: str  # in specs/
    preset: str | None
    torchvision: str
    timm: str
    timm_options: tuple[tuple[str, float], ...] = ()  # for timm.create_model

    def make_timm(self) -> nn.Module:
        options: dict[str, Any] = dict(self.timm_options)
        return timm.create_model(self.timm, **options)


NETS = {
    "b0": Net("b0.eff", None, "efficientnet_b0", "efficientnet_b0"),
    "b3": Net("b0.eff", "b3", "efficientnet_b3", "efficientnet_b3"),
    "b7": Net("b0.eff", "b7", "efficientnet_b7", "efficientnet_b7"),
    # timm's PyTorch-style V2-S has batch-norm eps 1e-5; the paper's (and the spec's) is 1e-3
    "v2s": Net(
        "efficientnetv2-s.eff", None, "efficientnet_v2_s", "efficientnetv2_s", (("bn_eps", 1e-3),)
    ),
}


def network(net: Net) -> effdsl.Network:
    spec = effdsl.load(ROOT / "specs" / net.spec)
    return effdsl.scale(spec, preset=net.preset) if net.preset else spec


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, size: int) -> None:
    """Running statistics of random images, as a trained net has statistics of its data."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.train()
    generator = torch.Generator().manual_seed(1)
    model(torch.randn(4, 3, size, size, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def peers(net: Net, calibration_size: int) -> dict[str, nn.Module]:
    """effdsl's module, torchvision's and timm's, in eval mode, holding the same weights."""
    torch.manual_seed(0)
    spec = network(net)
    ours = effdsl.build(spec)
    calibrate_batch_norm(ours, calibration_size)
    state = ours.state_dict()
    theirs_tv = getattr(torchvision.models, net.torchvision)()
    theirs_tv.load_state_dict(effdsl.convert_state_dict(state, network=spec, target="torchvision"))
    theirs_timm = net.make_timm()
    theirs_timm.load_state_dict(effdsl.convert_state_dict(state, network=spec, target="timm"))
    models = {"effdsl": ours, "torchvision": theirs_tv.eval(), "timm": theirs_timm.eval()}
    counts = {name: parameter_count(model) for name, model in models.items()}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"parameter counts differ, the comparison is void: {counts}")
    return models


def check_same_function(models: dict[str, nn.Module], x: torch.Tensor, label: str) -> float:
    """The largest difference of any model's output from effdsl's, relative to its scale."""
    with torch.inference_mode():
        outputs = {name: model(x).float() for name, model in models.items()}
    reference = outputs["effdsl"]
    scale = float(reference.abs().max())
    worst = max(float((out - reference).abs().max()) / scale for out in outputs.values())
    if not worst < 1e-3:  # also catches NaN
        raise SystemExit(f"{label}: outputs differ by {worst:.2e} (relative); not the same net")
    return worst


def fold_torchvision(model: nn.Module) -> nn.Module:
    """torchvision's model with batch norm folded by hand, in eval mode and channels_last.

    Module surgery: every `Conv2dNormActivation` is a Sequential (conv, bn, act); each
    conv → bn pair becomes the folded conv and an `nn.Identity`. Nothing else changes.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if left:
        raise SystemExit(f"folding torchvision's model left {left} batch norms")
    return folded.to(memory_format=torch.channels_last)


# ---- what is timed --------------------------------------------------------------------------


def compile_module(
    model: nn.Module, backend: str = "inductor", mode: str | None = None
) -> nn.Module:
    """`torch.compile(model)`: a module that compiles on its first call."""
    return cast(nn.Module, torch.compile(model, backend=backend, mode=mode))


def evaluator(
    model: nn.Module,
    x: torch.Tensor,
    context: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> Callable[[], None]:
    """One forward pass in inference mode, inside `context()` (autocast, a compiler setting)."""

    def run() -> None:
        with torch.inference_mode(), context():
            model(x)

    return run


def trainer(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> Callable[[], None]:
    """One SGD step with momentum, gradients set to None first."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return run


@dataclass
class Row:
    """One case of one group: its seconds per call over the rounds, and its peak memory."""

    group: str
    case: str
    images: int
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    compile_seconds: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return median(self.seconds) if self.seconds else float("nan")


def timed_group(
    group: str,
    cases: dict[str, Callable[[], None]],
    images: int,
    rounds: int,
    *,
    clock: Callable[[], float],
    sync: Callable[[], None] = lambda: None,
    may_start: Callable[[str], bool] = lambda name: True,
) -> list[Row]:
    """Time the cases interleaved; the first call of each (compilation, if any) is timed apart.

    A case for which `may_start(name)` is false when its first call is due is left out.
    """
    rows = {}
    for name, run in list(cases.items()):
        if not may_start(f"{group}: {name}"):
            del cases[name]
            continue
        rows[name] = Row(group, name, images)
        start = time.perf_counter()
        run()
        sync()
        rows[name].compile_seconds = time.perf_counter() - start
    if not cases:
        return []
    times = interleave(cases, rounds=rounds, warmup=1, sync=sync, clock=clock)
    for name, seconds in times.items():
        rows[name].seconds = seconds
    print(f"  {group}: done (load {load_average()[0]})", file=sys.stderr, flush=True)
    return list(rows.values())


# ---- CPU ------------------------------------------------------------------------------------


def cpu_rows(net: Net, args: argparse.Namespace) -> list[Row]:
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    models = peers(net, args.size)
    x = torch.randn(args.batch, 3, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,))
    check_same_function(models, x[:2], "eager")
    label = f"cpu fp32 bs{args.batch} {args.size}px"
    if args.onnx_only:
        return onnx_rows(net, models, x, x_cl, args, label, clock)
    rows = timed_group(
        f"{label} eval eager",
        {name: evaluator(model, x) for name, model in models.items()},
        args.batch,
        args.rounds,
        clock=clock,
    )

    training = {name: copy.deepcopy(model).train() for name, model in models.items()}
    rows += timed_group(
        f"{label} train step eager",
        {name: trainer(model, x, y) for name, model in training.items()},
        args.batch,
        max(3, args.rounds // 2),
        clock=clock,
    )
    del training

    optimised = {
        "effdsl optimize_for_inference": effdsl.optimize_for_inference(models["effdsl"]),
        "torchvision folded by hand + channels_last": fold_torchvision(models["torchvision"]),
    }
    check_same_function({"effdsl": models["effdsl"], **optimised}, x_cl[:2], "optimised")
    cases = {name: evaluator(model, x_cl) for name, model in optimised.items()}
    cases["torchvision eager"] = evaluator(models["torchvision"], x)
    rows += timed_group(f"{label} eval optimised", cases, args.batch, args.rounds, clock=clock)

    if args.onnx:
        rows += onnx_rows(net, models, x, x_cl, args, label, clock)

    if args.compile:
        cases = {
            f"{name} + compile": evaluator(compile_module(model), x_cl)
            for name, model in optimised.items()
        }
        # inductor's freezing: weights become constants, prepacked for oneDNN, with the
        # activations fused into the convs; read when the graph compiles (the first call)
        for name, model in optimised.items():
            cases[f"{name} + compile (freezing)"] = evaluator(
                compile_module(model), x_cl, lambda: torch._inductor.config.patch(freezing=True)
            )
        cases["torchvision eager"] = evaluator(models["torchvision"], x)
        rows += timed_group(f"{label} eval compiled", cases, args.batch, args.rounds, clock=clock)

    if args.profile:
        print_profiles(
            {
                "effdsl eager": evaluator(models["effdsl"], x),
                "torchvision eager": evaluator(models["torchvision"], x),
                "timm eager": evaluator(models["timm"], x),
                **{name: evaluator(model, x_cl) for name, model in optimised.items()},
            }
        )

    for row in memory_rows(args, f"{label} train step peak RSS"):
        rows.append(row)
    return rows


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads that do not spin.

    ORT's worker threads busy-wait for work by default; on a shared or small machine the
    spinning takes the cores the other case needs, so interleaved timings would measure the
    spinning (either side can look 1.5–2.5× slower). Turned off, as a server sharing the
    machine would.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_rows(
    net: Net,
    models: dict[str, nn.Module],
    x: torch.Tensor,
    x_cl: torch.Tensor,
    args: argparse.Namespace,
    label: str,
    clock: Callable[[], float],
) -> list[Row]:
    """ONNX Runtime on effdsl's own `.onnx` export and on torchvision's export of the same
    weights, beside `optimize_for_inference` and torchvision eager."""
    from effdsl.export import write_output

    folder = Path(tempfile.mkdtemp(prefix="effdsl-bench-onnx-"))
    weights = folder / "effdsl.pt"
    torch.save(models["effdsl"].state_dict(), weights)
    spec = network(net)
    plan = effdsl.lower(effdsl.scale(spec, resolution=args.size))
    write_output(folder / "effdsl.onnx", spec, plan, weights=weights)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            models["torchvision"],
            (x[:2],),
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["image"],
            output_names=["logits"],
            verbose=False,
        )
    assert program is not None
    program.save(folder / "torchvision.onnx", external_data=False)
    threads = torch.get_num_threads()
    sessions = {
        name: ort_session(folder / f"{name}.onnx", threads) for name in ("effdsl", "torchvision")
    }
    image = x.numpy()
    with torch.inference_mode():
        reference = models["effdsl"](x).numpy()
    for name, session in sessions.items():
        (logits,) = session.run(["logits"], {"image": image})
        worst = float(abs(logits - reference).max() / abs(reference).max())
        if not worst < 1e-3:
            raise SystemExit(f"onnxruntime on {name}.onnx differs by {worst:.2e}; not the same net")

    def ort(session: Any) -> Callable[[], None]:
        return lambda: session.run(["logits"], {"image": image})

    cases: dict[str, Callable[[], None]] = {
        "effdsl .onnx on onnxruntime": ort(sessions["effdsl"]),
        "torchvision .onnx on onnxruntime": ort(sessions["torchvision"]),
        "effdsl optimize_for_inference": evaluator(
            effdsl.optimize_for_inference(models["effdsl"]), x_cl
        ),
        "torchvision eager": evaluator(models["torchvision"], x),
    }
    rows = timed_group(f"{label} eval onnxruntime", cases, args.batch, args.rounds, clock=clock)
    shutil.rmtree(folder)
    return rows


def memory_rows(args: argparse.Namespace, group: str) -> Iterator[Row]:
    """Each model's training-step memory, measured in a child process of its own."""
    for name in ("effdsl", "torchvision", "timm"):
        command = [
            sys.executable,
            __file__,
            "--net",
            args.net,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--memory-child",
            name,
        ]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"memory child {name} failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        yield Row(group, name, args.batch, peak_bytes=result["peak_bytes"], note=result["note"])


def memory_child(args: argparse.Namespace) -> None:
    """Run in a fresh process: a model's peak RSS during a training step, above its steady state.

    Freed blocks go straight back to the system (MALLOC_MMAP_THRESHOLD_ in the parent's
    environment), so resident memory follows live tensors. The peak (VmHWM) is reset before
    each step; the median of three steps after two warm-up steps is printed as JSON.
    """
    net = NETS[args.net]
    torch.manual_seed(0)
    make: dict[str, Callable[[], nn.Module]] = {
        "effdsl": lambda: effdsl.build(network(net)),
        "torchvision": getattr(torchvision.models, net.torchvision),
        "timm": net.make_timm,
    }
    model = make[args.memory_child]().train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    step = trainer(model, x, y)
    step()
    step()
    libc = ctypes.CDLL("libc.so.6")
    peaks = []
    for _ in range(3):
        gc.collect()
        libc.malloc_trim(0)
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset VmHWM, the peak resident size
        step()
        peaks.append(_status_bytes("VmHWM") - before)
    note = f"steady state {before / 2**20:.0f} MiB"
    print(json.dumps({"peak_bytes": int(median(peaks)), "note": note}))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {field}")


def print_profiles(cases: dict[str, Callable[[], None]], calls: int = 3, top: int = 8) -> None:
    """torch.profiler's busiest ops of each case: self CPU time per call and share."""
    from torch.profiler import ProfilerActivity, profile

    for name, run in cases.items():
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                run()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        lines = [
            [
                e.key,
                f"{e.self_cpu_time_total / calls / 1e3:,.1f}",
                f"{e.self_cpu_time_total / total:.0%}",
                f"{e.count // calls}",
            ]
            for e in events[:top]
        ]
        print(f"\n### profile: {name} ({total / calls / 1e3:,.1f} ms of ops per call)\n")
        print(table(["op", "self ms per call", "share", "calls"], lines))


# ---- GPU ------------------------------------------------------------------------------------


def gpu_rows(net: Net, args: argparse.Namespace) -> list[Row]:
    """The GPU rows; with `--gpu-path-on-cpu`, the same code on the CPU at toy sizes."""
    on_cpu = args.gpu_path_on_cpu
    device = torch.device("cpu" if on_cpu else "cuda")
    deadline = time.monotonic() + float(args.gpu_budget)
    eval_batch, train_batch, size = (
        (2, 2, 64) if on_cpu else (args.gpu_eval_batch, args.gpu_train_batch, args.gpu_size)
    )
    rounds = 2 if on_cpu else args.rounds
    backend = "aot_eager" if on_cpu else "inductor"
    torch.backends.cudnn.benchmark = True

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def autocast() -> AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def compiled(model: nn.Module, mode: str | None = None) -> nn.Module:
        return compile_module(model, backend=backend, mode=mode)

    def time_left(what: str) -> bool:
        """Whether a compilation (about a minute or two on a GPU host) still fits the budget."""
        left = deadline - time.monotonic()
        if left < 90:
            print(f"  skipped {what}: {left:.0f} s of the GPU budget left", file=sys.stderr)
        return left >= 90

    models = {
        name: model.to(device).to(memory_format=torch.channels_last)
        for name, model in peers(net, 64 if on_cpu else 224).items()
    }
    label = f"{device.type} bf16 channels_last"
    x = torch.randn(eval_batch, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    fast = effdsl.optimize_for_inference(models["effdsl"])
    eager = {**models, "effdsl optimize_for_inference": fast}
    rows = timed_group(
        f"{label} eval eager bs{eval_batch}",
        {name: evaluator(model, x, autocast) for name, model in eager.items()},
        eval_batch,
        rounds,
        clock=time.perf_counter,
        sync=sync,
    )

    group = f"{label} eval compiled bs{eval_batch}"
    order = [("effdsl optimize_for_inference", fast), ("timm", models["timm"])]
    order += [("torchvision", models["torchvision"])]
    cases = {f"{name} + compile": evaluator(compiled(model), x, autocast) for name, model in order}
    if not on_cpu:
        graphs = compiled(fast, mode="reduce-overhead")
        cases["effdsl optimize_for_inference + compile + CUDA graphs"] = evaluator(
            graphs, x, autocast
        )
    rows += timed_group(
        group, cases, eval_batch, rounds, clock=time.perf_counter, sync=sync, may_start=time_left
    )

    x = torch.randn(train_batch, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (train_batch,), device=device)
    for kind in ("eager", "compiled"):
        group = f"{label} train step {kind} bs{train_batch}"
        steps = {}
        for name in ("effdsl", "timm", "torchvision"):  # the peers that matter most first
            trained = copy.deepcopy(models[name]).train()
            steps[name] = trainer(
                compiled(trained) if kind == "compiled" else trained, x, y, autocast
            )
        group_rows = timed_group(
            group,
            steps,
            train_batch,
            rounds,
            clock=time.perf_counter,
            sync=sync,
            may_start=time_left if kind == "compiled" else lambda name: True,
        )
        for row in group_rows:
            row.peak_bytes = peak_allocated(steps[row.case], device)
        rows += group_rows
        del steps
        gc.collect()
    return rows


def peak_allocated(step: Callable[[], None], device: torch.device) -> int | None:
    """The most memory a step allocates on the GPU above what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


# ---- report ---------------------------------------------------------------------------------


def report(rows: list[Row]) -> str:
    """One table: per case its median, spread, images/s and peer time / effdsl time."""
    lines = []
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    for group, members in groups.items():
        ours = next((r for r in members if r.case.startswith("effdsl")), None)
        for row in members:
            if row.peak_bytes is not None and not row.seconds:
                ratio = ""
                if ours is not None and ours.peak_bytes and row is not ours:
                    ratio = f"{row.peak_bytes / ours.peak_bytes:.2f}×"
                cells = ["", "", "", f"{row.peak_bytes / 2**20:,.0f} MiB", ratio]
            else:
                ratio = f"{row.median / ours.median:.2f}×" if ours and row is not ours else ""
                peak = f"{row.peak_bytes / 2**20:,.0f} MiB" if row.peak_bytes else ""
                cells = [
                    f"{row.median * 1e3:,.1f}",
                    f"±{spread(row.seconds):.0%}" if len(row.seconds) >= 4 else "",
                    f"{row.images / row.median:,.1f}",
                    peak,
                    ratio,
                ]
            lines.append([group, row.case, *cells])
    header = ["row", "case", "median ms", "spread", "img/s", "peak mem", "÷ effdsl"]
    return table(header, lines)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """Each target of the issue that these rows measure: the figure, the goal, met or not."""

    def find(suffix: str, case: str) -> Row | None:
        return next((r for r in rows if r.group.endswith(suffix) and r.case == case), None)

    found: list[dict[str, Any]] = []

    def add(name: str, figure: float | None, goal: float, higher_is_better: bool = True) -> None:
        if figure is None:
            return
        met = figure >= goal if higher_is_better else figure <= goal
        found.append({"target": name, "figure": round(figure, 3), "goal": goal, "met": met})

    def speedup(suffix: str, ours: str, theirs: str) -> float | None:
        a, b = find(suffix, ours), find(suffix, theirs)
        return b.median / a.median if a and b and a.seconds and b.seconds else None

    for suffix in ("eval eager", "train step eager"):
        tv = speedup(suffix, "effdsl", "torchvision")
        tm = speedup(suffix, "effdsl", "timm")
        if tv is not None and tm is not None:
            add(f"cpu {suffix}: effdsl vs the faster of torchvision and timm", min(tv, tm), 1.0)
    opt = "effdsl optimize_for_inference"
    add(
        "cpu optimised vs torchvision eager",
        speedup("eval optimised", opt, "torchvision eager"),
        2.0,
    )
    hand = "torchvision folded by hand + channels_last"
    add("cpu optimised vs torchvision folded by hand", speedup("eval optimised", opt, hand), 1.0)
    add(
        "cpu compiled: optimised vs torchvision folded by hand, both compiled",
        speedup("eval compiled", f"{opt} + compile", f"{hand} + compile"),
        1.0,
    )
    ours_mem, timm_mem = find("peak RSS", "effdsl"), find("peak RSS", "timm")
    if ours_mem and timm_mem and ours_mem.peak_bytes and timm_mem.peak_bytes:
        # resident memory moves in pages and allocator blocks: compare whole MiB
        ours_mib, timm_mib = round(ours_mem.peak_bytes / 2**20), round(timm_mem.peak_bytes / 2**20)
        add("cpu training peak memory: effdsl / timm (MiB)", ours_mib / timm_mib, 1.0, False)
    return found


def save(name: str, rows: list[Row], args: argparse.Namespace, started: dict[str, Any]) -> None:
    payload = {
        "machine": {**started, "load_end": load_average()},
        "options": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "rows": [{**asdict(r), "median": r.median} for r in rows],
        "targets": targets(rows),
    }
    print(f"wrote {write_json(name, payload).relative_to(ROOT)}", file=sys.stderr)


def print_report(title: str, rows: list[Row], started: dict[str, Any]) -> None:
    print(f"\n## {title}\n")
    print(
        f"{started['cpu']}, {started['cores']} cores, torch {started['torch']} "
        f"({started['threads']} threads), malloc {started.get('malloc')}, "
        f"load {started['load_start']} → {load_average()}\n"
    )
    print(report(rows))
    found = targets(rows)
    if found:
        print()
        for target in found:
            mark = "met" if target["met"] else "MISSED"
            print(f"- {target['target']}: {target['figure']} (goal {target['goal']}) {mark}")


# ---- command line ---------------------------------------------------------------------------


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="b0")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--quick", action="store_true", help="3 rounds and no compile rows")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--batch", type=int, default=8, help="CPU batch (default 8)")
    parser.add_argument("--size", type=int, default=224, help="CPU image size (default 224)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="CPU rows: wall time, or CPU seconds of the process (less sensitive to other load)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--cpu-only", action="store_true")
    where.add_argument("--gpu-only", action="store_true")
    where.add_argument(
        "--gpu-path-on-cpu",
        action="store_true",
        help="run the GPU rows' code on the CPU at toy sizes, aot_eager; writes no JSON",
    )
    parser.add_argument("--gpu-eval-batch", type=int, default=256)
    parser.add_argument("--gpu-train-batch", type=int, default=128)
    parser.add_argument("--gpu-size", type=int, default=224)
    parser.add_argument(
        "--gpu-budget",
        type=float,
        default=390,
        help="seconds for the GPU rows; no compilation starts with less than 90 left",
    )
    parser.add_argument(
        "--malloc",
        choices=("reuse", "glibc"),
        default="reuse",
        help="reuse: glibc keeps freed memory for reuse (mallopt), so no run pays page faults "
        "for fresh memory; glibc: its defaults, where early runs do (see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's busiest ops per CPU case"
    )
    parser.add_argument(
        "--no-onnx",
        dest="onnx",
        action="store_false",
        help="leave out the ONNX Runtime row (it needs `pip install 'effdsl[onnx]'`)",
    )
    parser.add_argument(
        "--onnx-only",
        action="store_true",
        help="CPU: only the ONNX Runtime row (results to models-NET-cpu-onnx.json)",
    )
    parser.add_argument("--no-json", dest="json", action="store_false")
    parser.add_argument("--memory-child", choices=("effdsl", "torchvision", "timm"))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.compile = 3, False
    return args


def reuse_freed_memory() -> None:
    """Tell glibc to keep freed blocks for reuse instead of returning them to the system.

    By default glibc serves big blocks with fresh mmap()s and gives them back on free, so a
    forward pass pays page faults on fresh memory, and how many depends on what ran before
    (the thresholds adapt). Fixed thresholds make every case run as in a warmed-up server,
    whatever ran before it, like jemalloc or tcmalloc would.
    """
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    for option in (m_mmap_threshold, m_trim_threshold):
        if libc.mallopt(option, 1 << 30) != 1:
            raise SystemExit("mallopt failed; run with --malloc glibc")


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    if args.malloc == "reuse" and not args.memory_child:
        reuse_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    net = NETS[args.net]

    def machine() -> dict[str, Any]:
        # libgomp reads OMP_WAIT_POLICY when torch loads: PASSIVE stops torch's threads
        # spinning, as ORT's are told to (see docs/benchmarks.md, "ONNX Runtime")
        return {
            **describe_machine(),
            "malloc": args.malloc,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        }

    if args.gpu_path_on_cpu:
        started = machine()
        print_report(f"{args.net}: the GPU path on the CPU", gpu_rows(net, args), started)
        return
    if not args.gpu_only:
        started = machine()
        rows = cpu_rows(net, args)
        print_report(f"{args.net} on the CPU", rows, started)
        if args.json:
            suffix = "" if args.malloc == "reuse" else f"-{args.malloc}"
            suffix += "-onnx" if args.onnx_only else ""
            save(f"models-{args.net}-cpu{suffix}", rows, args, started)
    if not args.cpu_only and torch.cuda.is_available():
        started = machine()
        rows = gpu_rows(net, args)
        print_report(f"{args.net} on {started['gpu']}", rows, started)
        if args.json:
            save(f"models-{args.net}-cuda", rows, args, started)
    elif not args.cpu_only:
        print("\nno CUDA device: GPU rows not measured", file=sys.stderr)


if __name__ == "__main__":
    main()
