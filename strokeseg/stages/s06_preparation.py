"""Stage 06: prepared arrays ``(n_batches, batch, H, W, C)`` per plane, fold and fold part.

Materialises the stage-05 batch plans from the stage-03 stores for the planes, folds and channel
counts in ``config.prepare`` (every fold: a test fold needs the others' parts; see
strokeseg.data.prepared); ``strokeseg.train.input_pipeline`` turns the parts a test fold needs into
tf.data pipelines. A foreground-weighted plan's ``weight`` column becomes ``<part>_weights.npy`` beside
the slot flags (the sampler's weights per slot).
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from strokeseg.config import Config
from strokeseg.contracts import BATCHES, CONVERT, PREPARATION, batches_csv
from strokeseg.data.prepared import part_dir, write_prepared
from strokeseg.data.stores import SliceStore
from strokeseg.protocol.splits import PARTS
from strokeseg.workdir import StageWriter, is_synthetic_run, read_csv, require_stage, stage_dir

STAGE = PREPARATION


def run(workdir: Path, config: Config, progress: bool = True) -> Path:
    stores = require_stage(workdir, CONVERT)
    plans = require_stage(workdir, BATCHES)
    work = [(p, k, part) for p in config.prepare.planes for k in range(1, config.cv.n_folds + 1) for part in PARTS]
    shapes = {}
    with StageWriter(workdir, STAGE, config, synthetic=is_synthetic_run(workdir)) as out:
        opened = {p: SliceStore(stores / p) for p in config.prepare.planes}
        for plane, fold, part in tqdm(work, desc="06 prepare", disable=not progress, leave=False):
            folder = part_dir(out.path, plane, fold)
            folder.mkdir(parents=True, exist_ok=True)
            batches = read_csv(plans / batches_csv(plane, fold, part))
            for name, shape in write_prepared(opened[plane], batches, config.prepare.channels, folder, part).items():
                shapes[f"{plane}/fold_{fold}/{name}"] = shape
        out.extra["arrays"] = shapes
    return stage_dir(workdir, STAGE)
