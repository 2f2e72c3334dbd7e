"""Fault catalogue, ``strokeseg predict``: every fault a user can cause is one line naming the file or
option, never a traceback. Exit status 2 (bad options, models folder, output folder) comes before any
case and leaves the output folder byte-identical; a bad input file is a failed case (exit status 1):
its row of predictions.csv says ``failed`` with one line naming the file, it leaves no output, and
the other cases are predicted as before. A geometry nibabel has to assume is a ``warning``."""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg import cli
from strokeseg.config import PLANES
from strokeseg.data.grid_plan import NativeGrid, make_plan
from strokeseg.infer import predict

from faults.catalogue import assert_one_line_error, scratch_left, snapshot
from helpers import save_models

SHAPE = (16, 16, 12)                                   # the models' (fixed) grid: inputs on it are used as is
AFFINE = np.array([[1.0, 0, 0, -8], [0, 1.0, 0, -8], [0, 0, 1.0, -6], [0, 0, 0, 1]])
PLANE_MODELS = {"axial.keras": 1, "sagittal.keras": 1, "coronal.keras": 1}


def volume(seed: int = 0) -> np.ndarray:
    """A head-like ellipsoid with a bright blob (the threshold models' 'lesion')."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    head = (grid ** 2).sum(axis=0) < 0.8
    rng = np.random.default_rng(seed)
    data = np.where(head, rng.normal(300, 20, SHAPE), 0.0)
    blob = ((grid - np.array([0.2, 0.1, 0.0])[:, None, None, None]) ** 2).sum(axis=0) < 0.06
    data[blob & head] = rng.normal(800, 20, int((blob & head).sum()))
    return data.astype(np.float32)


def save(path: Path, data=None, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume() if data is None else data, affine), path)
    return path


def raw_header_file(path: Path, sform=None, qform_code=1, pixdim=None) -> Path:
    """A .nii.gz whose header is written as given (nibabel repairs zero pixdim when it saves)."""
    img = nib.Nifti1Image(volume(), AFFINE)
    img.set_qform(AFFINE, code=qform_code) if qform_code else img.set_qform(None, code=0)
    if sform is None:
        img.set_sform(None, code=0)
    else:
        img.set_sform(sform, code=2)
    plain = path.with_suffix("")                       # .nii
    nib.save(img, plain)
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    if pixdim is not None:
        raw[80:92] = np.asarray(pixdim, "<f4").tobytes()   # pixdim[1:4] of a little-endian NIfTI-1 header
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))
    return path


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail instead of hanging (a FIFO that is opened waits for a writer forever)."""
    def alarm(signum, frame):
        raise TimeoutError(f"predict hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(argv, capsys) -> tuple[int, str]:
    try:
        with no_hang():
            code = cli.main(["predict", *map(str, argv), "--quiet"])
    except SystemExit as exc:   # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(models folder on a small fixed grid, a good input, an output folder of an earlier good run)."""
    root = tmp_path_factory.mktemp("predict_faults")
    models = save_models(root / "models", PLANE_MODELS)
    make_plan([NativeGrid(SHAPE, AFFINE)], "fixed", ("t1w",), ("t1",), PLANES).write(models)
    good = save(root / "in" / "good.nii.gz")
    earlier = root / "earlier"
    assert cli.main(["predict", str(good), "--models", str(models), "--output", str(earlier), "--quiet",
                     "--save-probabilities"]) == 0
    assert sorted(p.name for p in earlier.iterdir()) == ["good_lesions.csv", "good_mask.nii.gz",
                                                         "good_probability.nii.gz", "predictions.csv"]
    return models, good, earlier


def models_copy(setup, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(setup[0], folder)
    return folder


def models_file(name: str, text: str, *names):
    """A case: a copy of the models folder with ``name`` (fusion.json, config.json) holding ``text``; the
    one line must name that file and each of ``names``."""
    def build(setup, tmp_path):
        folder = models_copy(setup, tmp_path)
        (folder / name).write_text(text)
        return [setup[1], "--models", folder], [folder / name, *names]
    return build


def fusion_json(**record):
    return models_file("fusion.json", json.dumps(record), *[k for k in record if k != "fusion"])


def fusion_text(text: str, key: str):
    return models_file("fusion.json", text, key)


def config_json(text: str, key: str):
    return models_file("config.json", text, key)


def flags(*extra, name):
    def build(setup, tmp_path):
        return [setup[1], "--models", setup[0], *extra], [name]
    return build


def output_loop(setup, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    return [setup[1], "--models", setup[0], "--output", loop], [loop]


def models_loop(setup, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    return [setup[1], "--models", loop], [loop]


def models_missing(setup, tmp_path):
    return [setup[1], "--models", tmp_path / "nowhere"], [tmp_path / "nowhere", "models folder not found"]


def plane_missing(setup, tmp_path):
    folder = models_copy(setup, tmp_path)
    (folder / "sagittal.keras").unlink()
    return [setup[1], "--models", folder], [folder, "no sagittal model"]


def truncated_keras(setup, tmp_path):
    folder = models_copy(setup, tmp_path)
    model = folder / "axial.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return [setup[1], "--models", folder], [model, "truncated or corrupt"]


def fifo_fusion_json(setup, tmp_path):
    folder = models_copy(setup, tmp_path)
    os.mkfifo(folder / "fusion.json")
    return [setup[1], "--models", folder], [folder / "fusion.json", "not a regular file"]


def folder_named_nifti(setup, tmp_path):
    folder = tmp_path / "scan.nii.gz"
    folder.mkdir()
    return [folder, "--models", setup[0]], [folder]


def output_is_a_file(setup, tmp_path):
    return [setup[1], "--models", setup[0], "--output", setup[1]], [setup[1], "not a folder"]


def input_is_an_output(setup, tmp_path):
    # A file given as input that this run would remove and overwrite: the output folder's mask of case "good".
    mask = tmp_path / "out" / "good_mask.nii.gz"
    return [setup[1], mask, "--models", setup[0]], [mask, "overwritten"]


# fault -> builder(setup, tmp_path) -> (argv without --output, names the one line must hold)
USAGE_FAULTS = {
    "fusion.json flip_tta is text": fusion_json(flip_tta="no"),
    "fusion.json threshold is text": fusion_json(threshold="high"),
    "fusion.json min_lesion_voxels is text": fusion_json(min_lesion_voxels="5"),
    "fusion.json min_lesion_voxels overflows": fusion_text('{"min_lesion_voxels": 1e400}', "min_lesion_voxels"),
    "fusion.json weight not a number": fusion_json(fusion="weighted_mean",
                                                   weights={"axial": "heavy", "sagittal": 1, "coronal": 1}),
    "fusion.json weighted_mean with two weights": fusion_json(fusion="weighted_mean",
                                                              weights={"axial": 1, "sagittal": 1}),
    "fusion.json unknown rule": fusion_json(fusion="median"),
    "fusion.json is a FIFO": fifo_fusion_json,
    "config.json percentiles not a pair": config_json('{"convert": {"robust_percentiles": [1]}}',
                                                      "robust_percentiles"),
    "config.json value overflows": config_json('{"convert": {"canvas_multiple": 1e400}}', "canvas_multiple"),
    "config.json window step overflows": config_json('{"training": {"window_step": 1e400}}', "window_step"),
    "config.json onednn is text": config_json('{"onednn": "no"}', "onednn"),
    "models folder missing": models_missing,
    "models folder a symlink loop": models_loop,
    "a plane's model missing": plane_missing,
    "truncated .keras file": truncated_keras,
    "output a symlink loop": output_loop,
    "output is a file": output_is_a_file,
    "batch size 0": flags("--batch-size", "0", name="--batch-size"),
    "negative minimum lesion size": flags("--min-lesion-voxels", "-1", name="--min-lesion-voxels"),
    "threshold above 1": flags("--threshold", "2", name="--threshold"),
    "weights without weighted_mean": flags("--weights", "1", "1", "1", name="--weights"),
    "percentile window upside down": flags("--robust-percentiles", "99", "1", name="robust_percentiles"),
    "space not a choice": flags("--space", "bogus", name="--space"),
    "a folder named .nii.gz as input": folder_named_nifti,
    "an input this run would overwrite": input_is_an_output,
}


@pytest.mark.parametrize("fault", USAGE_FAULTS, ids=list(USAGE_FAULTS))
def test_usage_faults_are_one_line_before_any_case_and_touch_nothing(fault, setup, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(setup[2], out)
    before = snapshot(out)
    argv, names = USAGE_FAULTS[fault](setup, tmp_path)
    if "--output" not in map(str, argv):
        argv = [*argv, "--output", out]
    code, err = run(argv, capsys)
    assert code == 2, err
    assert_one_line_error(err, *map(str, names))
    assert snapshot(out) == before and not scratch_left(out)
    assert not scratch_left(tmp_path)


@pytest.fixture
def read_only(tmp_path):
    """A folder that takes no new file: chmod 0o555, and for root (whom permissions do not stop) the
    immutable attribute, set by the test and cleared here."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_a_read_only_output_folder_is_a_usage_error_and_keeps_its_files(setup, read_only, capsys):
    for name in ("good_mask.nii.gz", "predictions.csv"):
        shutil.copy2(setup[2] / name, read_only / name)
    read_only.chmod(0o555)
    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(read_only)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: a read-only folder cannot be made")
    before = snapshot(read_only)
    code, err = run([setup[1], "--models", setup[0], "--output", read_only], capsys)
    assert code == 2, err
    assert "not writable" in assert_one_line_error(err, read_only)
    assert snapshot(read_only) == before and not scratch_left(read_only)


# ---------------------------------------------------------------------------- failed cases
def symlink_loop(folder: Path) -> Path:
    path = folder / "loop.nii.gz"
    path.symlink_to("loop.nii.gz")
    return path


def singular_affine(folder: Path) -> Path:
    flat = AFFINE.copy()
    flat[:3, 1] = 0                                    # the y axis maps nowhere
    return raw_header_file(folder / "singular.nii.gz", sform=flat, qform_code=0)


def fifo(folder: Path) -> Path:
    path = folder / "pipe.nii.gz"
    os.mkfifo(path)
    return path


def fifo_in_a_folder(folder: Path) -> Path:
    inside = folder / "scans"
    inside.mkdir()
    os.mkfifo(inside / "pipe.nii.gz")                  # kept as an input (a failed case), never opened
    return inside


def zero_voxel_size(folder: Path) -> Path:
    return raw_header_file(folder / "zero_pixdim.nii.gz", qform_code=1, pixdim=(1, 0, 1))


def empty_file(folder: Path) -> Path:
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def two_d(folder: Path) -> Path:
    return save(folder / "flat.nii.gz", volume()[:, :, 5])


def four_d(folder: Path) -> Path:
    return save(folder / "series.nii.gz", np.stack([volume(), volume(1)], axis=-1))


def nan_voxel(folder: Path) -> Path:
    data = volume()
    data[3, 4, 5] = np.nan
    return save(folder / "has_nan.nii.gz", data)


def truncated_gzip(folder: Path) -> Path:
    whole = save(folder / "whole.nii.gz").read_bytes()
    (folder / "whole.nii.gz").unlink()
    path = folder / "cut.nii.gz"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def not_nifti(folder: Path) -> Path:
    path = folder / "notes.nii"
    path.write_text("not an image\n" * 50)
    return path


def missing(folder: Path) -> Path:
    return folder / "missing.nii.gz"


def constant(folder: Path) -> Path:
    return save(folder / "constant.nii.gz", np.full(SHAPE, 7, np.int16))


# fault -> (builder(folder) -> the INPUT to give, the failed case's file name, what the message says)
CASE_FAULTS = {
    "symbolic link loop": (symlink_loop, "loop.nii.gz", "symbolic link loop"),
    "singular sform": (singular_affine, "singular.nii.gz", "singular affine"),
    "FIFO as input": (fifo, "pipe.nii.gz", "FIFO"),
    "FIFO inside an input folder": (fifo_in_a_folder, "pipe.nii.gz", "FIFO"),
    "zero voxel size, no sform": (zero_voxel_size, "zero_pixdim.nii.gz", "zero voxel size"),
    "empty .nii.gz": (empty_file, "empty.nii.gz", "empty file"),
    "2-D image": (two_d, "flat.nii.gz", "2-D volume"),
    "4-D image": (four_d, "series.nii.gz", "4-D volume"),
    "NaN voxel": (nan_voxel, "has_nan.nii.gz", "non-finite intensities"),
    "truncated gzip": (truncated_gzip, "cut.nii.gz", "corrupt or truncated gzip"),
    "not NIfTI": (not_nifti, "notes.nii", "not a NIfTI file"),
    "missing file": (missing, "missing.nii.gz", "file not found"),
    "constant image": (constant, "constant.nii.gz", "constant image"),
}


@pytest.mark.parametrize("fault", CASE_FAULTS, ids=list(CASE_FAULTS))
def test_a_bad_input_fails_alone_with_one_line_naming_it(fault, setup, tmp_path, capsys):
    build, name, says = CASE_FAULTS[fault]
    folder = tmp_path / "in"
    folder.mkdir()
    bad = build(folder)
    out = tmp_path / "out"
    shutil.copytree(setup[2], out)
    (out / f"{Path(name).name.split('.')[0]}_mask.nii.gz").write_bytes(b"an earlier run's mask of this case")
    code, err = run([setup[1], bad, "--models", setup[0], "--output", out], capsys)
    assert code == 1, err
    assert "Traceback" not in err
    table = pd.read_csv(out / "predictions.csv").set_index("case")
    assert list(table.columns) == list(predict.CSV_COLUMNS[1:])
    assert table.loc["good", "status"] == "ok"
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1 and set(table["status"]) == {"ok", "failed"}
    message = failed["message"].iloc[0]
    assert str(folder) in message and name in message and says in message and "\n" not in message
    assert "unexpected error" not in message
    outputs = sorted(p.name for p in out.iterdir())
    assert outputs == ["good_lesions.csv", "good_mask.nii.gz", "predictions.csv"], outputs   # no stale map
    assert (out / "good_mask.nii.gz").read_bytes() == (setup[2] / "good_mask.nii.gz").read_bytes()
    assert not scratch_left(out)


def test_an_earlier_output_in_the_way_fails_its_case_only(setup, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "good_mask.nii.gz").mkdir(parents=True)        # a folder where the mask goes: cannot be replaced
    other = save(tmp_path / "in" / "other.nii.gz")
    code, err = run([setup[1], other, "--models", setup[0], "--output", out], capsys)
    assert code == 1 and "Traceback" not in err, err
    table = pd.read_csv(out / "predictions.csv").set_index("case")
    assert table.loc["other", "status"] == "ok" and table.loc["good", "status"] == "failed"
    assert str(out / "good_mask.nii.gz") in table.loc["good", "message"]
    assert (out / "other_mask.nii.gz").is_file() and not scratch_left(out)


# ------------------------------------------------------------------------------- warnings
@pytest.mark.parametrize("fault, header, says", [
    ("no orientation", dict(qform_code=0), "no orientation in the header (qform and sform codes 0)"),
    ("zero pixdim beside an sform", dict(sform=AFFINE, qform_code=0, pixdim=(0, 0, 0)),
     "the sform's voxel size (1 x 1 x 1 mm) was used"),
])
def test_an_assumed_geometry_is_a_warning_in_the_table(fault, header, says, setup, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    path = raw_header_file(tmp_path / "in" / "scan.nii.gz", **header)
    out = tmp_path / "out"
    code, err = run([setup[1], path, "--models", setup[0], "--output", out], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("case")
    assert says in table.loc["scan", "warning"] and str(path) in table.loc["scan", "warning"]
    assert table.loc["good", "warning"] == "" and set(table["status"]) == {"ok"}
