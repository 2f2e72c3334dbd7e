"""The grid plan: how every subject of a cohort is brought onto the one voxel grid the stores hold.

Stage 01 writes the plan (``grid_plan.json``); stages 03 → 10 and ``strokeseg predict`` read it.

- ``fixed``: every subject already lies on one grid (ATLAS v2.0's MNI grid). Subjects are used
  voxel for voxel, as they always were; the plan grid is that grid.
- ``target_spacing``: subjects have their own grids (ISLES'22, nnU-Net datasets, slice folders of
  different sizes). nnU-Net's rule: the target voxel size is the median voxel size per axis
  (after reorienting every subject to RAS), unless the user gives one. Each subject is resampled
  onto *its own* plan grid: RAS-ordered axes, the target voxel size, voxel 0 at the centre of its
  first voxel (as nnU-Net resamples), placed in the middle of a common plan volume whose shape
  holds the largest subject. The plan grid of a subject is therefore an affine of its own
  (:meth:`GridPlan.subject_affine`): same world coordinates as the subject, so moving a mask back
  to the subject's native grid is a resampling through world coordinates, not a registration.
  Images are trilinear; masks are resampled as a lesion fraction and kept where it is >= 0.5
  (:mod:`strokeseg.data.resample`). Where voxel sizes agree and axes are already RAS, the
  resampling samples voxel centres exactly and changes nothing but the padding.

The plane canvases of stage 03 then pad the plan volume's slices to multiples of 16, as for ATLAS.
Voxel sizes that are not physical (slice folders without ``--spacing``) are 1 "voxel" per axis;
the plan records ``spacing_known`` so tables can say that mL and mm are voxels.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from strokeseg.data import resample
from strokeseg.errors import ConfigError, InputError
from strokeseg.workdir import atomic_write_text

GRID_PLAN_JSON = "grid_plan.json"
PLAN_KINDS = ("auto", "fixed", "target_spacing")


@dataclass(frozen=True)
class NativeGrid:
    """A subject's own grid: voxel shape and affine (from its first channel's header)."""
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    def ras_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(axis permutation, axis flips) that reorder this grid's voxel axes to RAS (nibabel's ornt)."""
        ornt = nib.orientations.io_orientation(self.affine)
        return ornt[:, 0].astype(int), ornt[:, 1]

    def ras_shape_spacing(self) -> tuple[np.ndarray, np.ndarray]:
        """Shape and voxel size per RAS axis (R, A, S)."""
        axes, _ = self.ras_order()
        shape, spacing = np.zeros(3), np.zeros(3)
        for voxel_axis, ras_axis in enumerate(axes):
            shape[ras_axis] = self.shape[voxel_axis]
            spacing[ras_axis] = self.spacing[voxel_axis]
        return shape, spacing


@dataclass(frozen=True)
class GridPlan:
    kind: str                                # "fixed" or "target_spacing"
    shape: tuple[int, int, int]              # the plan volume every subject is placed in
    spacing: tuple[float, float, float]      # voxel size of the plan grid (mm, or voxels when not known)
    channels: tuple[str, ...]                # the cohort's channel names, in input order
    channel_kinds: tuple[str, ...]           # their normalisation kinds (strokeseg.data.subjects)
    planes: tuple[str, ...]                  # the planes a study on this cohort uses
    spacing_known: bool = True
    affine: tuple[float, ...] | None = None  # fixed: the one grid's affine (16 numbers, row-major)

    # -------------------------------------------------------------------------------- geometry
    def subject_affine(self, native: NativeGrid) -> np.ndarray:
        """The affine of a subject's plan grid (see the module docstring)."""
        if self.kind == "fixed":
            return np.asarray(self.affine, dtype=float).reshape(4, 4)
        axes, flips = native.ras_order()
        native_affine = np.asarray(native.affine, dtype=float)
        # RAS-ordered voxel index -> native voxel index, flipped axes counted from their far end
        to_native = np.zeros((4, 4))
        to_native[3, 3] = 1.0
        for voxel_axis, (ras_axis, flip) in enumerate(zip(axes, flips)):
            to_native[voxel_axis, ras_axis] = flip
            if flip < 0:
                to_native[voxel_axis, 3] = native.shape[voxel_axis] - 1
        ras_affine = native_affine @ to_native
        ras_shape, ras_spacing = native.ras_shape_spacing()
        scale = np.diag([*(np.asarray(self.spacing) / ras_spacing), 1.0])
        resampled = self.resampled_shape(native)
        offset = (np.asarray(self.shape) - resampled) // 2
        shift = np.eye(4)
        shift[:3, 3] = -offset
        return ras_affine @ scale @ shift

    def extent(self, native: NativeGrid, axis: int) -> tuple[int, int]:
        """The first and last index along plan axis ``axis`` (0, 1, 2: R, A, S) of the slices that hold
        the subject's own volume: every slice on a fixed plan, the centred ones on a target-spacing plan
        (the rest is padding up to the largest subject)."""
        if self.kind == "fixed":
            return 0, int(self.shape[axis]) - 1
        size = int(self.resampled_shape(native)[axis])
        first = (int(self.shape[axis]) - size) // 2
        return first, first + size - 1

    def resampled_shape(self, native: NativeGrid) -> np.ndarray:
        """The subject's extent on the target voxel size, per RAS axis (before centring)."""
        ras_shape, ras_spacing = native.ras_shape_spacing()
        return np.maximum(1, np.rint(ras_shape * ras_spacing / np.asarray(self.spacing))).astype(int)

    def on_grid(self, native: NativeGrid) -> bool:
        """Whether a volume on ``native`` is on the plan grid itself (used voxel for voxel)."""
        return (self.kind == "fixed" and tuple(native.shape) == self.shape
                and bool(np.allclose(native.affine, self.subject_affine(native), rtol=0.0, atol=1e-3)))

    def check_fixed(self, path: Path, native: NativeGrid) -> None:
        """A fixed plan holds only subjects on its grid."""
        if self.kind != "fixed":
            return
        if tuple(native.shape) != self.shape:
            raise InputError(path, f"volume shape {tuple(native.shape)} differs from the cohort grid {self.shape}")
        if not np.allclose(native.affine, self.subject_affine(native), rtol=0.0, atol=1e-4):
            raise InputError(path, "affine differs from the cohort grid's affine")

    # ------------------------------------------------------------------------------ resampling
    # A volume on a fixed plan's grid is used as it is; any other (a new case given to predict) is
    # resampled onto the plan grid through world coordinates, as every target_spacing subject is.
    def to_plan(self, volume: np.ndarray, native: NativeGrid) -> np.ndarray:
        """An intensity volume on the subject's plan grid (trilinear, float32; as it is when on the grid)."""
        if self.on_grid(native):
            return volume
        return resample.to_grid(volume, native.affine, self.shape, self.subject_affine(native), order=1)

    def mask_to_plan(self, mask: np.ndarray, native: NativeGrid) -> np.ndarray:
        if self.on_grid(native):
            return mask
        return resample.mask_to_grid(mask, native.affine, self.shape, self.subject_affine(native))

    def mask_to_native(self, mask: np.ndarray, native: NativeGrid) -> np.ndarray:
        """A plan-grid mask back on the subject's own grid (lesion fraction >= 0.5)."""
        if self.on_grid(native):
            return mask
        return resample.mask_to_grid(mask, self.subject_affine(native), native.shape, native.affine)

    def probability_to_native(self, probability: np.ndarray, native: NativeGrid) -> np.ndarray:
        if self.on_grid(native):
            return probability
        return resample.to_grid(probability, self.subject_affine(native), native.shape, native.affine, order=1)

    def fits(self, native: NativeGrid) -> bool:
        """Whether a subject's whole field of view fits the plan volume (a new case may be larger)."""
        return self.kind == "fixed" or bool(np.all(self.resampled_shape(native) <= np.asarray(self.shape)))

    # ----------------------------------------------------------------------------- persistence
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, folder: Path) -> Path:
        path = Path(folder) / GRID_PLAN_JSON
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "GridPlan":
        affine = data.get("affine")
        return cls(kind=str(data["kind"]), shape=tuple(int(s) for s in data["shape"]),
                   spacing=tuple(float(s) for s in data["spacing"]), channels=tuple(data["channels"]),
                   channel_kinds=tuple(data["channel_kinds"]), planes=tuple(data["planes"]),
                   spacing_known=bool(data.get("spacing_known", True)),
                   affine=None if affine is None else tuple(float(a) for a in affine))

    @classmethod
    def read(cls, folder: Path) -> "GridPlan":
        path = Path(folder) / GRID_PLAN_JSON
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError(path, "grid plan not found (rerun 01_dataset)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(path, f"unreadable grid plan ({exc.__class__.__name__}: {exc})") from None


def native_grid(path: Path) -> NativeGrid:
    """A subject's grid from the header of its first channel's file (no voxels read)."""
    try:
        header = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for non-NIfTI files
        raise InputError(path, f"not a readable NIfTI file ({exc.__class__.__name__})") from None
    return NativeGrid(tuple(int(s) for s in header.shape[:3]), np.asarray(header.affine, dtype=float))


def make_plan(grids: list[NativeGrid], kind: str, channels: tuple[str, ...], channel_kinds: tuple[str, ...],
              planes: tuple[str, ...], spacing_known: bool = True,
              target_spacing: tuple[float, ...] = ()) -> GridPlan:
    """The plan for subjects on these native grids.

    ``auto`` is ``fixed`` when every subject shares one grid and ``target_spacing`` otherwise.
    ``target_spacing`` () is the median RAS voxel size per axis.
    """
    if kind not in PLAN_KINDS:
        raise ConfigError(f"dataset.grid_plan must be one of {PLAN_KINDS}, got {kind!r}")
    if not grids:
        raise ConfigError("a grid plan needs at least one subject")
    first = grids[0]
    one_grid = all(g.shape == first.shape and np.allclose(g.affine, first.affine, rtol=0.0, atol=1e-4)
                   for g in grids)
    if kind == "auto":
        kind = "fixed" if one_grid and not target_spacing else "target_spacing"
    if kind == "fixed":
        if not one_grid:
            raise ConfigError("dataset.grid_plan=fixed needs every subject on one grid; these subjects have "
                              "several (use target_spacing)")
        return GridPlan("fixed", tuple(int(s) for s in first.shape), first.spacing, channels, channel_kinds,
                        planes, spacing_known, tuple(float(a) for a in np.asarray(first.affine).ravel()))
    if target_spacing:
        if len(target_spacing) != 3 or any(not s > 0 for s in target_spacing):
            raise ConfigError("dataset.target_spacing must be three voxel sizes > 0 in mm, or [] for the median")
        spacing = np.asarray(target_spacing, dtype=float)
    else:
        spacing = np.median([g.ras_shape_spacing()[1] for g in grids], axis=0)
    probe = GridPlan("target_spacing", (1, 1, 1), tuple(float(s) for s in spacing), channels, channel_kinds,
                     planes, spacing_known)
    shape = np.max([probe.resampled_shape(g) for g in grids], axis=0)
    return GridPlan("target_spacing", tuple(int(s) for s in shape), probe.spacing, channels, channel_kinds,
                    planes, spacing_known)
