"""Stage 07: the FLOP counter on hand-computable models, the table's shape, the stage through run()."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from dataclasses import replace

import keras
import numpy as np
import pandas as pd
import pytest

import strokeseg.models as registry
from strokeseg.config import VOLUME, Config
from strokeseg.errors import ConfigError
from strokeseg.report import model_table as mr
from strokeseg.stages import s07_models as stage

# Hand counts: a multiply-add is 2 FLOPs; a bias add 1 FLOP per output element.


def conv_model(h=16, w=12, c=3, filters=5, k=3):
    inp = keras.Input((h, w, c))
    return keras.Model(inp, keras.layers.Conv2D(filters, k, padding="same")(inp))


def test_conv2d_flops_by_hand_and_as_the_profiler():
    model = conv_model()
    count = mr.count_flops(model, (16, 12, 3))
    pixels = 16 * 12
    assert count.total == 2 * 3 * 3 * 3 * 5 * pixels + 5 * pixels
    assert count.by_op["Conv2D"] == 2 * 3 * 3 * 3 * 5 * pixels
    assert count.total == mr.profiler_flops(model, (16, 12, 3))
    assert not count.uncounted and not count.notes


def test_dense_flops_by_hand_and_uncounted_activation_listed():
    inp = keras.Input((7,))
    model = keras.Model(inp, keras.layers.Dense(4, activation="sigmoid")(inp))
    count = mr.count_flops(model, (7,))
    assert count.total == 2 * 7 * 4 + 4 == mr.profiler_flops(model, (7,))
    assert count.uncounted_ops == "Sigmoid" and count.uncounted["Sigmoid"] == 4


def test_loop_body_counted_once_per_step():
    """ConvLSTM2D runs as a while loop: the walk must equal the unrolled (loop-free) graph."""
    counts = []
    for unroll in (False, True):
        inp = keras.Input((2, 8, 8, 3))
        model = keras.Model(inp, keras.layers.ConvLSTM2D(4, 3, padding="same", unroll=unroll)(inp))
        counts.append(mr.count_flops(model, (2, 8, 8, 3)))
        if unroll:
            assert counts[-1].total == mr.profiler_flops(model, (2, 8, 8, 3))
    looped, unrolled = counts
    gates, pixels = 4, 8 * 8
    convs = 2 * gates * (2 * 9 * pixels) * (3 * 4 + 4 * 4)   # 2 steps x 4 gates x (input + recurrent) convs
    assert looped.by_op["Conv2D"] == unrolled.by_op["Conv2D"] == convs
    assert looped.total == unrolled.total and not looped.notes


class _BatchedMatmul(keras.layers.Layer):
    def call(self, x):
        return keras.ops.einsum("bij,bkj->bik", x, x)


def test_einsum_counted_as_multiply_adds():
    inp = keras.Input((6, 5))
    model = keras.Model(inp, _BatchedMatmul()(inp))
    assert mr.count_flops(model, (6, 5)).total == 2 * 6 * 6 * 5


def test_conv3d_and_its_transpose_by_hand():
    """Conv3D as the profiler counts it; the transposed 3-D convolution, which it does not count, by hand."""
    inp = keras.Input((4, 4, 2, 3))
    x = keras.layers.Conv3D(4, 3, padding="same")(inp)
    model = keras.Model(inp, keras.layers.Conv3DTranspose(5, 2, strides=2)(x))
    count = mr.count_flops(model, (4, 4, 2, 3))
    voxels, upsampled = 4 * 4 * 2, 8 * 8 * 4
    assert count.by_op["Conv3D"] == 2 * 27 * 3 * 4 * voxels
    assert count.by_op["Conv3DBackpropInputV2"] == 2 * 4 * 5 * upsampled   # one input voxel per output
    assert count.total == count.by_op["Conv3DBackpropInputV2"] + mr.profiler_flops(model, (4, 4, 2, 3))
    assert count.total == 2 * 27 * 3 * 4 * voxels + 4 * voxels + 2 * 4 * 5 * upsampled + 5 * upsampled
    assert not count.uncounted and not count.notes


# A tiny registered architecture ------------------------------------------------------------------
def tiny_module(name, multiple=32, channels=2, fail=False):
    module = types.ModuleType(f"strokeseg.models.{name}")
    module.SIZE_MULTIPLE = multiple
    module.CANONICAL_INPUT = (64, 64, channels)
    module.CANONICAL_PARAMS = channels * 9 * 2 + 2 + 2 + 1

    def build(input_shape, **options):
        if fail:
            raise RuntimeError("boom while building")
        inp = keras.Input(input_shape)
        x = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(inp)
        return keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))

    module.build = build
    return module


def tiny_flops(h, w, c):
    return h * w * (2 * 9 * c * 2 + 2 + 2 * 2 + 1)


def tiny_volume_module(name):
    """A one-level 3-D encoder-decoder: the real 3-D models take seconds to trace a train step."""
    module = types.ModuleType(f"strokeseg.models.{name}")
    module.SIZE_MULTIPLE, module.CANONICAL_INPUT, module.CANONICAL_PARAMS = 16, (32, 32, 32, 1), 0

    def build(input_shape, **options):
        inp = keras.Input(input_shape)
        x = keras.layers.Conv3D(2, 3, padding="same", activation="relu")(inp)
        x = keras.layers.Conv3DTranspose(2, 2, strides=2)(keras.layers.MaxPooling3D(2)(x))
        return keras.Model(inp, keras.layers.Conv3D(1, 1, activation="sigmoid")(x))

    module.build = build
    return module


def tiny3d_flops(x, y, z, m):
    # conv 3x3x3 (M -> 2) + bias, transposed conv (one input voxel of 2 channels) + bias, head 1x1x1 + bias
    return x * y * z * (2 * 27 * m * 2 + 2 + 2 * 2 * 2 + 2 + 2 * 2 + 1)


@pytest.fixture
def tiny_registry(monkeypatch):
    modules = {"tiny": "_report_tiny", "ghost": "_report_ghost_never_written", "broken": "_report_broken"}
    monkeypatch.setattr(registry, "MODULES", modules)
    monkeypatch.setitem(sys.modules, "strokeseg.models._report_tiny", tiny_module("_report_tiny"))
    monkeypatch.setitem(sys.modules, "strokeseg.models._report_broken", tiny_module("_report_broken", fail=True))
    return modules


@pytest.fixture
def volume_registry(monkeypatch, tiny_registry):
    monkeypatch.setitem(tiny_registry, "tiny3d", "_report_tiny3d")
    monkeypatch.setattr(registry, "VOLUME_MODELS", ("tiny3d",))
    monkeypatch.setitem(sys.modules, "strokeseg.models._report_tiny3d", tiny_volume_module("_report_tiny3d"))
    return tiny_registry


def test_plane_inputs_round_up_to_the_size_multiple():
    canvases = mr.plane_canvases(None, Config())
    assert [(c.plane, c.shape, c.source) for c in canvases] == [
        ("axial", (208, 240), "ATLAS grid"), ("sagittal", (240, 208), "ATLAS grid"),
        ("coronal", (208, 208), "ATLAS grid")]
    exact = [mr.plane_input(tiny_module("m16", multiple=16, channels=4), c) for c in canvases]
    assert [i.shape for i in exact] == [(208, 240, 4), (240, 208, 4), (208, 208, 4)]
    assert not any(i.padded for i in exact)
    rounded = [mr.plane_input(tiny_module("m32", multiple=32), c) for c in canvases]
    assert [i.shape for i in rounded] == [(224, 256, 2), (256, 224, 2), (224, 224, 2)]
    assert all(i.padded for i in rounded)


def test_canvases_come_from_a_published_store(tmp_path):
    stores = tmp_path / "03_convert"
    for plane, shape in (("axial", [32, 48]), ("sagittal", [48, 32]), ("coronal", [32, 32])):
        (stores / plane).mkdir(parents=True)
        canvas = {"plane": plane, "slice_shape": shape, "shape": shape, "offset": [0, 0]}
        (stores / plane / "geometry.json").write_text(json.dumps({"canvas": canvas, "volume_shape": [1, 1, 1]}))
    assert mr.plane_canvases(tmp_path, Config())[0].source == "ATLAS grid"   # not published yet
    (stores / "manifest.json").write_text("{}")
    got = mr.plane_canvases(tmp_path, Config(), ("coronal", "axial"))
    assert [(c.plane, c.shape, c.source) for c in got] == [
        ("coronal", (32, 32), "03_convert store"), ("axial", (32, 48), "03_convert store")]


def test_volume_canvas_is_the_run_patch_of_the_grid(tmp_path):
    from strokeseg.contracts import DATASET, MANIFEST_JSON
    from strokeseg.data.grid_plan import GridPlan
    from strokeseg.workdir import stage_dir

    atlas = mr.volume_canvas(tmp_path, Config())   # no stage 01: the ATLAS grid, one channel
    assert (atlas.plane, atlas.shape, atlas.source, atlas.image_channels, atlas.patch) == (
        VOLUME, (197, 233, 189), "ATLAS grid", 1, (128, 128, 128))
    unet3d = registry.architecture("unet3d")
    spec = mr.plane_input(unet3d, atlas)
    assert spec.shape == (128, 128, 128, 1) and not spec.padded
    config = Config()
    config = replace(config, training=replace(config.training, patch_size=(32, 48, 16)))
    assert mr.volume_canvas(None, config).patch == (32, 48, 16)

    dataset = stage_dir(tmp_path, DATASET)
    dataset.mkdir(parents=True)
    plan = GridPlan("target_spacing", (112, 112, 73), (2.0, 2.0, 2.0), ("dwi", "adc"), ("mri", "mri"), ("axial",))
    plan.write(dataset)
    (dataset / MANIFEST_JSON).write_text("{}")
    isles = mr.volume_canvas(tmp_path, Config())
    assert (isles.shape, isles.source, isles.patch) == ((112, 112, 73), "01_dataset grid plan", (112, 112, 80))
    spec = mr.plane_input(unet3d, isles)
    assert spec.shape == unet3d.CANONICAL_INPUT and spec.padded   # z: 73 voxels in an 80-voxel patch


def test_planes_select_slice_rows_and_3d_models_add_the_volume():
    only_2d = mr.report_canvases(None, Config(), mr.ReportOptions(models=("raxnet",), planes=("axial",)))
    assert [c.plane for c in only_2d] == ["axial"]
    every = mr.report_canvases(None, Config(), mr.ReportOptions(planes=("sagittal",)))
    assert [c.plane for c in every] == ["sagittal", VOLUME]
    assert [c.plane for c in mr.model_canvases("unet3d", every)] == [VOLUME]
    assert [c.plane for c in mr.model_canvases("raxnet", every)] == ["sagittal"]
    with pytest.raises(ConfigError, match="no volume canvas"):
        mr.build_report(only_2d, mr.ReportOptions.quick(models=("raxnet", "attention_unet3d")), progress=False)


def test_options_are_checked(tiny_registry):
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        mr.ReportOptions(models=("nope",)).validate()
    with pytest.raises(ConfigError, match="repeats"):
        mr.ReportOptions(repeats=0).validate()
    with pytest.raises(ConfigError, match="warmup"):
        mr.ReportOptions(warmup=0).validate()
    with pytest.raises(ConfigError, match="unknown plane"):
        mr.ReportOptions(planes=("oblique",)).validate()


def test_command_line_options_and_starting_config(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    assert stage.run_options(parser.parse_args([])) == {
        "models": None, "planes": None, "batch_size": None, "repeats": None, "warmup": None,
        "matmul_size": None, "jit_compile": None, "quick": False, "strict": False}
    args = parser.parse_args(["--models", "raxnet, xnet", "--planes", "axial", "--batch-size", "8",
                              "--jit-compile", "false", "--quick", "--strict"])
    got = stage.run_options(args)
    assert got["models"] == ("raxnet", "xnet") and got["planes"] == ("axial",)
    assert (got["batch_size"], got["jit_compile"], got["quick"], got["strict"]) == (8, False, True, True)
    defaults, quick = mr.ReportOptions(), mr.ReportOptions.quick()   # the numbers the help text quotes
    assert (defaults.batch_size, defaults.repeats, defaults.warmup, defaults.matmul_size) == (4, 5, 2, 2048)
    assert (quick.batch_size, quick.repeats, quick.warmup, quick.matmul_size) == (2, 2, 1, 1024)

    assert stage.starting_config(tmp_path) == Config()   # no earlier stage: the paper profile
    assert stage.starting_config(tmp_path, ["cv.n_folds=3"]).cv.n_folds == 3
    from strokeseg.workdir import StageWriter

    with StageWriter(tmp_path, "03_convert", Config(seed=7)):
        pass
    assert stage.starting_config(tmp_path).seed == 7     # the latest published stage's config


def test_stage_writes_one_row_per_model_and_plane(tmp_path, tiny_registry):
    out = stage.run(tmp_path, Config(), progress=False, quick=True)
    table = pd.read_csv(out / "models.csv").fillna({"error": "", "uncounted_ops": ""})
    assert tuple(table.columns) == mr.COLUMNS
    assert set(table["status"]) == set(mr.STATUSES)
    assert list(zip(table["model"], table["plane"])) == [
        (m, p) for m in ("tiny", "ghost", "broken") for p in ("axial", "sagittal", "coronal")]

    ok = table[table["model"] == "tiny"].set_index("plane")
    assert set(ok["status"]) == {"ok"} and set(ok["error"]) == {""}
    shape = ["canvas_h", "canvas_w", "input_h", "input_w", "input_c"]
    assert ok.loc["axial", shape].astype(int).tolist() == [208, 240, 224, 256, 2]
    assert ok.loc["coronal", shape].astype(int).tolist() == [208, 208, 224, 224, 2]
    assert set(ok["input_padded"]) == {True} and set(ok["size_multiple"]) == {32}
    assert set(ok["parameters"]) == {2 * 9 * 2 + 2 + 2 + 1}
    assert ok.loc["axial", "forward_gflops_per_slice"] == pytest.approx(tiny_flops(224, 256, 2) / 1e9, rel=1e-9)
    assert set(ok["uncounted_ops"]) == {"Relu;Sigmoid"}
    for column in ("forward_ms_per_slice", "train_step_ms_per_slice", "matmul_gflops_per_second",
                   "forward_gflops_per_second", "matmul_fraction"):
        assert (ok[column].astype(float) > 0).all(), column
    fraction = ok["forward_gflops_per_slice"] / (ok["forward_ms_per_slice"] / 1e3) / ok["matmul_gflops_per_second"]
    assert np.allclose(ok["matmul_fraction"], fraction, rtol=1e-6)
    assert set(ok["batch_size"]) == {2} and set(ok["repeats"]) == {2}

    ghost = table[table["model"] == "ghost"]
    assert set(ghost["status"]) == {"missing"} and ghost["parameters"].isna().all()
    assert ghost["error"].str.contains("strokeseg/models/_report_ghost_never_written.py does not exist").all()
    broken = table[table["model"] == "broken"]
    assert set(broken["status"]) == {"failed"}
    assert broken["error"].str.contains("RuntimeError: boom while building").all()
    assert set(broken["input_c"]) == {2}   # what was known before the failure is kept

    summaries = sorted(p.name for p in (out / "summaries").iterdir())
    assert summaries == ["broken.txt", "ghost.txt", "tiny.txt"]
    text = (out / "summaries" / "tiny.txt").read_text()
    assert "Total params" in text and "Conv2D" in text and "224x256x2" in text
    assert "does not exist yet" in (out / "summaries" / "ghost.txt").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_status"] == {"tiny": "ok", "ghost": "missing", "broken": "failed"}
    matmul = manifest["machine"]["matmul_gflops_per_second"]   # measured again before each model
    assert sorted(matmul) == ["broken", "ghost", "tiny"] and min(matmul.values()) > 0
    assert (out / "config.json").is_file()


def test_a_volume_model_gets_one_volume_row_per_patch(tmp_path, volume_registry):
    config = Config()
    config = replace(config, training=replace(config.training, patch_size=(16, 16, 16)))
    out = stage.run(tmp_path, config, progress=False, quick=True, models=["tiny", "tiny3d"], planes=["axial"])
    table = pd.read_csv(out / "models.csv")
    assert tuple(table.columns) == mr.COLUMNS
    assert list(zip(table["model"], table["plane"], table["status"])) == [("tiny", "axial", "ok"),
                                                                           ("tiny3d", VOLUME, "ok")]
    tiny, volume = table.iloc[0], table.iloc[1]

    shape = ["canvas_h", "canvas_w", "canvas_d", "input_h", "input_w", "input_d", "input_c"]
    assert volume[shape].astype(int).tolist() == [197, 233, 189, 16, 16, 16, 1]
    assert volume["canvas_source"] == "ATLAS grid" and not volume["input_padded"]
    assert volume["parameters"] == registry.build_model("tiny3d", (16, 16, 16, 1)).count_params()
    assert (volume["batch_size"], volume["repeats"]) == (1, 2)
    per_patch = ["forward_gflops_per_patch", "forward_ms_per_patch", "train_step_ms_per_patch"]
    per_slice = ["forward_gflops_per_slice", "forward_ms_per_slice", "train_step_ms_per_slice"]
    assert (volume[per_patch].astype(float) > 0).all() and volume[per_slice].isna().all()
    assert volume["forward_gflops_per_patch"] == pytest.approx(tiny3d_flops(16, 16, 16, 1) / 1e9, rel=1e-9)
    assert volume["uncounted_ops"] == "MaxPool3D;Relu;Sigmoid"
    assert volume["matmul_fraction"] == pytest.approx(volume["forward_gflops_per_patch"] / (
        volume["forward_ms_per_patch"] / 1e3) / volume["matmul_gflops_per_second"], rel=1e-6)

    # The slice row is what it was: per-slice costs, no third axis.
    assert tiny[per_patch + ["canvas_d", "input_d"]].isna().all()
    assert tiny[["input_h", "input_w", "input_c"]].astype(int).tolist() == [224, 256, 2]
    assert tiny["forward_gflops_per_slice"] == pytest.approx(tiny_flops(224, 256, 2) / 1e9, rel=1e-9)
    assert tiny["batch_size"] == 2

    text = (out / "summaries" / "tiny3d.txt").read_text()
    assert "GFLOPs per patch" in text and "16x16x16x1" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["canvases"][VOLUME] == {"shape": [197, 233, 189], "source": "ATLAS grid", "patch": [16, 16, 16]}


@pytest.mark.parametrize("name", ["unet3d", "attention_unet3d"])
def test_3d_model_flops_grow_with_the_patch_volume(name):
    """Doubling the patch on every axis multiplies the forward FLOPs by 8, but for the per-channel
    terms of instance norm; and the walk reaches every op of the real 3-D models."""
    counts = []
    for shape in ((16, 16, 16, 1), (32, 32, 32, 1)):
        counts.append(mr.count_flops(registry.build_model(name, shape, width=0.125), shape))
        keras.backend.clear_session()
    small, large = counts
    assert small.total > 0 and large.total / small.total == pytest.approx(8, rel=0.03)
    assert small.by_op["Conv3D"] > 0 and small.by_op["Conv3DBackpropInputV2"] > 0 and not small.notes
    assert set(small.uncounted) == {"MaxPool3D", "Relu", "Sigmoid"}


def test_a_killed_measuring_process_fails_its_rows_only(monkeypatch):
    """A worker killed by the kernel (out of memory) leaves no Python error: the model's rows say so."""
    from concurrent.futures.process import BrokenProcessPool

    class KilledPool:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, *args):
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(mr, "ProcessPoolExecutor", KilledPool)
    options = mr.ReportOptions.quick(isolate=True)
    machine = {"matmul_gflops_per_second": 1.0, "backend": "tensorflow", "device": "CPU", "dtype_policy": "float32"}
    canvas = mr.PlaneCanvas(VOLUME, (197, 233, 189), "ATLAS grid", 1, (128, 128, 128))
    (row,), summary = mr._report_model_isolated("attention_unet3d", [canvas], options, machine)
    assert (row["status"], row["plane"], row["canvas_d"], row["batch_size"]) == ("failed", VOLUME, 189, 1)
    assert "out of memory" in row["error"] and "out of memory" in summary and row["parameters"] is None
    with pytest.raises(mr.ModelReportError, match="out of memory"):
        mr._report_model_isolated("attention_unet3d", [canvas], replace(options, strict=True), machine)


def test_strict_mode_and_no_measurable_model_publish_nothing(tmp_path, tiny_registry):
    with pytest.raises(mr.ModelReportError, match="'ghost'.*missing"):
        stage.run(tmp_path, Config(), progress=False, quick=True, models=["ghost", "tiny"], strict=True)
    with pytest.raises(mr.ModelReportError, match="no model could be measured"):
        stage.run(tmp_path, Config(), progress=False, quick=True, models=["broken", "ghost"], planes=["axial"])
    assert not (tmp_path / "07_models" / "manifest.json").exists()
    assert not list((tmp_path / "07_models").iterdir())


# The real models, where their modules exist: the walk must reach every op (no unknown loop or call).
# RAX-Net and CLCI-Net (ConvLSTM2D runs as a while loop) by default; STROKESEG_TEST_ALL_MODELS=1
# checks every registered model (about 30 s more on two cores).
CHECKED = registry.model_names() if os.environ.get("STROKESEG_TEST_ALL_MODELS") else ["raxnet", "clci"]


@pytest.mark.parametrize("name", CHECKED)
def test_registered_models_are_counted_completely(name):
    if name not in registry.MODULES:
        pytest.skip(f"{name} is not registered")
    if importlib.util.find_spec(f"strokeseg.models.{registry.MODULES[name]}") is None:
        pytest.skip(f"strokeseg/models/{registry.MODULES[name]}.py not written yet")
    module = registry.architecture(name)
    volumetric = registry.is_volumetric(name)
    canvas = (mr.PlaneCanvas(VOLUME, (16, 16, 16), "test", 1, (16, 16, 16)) if volumetric
              else mr.PlaneCanvas("axial", (32, 32), "test"))
    shape = mr.plane_input(module, canvas).shape
    count = mr.count_flops(registry.build_model(name, shape), shape)
    assert count.total > 0 and count.by_op["Conv3D" if volumetric else "Conv2D"] > 0
    assert not [n for n in count.notes if "unknown" in n or "not found" in n or "not counted" in n], count.notes
    keras.backend.clear_session()
