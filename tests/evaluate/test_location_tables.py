"""Results by location on hand-made tables: groups, n and means, lesion-wise detection shares."""
from __future__ import annotations

import pandas as pd
import pytest

from strokeseg.evaluate import location_tables as lt

SUBJECTS = pd.DataFrame({"subject_name": ["a", "b", "c", "a", "b", "c"],
                         "mask": ["fused"] * 3 + ["axial"] * 3,
                         "dice": [0.8, 0.4, 0.0, 0.6, 0.2, 0.0],
                         "precision": [0.9, 0.5, 0.0, 0.7, 0.3, 0.0],
                         "recall": [0.7, 0.3, 0.0, 0.5, 0.1, 0.0],
                         "lesionwise_f1": [1.0, 0.5, 0.0, 1.0, 0.0, 0.0]})
LOCATIONS = pd.DataFrame({"subject_name": ["a", "b", "c"], "location_class": ["cortical", "cortical", None],
                          "hemisphere": ["left", "bilateral", None]})


def test_subjects_get_their_group_and_lesion_free_ones_theirs():
    frame = lt.with_locations(SUBJECTS, LOCATIONS)
    assert frame.set_index(["mask", "subject_name"]).loc[("fused", "c"), "location_class"] == lt.NO_LESION
    assert frame.set_index(["mask", "subject_name"]).loc[("axial", "b"), "hemisphere"] == "bilateral"


def test_by_location_lists_every_group_with_n_and_means_in_mask_order():
    table = lt.by_location(lt.with_locations(SUBJECTS, LOCATIONS), "mask", ["fused", "axial"])
    assert list(dict.fromkeys(table["mask"])) == ["fused", "axial"]
    classes = table[(table["mask"] == "fused") & (table["grouping"] == "location_class")].set_index("group")
    assert list(classes.index) == [*lt.GROUPS["location_class"]]
    assert classes.loc["cortical", "n"] == 2 and classes.loc["cortical", "dice_mean"] == pytest.approx(0.6)
    assert classes.loc[lt.NO_LESION, "n"] == 1 and classes.loc["subcortical", "n"] == 0
    sides = table[(table["mask"] == "axial") & (table["grouping"] == "hemisphere")].set_index("group")
    assert sides.loc["left", "dice_mean"] == pytest.approx(0.6) and sides["n"].sum() == 3


def test_detection_by_location_counts_lesions_per_group():
    lesions = pd.DataFrame({"location_class": ["cortical", "cortical", "subcortical", "both"],
                            "hemisphere": ["left", "right", "left", "left"], "voxels": [10, 30, 5, 7],
                            "detected": [True, False, True, False]})
    table = lt.detection_by_location(lesions).set_index(["grouping", "group"])
    assert table.loc[("location_class", "cortical"), ["n_lesions", "detected"]].tolist() == [2, 1]
    assert table.loc[("location_class", "cortical"), "median_voxels"] == 20
    assert table.loc[("hemisphere", "left"), "detection_rate"] == pytest.approx(2 / 3)
    assert table.loc[("location_class", "infratentorial"), "n_lesions"] == 0
    assert pd.isna(table.loc[("location_class", "infratentorial"), "detection_rate"])
