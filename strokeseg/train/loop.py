"""Training one model on one (plane, test fold): tf.distribute, mixed precision, exact resume.

A run trains on the training parts of the other folds, selects on their inner-validation parts
(never on the test fold: ``docs/upstream-raxnet.md`` §14 item 6) and stops early when the
selection score has not improved for ``patience`` epochs: the inner-validation loss, or with
``training.selection="subject_dice"`` the mean per-subject Dice of the inner-validation volumes
(strokeseg.train.selection). Its folder holds:

- ``state.json``       what is done: epochs, best epoch and loss, early-stopping counters, the
                       checkpoint file, and the settings the run was started with;
- ``checkpoint_epochNNNN.npz``  every model variable (weights, batch-norm statistics, dropout seed
                       states) and every optimizer variable (moments, step count, learning rate)
                       after epoch NNNN, written each epoch; only the latest is kept;
- ``best_epochNNNN.npz``  the same model variables at the best epoch;
- ``history.csv``      one row per finished epoch: losses, metrics, learning rate, seconds;
- ``best.keras``       the best model for inference (no optimizer), written when training ends;
- ``progress.png``, ``tensorboard/``  the run's curves after every epoch (strokeseg.train.run_logs).

Every file is written to a temporary name and renamed, and ``state.json`` is written last, so a
run killed at any point resumes from the last finished epoch. Batch order and augmentation are
stateless functions of (seed, epoch, position) and the checkpoint restores every variable, so
the resumed run continues exactly as the uninterrupted one would have (on one device; reductions
on GPUs are not bitwise deterministic). Checkpoints are plain arrays (``np.load`` without pickle)
and best models load in Keras safe mode.

3-D models (strokeseg.models.VOLUME_MODELS) run the same loop on patch batches of stage 03's
volume store (strokeseg.train.volume_data), with nnU-Net's deep-supervision loss on the decoder's
lower scales when ``training.deep_supervision`` (strokeseg.train.deep_supervision); their
``best.keras`` is the single-output inference model.

Distribution (strokeseg.train.distribute): each replica gets one prepared batch per step, so the global
batch is ``batch_size × replicas``. Under MultiWorkerMirroredStrategy only the chief writes into
the run folder; the other workers keep their own copy in ``.worker-<index>/`` beside it.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from strokeseg.config import PostprocessConfig, TrainingConfig, derive_seed
from strokeseg.data.prepared import PreparedSplit
from strokeseg.errors import StrokesegError
from strokeseg.models import build_model, is_volumetric, load_model, slice_channels
from strokeseg.train import selection, volume_data
from strokeseg.train.augmentation import batch_augmentation
from strokeseg.train.deep_supervision import DeepSupervisionLoss
from strokeseg.train.distribute import global_batches, process_strategy, set_precision, strategy_scope, worker_info
from strokeseg.train.input_pipeline import batch_dataset
from strokeseg.train.losses import LCNNLoss, get_loss
from strokeseg.train.metrics import training_metrics
from strokeseg.train.optimizers import build_optimizer
from strokeseg.train.run_logs import RunLogs
from strokeseg.workdir import atomic_path, atomic_write_text, write_csv

log = logging.getLogger(__name__)

STATE = "state.json"
HISTORY = "history.csv"
BEST_MODEL = "best.keras"
HISTORY_COLUMNS = ("epoch", "loss", "dice", "precision", "recall", "val_loss", "val_dice", "val_precision",
                   "val_recall", "learning_rate", "train_seconds", "epoch_seconds", "val_subject_dice")


class RunSettingsError(StrokesegError):
    """A run folder holds a run started with other settings."""


@dataclass(frozen=True)
class RunSpec:
    """One training run: which data, which settings, where."""
    prepared: Path            # the stage-06 folder
    plane: str
    test_fold: int
    n_folds: int
    training: TrainingConfig
    seed: int
    fixed_order: bool         # upstream's fixed batch order (config.batches.fixed_order)
    folder: Path
    volume: volume_data.VolumeRunData | None = None   # a 3-D run's patches (its plane is "volume")
    postprocess: PostprocessConfig = PostprocessConfig()   # what training.selection="subject_dice" scores after
    batch_kind: str = "distribution"   # config.batches.kind: a pool kind's epochs are drawn afresh

    def settings(self) -> dict:
        """What must match for a run folder to be resumed (recorded in state.json)."""
        training = asdict(self.training)
        # which runs exist, what a run logs and whether its steps are traced, not how one trains
        for shared in ("planes", "folds", "eval_batch_size", "parallel_runs", "run_eagerly", "tensorboard",
                       "overlay_every", "overlay_count"):
            training.pop(shared)
        if training["selection"] == "val_loss":   # the rule before it was a setting: older run folders resume
            training.pop("selection")
        settings = {"plane": self.plane, "test_fold": self.test_fold, "n_folds": self.n_folds,
                    "seed": self.seed, "fixed_order": self.fixed_order, "training": training}
        if self.volume is not None:
            settings["patch"] = list(self.volume.patch)
        if self.batch_kind != "distribution":   # recorded only where it differs: older run folders still resume
            settings["batch_kind"] = self.batch_kind
        if self.training.selection == selection.SUBJECT_DICE:   # the rule changes which epoch is best
            settings["selection_postprocess"] = asdict(selection.selection_postprocess(self.postprocess))
        return json.loads(json.dumps(settings, default=list))

    @property
    def channels(self) -> int:
        return slice_channels(self.training.model)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model's input: a prepared batch's slice (H, W, C), or a 3-D run's patch (X, Y, Z, M)."""
        if self.volume is not None:
            return self.volume.input_shape
        return tuple(self.split("train").batch_shape[0][1:])

    @property
    def deep_supervision(self) -> bool:
        return self.volume is not None and self.training.deep_supervision

    def split(self, role: str) -> PreparedSplit:
        return PreparedSplit(self.prepared, self.plane, self.test_fold, role, self.n_folds, self.channels)

    @property
    def data_seed(self) -> int:
        return derive_seed(self.seed, "train", self.plane, self.test_fold)


# Building ------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="strokeseg")
class AlignmentPenalty(keras.layers.Layer):
    """Adds LCNN's alignment term to the training loss and passes the probabilities through.

    A ``(y_true, y_pred)`` loss never sees the aligned slices, so the term enters as a layer loss;
    ``warmup`` (a variable, so it is checkpointed) is the fraction of the weight in this epoch."""

    def __init__(self, loss_config: dict, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.loss_config = dict(loss_config)
        self.loss = LCNNLoss.from_config(self.loss_config)
        self.warmup = self.add_weight(shape=(), initializer="ones", trainable=False, name="warmup")

    def call(self, original, aligned, params, probabilities):
        term = self.loss.alignment_term(original, aligned, params)
        self.add_loss(self.warmup * term)
        return probabilities

    def get_config(self):
        return {**super().get_config(), "loss_config": self.loss_config}


def model_options(training: TrainingConfig, deep_supervision: bool = False) -> dict:
    """The build options of a run's model: ``training.model_options``, and for a 3-D model whether to
    build the deep-supervision heads (training) or not (the inference model)."""
    if not is_volumetric(training.model):
        return dict(training.model_options)
    return {**training.model_options, "deep_supervision": deep_supervision}


def build_training_model(training: TrainingConfig, input_shape: tuple[int, ...], loss,
                         deep_supervision: bool = False) -> keras.Model:
    """The model ``fit`` trains: the registry model (with its deep-supervision heads when asked), with
    LCNN's alignment term when the loss is LCNN's, and ``training.batchnorm_momentum`` when set."""
    model = build_model(training.model, input_shape, **model_options(training, deep_supervision))
    if training.batchnorm_momentum is not None:
        # Keras' 0.99 averages the batch statistics over ~100 steps: in a run of a few hundred
        # steps the moving statistics lag the weights, and inference-mode outputs lag training.
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = training.batchnorm_momentum
    return _with_loss_layers(model, loss)


def _with_loss_layers(model: keras.Model, loss) -> keras.Model:
    """``model`` itself, or with the loss LCNN's, a view of it that adds the alignment term."""
    if not isinstance(loss, LCNNLoss):
        return model
    from strokeseg.models.lcnn import training_model  # LCNN only: a heavy module
    probabilities, aligned, params = training_model(model).outputs
    output = AlignmentPenalty(loss.get_config(), name="alignment_penalty")(model.input, aligned, params, probabilities)
    return keras.Model(model.input, output, name=f"{model.name}_training")


# Checkpoints ---------------------------------------------------------------------------------------
def _state_variables(model: keras.Model) -> list:
    """Everything a resumed run needs, in a fixed order: model variables (incl. seed generator
    states), then optimizer variables (incl. step count and learning rate)."""
    return list(model.variables) + list(model.optimizer.variables)


def save_variables(path: Path, variables: list) -> None:
    """All ``variables`` as arrays ``v00000``, ``v00001``… in one ``.npz``, written atomically."""
    arrays = {f"v{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_variables(path: Path, variables: list) -> None:
    """Assign saved arrays to ``variables`` in order. Count and shapes must match (variable names
    are not compared: Keras numbers unnamed layers per process)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[f"v{i:05d}"] for i in range(len(data.files))]
    except (OSError, ValueError, KeyError) as exc:
        raise RunSettingsError(f"{path}: unreadable checkpoint ({exc})") from exc
    shapes = [tuple(v.shape) for v in variables]
    if [a.shape for a in arrays] != shapes:
        raise RunSettingsError(f"{path}: saved variables do not match this model "
                               f"({len(arrays)} saved, {len(variables)} expected, or different shapes)")
    for variable, array in zip(variables, arrays):
        variable.assign(array)


# The run -------------------------------------------------------------------------------------------
@dataclass
class RunState:
    settings: dict
    epochs_done: int = 0
    best_loss: float | None = None    # the lowest val_loss so far: plateau reduction, and selection "val_loss"
    best_epoch: int = 0
    wait: int = 0
    plateau_wait: int = 0
    checkpoint: str | None = None
    best: str | None = None
    stopped: str | None = None        # "early_stopping" or "max_epochs" once training has ended
    best_score: float | None = None   # the best epoch's val_subject_dice (training.selection subject_dice)

    @classmethod
    def load_or_new(cls, folder: Path, settings: dict) -> "RunState":
        path = folder / STATE
        if not path.is_file():
            return cls(settings)
        try:
            state = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise RunSettingsError(f"{path}: unreadable run state ({exc}); remove the folder to start over") from exc
        if state.settings != settings:
            changed = sorted(k for k in set(settings) | set(state.settings)
                             if settings.get(k) != state.settings.get(k))
            raise RunSettingsError(f"{path}: this run was started with other settings ({', '.join(changed)}); "
                                   "rerun with --fresh to discard it, or restore the settings to resume it")
        return state

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / STATE, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


class _OneEpoch(keras.callbacks.Callback):
    """Times one epoch (training up to the start of validation, and the whole epoch) and ends
    ``fit`` after it, so ``fit(epochs=max_epochs, initial_epoch=e)`` runs epoch e alone while
    Keras' progress bar still says "Epoch e+1/max_epochs"."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds = time.perf_counter() - self.start
        if self.train_seconds is None:
            self.train_seconds = self.epoch_seconds
        self.model.stop_training = True


def read_history(folder: Path) -> pd.DataFrame:
    path = folder / HISTORY
    if not path.is_file():
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    return pd.read_csv(path)


def _current_lr(optimizer) -> float:
    """The rate of the next step (Keras evaluates a schedule at the optimizer's step count)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


def _set_lr(optimizer, value: float) -> None:
    getattr(optimizer, "inner_optimizer", optimizer).learning_rate = value


def train(spec: RunSpec, progress: bool = True) -> RunState:
    """Train (or resume, or skip when finished) one run; returns its final state."""
    chief = worker_info()[2]
    folder = Path(spec.folder) if chief else Path(spec.folder) / f".worker-{worker_info()[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    state = RunState.load_or_new(folder, spec.settings())
    input_shape = spec.input_shape
    if state.stopped:  # finished; killed at most before best.keras, which needs no strategy
        if chief and not (folder / BEST_MODEL).is_file():
            _write_best_model(spec, input_shape, folder, state)
        log.info("%s: already trained (%d epochs, best %d)", folder, state.epochs_done, state.best_epoch)
        return state

    training = spec.training
    set_precision(training.precision)
    strategy = process_strategy()
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    model, loss = _compiled_model(spec, state, folder, strategy, replicas, input_shape)
    # Rows of an epoch that state.json never confirmed (killed in between) are dropped and redone.
    history = [row for row in read_history(folder).to_dict("records") if row["epoch"] <= state.epochs_done]
    logs = RunLogs(folder, spec) if chief else None   # progress.png and TensorBoard: the chief's folder only
    for epoch in range(state.epochs_done, training.max_epochs):
        _set_warmup(model, loss, epoch)
        row = _fit_epoch(model, spec, epoch, replicas, progress)
        if not np.isfinite(row["loss"]):
            raise StrokesegError(f"{folder}: training loss is {row['loss']} at epoch {epoch + 1}; lower "
                                 "training.learning_rate or use training.precision=float32")
        _end_of_epoch(model, state, folder, row, training)
        history.append(row)
        write_csv(pd.DataFrame(history, columns=list(HISTORY_COLUMNS)), folder / HISTORY)
        state.save(folder)            # last: it confirms the epoch's checkpoint and history row
        _remove_stale(folder, state)
        if logs is not None:
            logs.epoch_end(model, history)
        log.info("%s epoch %d/%d: loss %.4f val_loss %.4f val_dice %.4f%s (%.1f s)%s", folder.name, epoch + 1,
                 training.max_epochs, row["loss"], row["val_loss"], row["val_dice"],
                 f" val_subject_dice {row['val_subject_dice']:.4f}" if np.isfinite(row["val_subject_dice"]) else "",
                 row["epoch_seconds"], "  *best*" if state.best_epoch == epoch + 1 else "")
        if state.stopped:
            break
    if logs is not None:
        logs.close()
    if not state.stopped:
        state.stopped = "max_epochs"
        state.save(folder)
    if chief:
        _write_best_model(spec, input_shape, folder, state)
    return state


def _compiled_model(spec: RunSpec, state: RunState, folder: Path, strategy, replicas: int, input_shape):
    """(compiled training model, loss) inside the strategy's scope, restored from the checkpoint."""
    training = spec.training
    if spec.volume is not None:
        steps = training.patch_steps
    else:
        steps = _steps(spec.split("train").n_batches, training.steps_per_epoch, replicas)
    keras.utils.set_random_seed(derive_seed(spec.seed, "init", spec.plane, spec.test_fold))
    with strategy_scope(strategy):
        loss = get_loss(training.loss, **training.loss_options)
        model = build_training_model(training, input_shape, loss, spec.deep_supervision)
        if replicas > 1:
            _synchronize_batch_norm(model)
        optimizer = build_optimizer(training, steps)
        if len(model.outputs) > 1:   # deep supervision: one loss per scale, metrics on the full-resolution map
            supervision = DeepSupervisionLoss(loss, len(model.outputs))
            per_output = dict(loss=supervision.output_losses(), loss_weights=supervision.weights,
                              metrics=[training_metrics()] + [None] * (len(model.outputs) - 1))
        else:
            per_output = dict(loss=loss, metrics=training_metrics())
        model.compile(optimizer=optimizer, run_eagerly=training.run_eagerly, **per_output)
        model.optimizer.build(model.trainable_variables)
        if state.checkpoint:
            load_variables(folder / state.checkpoint, _state_variables(model))
            log.info("%s: resuming after epoch %d", folder, state.epochs_done)
    return model, loss


def _fit_epoch(model: keras.Model, spec: RunSpec, epoch: int, replicas: int, progress: bool) -> dict:
    """Train epoch ``epoch`` (from 0) and validate; the history row."""
    training = spec.training
    if spec.volume is not None:
        outputs = len(model.outputs)
        train_data = spec.volume.dataset("train", epoch, spec.data_seed, training.patch_steps, replicas,
                                         volume_data.augmentation(training), outputs)
        val_data = spec.volume.dataset("inner_val", 0, spec.data_seed, training.patch_validation_steps, replicas,
                                       None, outputs)
    else:
        split = spec.split("train")
        # Input channel c·M + m holds image channel m of the c-th adjacent slice: M draw groups.
        augment = batch_augmentation(spec.plane, training, split.batch_shape[0][-1] // spec.channels)
        # sample: a pool plan's slots are drawn afresh each epoch (inner_val: visited as planned)
        train_data = batch_dataset(split, epoch, spec.data_seed, spec.fixed_order, training.steps_per_epoch,
                                   replicas, augment, sample=True, replace=spec.batch_kind != "every_slice")
        val_data = batch_dataset(spec.split("inner_val"), 0, spec.data_seed, True, training.validation_steps,
                                 replicas)
    lr = _current_lr(model.optimizer)  # at the epoch's first step (a schedule moves on per step)
    timer = _OneEpoch()
    result = model.fit(global_batches(train_data, replicas), validation_data=global_batches(val_data, replicas),
                       epochs=training.max_epochs, initial_epoch=epoch, shuffle=False, callbacks=[timer],
                       verbose=_verbosity(progress))
    logs = _main_output_logs({k: float(v[-1]) for k, v in result.history.items()}, model)
    return {"epoch": epoch + 1, **{k: logs.get(k, np.nan) for k in HISTORY_COLUMNS[1:9]}, "learning_rate": lr,
            "train_seconds": timer.train_seconds, "epoch_seconds": timer.epoch_seconds,
            "val_subject_dice": (selection.epoch_score(model, spec)
                                 if training.selection == selection.SUBJECT_DICE else np.nan)}


def _main_output_logs(logs: dict, model: keras.Model) -> dict:
    """Keras prefixes a multi-output model's metrics with the output's name ("probabilities_dice"): the
    full-resolution output's metrics under their plain names, as a one-output model logs them."""
    if len(model.outputs) == 1:
        return logs
    main = model.output_names[0]
    named = {}
    for key, value in logs.items():
        prefix = "val_" if key.startswith("val_") else ""
        plain = key[len(prefix):]
        if plain.startswith(f"{main}_") and plain != f"{main}_loss":
            named[prefix + plain[len(main) + 1:]] = value
    return {**logs, **named}


def _synchronize_batch_norm(model: keras.Model) -> None:
    """Batch statistics over the global batch, so that every replica (and worker) keeps the same
    moving statistics; with per-replica statistics the workers' moving means drift apart. Only the
    training model is changed: the saved inference model is built fresh, backend-neutral."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _steps(n_batches: int, steps_per_epoch: int, replicas: int) -> int:
    """Optimizer steps per epoch (see pipeline.epoch_indices)."""
    if n_batches == 0:
        raise StrokesegError("no training batches: run stages 05 and 06 with this fold's subjects")
    batches = min(n_batches, steps_per_epoch * replicas) if steps_per_epoch else n_batches
    return -(-batches // replicas)


def _verbosity(progress: bool) -> int:
    if not progress:
        return 0
    return 1 if sys.stderr.isatty() else 2


def _set_warmup(model: keras.Model, loss, epoch: int) -> None:
    if isinstance(loss, LCNNLoss):
        fraction = loss.alignment_weight_at(epoch + 1) / loss.alignment_weight if loss.alignment_weight else 0.0
        model.get_layer("alignment_penalty").warmup.assign(fraction)


def _end_of_epoch(model, state: RunState, folder: Path, row: dict, training: TrainingConfig) -> None:
    """Early stopping, plateau reduction and checkpoints after one finished epoch (state saved by the caller).

    The best epoch and early stopping follow ``training.selection`` (the lowest val_loss, or the highest
    val_subject_dice; ``min_delta`` applies to it); plateau reduction always follows val_loss."""
    epoch = row["epoch"]
    loss_improved = state.best_loss is None or row["val_loss"] < state.best_loss - training.min_delta
    if training.selection == selection.SUBJECT_DICE:
        improved = state.best_score is None or row["val_subject_dice"] > state.best_score + training.min_delta
    else:
        improved = loss_improved
    if loss_improved:
        state.best_loss, state.plateau_wait = float(row["val_loss"]), 0
    else:
        state.plateau_wait += 1
        if training.plateau_factor < 1.0 and state.plateau_wait >= training.plateau_patience:
            _set_lr(model.optimizer, _current_lr(model.optimizer) * training.plateau_factor)
            state.plateau_wait = 0
    if improved:
        state.best_epoch, state.wait = epoch, 0
        if training.selection == selection.SUBJECT_DICE:
            state.best_score = float(row["val_subject_dice"])
        state.best = f"best_epoch{epoch:04d}.npz"
        save_variables(folder / state.best, list(model.variables))
    else:
        state.wait += 1
    state.checkpoint = f"checkpoint_epoch{epoch:04d}.npz"
    save_variables(folder / state.checkpoint, _state_variables(model))
    state.epochs_done = epoch
    if state.wait >= training.patience:
        state.stopped = "early_stopping"
    elif epoch >= training.max_epochs:
        state.stopped = "max_epochs"


def _remove_stale(folder: Path, state: RunState) -> None:
    """Older checkpoints and best weights, once state.json no longer points at them."""
    keep = {state.checkpoint, state.best}
    for path in list(folder.glob("checkpoint_epoch*.npz")) + list(folder.glob("best_epoch*.npz")):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _write_best_model(spec: RunSpec, input_shape, folder: Path, state: RunState) -> None:
    """``best.keras``: the inference model (no optimizer) with the best epoch's weights."""
    inference = inference_model(spec.training, input_shape)
    if spec.deep_supervision:
        _load_deeply_supervised(spec.training, input_shape, folder / state.best, inference)
    else:
        load_variables(folder / state.best, _trained_variables(spec.training, inference))
    with atomic_path(folder / BEST_MODEL) as tmp:
        inference.save(tmp)


def inference_model(training: TrainingConfig, input_shape) -> keras.Model:
    """A fresh float32 model of the run's architecture, outside any distribution strategy."""
    keras.mixed_precision.set_global_policy("float32")
    return build_model(training.model, tuple(input_shape), **model_options(training))


def _load_deeply_supervised(training: TrainingConfig, input_shape, path: Path, inference: keras.Model) -> None:
    """The best weights of a model trained with deep-supervision heads, copied layer by layer (the
    shared layers have the same names) into the single-output inference model; the heads are dropped."""
    trained = build_model(training.model, tuple(input_shape), **model_options(training, deep_supervision=True))
    load_variables(path, list(trained.variables))
    for layer in inference.layers:
        if layer.weights:
            layer.set_weights(trained.get_layer(layer.name).get_weights())


def _trained_variables(training: TrainingConfig, inference: keras.Model) -> list:
    """The variables the best-epoch file holds, for a fresh inference model: those of the training
    model built around it (the same test as in training, on the loss, so LCNN trained with another
    loss has no warm-up variable here either)."""
    return list(_with_loss_layers(inference, get_loss(training.loss, **training.loss_options)).variables)


def load_best_model(folder: Path) -> keras.Model:
    """The run's ``best.keras`` in safe mode (no arbitrary code runs on load)."""
    return load_model(Path(folder) / BEST_MODEL)
