"""Stage 10's figures on small synthetic arrays: correct labels, synthetic marking, valid PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from strokeseg.report import figures, fusion_figures

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def _subjects(n: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"subject_name": f"sub-{i:02d}", "mask": mask, "dice": rng.uniform(), "precision": rng.uniform(),
             "recall": rng.uniform()}
            for i in range(n) for mask in ("axial", "sagittal", "coronal", "fused")]
    return pd.DataFrame(rows)


def _volumes(shape=(24, 28, 20)):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    t1 = np.where((grid ** 2).sum(axis=0) < 0.8, 800.0, 0.0).astype(np.float32)
    truth = (((grid - 0.2) ** 2).sum(axis=0) < 0.08).astype(np.uint8)
    prediction = (((grid - 0.25) ** 2).sum(axis=0) < 0.08).astype(np.uint8)
    return t1, truth, prediction


def test_before_after_labels_come_from_the_masks_in_plane_order(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(figures, "raincloud_figure", lambda frame, **k: calls.append((frame, k)))
    subjects = _subjects().sample(frac=1.0, random_state=1)     # row order must not matter
    fusion_figures.before_after_raincloud(subjects, tmp_path / "x.png", synthetic=True, rule="mean")
    frame, call = calls[0]
    assert call["order"] == ["axial (before fusion)", "sagittal (before fusion)", "coronal (before fusion)",
                             "fused (after fusion)"]
    assert call["synthetic"] is True and "mean" in call["title"]
    assert set(frame[call["group"]]) == set(call["order"])
    after = frame[frame[call["group"]] == "fused (after fusion)"][call["value"]]
    np.testing.assert_allclose(np.sort(after), np.sort(subjects.loc[subjects["mask"] == "fused", "dice"]))


def test_fused_metrics_raincloud_uses_only_the_fused_rows(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(figures, "raincloud_figure", lambda frame, **k: calls.append((frame, k)))
    subjects = _subjects(n=5)
    fusion_figures.fused_metrics_raincloud(subjects, tmp_path / "x.png", synthetic=False)
    frame, kwargs = calls[0]
    assert kwargs["order"] == ["Dice", "Precision", "Recall"]
    assert frame.groupby("metric").size().to_dict() == {"Dice": 5, "Precision": 5, "Recall": 5}
    fused = subjects[subjects["mask"] == "fused"]
    np.testing.assert_allclose(np.sort(frame.loc[frame["metric"] == "Recall", "value"]), np.sort(fused["recall"]))


def test_rainclouds_write_pngs_and_reject_unknown_masks(tmp_path):
    subjects = _subjects()
    fusion_figures.before_after_raincloud(subjects, tmp_path / "before_after.png", synthetic=True)
    fusion_figures.fused_metrics_raincloud(subjects, tmp_path / "fused.png", synthetic=False)
    assert _is_png(tmp_path / "before_after.png") and _is_png(tmp_path / "fused.png")
    bad = subjects.assign(mask=subjects["mask"].replace({"fused": "fusion"}))
    with pytest.raises(ValueError, match="unknown masks"):
        fusion_figures.before_after_raincloud(bad, tmp_path / "bad.png", synthetic=False)


def test_overlay_goes_through_the_lesion_centre_and_writes_a_png(tmp_path):
    t1, truth, prediction = _volumes()
    centre = fusion_figures.lesion_centre(truth, prediction)
    expected = np.round(np.argwhere(truth).mean(axis=0)).astype(int)
    assert centre == tuple(int(c) for c in expected)
    assert fusion_figures.lesion_centre(np.zeros_like(truth), prediction) == fusion_figures.lesion_centre(prediction)
    assert fusion_figures.lesion_centre(np.zeros((4, 6, 8))) == (2, 3, 4)
    fusion_figures.overlay_figure(t1, truth, prediction, tmp_path / "overlay.png", synthetic=True,
                                  spacing=(1.0, 1.0, 2.0), title="sub-01")
    assert _is_png(tmp_path / "overlay.png")
    with pytest.raises(ValueError, match="one shape"):
        fusion_figures.overlay_figure(t1, truth[:-1], prediction, tmp_path / "x.png", synthetic=False)


def test_surface_points_are_subsampled_deterministically_in_mm():
    _, truth, _ = _volumes()
    everything = fusion_figures.surface_points(truth, (1.0, 1.0, 1.0), max_points=10 ** 9)
    assert 0 < len(everything) < truth.sum()                          # the surface, not the whole lesion
    few = fusion_figures.surface_points(truth, (2.0, 1.0, 1.0), max_points=50, seed=3)
    assert few.shape == (50, 3)
    np.testing.assert_array_equal(few, fusion_figures.surface_points(truth, (2.0, 1.0, 1.0), 50, seed=3))
    assert np.all(few[:, 0] % 2 == 0)                                  # x scaled by its 2 mm spacing


def test_3d_view_writes_a_png_also_with_an_empty_prediction(tmp_path):
    _, truth, prediction = _volumes()
    fusion_figures.lesion_3d_figure(truth, prediction, tmp_path / "view.png", synthetic=True)
    fusion_figures.lesion_3d_figure(truth, np.zeros_like(truth), tmp_path / "empty.png", synthetic=False)
    assert _is_png(tmp_path / "view.png") and _is_png(tmp_path / "empty.png")


def test_overlay_subjects_spread_over_the_ranking():
    scores = pd.DataFrame({"subject_name": [f"s{i}" for i in range(7)],
                           "dice": [0.5, 0.1, 0.9, 0.3, np.nan, 0.7, 0.6]})
    assert fusion_figures.overlay_subjects(scores, 3) == ["s4", "s0", "s2"]   # worst (NaN), median, best
    assert fusion_figures.overlay_subjects(scores, 0) == []
    assert len(fusion_figures.overlay_subjects(scores, 20)) == 7
