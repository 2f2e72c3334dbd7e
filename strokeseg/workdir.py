"""Where stages write, and how they write atomically.

Every stage writes into ``<workdir>/<stage folder>/``. A run stages everything in a hidden
``.staging-*`` folder beside the outputs and publishes it by renames only when the stage has
finished, writing ``config.json`` (the config it ran with) and ``manifest.json`` (what it wrote)
last. A failed run removes its staging folder and leaves the previous outputs untouched; a killed
one cannot, and the next run of the stage removes what it left (:mod:`strokeseg.scratch`); a later
stage refuses to start from a folder that has no ``manifest.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from strokeseg.config import Config, read_config, to_json
from strokeseg.contracts import CONFIG_JSON, DATASET, FOLDERS, MANIFEST_JSON
from strokeseg.errors import InputError, StageOrderError
from strokeseg.scratch import file_path, folder_prefix, remove_leftovers

log = logging.getLogger(__name__)


def stage_dir(workdir: Path, stage: str) -> Path:
    if stage not in FOLDERS:
        raise ValueError(f"unknown stage {stage!r}")
    return Path(workdir) / stage


def previous_stage(stage: str) -> str:
    index = FOLDERS.index(stage)
    if index == 0:
        raise ValueError(f"{stage} has no previous stage")
    return FOLDERS[index - 1]


def require_stage(workdir: Path, stage: str) -> Path:
    """The published output folder of ``stage``, or a clear error telling the user what to run."""
    folder = stage_dir(workdir, stage)
    if not (folder / MANIFEST_JSON).is_file():
        raise StageOrderError(
            f"{folder / MANIFEST_JSON}: not found; run `python {stage}/run.py --workdir {workdir}` first")
    return folder


def stage_config(workdir: Path, stage: str) -> Config:
    """The config recorded by a finished stage."""
    return read_config(require_stage(workdir, stage) / CONFIG_JSON)


def manifest(workdir: Path, stage: str) -> dict:
    return json.loads((require_stage(workdir, stage) / MANIFEST_JSON).read_text())


class StageWriter:
    """Context manager that stages a stage's outputs and publishes them atomically.

    >>> with StageWriter(workdir, "02_splitting", config) as out:
    ...     write_csv(frame, out.path / "subjects_80.csv")
    """

    def __init__(self, workdir: Path, stage: str, config: Config, synthetic: bool | None = None,
                 kept: tuple[str, ...] = ()):
        self.final = stage_dir(workdir, stage)
        # Outputs that live in the final folder already and are written incrementally (training
        # runs that must survive a killed stage): listed in the manifest, never moved or removed.
        self.kept = tuple(kept)
        self.stage = stage
        self.config = config
        self.synthetic = config.synthetic if synthetic is None else synthetic
        self.extra: dict = {}
        self.path: Path = Path()

    def __enter__(self) -> "StageWriter":
        try:
            self.final.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.final, recursive=True)   # what a killed earlier run could not remove
            self.path = Path(tempfile.mkdtemp(prefix=folder_prefix("staging"), dir=self.final))
        except OSError as exc:
            raise InputError(self.final, f"workdir is not writable ({exc.strerror or exc})") from exc
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        try:
            self._publish()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
        return False

    def _publish(self) -> None:
        staged = sorted(p.name for p in self.path.iterdir())
        outputs = sorted(set(staged) | {k for k in self.kept if (self.final / k).exists()})
        (self.path / CONFIG_JSON).write_text(to_json(self.config))
        record = {"stage": self.stage, "synthetic_data": self.synthetic, "outputs": outputs, **self.extra}
        old_outputs = []
        if (self.final / MANIFEST_JSON).is_file():
            try:
                old_outputs = json.loads((self.final / MANIFEST_JSON).read_text()).get("outputs", [])
            except (OSError, json.JSONDecodeError):
                old_outputs = []
            # Unpublish first: if we die while swapping, no stale manifest vouches for mixed outputs.
            (self.final / MANIFEST_JSON).unlink()
        trash = Path(tempfile.mkdtemp(prefix=folder_prefix("trash"), dir=self.final))
        try:
            for name in sorted(set(old_outputs) - set(outputs)):
                _move_aside(self.final / name, trash)
            for name in staged + [CONFIG_JSON]:
                _move_aside(self.final / name, trash)
                os.replace(self.path / name, self.final / name)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        atomic_write_text(self.final / MANIFEST_JSON, json.dumps(record, indent=2, sort_keys=True) + "\n")
        log.info("%s: wrote %d outputs to %s", self.stage, len(outputs), self.final)


def _move_aside(target: Path, trash: Path) -> None:
    if target.exists() or target.is_symlink():
        os.replace(target, trash / target.name)


# Writers ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write to: renamed onto ``path`` when the block
    succeeds, removed when it fails, so ``path`` is either the old file or the complete new one.
    It keeps ``path``'s extension (``.nii.gz`` whole), for writers that pick the format by it."""
    # A unique name, not a file made by mkstemp: the writer creates it, so it gets the usual
    # permissions (umask) rather than mkstemp's owner-only ones. The name says whose it is, so a
    # later run can remove it if this one is killed (strokeseg.scratch).
    tmp = file_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Deterministic CSV, written atomically: no index, '\\n' line ends, floats with 10 significant digits."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n", float_format="%.10g")


def read_csv(path: Path, required: Sequence[str] = (), min_rows: int = 0, **kwargs) -> pd.DataFrame:
    """A CSV a stage wrote, read by the next one. ``required``: the columns the reader needs, each present
    and filled in every row, and ``min_rows``: the fewest rows it can work with; a file cut short or
    edited by hand that breaks either is an :class:`InputError` naming it (:func:`require_columns`)."""
    try:
        frame = pd.read_csv(path, **kwargs)
    except FileNotFoundError as exc:
        raise InputError(path, "file not found") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable CSV ({_one_line(exc)}; cut short or edited by hand? "
                               f"{_rerun(path)})") from exc
    require_columns(frame, path, required)
    if len(frame) < min_rows:
        raise InputError(path, f"{len(frame)} rows, expected at least {min_rows} (cut short or edited by hand? "
                               f"{_rerun(path)})")
    return frame


def require_columns(frame: pd.DataFrame, path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` (read from ``path``), when each of ``columns`` is present and has a value in every row;
    else an :class:`InputError` naming ``path``, the missing columns, or the first row with empty ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (cut short or edited by hand? "
                               f"{_rerun(path)})")
    empty = frame[list(columns)].isna() if columns else None
    if empty is not None and empty.to_numpy().any():
        row = int(np.flatnonzero(empty.any(axis=1).to_numpy())[0])
        names = [c for c in columns if empty[c].iloc[row]]
        # line numbers as an editor shows them: the header is line 1
        raise InputError(path, f"line {row + 2}: no value in column(s) {', '.join(names)} (a row cut short? "
                               f"{_rerun(path)})")
    return frame


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _rerun(path: Path) -> str:
    """What to do about a damaged stage output: rerun the stage whose folder holds it."""
    folder = Path(path).parent.name
    return f"rerun {folder}" if folder in FOLDERS else "rerun the stage that wrote it"


def is_synthetic_run(workdir: Path) -> bool:
    """Whether the cohort behind this workdir is synthetic (recorded by stage 01)."""
    return bool(manifest(workdir, DATASET).get("synthetic_data", False))


def grid_plan(workdir: Path):
    """The grid plan stage 01 wrote (:class:`strokeseg.data.grid_plan.GridPlan`)."""
    from strokeseg.data.grid_plan import GridPlan

    return GridPlan.read(require_stage(workdir, DATASET))


def study_planes(workdir: Path, wanted=None) -> tuple[str, ...]:
    """The planes of this study: the cohort's (stage 01's grid plan), in the order of ``wanted`` when
    given (a config's planes), which must then be among them."""
    from strokeseg.errors import ConfigError

    planes = grid_plan(workdir).planes
    if wanted is None:
        return tuple(planes)
    chosen = tuple(p for p in wanted if p in planes)
    if not chosen:
        raise ConfigError(f"none of the planes {list(wanted)} is a plane of this cohort ({', '.join(planes)})")
    return chosen
