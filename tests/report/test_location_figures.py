"""Lesion-location figures: exact aggregation on hand-made tables, the planes through the peak, and
PNGs for hand-made cohorts and maps on downsampled MNI grids (empty ones included)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strokeseg.data.lesion_locations import HEMISPHERES, LOCATION_CLASSES
from strokeseg.data.resample import MNI_AFFINE, MNI_SHAPE
from strokeseg.report import figures
from strokeseg.report import location_figures as lf

PNG = b"\x89PNG\r\n\x1a\n"
DPI = 30   # small: the files stay valid PNGs and the tests stay fast


# every test: no figure left open (figures are closed after saving)
pytestmark = pytest.mark.usefixtures("no_figure_leaks")


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def _lesions() -> pd.DataFrame:
    rows = [("sub-1", 1, 2.0, "subcortical", "left"), ("sub-1", 2, 0.5, "cortical", "left"),
            ("sub-2", 1, 4.0, "subcortical", "left"), ("sub-2", 2, 1.0, "both", "bilateral"),
            ("sub-3", 1, 3.0, "infratentorial", "right"), ("sub-3", 2, 0.25, "outside", "right")]
    return pd.DataFrame(rows, columns=["subject_name", "lesion", "volume_ml", "location_class", "hemisphere"])


def _load() -> pd.DataFrame:
    rows = [("sub-1", "Left Putamen", "subcortical", 1500, 1.5),
            ("sub-1", "Left Insular Cortex", "cortical", 500, 0.5),
            ("sub-2", "Left Putamen", "subcortical", 3000, 3.0),
            ("sub-2", "Brain-Stem", "infratentorial", 0, 0.0),
            ("sub-3", "Brain-Stem", "infratentorial", 2500, 2.5),
            ("sub-3", "Left Cerebellum", "infratentorial", 500, 0.5)]
    return pd.DataFrame(rows, columns=["subject_name", "region", "compartment", "voxels", "volume_ml"])


def _cell(table: pd.DataFrame, location_class: str, hemisphere: str) -> pd.Series:
    row = table[(table["location_class"] == location_class) & (table["hemisphere"] == hemisphere)]
    assert len(row) == 1
    return row.iloc[0]


def _grid(spacing) -> tuple[tuple[int, int, int], np.ndarray]:
    """The MNI grid downsampled to ``spacing`` mm (one number, or one per axis), same origin and field of view."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    affine = MNI_AFFINE.copy()
    affine[:3, :3] = np.diag(spacing)
    shape = tuple(int(np.ceil(s / z)) for s, z in zip(MNI_SHAPE, spacing))
    return shape, affine


def _blob(shape, affine, centre_mm=(-25.0, 5.0, 10.0), peak=0.6) -> np.ndarray:
    """A frequency map falling off from ``peak`` at ``centre_mm`` (world coordinates), 0 beyond ~15 mm."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *shape)
    distance = sum((world[a] - centre_mm[a]) ** 2 for a in range(3))
    return np.clip(peak * (1 - distance / 15.0 ** 2), 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------ aggregation
def test_class_hemisphere_table_counts_and_sums_every_pair_in_canonical_order():
    table = lf.class_hemisphere_table(_lesions().sample(frac=1.0, random_state=3))   # row order must not matter
    assert list(table.columns) == ["location_class", "hemisphere", "lesions", "volume_ml"]
    assert list(table["location_class"]) == [c for c in LOCATION_CLASSES for _ in HEMISPHERES]
    assert list(table["hemisphere"]) == list(HEMISPHERES) * len(LOCATION_CLASSES)
    expected = {("subcortical", "left"): (2, 6.0), ("cortical", "left"): (1, 0.5), ("both", "bilateral"): (1, 1.0),
                ("infratentorial", "right"): (1, 3.0), ("outside", "right"): (1, 0.25)}
    for c in LOCATION_CLASSES:
        for h in HEMISPHERES:
            row = _cell(table, c, h)
            assert (int(row["lesions"]), float(row["volume_ml"])) == expected.get((c, h), (0, 0.0))
    assert table["lesions"].dtype == np.int64 and table["lesions"].sum() == 6


def test_class_hemisphere_table_keeps_unknown_values_after_the_known_ones():
    lesions = pd.concat([_lesions(), pd.DataFrame([{"subject_name": "sub-4", "lesion": 1, "volume_ml": 0.1,
                                                    "location_class": "ventricle", "hemisphere": np.nan}])])
    table = lf.class_hemisphere_table(lesions)
    assert list(dict.fromkeys(table["location_class"])) == [*LOCATION_CLASSES, "ventricle"]
    assert list(dict.fromkeys(table["hemisphere"])) == [*HEMISPHERES, lf.NO_VALUE]
    assert _cell(table, "ventricle", lf.NO_VALUE)["lesions"] == 1
    assert table["lesions"].sum() == 7


@pytest.mark.parametrize("lesions", [_lesions().iloc[:0], pd.DataFrame()])
def test_class_hemisphere_table_of_no_lesions_is_all_zeros(lesions):
    table = lf.class_hemisphere_table(lesions)
    assert len(table) == len(LOCATION_CLASSES) * len(HEMISPHERES)
    assert table["lesions"].sum() == 0 and table["volume_ml"].sum() == 0.0


def test_class_hemisphere_table_refuses_a_frame_without_its_columns():
    with pytest.raises(ValueError, match="location_class"):
        lf.class_hemisphere_table(_lesions().drop(columns="location_class"))


def test_region_load_table_sums_over_subjects_and_counts_the_subjects_hit():
    table = lf.region_load_table(_load())
    assert list(table.columns) == ["region", "compartment", "voxels", "volume_ml", "subjects"]
    assert list(table["region"]) == ["Left Putamen", "Brain-Stem", "Left Cerebellum", "Left Insular Cortex"]
    putamen, stem = table.iloc[0], table.iloc[1]
    assert (putamen["voxels"], putamen["volume_ml"], putamen["subjects"]) == (4500, 4.5, 2)
    assert (stem["compartment"], stem["voxels"], stem["subjects"]) == ("infratentorial", 2500, 1)   # 0 voxels: not hit
    assert list(table["volume_ml"]) == [4.5, 2.5, 0.5, 0.5]          # a tie is broken by the region's name


def test_region_load_table_of_no_load_is_empty():
    assert lf.region_load_table(pd.DataFrame()).empty
    assert lf.region_load_table(_load().iloc[:0]).empty


# -------------------------------------------------------------------------------- planes and maps
def test_peak_slices_cut_through_the_maximum():
    frequency = np.zeros((7, 9, 5), dtype=np.float32)
    frequency[1, 2, 3] = 0.4
    frequency[5, 6, 1] = 0.9
    frequency[4, 4, 4] = 0.9   # a tie: the first in C order wins
    assert lf.peak_slices(frequency) == (4, 4, 4)
    frequency[4, 4, 4] = 0.5
    assert lf.peak_slices(frequency) == (5, 6, 1)


def test_peak_slices_of_an_empty_map_are_the_centre():
    assert lf.peak_slices(np.zeros((7, 9, 4))) == (3, 4, 2)


def test_the_blob_peaks_where_it_was_placed():
    shape, affine = _grid(4.0)
    placed = (-26.0, 6.0, 12.0)   # a voxel centre of the 4 mm grid
    centre = lf.peak_slices(_blob(shape, affine, centre_mm=placed))
    assert np.allclose(affine[:3, :3] @ centre + affine[:3, 3], placed)


# -------------------------------------------------------------------------------------- figures
def test_location_figure_is_a_png_marked_synthetic(tmp_path, saved_figures):
    path = tmp_path / "locations.png"
    lf.location_figure(_lesions(), _load(), path, synthetic=True, dpi=DPI)
    assert _is_png(path)
    fig = saved_figures[0]
    assert fig._suptitle.get_text().endswith(figures.SYNTHETIC_SUFFIX)
    assert any(t.get_text() == figures.SYNTHETIC_NOTE for t in fig.texts)
    counts, _load_axes, regions = fig.axes
    assert "n = 6 lesions in 3 subjects" in counts.get_title()
    ticks = [t.get_text() for t in counts.get_xticklabels()]
    assert ticks[0] == "cortical\n(n=1)" and ticks[1] == "subcortical\n(n=2)"
    assert [t.get_text() for t in regions.get_yticklabels()][:2] == ["Left Putamen", "Brain-Stem"]
    assert "4.50 mL · 2/3 subjects" in [t.get_text().strip() for t in regions.texts]


@pytest.mark.parametrize("lesions, load", [(_lesions().iloc[:0], _load().iloc[:0]), (pd.DataFrame(), pd.DataFrame()),
                                           (_lesions(), _load().iloc[:0])])
def test_location_figure_of_a_cohort_without_lesions_says_so(tmp_path, saved_figures, lesions, load):
    path = tmp_path / "locations.png"
    lf.location_figure(lesions, load, path, synthetic=False, dpi=DPI)
    assert _is_png(path)
    fig = saved_figures[0]
    assert not fig._suptitle.get_text().endswith(figures.SYNTHETIC_SUFFIX)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no lesion voxel in any atlas region" in texts
    assert ("no lesions in this cohort" in texts) == lesions.empty


def _overlay(ax):
    """The frequency layer of a panel (the second image) and its extent in mm."""
    image = ax.get_images()[1]
    return np.ma.getmaskarray(image.get_array()), image.get_extent()


@pytest.mark.parametrize("spacing", [(4.0, 4.0, 4.0), (2.0, 2.0, 2.0)])
def test_frequency_figure_on_downsampled_mni_grids(tmp_path, saved_figures, spacing):
    shape, affine = _grid(spacing)
    path = tmp_path / "frequency.png"
    frequency = _blob(shape, affine, centre_mm=(-26.0, 6.0, 12.0))   # a voxel centre of both grids: peak 0.6
    lf.frequency_figure(frequency, affine, path, synthetic=True, n_subjects=20, dpi=DPI)
    assert _is_png(path)
    fig = saved_figures[0]
    title = fig._suptitle.get_text()
    assert title.endswith(figures.SYNTHETIC_SUFFIX)
    assert "peak 60.0% (12 of 20 subjects) at (-26, +6, +12) mm" in title
    axial, coronal, sagittal, colourbar = fig.axes
    assert colourbar.get_ylabel() == "share of subjects with a lesion"
    assert [ax.get_title().split(",")[0] for ax in (axial, coronal, sagittal)] == ["axial", "coronal", "sagittal"]
    # the blob lies left (x < 0): in neurological convention it is drawn left of x = 0, on the L side
    masked, (x0, x1, _, _) = _overlay(axial)
    columns = np.flatnonzero((~masked).any(axis=0))
    assert x0 + (columns.max() + 1) * (x1 - x0) / masked.shape[1] < 0
    for ax in (axial, coronal):
        assert [t.get_text() for t in ax.texts[:2]] == ["L", "R"]
        assert "neurological" in ax.get_xlabel()


def test_frequency_figure_keeps_true_proportions_of_anisotropic_voxels(tmp_path, saved_figures):
    shape, affine = _grid((2.0, 3.0, 6.0))
    lf.frequency_figure(_blob(shape, affine), affine, tmp_path / "f.png", synthetic=False, n_subjects=5, dpi=DPI)
    axial, coronal, sagittal, _ = saved_figures[0].axes
    for ax, (h, v) in ((axial, (0, 1)), (coronal, (0, 2)), (sagittal, (1, 2))):
        x0, x1, y0, y1 = ax.get_images()[0].get_extent()
        assert np.isclose(x1 - x0, shape[h] * affine[h, h]) and np.isclose(y1 - y0, shape[v] * affine[v, v])
        assert ax.get_aspect() == 1.0   # equal mm on both axes


def test_frequency_figure_of_a_flipped_grid_draws_the_same_side(tmp_path, saved_figures):
    shape, affine = _grid(4.0)
    frequency = _blob(shape, affine)
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -4.0, affine[0, 3] + 4.0 * (shape[0] - 1)   # x runs right to left
    lf.frequency_figure(frequency, affine, tmp_path / "a.png", synthetic=False, n_subjects=3, dpi=DPI)
    lf.frequency_figure(frequency[::-1], flipped, tmp_path / "b.png", synthetic=False, n_subjects=3, dpi=DPI)
    first, second = (_overlay(fig.axes[0]) for fig in saved_figures)
    assert np.array_equal(first[0], second[0]) and np.allclose(first[1], second[1])


@pytest.mark.parametrize("n_subjects", [0, 4])
def test_frequency_figure_of_an_empty_map_cuts_through_the_centre(tmp_path, saved_figures, n_subjects):
    shape, affine = _grid(4.0)
    path = tmp_path / "frequency.png"
    lf.frequency_figure(np.zeros(shape, np.float32), affine, path, synthetic=False, n_subjects=n_subjects, dpi=DPI)
    assert _is_png(path)
    title = saved_figures[0]._suptitle.get_text()
    assert "no lesion" in title and "centre" in title
    assert saved_figures[0].axes[0].get_title() == f"axial, z = {affine[2, 2] * (shape[2] // 2) + affine[2, 3]:+.0f} mm"


@pytest.mark.parametrize("frequency", [np.full((4, 4, 4), 1.5), np.full((4, 4, 4), np.nan), np.zeros((4, 4))])
def test_frequency_figure_refuses_what_is_not_a_share_map(tmp_path, frequency):
    with pytest.raises(ValueError):
        lf.frequency_figure(frequency, np.eye(4), tmp_path / "f.png", synthetic=False, n_subjects=1)
