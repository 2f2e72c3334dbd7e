import numpy as np
import pytest

from strokeseg.data.prepared import PreparedPart, PreparedSplit, part_dir, write_prepared
from strokeseg.errors import InputError


def test_arrays_have_upstreams_layout(prepared):
    store, plans, root, shapes = prepared
    n_batches = plans[(1, "train")]["batch"].nunique()
    h, w = store.canvas.shape
    assert shapes[(1, "train")]["train_images_c1.npy"] == [n_batches, 8, h, w, 1]
    assert shapes[(1, "train")]["train_images_c4.npy"] == [n_batches, 8, h, w, 4]
    assert shapes[(1, "train")]["train_masks.npy"] == [n_batches, 8, h, w, 1]
    part = PreparedPart(part_dir(root, "axial", 1), "train", channels=4)
    assert isinstance(part.images, np.memmap) and part.n_batches == n_batches


def test_each_slot_holds_the_planned_slice_and_its_mask(prepared):
    store, plans, root, _ = prepared
    plan = plans[(2, "inner_val")].sort_values(["batch", "position"])
    part = PreparedPart(part_dir(root, "axial", 2), "inner_val")
    rows = store.rows(plan["subject_name"], plan["slice"]).reshape(part.n_batches, -1)
    for b in (0, part.n_batches - 1):
        np.testing.assert_array_equal(part.images[b, ..., 0], store.images_at(rows[b])[..., 0])
        np.testing.assert_array_equal(part.masks[b, ..., 0], store.masks_at(rows[b]))


def test_roles_of_a_test_fold_read_the_right_parts(prepared):
    _, plans, root, _ = prepared
    roles = {role: PreparedSplit(root, "axial", test_fold=1, role=role, n_folds=2) for role in
             ("train", "inner_val", "test")}
    count = {key: plan["batch"].nunique() for key, plan in plans.items()}
    assert roles["train"].n_batches == count[(2, "train")]
    assert roles["inner_val"].n_batches == count[(2, "inner_val")]
    assert roles["test"].n_batches == count[(1, "train")] + count[(1, "inner_val")]
    test = roles["test"]
    last_images, last_masks = test.batch(test.n_batches - 1)
    inner = PreparedPart(part_dir(root, "axial", 1), "inner_val")
    np.testing.assert_array_equal(last_images, inner.images[-1])
    np.testing.assert_array_equal(last_masks, inner.masks[-1])
    lesion = np.stack([test.batch(i)[1].reshape(8, -1).max(axis=1) > 0 for i in range(test.n_batches)])
    np.testing.assert_array_equal(lesion, test.is_lesion)     # lesion slots have lesion pixels, normals none
    repeat = np.concatenate([plans[(1, p)].sort_values(["batch", "position"])["repeat"].to_numpy()
                             for p in ("train", "inner_val")]).reshape(-1, 8).astype(bool)
    np.testing.assert_array_equal(test.is_repeat, repeat)


def test_flat_variant_is_a_view_of_the_same_bytes(prepared):
    _, _, root, _ = prepared
    part = PreparedPart(part_dir(root, "axial", 2), "inner_val", channels=4)
    assert part.n_batches >= 2
    images, masks = part.flat()
    assert images.shape == (part.n_batches * 8,) + part.images.shape[2:]
    assert np.shares_memory(images, part.images)
    np.testing.assert_array_equal(masks[8 + 3], part.masks[1, 3])


def test_missing_channel_count_names_the_file_and_the_fix(prepared):
    _, _, root, _ = prepared
    with pytest.raises(InputError, match=r"train_images_c3\.npy.*prepare\.channels=\[3\]"):
        PreparedPart(part_dir(root, "axial", 1), "train", channels=3)


def test_ragged_plan_is_rejected(prepared, tmp_path):
    store, plans, _, _ = prepared
    with pytest.raises(InputError, match="differ in size"):
        write_prepared(store, plans[(2, "inner_val")].iloc[:-1], (1,), tmp_path, "train")
