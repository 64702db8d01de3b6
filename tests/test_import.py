"""`effdsl import`: specs read off timm, torchvision and effdsl's own modules.

Checked against the hand-written specs (the importer must write what a person wrote), by round
trips (every shipped spec, built and imported back, is the same AST), by the chain
import → params/MACs → convert → logits on small models, and by its refusals' messages.
The whole zoo (docs/zoo.md) is re-measured by the slow tests at the end.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import effdsl
from effdsl import ast
from effdsl.errors import ImportRefused
from effdsl.importers import import_family, import_model
from effdsl.importers.timm_models import TimmReader
from effdsl.importers.zoo import measure

from .conftest import ROOT, SPECS


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `effdsl` command; importing timm in a fresh process is slow on a busy machine."""
    return subprocess.run(
        [sys.executable, "-m", "effdsl", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


SHIPPED = sorted(SPECS.glob("*.eff"))


def structure(network: ast.Network) -> ast.Network:
    """What a built module carries: no name, presets, scaling coefficients, stage names, opt-outs
    of scaling or `shrink=no` (which act only when the spec is scaled), nor `skip=no` on a line
    none of whose blocks could have a residual anyway; comments aside."""
    plan = effdsl.lower(network)
    channels = network.stem.channels

    def plain(block: ast.Block) -> ast.Block:
        nonlocal channels
        if isinstance(block, ast.NoHead):
            return block
        update: dict[str, object] = {"fix": "none"}
        if isinstance(block, ast.Stage):
            update["name"] = None
            update["lines"] = tuple(plain(line) for line in block.lines)
        if isinstance(block, ast.Head):
            update["shrink"] = True
        if isinstance(block, ast.Line):
            could = (block.stride == 1 and channels == block.channels) or block.repeats > 1
            if not could:
                update["skip"] = True
            channels = block.channels
        return block.model_copy(update=update)

    assert plan.stem.out_channels == channels
    return network.model_copy(
        update={
            "name": "_",
            "presets": (),
            "scaling": ast.Scaling(),
            "stem": plain(network.stem),
            "stages": tuple(plain(stage) for stage in network.stages),  # type: ignore[misc]
            "head": plain(network.head),
        }
    )


def canonical(network: ast.Network) -> ast.Network:
    """The AST after `fmt`: the round trip compares what a reader sees."""
    return structure(effdsl.parse(effdsl.format(network)))


# ---- what a person wrote --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "spec"),
    [
        ("torchvision:efficientnet_b0", "b0.eff"),
        ("torchvision:efficientnet_v2_s", "efficientnetv2-s.eff"),
        ("torchvision:efficientnet_v2_m", "efficientnetv2-m.eff"),
        ("torchvision:efficientnet_v2_l", "efficientnetv2-l.eff"),
        ("torchvision:mobilenet_v2", "mobilenetv2.eff"),
        ("torchvision:mnasnet1_0", "mnasnet.eff"),
    ],
)
def test_import_writes_the_hand_written_spec(source: str, spec: str) -> None:
    imported = import_model(source)
    assert canonical(imported) == canonical(effdsl.load(SPECS / spec))


def test_import_names_its_source_and_library_in_a_header_comment() -> None:
    text = effdsl.format(import_model("timm:mobilenetv2_100"))
    assert text.startswith("# timm:mobilenetv2_100, imported from timm 1.")
    assert "3,504,872 parameters" in text
    assert "stage mbconv e6 k3 s2 c24   x2" in text  # repeats collapsed
    assert "defaults act=relu6" in text  # options factored out


# ---- round trips -----------------------------------------------------------------------------


#: Specs written with language features the importer does not read back yet (stages of several
#: block lines, heads after the pool, SE options, `full=`, `mid=`): issue 11's specs.
IMPORTER_PENDING: set[str] = set()


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(
            p,
            marks=pytest.mark.xfail(reason="the importer does not read this spec's features yet"),
        )
        if p.stem in IMPORTER_PENDING
        else p
        for p in SHIPPED
    ],
    ids=[p.stem for p in SHIPPED],
)
def test_every_shipped_spec_round_trips_through_a_built_module(spec: Path) -> None:
    network = effdsl.load(spec)
    with torch.device("meta"):
        model = effdsl.build(network)
    imported = import_model(model)
    if spec.stem in WRITTEN_OTHERWISE:
        written, imported_as = WRITTEN_OTHERWISE[spec.stem]
        text = spec.read_text()
        assert written in text
        network = effdsl.parse(text.replace(written, imported_as))
    assert canonical(imported) == canonical(network)


#: Expansions a spec writes one way and the importer, seeing only the widths, another that
#: gives the same widths: the spec follows its reference's table, the importer writes the
#: shortest ratio of the block's input (MobileNetV3-Small's 88 from 24 is timm's e3.67; e3.7
#: rounds to 88 too), and a width where the TF reference expands the block's output (`mid=96`).
WRITTEN_OTHERWISE = {
    "mobilenetv3-small": ("mbconv e3.67 k3", "mbconv e3.7 k3"),
    "efficientnet-edgetpu": (
        "fused_mbconv    k3 s1 c24   x1 skip=no mid=96",
        "fused_mbconv e3 k3 s1 c24",
    ),
}


def test_generated_python_round_trips_through_the_cli(tmp_path: Path) -> None:
    generated = tmp_path / "v2s.py"
    out = tmp_path / "v2s.eff"
    assert (
        run_cli("compile", str(SPECS / "efficientnetv2-s.eff"), "-o", str(generated)).returncode
        == 0
    )
    result = run_cli("import", f"module:{generated}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert canonical(effdsl.load(out)) == canonical(effdsl.load(SPECS / "efficientnetv2-s.eff"))


# ---- presets ---------------------------------------------------------------------------------


def test_b0_and_b3_are_one_spec_up_to_a_preset() -> None:
    family = import_family("timm:efficientnet_b[03]")
    assert family.network is not None and family.misfits == ()
    b0, b3 = import_model("timm:efficientnet_b0"), import_model("timm:efficientnet_b3")
    assert family.network.model_copy(update={"presets": ()}) == b0
    scaled = effdsl.scale(family.network, preset="b3")
    assert scaled.model_copy(update={"name": b3.name}) == b3.model_copy(update={"presets": ()})


def test_mobilenetv3_large_variants_are_one_spec_with_a_preset_each() -> None:
    """Block lines scale with the stage (1.5d's deeper stages split among its lines), and a
    line whose single block has no residual takes the deeper variant's `skip=no`."""
    family = import_family("timm:mobilenetv3_large_*")
    assert family.network is not None and family.misfits == ()
    assert [p.name for p in family.network.presets] == [
        "mobilenetv3_large_075",
        "mobilenetv3_large_100",
        "mobilenetv3_large_150d",
    ]
    for preset in family.network.presets:
        variant = import_model(f"timm:{preset.name}")
        scaled = effdsl.lower(effdsl.scale(family.network, preset=preset.name))
        assert effdsl.cost(scaled).params == effdsl.cost(effdsl.lower(variant)).params


def test_family_says_which_variants_do_not_share_the_structure() -> None:
    family = import_family("timm:mobilenetv2_1*")
    assert family.network is not None
    assert [p.name for p in family.network.presets] == ["mobilenetv2_100"] or len(
        family.network.presets
    ) >= 1
    misfits = dict(family.misfits)
    assert "mobilenetv2_110d" in misfits and "does not share" in misfits["mobilenetv2_110d"]


# ---- the chain: import → counts → convert → logits ------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "timm:mobilenetv2_050",
        "timm:tf_efficientnet_lite0",
        "timm:mnasnet_small",
        "timm:tinynet_e",
        "timm:tf_efficientnetv2_b0",
        "timm:mobilenetv3_small_050",
        "timm:tf_mixnet_s",
        "timm:lcnet_050",
        "timm:hardcorenas_a",
        "torchvision:efficientnet_b0",
        "torchvision:mobilenet_v2",
        "torchvision:mnasnet0_5",
        "torchvision:mobilenet_v3_small",
    ],
)
def test_import_is_exact_in_params_macs_and_logits(source: str) -> None:
    torch.set_num_threads(1)
    row = measure(source)
    assert row.exact, row
    assert row.spec_params == row.params and row.spec_macs == row.macs
    assert row.logits is not None and row.logits <= 1e-9


@pytest.mark.parametrize(
    ("source", "layout"),
    [
        ("timm:mixnet_s", "timm"),  # MixConv slices, stages of several block lines
        ("timm:efficientnet_cc_b0_4e", "timm"),  # CondConv experts and routing
        ("timm:lcnet_050", "timm"),  # separable blocks, a pooled head with a bias
        ("timm:efficientnetv2_rw_s", "timm"),  # fused blocks that keep their projection
        ("torchvision:mobilenet_v3_large", "torchvision"),  # flat features, a Linear head
        ("torchvision:efficientnet_v2_s", "torchvision"),
        ("torchvision:mobilenet_v2", "torchvision.mobilenet_v2"),
        ("torchvision:mnasnet1_0", "torchvision.mnasnet"),
    ],
)
def test_checkpoints_convert_both_ways_for_imported_models(source: str, layout: str) -> None:
    """Into effdsl's layout (the layout told by the keys) and back out of it, key for key."""
    library, _, name = source.partition(":")
    with torch.device("meta"):
        if library == "timm":
            import timm

            reference = timm.create_model(name, pretrained=False)
        else:
            from torchvision import models

            reference = models.get_model(name, weights=None)
        network = import_model(source)
        ours = effdsl.build(network)
    theirs = reference.state_dict()
    converted = effdsl.convert_state_dict(theirs, network=network, source=library)
    assert set(converted) == set(ours.state_dict())
    assert all(converted[k].shape == v.shape for k, v in ours.state_dict().items())
    back = effdsl.convert_state_dict(converted, network=network, target=layout)
    assert set(back) == set(theirs)
    assert all(back[key].shape == theirs[key].shape for key in theirs)


# ---- refusals --------------------------------------------------------------------------------


def test_a_module_the_language_cannot_say_is_refused_naming_path_and_feature() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    with torch.device("meta"):
        model = effdsl.build(network)
    model.stages[2].blocks[1].depthwise.act = nn.Tanh()
    with pytest.raises(ImportRefused) as caught:
        import_model(model)
    message = caught.value.message
    assert message == (
        "module:efficientnet_b0: stages.2.blocks.1.depthwise.conv.act (Tanh): "
        "activation not in the language"
    )


def test_refusals_name_the_model_the_module_and_the_feature() -> None:
    """A timm model whose anti-aliasing is a max pool, which the language has not."""
    with torch.device("meta"):
        model = timm.create_model("efficientnet_blur_b0")
    model.blocks[1][0].aa = nn.MaxPool2d(2)
    with pytest.raises(ImportRefused) as caught:
        TimmReader("efficientnet_blur_b0").model(model)
    assert caught.value.message == (
        "timm:efficientnet_blur_b0: blocks.1.0.aa (MaxPool2d): anti-aliasing layer not in the "
        "language"
    )


def test_timm_condconv_anti_aliasing_is_refused() -> None:
    """timm's CondConvResidual builds its `aa` pool but never runs it: no spec says that."""
    with torch.device("meta"):
        model = timm.create_model("efficientnet_cc_b0_4e", aa_layer="avg")
    with pytest.raises(ImportRefused, match=r"blocks\.5\.0\.aa \(AvgPool2d\): anti-aliasing "
                       "that timm's CondConv skips"):
        TimmReader("efficientnet_cc_b0_4e").model(model)


def test_cli_refusal_is_one_line_without_traceback(tmp_path: Path) -> None:
    """Every timm and torchvision model imports now: a generated module whose SiLU became a
    tanh, an activation the language has not, is refused."""
    generated = tmp_path / "b0.py"
    assert run_cli("compile", str(SPECS / "b0.eff"), "-o", str(generated)).returncode == 0
    source = generated.read_text()
    assert '"silu": nn.SiLU,' in source
    generated.write_text(source.replace('"silu": nn.SiLU,', '"silu": nn.Tanh,'))
    result = run_cli("import", f"module:{generated}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: module:efficientnet_b0: stem.conv.act (Tanh): activation not in the language\n"
    )


def test_unknown_name_suggests_close_names() -> None:
    result = run_cli("import", "timm:mobilenetv3_larg_100")
    assert result.returncode == 1
    assert "timm has no mobile CNN `mobilenetv3_larg_100`" in result.stderr
    assert "did you mean mobilenetv3_large_100" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_writes_the_spec_and_it_compiles(tmp_path: Path) -> None:
    out = tmp_path / "mnv2.eff"
    result = run_cli("import", "timm:mobilenetv2_100", "-o", str(out))
    assert result.returncode == 0, result.stderr
    summary = run_cli("compile", str(out), "--json")
    assert '"params": 3504872' in summary.stdout


# ---- the zoo table ---------------------------------------------------------------------------

ZOO = ROOT / "docs" / "zoo.md"
#: The slow row tests compare logits up to this size (32 of the models): with logits up to
#: 10M (88 models) the 172 rows took 7.5 minutes on two shared cores, too long for CI.
ZOO_LOGITS_MAX = 4_000_000
_ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| ([\d,]*) \| ([\d,]*) \| ([\d,]*) \| ([\d,]*) \|")


def zoo_rows() -> list[tuple[str, str, str, str, str, str]]:
    """(source, status, params, effdsl params, MACs, effdsl MACs) of every row of docs/zoo.md."""
    rows = []
    library = "timm"
    if not ZOO.exists():
        return []
    for line in ZOO.read_text().splitlines():
        if line.startswith("## torchvision"):
            library = "torchvision"
        match = _ROW.match(line)
        if match:
            name, *rest = match.groups()
            rows.append((f"{library}:{name}", *rest))  # type: ignore[arg-type]
    return rows


@pytest.mark.skipif(not ZOO.exists(), reason="docs/zoo.md not generated yet")
def test_zoo_headline_counts_its_rows() -> None:
    text = ZOO.read_text()
    rows = zoo_rows()
    timm_main = rows[:148]
    exact = sum(1 for row in timm_main if row[1] in ("exact", "counts"))
    assert f"{exact} / 148 exact" in text


@pytest.mark.slow
@pytest.mark.parametrize("row", zoo_rows(), ids=lambda row: row[0])
def test_zoo_row_is_what_a_fresh_measurement_gives(row: tuple[str, ...]) -> None:
    """Each row of docs/zoo.md re-measured: status and counts, and logits for the models up to
    `ZOO_LOGITS_MAX` parameters (`python docs/zoo.py --check` regenerates the whole table,
    logits of every model included)."""
    torch.set_num_threads(1)
    source, status, params, spec_params, macs, spec_macs = row
    small = int(params.replace(",", "")) <= ZOO_LOGITS_MAX
    fresh = measure(source, logits=small)
    written = {"exact": "written", "counts": "written"}
    shown = (
        written.get(fresh.status, fresh.status),
        f"{fresh.params:,}",
        "" if fresh.spec_params is None else f"{fresh.spec_params:,}",
        f"{fresh.macs:,}",
        "" if fresh.spec_macs is None else f"{fresh.spec_macs:,}",
    )
    assert shown == (written.get(status, status), params, spec_params, macs, spec_macs)
