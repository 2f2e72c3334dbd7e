"""Prepared arrays in upstream's layout ``(n_batches, batch, H, W, C)``, memory-mapped.

Each fold is split once into a training part and an inner-validation part (strokeseg.protocol.splits),
and each (plane, fold, part) batch plan of stage 05 is materialised once, from the plane's slice
store, into ``<plane>/fold_<k>/``:
- ``<part>_images_c<C>.npy``  (n_batches, batch, H, W, C), store dtype (uint8 on the 0..255 scale),
  channel c = the slice at offset c - (C-1)//2 from the centre slice, clamped at the volume edges;
- ``<part>_masks.npy``        (n_batches, batch, H, W, 1) uint8, the centre slice's mask;
- ``<part>_slots.npy``        (n_batches, batch) uint8: bit 0 = lesion slot, bit 1 = repeated use;
- ``<part>_weights.npy``      (n_batches, batch) float64, foreground-weighted plans only: each slot's
  sampling weight (strokeseg.protocol.weighted_sampling), 0 for the padding of the last batch.
A run for test fold k reads the parts that ``splits.fold_parts`` names (:class:`PreparedSplit`),
so no slice is written once per test fold. The flat variant ``(n_batches * batch, H, W, C)`` is
the same bytes (:meth:`PreparedPart.flat`). Arrays are filled one batch at a time: peak memory is
one batch whatever the cohort size.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.data.stores import SliceStore
from strokeseg.errors import InputError
from strokeseg.protocol.splits import fold_parts

LESION_BIT, REPEAT_BIT = 1, 2


def images_name(part: str, channels: int) -> str:
    return f"{part}_images_c{channels}.npy"


def masks_name(part: str) -> str:
    return f"{part}_masks.npy"


def slots_name(part: str) -> str:
    return f"{part}_slots.npy"


def weights_name(part: str) -> str:
    return f"{part}_weights.npy"


def part_dir(root: Path, plane: str, fold: int) -> Path:
    return Path(root) / plane / f"fold_{fold}"


def write_prepared(store: SliceStore, batches: pd.DataFrame, channels: tuple[int, ...],
                   folder: Path, part: str) -> dict:
    """Materialise one batch plan; returns the shape of every array written (for the manifest)."""
    batches = batches.sort_values(["batch", "position"], kind="stable")
    sizes = batches.groupby("batch").size()
    if sizes.empty or sizes.nunique() != 1:
        raise InputError(folder, f"{part}: batch plan is empty or its batches differ in size")
    n_batches, batch_size = len(sizes), int(sizes.iloc[0])
    rows = store.rows(batches["subject_name"].to_numpy(), batches["slice"].to_numpy())
    rows = rows.reshape(n_batches, batch_size)
    height, width = store.canvas.shape

    slots = (batches["kind"].eq("lesion").to_numpy() * LESION_BIT
             + batches["repeat"].to_numpy().astype(bool) * REPEAT_BIT).astype(np.uint8)
    np.save(folder / slots_name(part), slots.reshape(n_batches, batch_size))
    if "weight" in batches.columns:
        weights = batches["weight"].to_numpy(dtype=np.float64)
        np.save(folder / weights_name(part), weights.reshape(n_batches, batch_size))
    outputs = {masks_name(part): (np.uint8, 1, store.masks_at)}
    # c adjacent slices of each of the store's M image channels: c x M input channels
    outputs.update({images_name(part, c): (store.dtype, c * len(store.modalities), partial(store.images_at, channels=c))
                    for c in channels})
    shapes = {}
    for name, (dtype, depth, read) in outputs.items():
        shape = (n_batches, batch_size, height, width, depth)
        with _NpyWriter(folder / name, dtype, shape) as writer:
            for b in range(n_batches):
                batch = read(rows[b])
                writer.write(batch.reshape(shape[1:]))
        shapes[name] = list(shape)
    return shapes


class _NpyWriter:
    """Writes a .npy file batch by batch, sequentially: no memory map, so the pages written do
    not count against the writer's resident memory, and the file is complete or an error raised."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), shape
        self.written = 0

    def __enter__(self) -> "_NpyWriter":
        self.handle = open(self.path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self.handle, header)
        return self

    def write(self, block: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self.handle.close()
        if exc_type is None and self.written != self.shape[0]:
            raise InputError(self.path, f"wrote {self.written} of {self.shape[0]} batches")


class PreparedPart:
    """Memory-mapped arrays of one (plane, fold, part) with C input channels."""

    def __init__(self, folder: Path, part: str, channels: int = 1):
        self.folder, self.part, self.channels = Path(folder), part, channels
        try:
            self.images = np.load(self.folder / images_name(part, channels), mmap_mode="r")
            self.masks = np.load(self.folder / masks_name(part), mmap_mode="r")
            self.slots = np.load(self.folder / slots_name(part))
        except FileNotFoundError as exc:
            raise InputError(exc.filename, f"prepared array not found (prepare {channels} channel(s) "
                                           f"with --set prepare.channels=[{channels}])") from exc
        weights = self.folder / weights_name(part)
        self.weights = np.load(weights) if weights.is_file() else None   # None: a distribution plan

    @property
    def n_batches(self) -> int:
        return int(self.images.shape[0])

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """The flat variant (n_batches * batch, H, W, C): a view of the same file, no copy."""
        return (self.images.reshape(-1, *self.images.shape[2:]),
                self.masks.reshape(-1, *self.masks.shape[2:]))


class PreparedSplit:
    """The batches one role (train, inner_val or test) sees when ``test_fold`` is held out."""

    def __init__(self, root: Path, plane: str, test_fold: int, role: str, n_folds: int, channels: int = 1):
        self.role = role
        self.parts = [PreparedPart(part_dir(root, plane, fold), part, channels)
                      for fold, part in fold_parts(test_fold, n_folds)[role]]
        self._offsets = np.cumsum([0] + [p.n_batches for p in self.parts])

    @property
    def n_batches(self) -> int:
        return int(self._offsets[-1])

    @property
    def batch_shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        first = self.parts[0]
        return first.images.shape[1:], first.masks.shape[1:]

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].images.dtype

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(images, masks) of batch ``index`` of this role: read-only views of the memory maps (a
        batch starts on a 64-byte boundary of the file, so TensorFlow can take it without a copy)."""
        which = int(np.searchsorted(self._offsets, index, side="right") - 1)
        part, local = self.parts[which], index - int(self._offsets[which])
        return np.asarray(part.images[local]), np.asarray(part.masks[local])

    def slots_at(self, slots) -> tuple[np.ndarray, np.ndarray]:
        """(images, masks) of the given slots, numbered over this role's batches one after the other
        (batch b, position p = slot b·batch + p), gathered from the memory maps."""
        slots = np.asarray(slots, dtype=np.int64)
        first = self._offsets * self.parts[0].images.shape[1]
        if slots.size and (slots.min() < 0 or slots.max() >= first[-1]):
            raise IndexError(f"slot outside 0..{first[-1] - 1}")
        which = np.searchsorted(first, slots, side="right") - 1
        image_shape, mask_shape = self.batch_shape
        images = np.empty((len(slots), *image_shape[1:]), self.dtype)
        masks = np.empty((len(slots), *mask_shape[1:]), np.uint8)
        for p in np.unique(which):
            chosen = which == p
            part_images, part_masks = self.parts[p].flat()
            local = slots[chosen] - first[p]
            images[chosen], masks[chosen] = part_images[local], part_masks[local]
        return images, masks

    @property
    def weights(self) -> np.ndarray | None:
        """(n_batches, batch) sampling weights of a foreground-weighted plan (each part's sum to 1), or
        None for distribution plans."""
        weights = [p.weights for p in self.parts]
        if all(w is None for w in weights):
            return None
        if any(w is None for w in weights):
            raise InputError(self.parts[0].folder, "the parts of one role mix weighted and distribution plans; "
                                                   "rerun stages 05 and 06")
        return np.concatenate(weights)

    @property
    def slots(self) -> np.ndarray:
        return np.concatenate([p.slots for p in self.parts])

    @property
    def is_lesion(self) -> np.ndarray:
        return (self.slots & LESION_BIT).astype(bool)

    @property
    def is_repeat(self) -> np.ndarray:
        return (self.slots & REPEAT_BIT).astype(bool)
