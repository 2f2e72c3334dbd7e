"""Shared fixtures: tiny ATLAS-layout cohorts written by the tests themselves (no download)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeseg.runtime import ONEDNN_VARIABLE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

T1W = "_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"
MASK = "_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"
TINY_SHAPE = (20, 24, 18)
TINY_AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -24], [0, 0, 2.0, -18], [0, 0, 0, 1]])


def subject_paths(root: Path, subject: str) -> tuple[Path, Path]:
    site = "R" + subject[5:8]
    anat = root / "Training" / site / subject / "ses-1" / "anat"
    return anat / f"{subject}{T1W}", anat / f"{subject}{MASK}"


def tiny_subject(rng: np.random.Generator, shape=TINY_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A head-like ellipsoid with 1-3 dark blob lesions of random size."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = (grid ** 2).sum(axis=0) < 0.85
    t1 = np.where(head, 800 + 60 * rng.standard_normal(shape), 0).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(rng.integers(1, 4)):
        centre = rng.uniform(-0.45, 0.45, size=3)
        radius = rng.uniform(0.08, 0.4)
        blob = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) < radius ** 2
        mask |= (blob & head).astype(np.uint8)
    if not mask.any():
        mask[tuple(s // 2 for s in shape)] = 1
    t1[mask > 0] *= 0.4
    return t1, mask


def write_tiny_cohort(root: Path, n_subjects: int, seed: int = 0, shape=TINY_SHAPE,
                      affine=TINY_AFFINE) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n_subjects):
        subject = f"sub-r{1 + i % 3:03d}s{i:03d}"
        t1, mask = tiny_subject(rng, shape)
        t1_path, mask_path = subject_paths(root, subject)
        t1_path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(t1, affine), t1_path)
        nib.save(nib.Nifti1Image(mask, affine), mask_path)
        names.append(subject)
    return sorted(names)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 16-subject ATLAS-layout cohort of 20x24x18 volumes (read-only: copy before damaging it)."""
    root = tmp_path_factory.mktemp("tiny_atlas")
    write_tiny_cohort(root, 16)
    return root


# Bins scaled to the tiny volumes so that several strata are populated; small batches.
TINY_OVERRIDES = ["bins.volume_edges=[0,150,500,\"inf\"]", "bins.axial_edges=[0,10,30,\"inf\"]",
                  "bins.sagittal_edges=[0,10,30,\"inf\"]", "bins.coronal_edges=[0,10,30,\"inf\"]",
                  "batches.batch_size=8", "batches.lesion_per_batch=4", "cv.n_folds=3",
                  "prepare.channels=[1,3,4]"]
DATA_STAGES = ("dataset", "splitting", "convert", "cross-validation", "batches", "prepare")


def run_data_stages(workdir: Path, cohort: Path, overrides=TINY_OVERRIDES) -> Path:
    """Stages 01 -> 06 in-process on an ATLAS-layout cohort; returns the workdir."""
    from strokeseg.cli import main

    settings = [a for o in overrides for a in ("--set", o)]
    first = ["--atlas-dir", str(cohort), "--workers", "1", *settings]
    for stage in DATA_STAGES:
        code = main([stage, "--workdir", str(workdir), "--quiet", *(first if stage == "dataset" else [])])
        assert code == 0, stage
    return workdir


@pytest.fixture(scope="session")
def prepared_workdir(tiny_cohort, tmp_path_factory) -> Path:
    """A workdir with stages 01-06 done on the tiny cohort (3 folds, batches of 8, channels 1/3/4);
    read-only: tests that write stages 08+ copy it or use their own workdir."""
    return run_data_stages(tmp_path_factory.mktemp("prepared"), tiny_cohort)


@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory):
    """Axial stores of four tiny subjects and prepared arrays of two folds; in each fold one subject is
    the training part, one the inner-validation part."""
    from strokeseg.config import ConvertConfig
    from strokeseg.data.cohort import discover
    from strokeseg.data.prepared import part_dir, write_prepared
    from strokeseg.data.stores import SliceStore

    from helpers import PREPARED_LAYOUT, plan_for, write_atlas_stores

    folder = tmp_path_factory.mktemp("prepared")
    subjects = discover(tiny_cohort)[:4]
    write_atlas_stores(folder / "stores", subjects, ConvertConfig())
    store = SliceStore(folder / "stores" / "axial")
    root = folder / "prepared"
    plans, shapes = {}, {}
    for (fold, part), i in PREPARED_LAYOUT.items():
        plans[(fold, part)] = plan_for(store, subjects[i].subject, seed=fold)
        out = part_dir(root, "axial", fold)
        out.mkdir(parents=True, exist_ok=True)
        shapes[(fold, part)] = write_prepared(store, plans[(fold, part)], (1, 4), out, part)
    return store, plans, root, shapes


@pytest.fixture(scope="session")
def volume_workdir(tiny_cohort, tmp_path_factory) -> Path:
    """Stages 01-06 as ``prepared_workdir``, with a 3-D comparison model selected, so that stage 03 also
    wrote the volume store (read-only, as ``prepared_workdir``)."""
    return run_data_stages(tmp_path_factory.mktemp("volume"), tiny_cohort,
                           TINY_OVERRIDES + ['comparison.models=["unet3d"]'])


@pytest.fixture(scope="session")
def stub_models(tmp_path_factory) -> Path:
    """A models folder of stub models that find exactly the two blocks of a stub scan (tests/serve_stub.py)."""
    from serve_stub import write_stub_models

    return write_stub_models(tmp_path_factory.mktemp("serve_models"))


@pytest.fixture
def scan_file(tmp_path) -> Path:
    """A stub scan (tests/serve_stub.py) as a NIfTI file."""
    from serve_stub import write_stub_scan

    return write_stub_scan(tmp_path / "case_T1w.nii.gz")


def pytest_collection(session):
    """Import TensorFlow in this process with oneDNN on, as every stage with the default config runs
    (strokeseg.runtime.configure_tensorflow). TensorFlow's own default depends on the CPU (off on AVX2-only
    ones), and tests compare training and predictions of this process with stages run as subprocesses.
    The variable is removed again so that the stages these tests start still choose for themselves; the
    xdist controller runs no test and skips it."""
    controller = session.config.getoption("numprocesses", None) and not hasattr(session.config, "workerinput")
    if controller or ONEDNN_VARIABLE in os.environ or "tensorflow" in sys.modules:
        return
    os.environ[ONEDNN_VARIABLE] = "1"
    try:
        import tensorflow  # noqa: F401  (TensorFlow reads the switch while it is imported)
    finally:
        del os.environ[ONEDNN_VARIABLE]


# make test runs each file on one pytest-xdist worker (--dist loadfile) in collection order: the longest
# files go first, so that no long file starts last and keeps one worker busy while the other is idle.
LONGEST_FILES_FIRST = ("test_profiles.py", "test_end_to_end.py", "test_s08_training.py", "test_model_contract.py",
                       "test_loop.py", "test_gpu_check.py", "test_distribute.py", "test_lcnn.py", "test_volume_runs.py",
                       "test_s10_fusion.py", "test_end_to_end_cohorts.py", "test_stage_kills.py", "test_s10_volume.py",
                       "test_jax_backend.py", "test_parallel_runs.py", "test_nnunet_export.py",
                       "test_weighted_batches.py", "test_inference.py", "test_model_table.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: each file keeps its order


@pytest.fixture
def saved_figures(monkeypatch):
    """Figures handed to ``strokeseg.report.figures._save``: still inspectable after the module closes them."""
    from strokeseg.report import figures

    drawn = []
    real = figures._save

    def spy(fig, path, dpi):
        drawn.append(fig)
        real(fig, path, dpi)

    monkeypatch.setattr(figures, "_save", spy)
    return drawn


@pytest.fixture
def no_figure_leaks():
    """Fails a test that leaves a matplotlib figure open."""
    import matplotlib.pyplot as plt

    plt.close("all")
    yield
    assert plt.get_fignums() == []
