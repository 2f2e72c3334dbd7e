"""Batched per-plane prediction of whole volumes, and loading the per-plane models.

Conventions (shared with training, so a model sees at inference exactly what it was trained on):

- volumes are ``[x, y, z]`` arrays (NIfTI voxel order), or ``[m, x, y, z]`` for M image channels
  (DWI, ADC, …, in the cohort's channel order); planes, slicing, canvases and the exact crop-back
  come from :mod:`strokeseg.data.planes` only;
- intensities are those stage 03 stores (:func:`strokeseg.data.stores.write_stores`): the per-volume
  robust window computed once per volume and shared by the planes (:func:`normalized_volume`),
  or upstream's per-slice maximum, on the 0..255 scale in ``convert.store_dtype``; the window's
  voxels (``convert.head_region``) depend on the grid, so callers pass the plan grid's affine
  (``GridPlan.subject_affine``), as stage 03 does;
- a model input is ``channels`` adjacent slices (:func:`strokeseg.data.planes.neighbour_indices`,
  clamped at the volume's ends) of every image channel, zero-padded onto the plane's canvas, float32
  (n, H, W, C x M), input channel c * M + m being image channel m of adjacent slice c (as
  :meth:`strokeseg.data.stores.SliceStore.images_at` feeds training);
- a ``predict`` callable maps such a chunk to float32 probabilities (n, H, W, 1) and is never
  given more than ``batch_size`` slices (upstream called ``model.predict`` once per slice, §14.21);
- a fully convolutional model (:func:`fully_convolutional`) sees only the window of the canvas that
  holds the head's section in its block of slices (:func:`head_windows`), the rest of its output is
  its output on an all-zero canvas; ``crop_to_head=False`` gives it the whole canvas. The README
  (Performance) has the measured difference between the two.

Nothing here imports Keras at module level: :mod:`strokeseg.evaluate.folds` shares the chunk and
crop core (:func:`predict_slices`) and stays framework-free; model loading imports Keras lazily.

Model folders (:func:`load_plane_models`): ``<plane>.keras`` per plane (e.g. the best fold of each
plane), and/or per-fold sets ``<plane>_fold<k>.keras`` whose members are averaged (an ensemble).
A 3-D model is the folder's ``volume`` "plane" (``volume.keras``): one (n, X, Y, Z, M) patch input
and output, predicted over the whole volume by sliding windows (:mod:`strokeseg.infer.sliding_window`).
Models are loaded in Keras safe mode (no arbitrary code runs on load) and without compiling.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from strokeseg.config import PLANES, VOLUME, ConvertConfig
from strokeseg.data import normalization, planes
from strokeseg.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import keras

Predict = Callable[[np.ndarray], np.ndarray]
MODEL_SUFFIX = ".keras"
_FOLD_FILE = re.compile(r"^(?P<plane>[a-z]+)_fold(?P<fold>\d+)\.keras$")


# ------------------------------------------------------------------------------ normalisation
T1 = ("t1",)


def per_slice(convert: ConvertConfig, kinds: tuple[str, ...] = T1) -> bool:
    """Whether the normalisation is upstream's per-slice maximum (a one-channel T1 only)."""
    return convert.normalization == "slice_max" and tuple(kinds) == T1


def normalized_volume(volume: np.ndarray, convert: ConvertConfig, kinds: tuple[str, ...] = T1,
                      affine: np.ndarray | None = None) -> np.ndarray | None:
    """The whole volume normalised once for all planes, per channel as its kind says
    (:func:`strokeseg.data.normalization.channel_volume`), in the store dtype; None for ``slice_max``,
    whose normalisation depends on the plane's slicing. ``affine``: the volume's (plan) grid, which
    ``convert.head_region`` needs to treat the volume as stage 03 treated the training volumes."""
    volume = np.asarray(volume) if not isinstance(volume, np.ndarray) else volume
    if volume.ndim == 3:
        if len(kinds) != 1:
            raise ValueError(f"a one-channel volume for {len(kinds)} channel kinds")
        return normalization.channel_volume(volume, kinds[0], convert, affine)
    if volume.ndim != 4 or len(volume) != len(kinds):
        raise ValueError(f"volume of shape {volume.shape} for {len(kinds)} channel(s)")
    if per_slice(convert, kinds[:1]) and len(kinds) > 1:
        raise ValueError("convert.normalization=slice_max is for one-channel T1 volumes")
    return np.stack([normalization.channel_volume(v, kind, convert, affine) for v, kind in zip(volume, kinds)])


def plane_stack(volume: np.ndarray, plane: str, convert: ConvertConfig,
                normalized: np.ndarray | None = None, kinds: tuple[str, ...] = T1,
                affine: np.ndarray | None = None) -> np.ndarray:
    """(n, h, w) slices of ``plane`` (one channel) or (n, M, h, w) (M channels) on the 0..255 scale in
    ``convert.store_dtype``: exactly the values stage 03 stores for this volume on the grid of
    ``affine``. ``normalized`` (from :func:`normalized_volume`) skips the per-volume work when the
    caller normalises once for three planes."""
    if per_slice(convert, kinds):
        return normalization.to_store_dtype(normalization.slice_max(planes.to_stack(volume, plane)),
                                            convert.store_dtype)
    if normalized is None:
        normalized = normalized_volume(volume, convert, kinds, affine)
    elif normalized.shape != np.shape(volume):
        raise ValueError(f"normalized volume {normalized.shape} differs from the volume {np.shape(volume)}")
    if normalized.ndim == 4:
        return np.stack([planes.to_stack(channel, plane) for channel in normalized], axis=1)
    return planes.to_stack(normalized, plane)


# ---------------------------------------------------------------------------- chunk/crop core
def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def predict_chunk(predict: Predict, chunk: np.ndarray) -> np.ndarray:
    """``predict`` on one chunk (converted to float32), checked to be (n, H, W, 1) float32."""
    chunk = np.asarray(chunk, dtype=np.float32)
    if chunk.ndim != 4:
        raise ValueError(f"images must be (n, H, W, C), got shape {chunk.shape}")
    out = np.asarray(predict(chunk), dtype=np.float32)
    if out.ndim == 3:
        out = out[..., None]
    expected = chunk.shape[:3] + (1,)
    if out.shape != expected:
        raise ValueError(f"predict returned shape {out.shape} for input {chunk.shape}; expected {expected}")
    return out


def predict_slices(predict: Predict, indices: np.ndarray, inputs: Callable[[np.ndarray], np.ndarray],
                   canvas: planes.Canvas, batch_size: int, out: np.ndarray) -> np.ndarray:
    """Fill ``out[indices]`` (slices (n, h, w)) chunk by chunk: ``inputs(chunk_indices)`` gives the
    (m, H, W, C) canvases, ``predict`` their probabilities, ``canvas.crop`` the slices back."""
    batch_size = check_batch_size(batch_size)
    indices = np.asarray(indices, dtype=np.int64)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        out[chunk] = canvas.crop(predict_chunk(predict, inputs(chunk))[..., 0])
    return out


def canvas_inputs(stack: np.ndarray, canvas: planes.Canvas, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    """A chunk builder for :func:`predict_slices`: slices ``k`` of ``stack`` ((n, h, w), or (n, M, h, w)
    for M image channels) with their neighbours as channels (as
    :meth:`strokeseg.data.stores.SliceStore.images_at` feeds training), padded, float32."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    count = len(stack)

    def build(chunk: np.ndarray) -> np.ndarray:
        neighbours = planes.neighbour_indices(chunk, count, channels)          # (m, C)
        padded = canvas.pad(np.asarray(stack[neighbours], dtype=np.float32))  # (m, C, [M,] H, W)
        if padded.ndim == 4:
            return np.ascontiguousarray(np.moveaxis(padded, 1, -1))           # (m, H, W, C)
        m, c, k, height, width = padded.shape
        return np.ascontiguousarray(padded.transpose(0, 3, 4, 1, 2)).reshape(m, height, width, c * k)

    return build


# The 2-D models halve their input four times, so a window of the canvas keeps their pooling grid
# (and their output there) only when it starts and ends on multiples of 16.
WINDOW_MULTIPLE = 16
# Context kept around the head: beyond the window the network sees zero padding where, on the whole
# canvas, it saw its own response to the background. 24 pixels keep that change to a few voxels at
# the head's border (README, Performance: on the demo's hold-out, mean Dice 0.0002 lower at 24,
# 0.0045 at 16, 0.035 at 0; 24 costs 0.59 of the whole canvas's pixels, 32 costs 0.65).
WINDOW_MARGIN = 24
# Slices k with the same k // WINDOW_BLOCK share the union of their windows: one model call for them
# (narrow networks pay per call), and a window that does not depend on the batch size.
WINDOW_BLOCK = 8


def head_windows(stack: np.ndarray, canvas: planes.Canvas, indices: np.ndarray, channels: int,
                 margin: int = WINDOW_MARGIN, multiple: int = WINDOW_MULTIPLE,
                 block: int = WINDOW_BLOCK) -> np.ndarray:
    """Per slice ``indices[i]`` of the plane stack (n, [M,] h, w), the window (row start, row stop,
    column start, column stop) of ``canvas`` that holds every nonzero pixel of the model inputs (the
    ``channels`` adjacent slices, every image channel) of the slices of its block (``indices`` with
    the same ``k // block``), widened by ``margin`` and outward to multiples of ``multiple``, within
    the canvas: (n_indices, 4) int. A window depends on the stack and the block only, so masks do not
    depend on how slices are batched. The whole canvas where the inputs are all zero or the canvas
    sides are not multiples of ``multiple``."""
    height, width = canvas.shape
    indices = np.asarray(indices, dtype=np.int64)
    whole = np.tile(np.array([0, height, 0, width]), (len(indices), 1))
    if height % multiple or width % multiple or not len(indices):
        return whole
    nonzero = np.asarray(stack) != 0
    if nonzero.ndim == 4:                                   # image channels
        nonzero = nonzero.any(axis=1)
    neighbours = planes.neighbour_indices(indices, len(nonzero), channels)      # (k, C)
    _, in_block = np.unique(indices // block, return_inverse=True)
    in_block = in_block.ravel()
    windows = whole.copy()
    for axis, side, offset, column in ((2, height, canvas.offset[0], 0), (1, width, canvas.offset[1], 2)):
        profile = nonzero.any(axis=axis)[neighbours].any(axis=1)               # (k, h) or (k, w)
        union = np.zeros((in_block.max() + 1, profile.shape[1]), dtype=bool)
        np.logical_or.at(union, in_block, profile)
        profile = union[in_block]
        filled = profile.any(axis=1)
        first = np.argmax(profile, axis=1)
        last = profile.shape[1] - np.argmax(profile[:, ::-1], axis=1)
        start = np.maximum(0, (first + offset - margin) // multiple * multiple)
        stop = np.minimum(side, -(-(last + offset + margin) // multiple) * multiple)
        windows[filled, column] = start[filled]
        windows[filled, column + 1] = stop[filled]
    return windows


def predict_windows(predict: Predict, indices: np.ndarray, windows: np.ndarray,
                    inputs: Callable[[np.ndarray], np.ndarray], canvas: planes.Canvas, batch_size: int,
                    background: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out[indices]`` (slices (n, h, w)): the slices that share a window (:func:`head_windows`)
    go through :func:`predict_slices` together, ``predict`` seeing only that window of their canvases;
    the rest of each canvas is ``background`` ((H, W), the model's output on an all-zero canvas)."""
    indices = np.asarray(indices, dtype=np.int64)
    groups, members = np.unique(windows, axis=0, return_inverse=True)
    for group, (r0, r1, c0, c1) in enumerate(groups):

        def on_window(chunk: np.ndarray, r0=r0, r1=r1, c0=c0, c1=c1) -> np.ndarray:
            full = np.empty(chunk.shape[:3] + (1,), dtype=np.float32)
            full[...] = background[..., None]
            full[:, r0:r1, c0:c1] = predict_chunk(predict, np.ascontiguousarray(chunk[:, r0:r1, c0:c1]))
            return full

        predict_slices(on_window, indices[members.ravel() == group], inputs, canvas, batch_size, out)
    return out


def fully_convolutional(model: "keras.Model") -> bool:
    """Whether every layer of ``model`` computes each output pixel from the input pixels near it, the
    same way everywhere (convolutions, pooling, upsampling, per-channel normalisation with fixed
    statistics, elementwise ops): then a window of the canvas can be predicted on its own. Whole-image
    statistics (group or layer normalisation, global pooling, attention over the image), fixed-size
    reshapes, dense layers and nested models make it False."""
    from keras import layers

    local = (layers.InputLayer, layers.Conv2D, layers.Conv2DTranspose, layers.SeparableConv2D,
             layers.DepthwiseConv2D, layers.BatchNormalization, layers.Activation, layers.ReLU,
             layers.LeakyReLU, layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum,
             layers.Concatenate, layers.MaxPooling2D, layers.AveragePooling2D, layers.UpSampling2D,
             layers.Dropout, layers.SpatialDropout2D)
    return len(model.inputs) == 1 and all(type(layer) in local for layer in model.layers)


def predict_plane(predict: Predict, stack: np.ndarray, canvas: planes.Canvas, channels: int,
                  batch_size: int, skip_empty: bool = True, crop_to_head: bool = False) -> np.ndarray:
    """float32 probabilities (n, h, w) of every slice of a normalised plane stack (n, [M,] h, w).

    Chunks of at most ``batch_size`` slices are padded onto ``canvas`` with ``channels`` adjacent
    slices as channels, predicted, and cropped back exactly. ``skip_empty`` (on by default): the
    slices whose whole input (every adjacent slice, every image channel) is 0 — outside the head's
    bounding box along this plane's axis — are not predicted one by one. Their inputs are all the
    same all-zero canvas, so the model is called once on that canvas and its probabilities are
    copied to each of them: the result is what predicting every slice gives, at the cost of the
    slices that hold the head. ``skip_empty=False`` predicts every slice (for comparison).

    ``crop_to_head`` (for fully convolutional models only): each slice is predicted on the window of
    the canvas that holds the nonzero input pixels of its block of slices (:func:`head_windows`;
    slices that share a window share model calls) and the rest of the slice gets the model's output
    on the all-zero canvas. Not the same numbers as the whole canvas near the window's border (zero padding there
    instead of the network's response to the background), hence off unless asked for.
    """
    stack = np.asarray(stack)
    if stack.ndim not in (3, 4) or tuple(stack.shape[-2:]) != tuple(canvas.slice_shape):
        raise ValueError(f"{canvas.plane}: stack shape {stack.shape} does not hold slices of "
                         f"{canvas.slice_shape}")
    out = np.zeros((len(stack), *stack.shape[-2:]), dtype=np.float32)
    indices = np.arange(len(stack))
    if skip_empty:
        filled = np.any(stack.reshape(len(stack), -1), axis=1)
        wanted = filled[planes.neighbour_indices(indices, len(stack), channels)].any(axis=1)
    else:
        wanted = np.ones(len(stack), dtype=bool)
    inputs = canvas_inputs(stack, canvas, channels)
    if not crop_to_head and wanted.all():
        return predict_slices(predict, indices, inputs, canvas, batch_size, out)
    image_channels = stack.shape[1] if stack.ndim == 4 else 1
    zeros = np.zeros((1, *canvas.shape, channels * image_channels), dtype=np.float32)
    background = predict_chunk(predict, zeros)[0, ..., 0]
    out[~wanted] = canvas.crop(background)
    indices = indices[wanted]
    if not crop_to_head:
        return predict_slices(predict, indices, inputs, canvas, batch_size, out)
    windows = head_windows(stack, canvas, indices, channels)
    return predict_windows(predict, indices, windows, inputs, canvas, batch_size, background, out)


def plane_probability(predict: Predict, t1: np.ndarray, plane: str, convert: ConvertConfig, channels: int,
                      batch_size: int, flip_tta: bool = False, normalized: np.ndarray | None = None,
                      skip_empty: bool = True, kinds: tuple[str, ...] = T1,
                      affine: np.ndarray | None = None, crop_to_head: bool = False) -> np.ndarray:
    """float32 probability volume ``[x, y, z]`` from one plane's model; ``t1`` is the input volume
    (one channel, or ``[m, x, y, z]`` with ``kinds`` one per channel) on the grid of ``affine``,
    ``channels`` the adjacent slices.

    ``flip_tta``: the mean of this prediction and the un-mirrored prediction of the left–right
    (x axis) mirrored volume. The normalisation commutes with the mirror (the robust window is a
    property of the voxel values; slice maxima do not change), so the mirror of the normalised
    volume is used. For sagittal single-channel models the mirror only reverses the slice order
    (:func:`strokeseg.data.planes.left_right_axis` is None), the prediction would be identical, and it is
    skipped.
    """
    planes.check_plane(plane)
    canvas = planes.canvas_for(np.shape(t1)[-3:], plane, convert.canvas_multiple)
    slice_wise = per_slice(convert, kinds)
    if slice_wise:
        volume = t1                      # normalised per slice, inside plane_stack
    else:
        volume = normalized_volume(t1, convert, kinds, affine) if normalized is None else normalized
        if volume.shape != np.shape(t1):
            raise ValueError(f"normalized volume {volume.shape} differs from the volume {np.shape(t1)}")

    def probability_of(source: np.ndarray) -> np.ndarray:
        stack = plane_stack(source, plane, convert, None if slice_wise else source, kinds)
        return planes.from_stack(predict_plane(predict, stack, canvas, channels, batch_size, skip_empty,
                                               crop_to_head), plane)

    probability = probability_of(volume)
    if not flip_tta or (planes.left_right_axis(plane) is None and channels == 1):
        return probability
    probability += probability_of(np.flip(volume, axis=-3))[::-1]
    probability *= np.float32(0.5)
    return probability


@dataclass(frozen=True)
class PlanePredictor:
    """One plane's ``predict`` (one model, or the mean of a fold set) and the channels it reads; for a
    3-D model (the ``volume`` plane) also its patch, the window of the sliding-window inference;
    ``fully_convolutional``: every member is (:func:`fully_convolutional`), so the canvas may be
    cropped to the head."""
    predict: Predict
    channels: int
    patch: tuple[int, int, int] | None = None
    fully_convolutional: bool = False


# ------------------------------------------------------------------------------------- models
def model_channels(model: "keras.Model", volumetric: bool = False) -> int:
    """The number of input channels of a single-input model: adjacent slices × image channels of an
    (n, H, W, C) slice model, or the image channels of an (n, X, Y, Z, M) 3-D model."""
    inputs = model.inputs
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    rank, layout = (5, "(n, X, Y, Z, M)") if volumetric else (4, "(n, H, W, C)")
    if len(shape) != rank or shape[-1] is None:
        raise ValueError(f"model {model.name!r} has input(s) {[tuple(i.shape) for i in inputs]}; "
                         f"expected one {layout} input with a fixed channel count")
    return int(shape[-1])


def model_patch(model: "keras.Model") -> tuple[int, int, int]:
    """The (X, Y, Z) window of a 3-D model (its fixed input size)."""
    patch = tuple(model.inputs[0].shape)[1:4]
    if any(p is None for p in patch):
        raise ValueError(f"model {model.name!r} has no fixed patch size: input {tuple(model.inputs[0].shape)}")
    return tuple(int(p) for p in patch)  # type: ignore[return-value]


def _check_model(path: Path, model, canvas_shape: tuple[int, int] | None, volumetric: bool = False) -> int:
    try:
        channels = model_channels(model, volumetric)
        if volumetric:
            model_patch(model)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    outputs = model.outputs
    out = tuple(outputs[0].shape) if len(outputs) == 1 else ()
    spatial = tuple(model.inputs[0].shape)[1:-1]
    if len(out) != len(spatial) + 2 or out[-1] != 1 or out[1:-1] != spatial:
        layout = "(n, X, Y, Z, 1)" if volumetric else "(n, H, W, 1)"
        raise InputError(path, f"model output {[tuple(o.shape) for o in outputs]} is not one {layout} "
                               f"probability map of the input's size {spatial}")
    if volumetric:
        return channels
    height, width = spatial
    if canvas_shape is not None:
        for size, expected, name in ((height, canvas_shape[0], "height"), (width, canvas_shape[1], "width")):
            if size is not None and int(size) != int(expected):
                raise InputError(path, f"model input {height}x{width} does not fit the canvas "
                                       f"{canvas_shape[0]}x{canvas_shape[1]} ({name} differs)")
    return channels


def check_model_file(path) -> None:
    """What can be said about a ``.keras`` file without loading it: a regular file (a FIFO is never
    opened), a complete zip archive (every member's CRC checked) holding Keras' ``config.json``.
    Faults are an :class:`InputError` naming the file; a truncated or corrupt file is reported as
    such, not as Keras' "File not found"."""
    import zipfile
    import zlib

    from strokeseg.data.nifti import check_regular_file

    path = Path(path)
    try:
        check_regular_file(path, "model")
    except InputError as exc:
        raise InputError(path, exc.fault.replace("NIfTI file", "Keras model file")) from None
    try:
        if not zipfile.is_zipfile(path):
            raise InputError(path, "not a readable Keras model file (not a zip archive: truncated or corrupt, or "
                                   "another format)")
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError) as exc:
        text = " ".join(str(exc).split()) or exc.__class__.__name__
        raise InputError(path, f"not a readable Keras model file (truncated or corrupt zip: {text})") from None
    if bad is not None:
        raise InputError(path, f"not a readable Keras model file (corrupt zip: member {bad} fails its CRC check)")
    if "config.json" not in names:
        raise InputError(path, "not a Keras model file (a zip archive without config.json; saved with "
                               "model.save('<name>.keras')?)")


def load_model(path) -> "keras.Model":
    """One ``.keras`` model in safe mode, uncompiled; faults are an :class:`InputError` naming the file."""
    from strokeseg.models import load_model as load_safely

    path = Path(path)
    check_model_file(path)
    try:
        return load_safely(path)
    except Exception as exc:  # Keras raises ValueError, zipfile/OSError, TypeError ... for bad files
        text = " ".join(str(exc).split())[:300] or exc.__class__.__name__
        raise InputError(path, f"not a loadable Keras model ({exc.__class__.__name__}: {text})") from None


def model_files(folder, ensemble: bool = False, planes_wanted: tuple[str, ...] = PLANES) -> dict[str, list[Path]]:
    """The model files of each of ``planes_wanted`` in ``folder`` (see the module docstring).

    ``<plane>.keras`` is used when present, unless ``ensemble``; otherwise every
    ``<plane>_fold<k>.keras`` (sorted by k) is a member of that plane's ensemble.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "models folder not found")
    folds: dict[str, list[tuple[int, Path]]] = {plane: [] for plane in (*PLANES, VOLUME)}
    for path in folder.iterdir():
        match = _FOLD_FILE.match(path.name)
        if match and match["plane"] in folds:
            folds[match["plane"]].append((int(match["fold"]), path))
    found = {}
    for plane in planes_wanted:
        single = folder / f"{plane}{MODEL_SUFFIX}"
        members = [p for _, p in sorted(folds[plane])]
        if not ensemble and (single.exists() or single.is_symlink()) and not single.is_file():
            check_model_file(single)     # a folder, FIFO or broken link named <plane>.keras: say so
        if single.is_file() and not ensemble:
            found[plane] = [single]
        elif members:
            found[plane] = members
        else:
            wanted = f"{plane}_fold<k>.keras" if ensemble else f"{plane}.keras or {plane}_fold<k>.keras"
            raise InputError(folder, f"no {plane} model (expected {wanted})")
    return found


def folder_planes(folder, planes_wanted: tuple[str, ...] = PLANES) -> tuple[str, ...]:
    """The "planes" a models folder predicts with: ``volume`` when it holds a 3-D model (``volume.keras``
    or ``volume_fold<k>.keras``), else ``planes_wanted``."""
    folder = Path(folder)
    has_volume = folder.is_dir() and any(p.name == f"{VOLUME}{MODEL_SUFFIX}" or
                                         (_FOLD_FILE.match(p.name) and p.name.startswith(f"{VOLUME}_"))
                                         for p in folder.iterdir())
    return (VOLUME,) if has_volume else tuple(planes_wanted)


def load_plane_models(folder, ensemble: bool = False, canvas_shapes: dict[str, tuple[int, int]] | None = None,
                      planes_wanted: tuple[str, ...] = PLANES) -> dict[str, list["keras.Model"]]:
    """The models of each plane (the three, or a one-plane study's): ``{plane: [model, ...]}`` (one
    model, or an ensemble).

    Every model must have one (n, H, W, C) input and one (n, H, W, 1) output; the members of a plane
    must read the same number of channels; with ``canvas_shapes`` (plane → (H, W)) a model with a
    fixed input size must fit its plane's canvas. Each fault is an :class:`InputError` naming the file.
    """
    models: dict[str, list] = {}
    for plane, paths in model_files(folder, ensemble, planes_wanted).items():
        loaded, channels = [], set()
        for path in paths:
            model = load_model(path)
            channels.add(_check_model(path, model, (canvas_shapes or {}).get(plane), plane == VOLUME))
            if len(channels) > 1:
                raise InputError(path, f"{plane} models read different numbers of input channels "
                                       f"({sorted(channels)}); an ensemble needs one")
            loaded.append(model)
        models[plane] = loaded
    return models


def model_forward(model: "keras.Model") -> Predict:
    """``model``'s inference step on an array, float32 out.

    Under TensorFlow the step is one ``tf.function`` whose input signature leaves the batch (and, for a
    fully convolutional model, the window's height and width) open: traced once per model and process.
    ``model.predict_on_batch`` traces its step again for each new input shape until TensorFlow relaxes
    it, about 0.5 s per trace of a full-width RAX-Net on a 2-core CPU, paid in the first volume for
    every plane's windows (bench/predict_volume.py). Other backends use ``predict_on_batch``: JAX
    compiles per shape whatever the caller does (:func:`ensemble_predict` keeps the batch's size fixed
    there, :func:`fixed_batch`). Either way the step runs the model with its batch
    normalisation folded into the convolutions (:func:`strokeseg.infer.batchnorm_folding.fold_batch_norm`).
    """
    import keras

    from strokeseg.infer.batchnorm_folding import fold_batch_norm

    shape = list(model.inputs[0].shape)
    shape[0] = None
    if fully_convolutional(model):
        shape[1:-1] = [None] * (len(shape) - 2)
    model = fold_batch_norm(model)
    if keras.backend.backend() != "tensorflow":
        return lambda x: np.asarray(model.predict_on_batch(x), dtype=np.float32)
    import tensorflow as tf

    step = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec(shape, tf.float32)])
    return lambda x: np.asarray(step(tf.convert_to_tensor(x, dtype=tf.float32)), dtype=np.float32)


def fixed_batch(forward: Predict, batch_size: int) -> Predict:
    """``forward`` called on exactly ``batch_size`` slices: a shorter input is padded with zero slices
    and only its own rows come back. For backends that compile per input shape (JAX): the last chunk
    of every window group would otherwise compile once more for each remainder size. Each slice's
    output is its own (inference has no cross-slice statistics), so padding changes no probability."""
    def padded(x: np.ndarray) -> np.ndarray:
        short = batch_size - len(x)
        if short <= 0:
            return forward(x)
        filler = np.zeros((short,) + x.shape[1:], dtype=x.dtype)
        return forward(np.concatenate([x, filler]))[:len(x)]

    return padded


def ensemble_predict(models: list["keras.Model"], batch_size: int) -> Predict:
    """A ``predict`` callable: the mean of the members' float32 probabilities (one member: its own),
    each member's :func:`model_forward` called on at most ``batch_size`` slices at a time (what
    :func:`predict_slices` passes at once; a larger input is cut into such chunks), and on exactly
    ``batch_size`` (:func:`fixed_batch`) on backends other than TensorFlow, whose traced step leaves
    the batch open."""
    import keras

    batch_size = check_batch_size(batch_size)
    if not models:
        raise ValueError("ensemble_predict needs at least one model")
    forwards = [model_forward(model) for model in models]
    if keras.backend.backend() != "tensorflow":
        forwards = [fixed_batch(forward, batch_size) for forward in forwards]

    def one(forward: Predict, x: np.ndarray) -> np.ndarray:
        if len(x) <= batch_size:
            return forward(x)
        return np.concatenate([forward(x[start:start + batch_size]) for start in range(0, len(x), batch_size)])

    def predict(x: np.ndarray) -> np.ndarray:
        total = None
        for forward in forwards:
            out = one(forward, x)
            total = out if total is None else total + out
        if len(forwards) > 1:
            total /= np.float32(len(forwards))
        return total

    return predict


def plane_predictors(models: dict[str, list["keras.Model"]], batch_size: int) -> dict[str, PlanePredictor]:
    """:class:`PlanePredictor` per plane from :func:`load_plane_models`' members."""
    predictors = {}
    for plane, members in models.items():
        volumetric = plane == VOLUME
        patches = {model_patch(m) for m in members} if volumetric else {None}
        if len(patches) > 1:
            raise InputError(plane, f"the 3-D models of an ensemble have different patches {sorted(patches)}")
        predictors[plane] = PlanePredictor(ensemble_predict(members, batch_size),
                                           model_channels(members[0], volumetric), patches.pop(),
                                           not volumetric and all(fully_convolutional(m) for m in members))
    return predictors
