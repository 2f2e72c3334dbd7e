"""Dice tiers of stage 10 (all subjects and lesion subjects) on hand-made Dice lists."""
import numpy as np
import pandas as pd
import pytest

from strokeseg.evaluate.subject_tables import DICE_TIERS, dice_tiers

TIERS = list(DICE_TIERS)     # >= 0.8, [0.6, 0.8), [0.4, 0.6), < 0.4


def subjects(mask: str, dice: list[float], truth: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"subject_name": [f"s{i}" for i in range(len(dice))], "mask": mask, "dice": dice,
                         "truth_voxels": truth})


def test_tier_boundaries_groups_and_statistics():
    # 0.8 is in the top tier, 0.6 in [0.6, 0.8), 0.4 in [0.4, 0.6); the two lesion-free subjects score 1 and 0
    dice = [1.0, 0.8, 0.79999, 0.6, 0.5999, 0.4, 0.3999, 0.0, 1.0, 0.0]
    truth = [50, 40, 30, 20, 10, 9, 8, 7, 0, 0]
    table = dice_tiers(pd.concat([subjects("fused", dice, truth), subjects("axial", [0.7] * 10, truth)]),
                       ["axial", "sagittal", "fused"])
    assert list(table.columns) == ["mask", "group", "n", "dice_mean", "dice_median", *TIERS]
    assert list(zip(table["mask"], table["group"])) == [("axial", "all"), ("axial", "lesion"),
                                                        ("fused", "all"), ("fused", "lesion")]  # sagittal absent
    rows = table.set_index(["mask", "group"])
    assert rows.loc[("fused", "all"), TIERS].tolist() == [3, 2, 2, 3]
    assert rows.loc[("fused", "lesion"), TIERS].tolist() == [2, 2, 2, 2]
    assert rows.loc[("fused", "all"), "n"] == 10 and rows.loc[("fused", "lesion"), "n"] == 8
    assert rows.loc[("fused", "all"), "dice_mean"] == pytest.approx(np.mean(dice))
    assert rows.loc[("fused", "lesion"), "dice_mean"] == pytest.approx(np.mean(dice[:8]))
    assert rows.loc[("fused", "lesion"), "dice_median"] == pytest.approx((0.6 + 0.5999) / 2)
    assert rows.loc[("axial", "lesion"), TIERS].tolist() == [0, 8, 0, 0]
    assert (table[TIERS].sum(axis=1) == table["n"]).all()


def test_a_group_without_subjects_is_listed_with_n_0():
    table = dice_tiers(subjects("fused", [1.0, 0.0], [0, 0]), ["fused"]).set_index("group")
    assert table.loc["all", "n"] == 2 and table.loc["all", "dice_mean"] == 0.5
    assert table.loc["lesion", "n"] == 0 and np.isnan(table.loc["lesion", "dice_mean"])
    assert table.loc["lesion", TIERS].tolist() == [0, 0, 0, 0]
