"""Batched whole-volume prediction (NumPy predictors) and per-plane model loading (tiny Keras models)."""
import numpy as np
import pytest

from strokeseg.config import PLANES, ConvertConfig
from strokeseg.data import planes
from strokeseg.data.cohort import discover
from strokeseg.data.nifti import load_t1
from strokeseg.data.stores import SliceStore
from strokeseg.errors import InputError
from strokeseg.infer.inference import (
    PlanePredictor,
    ensemble_predict,
    fixed_batch,
    fully_convolutional,
    head_windows,
    load_plane_models,
    model_channels,
    model_forward,
    normalized_volume,
    plane_predictors,
    plane_probability,
    plane_stack,
    predict_plane,
)

from conftest import write_tiny_cohort
from helpers import Recorder, save_models, threshold_model, write_atlas_stores


def centre_channel(x):
    return x[..., (x.shape[-1] - 1) // 2, None] / np.float32(255)


# ------------------------------------------------------------------------------- plane_stack
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference_cohort")
    write_tiny_cohort(root, 2, seed=3)
    return root, discover(root)


CONVERTS = [ConvertConfig(), ConvertConfig(normalization="slice_max"),
            ConvertConfig(store_dtype="float32", robust_percentiles=(2.0, 98.0), canvas_multiple=32)]


@pytest.mark.parametrize("convert", CONVERTS, ids=["volume_robust", "slice_max", "float32_p2_m32"])
def test_plane_stack_equals_what_stage_03_stores(cohort, tmp_path, convert):
    _, subjects = cohort
    write_atlas_stores(tmp_path, subjects, convert)
    t1, _ = load_t1(subjects[1].t1w)
    normalized = normalized_volume(t1, convert)
    assert (normalized is None) == (convert.normalization == "slice_max")
    for plane in PLANES:
        store = SliceStore(tmp_path / plane)
        rows = store.rows([subjects[1].subject] * store.n_slices, np.arange(store.n_slices))
        stored = store.canvas.crop(store.images_at(rows)[..., 0])
        assert store.canvas == planes.canvas_for(t1.shape, plane, convert.canvas_multiple)
        for stack in (plane_stack(t1, plane, convert), plane_stack(t1, plane, convert, normalized)):
            assert stack.dtype == np.dtype(convert.store_dtype)
            np.testing.assert_array_equal(stack, stored)


# ----------------------------------------------------------------------------- predict_plane
@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_predict_plane_batches_and_crops_back_exactly(plane, channels):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (21, 26, 19), dtype=np.uint8)
    canvas = planes.canvas_for(volume.shape, plane)
    stack = planes.to_stack(volume, plane)
    recorder = Recorder(centre_channel)
    out = predict_plane(recorder, stack, canvas, channels, batch_size=4)
    assert out.dtype == np.float32 and out.shape == stack.shape
    assert max(recorder.sizes) <= 4 and sum(recorder.sizes) == len(stack)
    assert all(shape[1:] == canvas.shape + (channels,) for shape in recorder.calls)
    # The centre channel / 255 rebuilds the normalised volume exactly: no shift, no lost border.
    np.testing.assert_array_equal(planes.from_stack(out, plane), volume.astype(np.float32) / np.float32(255))


def test_channels_are_the_neighbouring_slices_clamped_at_the_ends():
    stack = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 3, 4), np.uint8)
    canvas = planes.canvas_for((5, 3, 4), "sagittal")
    seen = []

    def record(x):
        seen.append(x[:, canvas.offset[0], canvas.offset[1], :].copy())
        return np.zeros(x.shape[:3] + (1,), np.float32)

    predict_plane(record, stack, canvas, channels=4, batch_size=2)
    np.testing.assert_array_equal(np.concatenate(seen), planes.neighbour_indices(np.arange(5), 5, 4))
    assert all(s.dtype == np.float32 for s in seen)


def test_slices_outside_the_head_share_one_call_and_give_what_predicting_each_gives():
    stack = np.zeros((10, 2, 8, 8), np.uint8)         # two image channels
    stack[4, 0] = 100
    stack[5, 1] = 50
    canvas = planes.canvas_for((10, 8, 8), "sagittal")

    def model(x):           # a bias, so an all-zero input does not give probability 0
        return 0.2 + x.mean(axis=-1, keepdims=True) / np.float32(500)

    recorder = Recorder(model)
    out = predict_plane(recorder, stack, canvas, channels=3, batch_size=64)
    assert sorted(recorder.sizes) == [1, 4]              # the all-zero canvas once, then slices 3..6
    every = predict_plane(model, stack, canvas, channels=3, batch_size=64, skip_empty=False)
    np.testing.assert_array_equal(out, every)
    assert out[0].min() == np.float32(0.2) and out[4].max() > 0.2


def test_a_window_is_its_inputs_box_widened_by_the_margin_to_multiples_of_16():
    canvas = planes.canvas_for((197, 233, 189), "axial")          # 208 x 240, the slice at offset (6, 3)
    assert (canvas.shape, canvas.offset) == ((208, 240), (6, 3))
    stack = np.zeros((3, 197, 233), np.uint8)
    stack[0, 60, 100] = stack[2, 119, 150] = 1                    # canvas (66, 103) and (125, 153)
    # slice 0: rows 66 -> 42-91 with the margin -> 32-96 on multiples of 16; columns 103 -> 79-128 -> 64-128
    # slice 1 alone is empty: the whole canvas; slice 2: rows 101-150 -> 96-160, columns 129-178 -> 128-192
    np.testing.assert_array_equal(head_windows(stack, canvas, np.arange(3), channels=1, margin=24, block=1),
                                  [[32, 96, 64, 128], [0, 208, 0, 240], [96, 160, 128, 192]])
    # in blocks of 8 slices (the default), the three share the union of their windows
    np.testing.assert_array_equal(head_windows(stack, canvas, np.arange(3), channels=1, margin=24),
                                  [[32, 160, 64, 192]] * 3)
    # with its neighbours as channels, slice 1 sees both pixels; image channels count as well
    np.testing.assert_array_equal(head_windows(stack, canvas, [1], 3, margin=24, block=1), [[32, 160, 64, 192]])
    np.testing.assert_array_equal(head_windows(stack[:, None], canvas, [1], 3, margin=24, block=1),
                                  [[32, 160, 64, 192]])
    np.testing.assert_array_equal(head_windows(stack, canvas, [0], 1, margin=100, block=1), [[0, 176, 0, 208]])
    odd = planes.canvas_for((20, 20, 20), "axial", multiple=4)    # 20 x 20: not a multiple of 16
    small = np.zeros((20, 20, 20), np.uint8)
    small[:, 9, 9] = 1
    np.testing.assert_array_equal(head_windows(small, odd, [5], channels=1, margin=0), [[0, 20, 0, 20]])


def test_windowed_masks_do_not_depend_on_the_batch_size():
    rng = np.random.default_rng(5)
    stack = np.zeros((14, 197, 233), np.uint8)
    for k in range(2, 12):                                        # a head whose section changes along the axis
        stack[k, 60 - 4 * k:120 + 3 * k, 70:100 + 6 * k] = rng.integers(1, 255, (60 + 7 * k, 30 + 6 * k))
    canvas = planes.canvas_for((197, 233, 189), "axial")

    def window_mean_model(x):      # not local: each pixel sees the mean of its whole input window
        return np.broadcast_to(0.1 + x.mean(axis=(1, 2, 3), keepdims=True) / 255, x.shape[:3] + (1,)).astype(
            np.float32)

    outs = [predict_plane(window_mean_model, stack, canvas, channels=3, batch_size=b, crop_to_head=True)
            for b in (1, 3, 8)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def box_filter_model(x):
    """A local model: sigmoid of a 3 x 3 mean (zero padding) of the centre channel, plus a bias."""
    centre = x[..., (x.shape[-1] - 1) // 2]
    padded = np.pad(centre, ((0, 0), (1, 1), (1, 1)))
    rows, cols = centre.shape[1:]
    mean = sum(padded[:, r:r + rows, c:c + cols] for r in range(3) for c in range(3)) / np.float32(9 * 255)
    return (1 / (1 + np.exp(-(mean * 8 - 2))))[..., None].astype(np.float32)


def test_a_local_model_on_the_heads_window_gives_what_the_whole_canvas_gives():
    rng = np.random.default_rng(4)
    stack = np.zeros((12, 197, 233), np.uint8)
    stack[3:9, 50:150, 60:170] = rng.integers(1, 255, (6, 100, 110))
    canvas = planes.canvas_for((197, 233, 189), "axial")
    recorder = Recorder(box_filter_model)
    cropped = predict_plane(recorder, stack, canvas, channels=3, batch_size=4, crop_to_head=True)
    # the all-zero canvas once, then the 8 slices within reach of the head (2..9) on the head's window
    # (rows 56-155 and columns 63-172 of the canvas, widened by 24 to 32-191 and 32-207)
    assert recorder.calls == [(1, *canvas.shape, 3), (4, 160, 176, 3), (4, 160, 176, 3)]
    whole = predict_plane(box_filter_model, stack, canvas, channels=3, batch_size=4, skip_empty=False)
    np.testing.assert_allclose(cropped, whole, rtol=0, atol=1e-7)


def test_only_fully_convolutional_models_may_see_a_window(tmp_path):
    import keras

    from strokeseg.models import build_model

    assert fully_convolutional(build_model("raxnet", (32, 32, 1), width=0.125))
    assert fully_convolutional(build_model("unet", (32, 32, 1), base_filters=2))
    assert not fully_convolutional(build_model("attention_unet", (32, 32, 1)))    # group normalisation
    image = keras.Input((32, 32, 1))
    dense = keras.layers.Dense(1)(keras.layers.Flatten()(image))
    assert not fully_convolutional(keras.Model(image, dense))
    save_models(tmp_path, {f"{plane}.keras": 1 for plane in PLANES})
    predictors = plane_predictors(load_plane_models(tmp_path), batch_size=2)
    assert all(isinstance(p, PlanePredictor) and p.fully_convolutional for p in predictors.values())


def test_a_models_forward_step_gives_its_predictions_at_every_window_and_batch_size():
    import keras

    from strokeseg.models import build_model

    rng = np.random.default_rng(5)
    local = build_model("raxnet", (64, 48, 1), width=0.125)
    forward = model_forward(local)
    for shape in ((3, 64, 48, 1), (8, 32, 48, 1), (1, 16, 32, 1)):        # the canvas, then windows
        x = rng.uniform(0, 255, shape).astype(np.float32)
        out = forward(x)
        assert out.dtype == np.float32 and out.shape == shape
        # batch normalisation folded into the convolutions: equal up to float32 rounding
        np.testing.assert_allclose(out, local.predict_on_batch(x), rtol=0, atol=1e-4)
    image = keras.Input((32, 32, 1))                                    # whole-image statistics: its canvas only
    features = keras.layers.GroupNormalization(groups=1)(keras.layers.Conv2D(2, 3, padding="same")(image))
    fixed = keras.Model(image, keras.layers.Conv2D(1, 1, activation="sigmoid")(features))
    x = rng.uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(model_forward(fixed)(x), fixed.predict_on_batch(x), rtol=0, atol=1e-4)
    with pytest.raises((TypeError, ValueError)):      # TensorFlow: the step's signature refuses it
        model_forward(fixed)(x[:, :16, :16])


def test_bad_stack_or_prediction_is_an_error():
    canvas = planes.canvas_for((4, 5, 6), "sagittal")
    with pytest.raises(ValueError, match="stack shape"):
        predict_plane(centre_channel, np.zeros((4, 6, 5)), canvas, 1, 2)
    with pytest.raises(ValueError, match="batch_size"):
        predict_plane(centre_channel, np.zeros((4, 5, 6)), canvas, 1, 0)
    with pytest.raises(ValueError, match="predict returned shape"):
        predict_plane(lambda x: np.zeros((len(x), 2, 2, 1)), np.zeros((4, 5, 6)), canvas, 1, 2)


# ------------------------------------------------------------------------- plane_probability
def test_plane_probability_is_the_normalised_volume_for_the_identity_model():
    rng = np.random.default_rng(1)
    t1 = np.where(rng.random((20, 22, 18)) > 0.3, rng.normal(500, 80, (20, 22, 18)), 0).astype(np.float32)
    convert = ConvertConfig()
    expected = normalized_volume(t1, convert).astype(np.float32) / np.float32(255)
    for plane in PLANES:
        out = plane_probability(centre_channel, t1, plane, convert, channels=3, batch_size=7)
        assert out.shape == t1.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)
        shared = plane_probability(centre_channel, t1, plane, convert, 3, 7, normalized=normalized_volume(t1, convert))
        np.testing.assert_array_equal(shared, expected)


def position_dependent(x):
    """Not mirror-equivariant: grows along the canvas rows and columns and reads the first channel."""
    rows = np.linspace(0, 0.25, x.shape[1], dtype=np.float32)[:, None]
    cols = np.linspace(0, 0.25, x.shape[2], dtype=np.float32)[None, :]
    return ((rows + cols)[None] + x[..., 0] / np.float32(510))[..., None].astype(np.float32)


@pytest.mark.parametrize("normalization", ["volume_robust", "slice_max"])
def test_flip_tta_of_a_left_right_symmetric_volume_is_symmetric(normalization):
    rng = np.random.default_rng(2)
    half = rng.normal(500, 80, (10, 14, 12)).astype(np.float32)
    t1 = np.concatenate([half, half[::-1]])                  # mirror-symmetric along x
    convert = ConvertConfig(normalization=normalization)
    for plane, channels in (("axial", 1), ("coronal", 1), ("sagittal", 3)):
        plain = plane_probability(position_dependent, t1, plane, convert, channels, batch_size=8)
        tta = plane_probability(position_dependent, t1, plane, convert, channels, 8, flip_tta=True)
        assert not np.allclose(plain, plain[::-1])           # the predictor itself is not symmetric
        np.testing.assert_allclose(tta, tta[::-1], atol=1e-6)
        # A mirror-equivariant predictor gives the same probabilities with or without TTA.
        np.testing.assert_allclose(plane_probability(centre_channel, t1, plane, convert, channels, 8, flip_tta=True),
                                   plane_probability(centre_channel, t1, plane, convert, channels, 8), atol=1e-6)


def test_flip_tta_skips_single_channel_sagittal_where_it_changes_nothing():
    t1 = np.random.default_rng(3).normal(500, 80, (6, 16, 16)).astype(np.float32)
    recorder = Recorder(centre_channel)
    plane_probability(recorder, t1, "sagittal", ConvertConfig(), 1, batch_size=64, flip_tta=True)
    assert sum(recorder.sizes) == 6
    recorder = Recorder(centre_channel)
    plane_probability(recorder, t1, "axial", ConvertConfig(), 1, batch_size=64, flip_tta=True)
    assert sum(recorder.sizes) == 2 * 16


# ------------------------------------------------------------------------------------ models
def test_single_models_and_fold_ensembles_load_in_safe_mode(tmp_path):
    folder = save_models(tmp_path / "models", {"axial.keras": 1, "sagittal.keras": 3,
                                               "coronal_fold1.keras": 1, "coronal_fold2.keras": 1,
                                               "axial_fold1.keras": 1, "notes_fold1.keras": 1})
    (folder / "coronal_fold2.keras").rename(folder / "coronal_fold10.keras")   # numeric fold order
    models = load_plane_models(folder)
    assert {p: len(m) for p, m in models.items()} == {"axial": 1, "sagittal": 1, "coronal": 2}
    assert model_channels(models["sagittal"][0]) == 3
    with pytest.raises(InputError, match="no sagittal model"):
        load_plane_models(folder, ensemble=True)          # --ensemble: every plane needs folds
    x = np.full((2, 16, 16, 1), 210, np.float32)
    single = ensemble_predict(models["axial"], batch_size=4)(x)
    assert single.shape == (2, 16, 16, 1) and single.dtype == np.float32
    np.testing.assert_allclose(ensemble_predict(models["coronal"], 4)(x), single, rtol=1e-6)


def test_ensemble_is_the_mean_of_its_members(tmp_path):
    low, high = threshold_model(level=100.0), threshold_model(level=150.0)
    x = np.full((3, 16, 32, 1), 120, np.float32)
    mean = ensemble_predict([low, high], batch_size=2)(x)
    expected = (low.predict(x, verbose=0) + high.predict(x, verbose=0)) / 2
    np.testing.assert_allclose(mean, expected, rtol=1e-6)


def test_a_fixed_batch_forward_sees_one_batch_shape_and_returns_only_the_real_slices():
    """For backends that compile per shape: every chunk reaches the model as a whole batch, and padding
    changes no slice's output."""
    seen = []

    def forward(x):
        seen.append(x.shape)
        return x[..., :1] * np.float32(2)

    x = np.arange(3 * 4 * 5 * 2, dtype=np.float32).reshape(3, 4, 5, 2)
    padded = fixed_batch(forward, 8)
    np.testing.assert_array_equal(padded(x), x[..., :1] * 2)
    np.testing.assert_array_equal(padded(x[:1]), x[:1, ..., :1] * 2)
    full = np.ones((8, 4, 5, 2), np.float32)
    np.testing.assert_array_equal(padded(full), full[..., :1] * 2)
    assert seen == [(8, 4, 5, 2)] * 3


def test_a_registry_model_loads_with_its_canvas(tmp_path):
    from strokeseg.models import build_model

    folder = tmp_path / "models"
    folder.mkdir()
    build_model("unet", (208, 240, 1), base_filters=2).save(folder / "axial.keras")
    save_models(folder, {"sagittal.keras": 1, "coronal.keras": 1})
    canvases = {p: planes.canvas_for(planes.ATLAS_SHAPE, p).shape for p in PLANES}
    models = load_plane_models(folder, canvas_shapes=canvases)
    assert tuple(models["axial"][0].inputs[0].shape) == (None, 208, 240, 1)
    (folder / "axial.keras").rename(folder / "sagittal.keras")     # 208x240 model, 240x208 canvas
    save_models(folder, {"axial.keras": 1})
    with pytest.raises(InputError, match=r"sagittal\.keras: model input 208x240 does not fit the canvas 240x208"):
        load_plane_models(folder, canvas_shapes=canvases)


@pytest.mark.parametrize("fault", ["missing", "not_keras", "truncated", "corrupt", "zip_without_config", "fifo",
                                   "two_outputs", "channels"])
def test_bad_model_folders_name_the_file(tmp_path, fault):
    import os
    import zipfile

    folder = save_models(tmp_path / "models", {"axial.keras": 1, "sagittal.keras": 1, "coronal.keras": 1})
    model = folder / "coronal.keras"
    if fault == "missing":
        model.unlink()
        expected = "no coronal model"
    elif fault == "not_keras":
        model.write_text("not a model")
        expected = r"coronal\.keras: not a readable Keras model file \(not a zip archive: truncated or corrupt"
    elif fault == "truncated":        # Keras itself says "File not found" of a file that exists
        model.write_bytes(model.read_bytes()[:-200])
        expected = r"coronal\.keras: not a readable Keras model file \(not a zip archive: truncated or corrupt"
    elif fault == "corrupt":          # a complete archive whose weights fail their CRC
        with zipfile.ZipFile(model) as archive:
            info = archive.getinfo("model.weights.h5")
        data = bytearray(model.read_bytes())
        data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
        model.write_bytes(bytes(data))
        expected = r"coronal\.keras: not a readable Keras model file \(.*corrupt"
    elif fault == "zip_without_config":
        model.unlink()
        with zipfile.ZipFile(model, "w") as archive:
            archive.writestr("notes.txt", "not a model")
        expected = r"coronal\.keras: not a Keras model file \(a zip archive without config\.json"
    elif fault == "fifo":             # never opened (it would wait for a writer forever)
        model.unlink()
        os.mkfifo(model)
        expected = r"coronal\.keras: not a regular file \(a FIFO"
    elif fault == "two_outputs":
        threshold_model(filters=2).save(model)
        expected = r"coronal\.keras: model output .* is not one \(n, H, W, 1\)"
    else:
        model.unlink()
        save_models(folder, {"coronal_fold1.keras": 1, "coronal_fold2.keras": 3})
        expected = r"coronal_fold2\.keras: coronal models read different numbers of input channels"
    with pytest.raises(InputError, match=expected):
        load_plane_models(folder)
    with pytest.raises(InputError, match="models folder not found"):
        load_plane_models(tmp_path / "nowhere")


def test_models_with_custom_layers_load_in_safe_mode_in_a_fresh_process(tmp_path):
    """X-Net registers custom layers: a process that never built one must still load its file."""
    import subprocess
    import sys

    from strokeseg.models import build_model

    build_model("xnet", (32, 32, 1)).save(tmp_path / "axial.keras")
    code = ("import sys; from strokeseg.infer.inference import load_model; "
            "print(load_model(sys.argv[1]).name)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "axial.keras")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "xnet", result.stderr[-2000:]


# ------------------------------------------------------------------------------- 3-D models
@pytest.fixture(scope="module")
def volume_folder(tmp_path_factory):
    """A models folder holding a 1/16-width 3-D U-Net for 16³ patches of two image channels."""
    from strokeseg.models import build_model

    folder = tmp_path_factory.mktemp("volume_models")
    build_model("unet3d", (16, 16, 16, 2), width=0.0625).save(folder / "volume.keras")
    return folder


def test_a_3d_models_folder_is_the_volume_plane_with_its_patch(volume_folder, tmp_path):
    from strokeseg.infer.inference import folder_planes, plane_predictors

    assert folder_planes(volume_folder) == ("volume",)
    assert folder_planes(tmp_path, ("axial",)) == ("axial",)
    predictor = plane_predictors(load_plane_models(volume_folder, planes_wanted=("volume",)), 4)["volume"]
    assert predictor.patch == (16, 16, 16) and predictor.channels == 2


def test_the_3d_plane_predicts_the_whole_volume_and_refuses_other_channel_counts(volume_folder):
    from strokeseg.infer.inference import plane_predictors
    from strokeseg.infer.tri_planar import TriPlanarPredictor

    predictors = plane_predictors(load_plane_models(volume_folder, planes_wanted=("volume",)), 4)
    volume = np.random.default_rng(0).normal(size=(2, 20, 24, 18)).astype(np.float32)
    probabilities = TriPlanarPredictor(predictors, kinds=("mr", "mr")).probabilities(volume)
    assert list(probabilities) == ["volume"] and probabilities["volume"].shape == (20, 24, 18)
    assert probabilities["volume"].dtype == np.float32 and np.all((probabilities["volume"] >= 0) &
                                                                 (probabilities["volume"] <= 1))
    with pytest.raises(ValueError, match="reads 2 image channels, the cohort has 1"):
        TriPlanarPredictor(predictors, kinds=("t1",))
