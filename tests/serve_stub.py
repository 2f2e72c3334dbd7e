"""A stub models folder and scans made for it: what the ``strokeseg serve`` tests (tests/serve/) run on.
Its fixtures are registered in tests/conftest.py: a conftest.py in tests/serve/ would shadow that one
for every ``from conftest import …`` in the suite.

The models are 1×1 convolutions that call a voxel lesion where its normalised intensity is above
199.5 of 255 (``tests/helpers.threshold_model``), one per plane, on a small 2 mm grid. A scan is a
head of intensity ~500 with two bright blocks (intensity 1000) of known size: the served mask must
be exactly those blocks, two lesions of :data:`LESION_VOXELS` voxels.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (40, 48, 32)
AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -48], [0, 0, 2.0, -32], [0, 0, 0, 1]])
BLOCKS = ((slice(8, 14), slice(10, 16), slice(8, 12)), (slice(24, 28), slice(28, 34), slice(16, 22)))
LESION_VOXELS = (6 * 6 * 4, 4 * 6 * 6)           # 144 each: the table sorts equal sizes stably
VOXEL_ML = 0.008                                   # 2 mm isotropic


def write_stub_models(folder: Path) -> Path:
    from strokeseg.config import PLANES
    from strokeseg.data.grid_plan import NativeGrid, make_plan

    from helpers import save_models

    save_models(folder, {f"{plane}.keras": 1 for plane in PLANES})
    make_plan([NativeGrid(SHAPE, AFFINE)], "fixed", ("t1w",), ("t1",), PLANES).write(folder)
    return folder


def stub_scan(seed: int = 0) -> np.ndarray:
    """A float32 head with the two bright blocks; noise keeps it from being constant anywhere."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    head = (grid ** 2).sum(axis=0) < 0.95
    scan = np.where(head, 500 + 20 * rng.standard_normal(SHAPE), 0).astype(np.float32)
    for block in BLOCKS:
        scan[block] = 1000
    return scan


def write_stub_scan(path: Path, seed: int = 0) -> Path:
    nib.save(nib.Nifti1Image(stub_scan(seed), AFFINE), path)
    return path
