"""Run logs: TensorBoard event files in Keras' layout hold every epoch's history row and the inner-validation
overlays; progress.png is redrawn after every epoch, with TensorBoard on or off; overlays are drawn right."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

import strokeseg.train.loop as training
from strokeseg.config import TrainingConfig
from strokeseg.train import run_logs
from strokeseg.train.recipes import model_training
from strokeseg.workdir import stage_config

pytestmark = pytest.mark.usefixtures("no_figure_leaks")


def tiny_spec(workdir: Path, folder: Path, **settings) -> training.RunSpec:
    """The cheapest run: a 4-filter U-Net, one training and one validation step per epoch."""
    config = stage_config(workdir, "06_preparation")
    run = replace(model_training(config, "unet", "published"), model_options={"base_filters": 4},
                  steps_per_epoch=1, validation_steps=1, **settings)
    return training.RunSpec(workdir / "06_preparation", "axial", 1, config.cv.n_folds, run, config.seed, False, folder)


def events(folder: Path) -> EventAccumulator:
    # TF2 summaries are tensor events; 0 = keep every one (the default samples images down)
    return EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()


def values(accumulator: EventAccumulator, tag: str) -> tuple[list[int], list]:
    found = accumulator.Tensors(tag)
    return [e.step for e in found], [tensor_util.make_ndarray(e.tensor_proto) for e in found]


def test_a_run_logs_its_history_and_overlays_to_tensorboard_and_redraws_its_progress(
        prepared_workdir, tmp_path, monkeypatch):
    drawn = []   # the rows each progress figure was drawn from
    real = run_logs.progress_figure
    monkeypatch.setattr(run_logs, "progress_figure", lambda frame, *a: drawn.append(len(frame)) or real(frame, *a))
    spec = tiny_spec(prepared_workdir, tmp_path / "run", max_epochs=2, overlay_every=1, overlay_count=3)
    training.train(spec, progress=False)
    assert drawn == [1, 2] and (spec.folder / "progress.png").is_file()

    history = pd.read_csv(spec.folder / "history.csv")
    board = spec.folder / "tensorboard"
    for writer, tags in (("train", run_logs.TRAIN_SCALARS), ("validation", run_logs.VALIDATION_SCALARS)):
        accumulator = events(board / writer)
        assert set(tags) <= set(accumulator.Tags()["tensors"])
        for tag, column in tags.items():
            steps, logged = values(accumulator, tag)
            assert steps == [1, 2], tag
            np.testing.assert_allclose(np.array(logged, float), history[column], rtol=1e-6, err_msg=tag)

    steps, overlays = values(events(board / "validation"), run_logs.OVERLAY_TAG)
    assert steps == [1, 2]
    examples = run_logs.slice_examples(spec.split("inner_val"), 3)
    for logged in overlays:                 # [width, height, png, png, png]
        images = [tf.io.decode_png(png).numpy() for png in logged[2:]]
        assert len(images) == 3
        for image, (_, truth, _) in zip(images, examples):   # the same examples every time, in order
            assert image.shape == (*truth.shape[:2], 3) and image.dtype == np.uint8
            green = np.all(image == run_logs.GREEN, axis=-1)
            assert green.any() and not (green & ~run_logs.outline(truth[..., 0] > 0)).any()   # the truth's outline


def history_rows(epochs: int) -> list[dict]:
    return [{"epoch": e, **{c: 0.5 for c in training.HISTORY_COLUMNS[1:]}} for e in range(1, epochs + 1)]


def test_without_tensorboard_only_the_progress_figure_is_written(tmp_path):
    """No training (the run above shows train() calls the logs): a run spec's settings only."""
    spec = SimpleNamespace(training=replace(TrainingConfig(), tensorboard=False), plane="axial", test_fold=1)
    logs = run_logs.RunLogs(tmp_path, spec)
    logs.epoch_end(None, history_rows(1))     # the model is only used for overlays
    logs.close()
    assert [p.name for p in tmp_path.iterdir()] == ["progress.png"]


def test_overlays_follow_their_schedule_and_a_3d_run_draws_each_patchs_most_lesioned_section(tmp_path):
    """No training: a stub 3-D run whose one validation patch has its lesion at depth 5, and a model that
    predicts the lesion shifted; overlays after epochs 1 and 2 (every 2nd, and the first), none after 3."""
    image = np.full((1, 12, 12, 8, 1), 100.0, np.float32)
    mask = np.zeros((1, 12, 12, 8, 1), np.float32)
    mask[0, 3:8, 3:8, 5] = 1
    mask[0, 4, 4, 2] = 1                  # fewer lesion voxels at depth 2
    lesion_free = np.zeros_like(mask)     # a patch without lesion: never an example
    batches = [(image, lesion_free), (image, mask)]
    volume = SimpleNamespace(dataset=lambda *args, **kw: tf.data.Dataset.from_tensor_slices(
        tuple(np.concatenate(a) for a in zip(*batches))).batch(1))
    settings = replace(TrainingConfig(), model="unet3d", overlay_every=2, overlay_count=2)
    spec = SimpleNamespace(training=settings, plane="volume", test_fold=1, channels=1, volume=volume, data_seed=0)
    model = keras.Sequential([keras.Input((12, 12, 8, 1)), keras.layers.Lambda(lambda x: 0.0 * x + 1.0)])

    logs = run_logs.RunLogs(tmp_path, spec)
    rows = history_rows(3)
    for epoch in (1, 2, 3):
        logs.epoch_end(model, rows[:epoch])
    logs.close()
    steps, overlays = values(events(tmp_path / "tensorboard" / "validation"), run_logs.OVERLAY_TAG)
    assert steps == [1, 2] and [len(o) - 2 for o in overlays] == [1, 1]   # the one patch with a lesion
    drawn = tf.io.decode_png(overlays[0][2]).numpy()
    expected = run_logs.overlay_image(image[0, :, :, 5, 0], mask[0, :, :, 5, 0] > 0, np.ones((12, 12), bool))
    np.testing.assert_array_equal(drawn, expected)


def test_the_overlay_draws_truth_green_prediction_red_on_the_grey_input():
    grey = np.full((10, 10), 300.0)                     # beyond the 0..255 scale: clipped
    grey[0, 0] = 40.0
    truth = np.zeros((10, 10), bool)
    truth[2:7, 2:7] = True
    prediction = np.zeros((10, 10), bool)
    prediction[4:9, 4:9] = True
    rgb = run_logs.overlay_image(grey, truth, prediction)
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[2, 2]) == run_logs.GREEN           # truth's outline only
    assert tuple(rgb[8, 8]) == run_logs.RED             # prediction's outline only
    assert tuple(rgb[4, 6]) == run_logs.RED             # both outlines: the prediction is drawn last
    assert tuple(rgb[3, 3]) == (255, 255, 255)          # inside the truth, off every outline: grey
    assert tuple(rgb[0, 0]) == (40, 40, 40)


@pytest.mark.parametrize("channels, slices, centre", [(1, 1, 0), (3, 3, 1), (4, 4, 1), (6, 3, 2), (8, 4, 2)])
def test_the_centre_channel_is_the_centre_slices_first_image_channel(channels, slices, centre):
    assert run_logs.centre_channel(channels, slices) == centre
