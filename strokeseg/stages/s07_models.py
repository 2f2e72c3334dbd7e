"""Stage 07: the model table — ``models.csv`` and ``summaries/<name>.txt`` (see strokeseg.report.model_table).

One row per (registered slice model, plane): the input shape on that plane's canvas, parameters,
forward GFLOPs per slice, measured forward and train-step milliseconds per slice on this machine, and
the fraction of the machine's measured matmul throughput the forward pass achieves. Needs no earlier
stage: it starts from the config of the latest published stage (else the ``paper`` profile), and the
canvases are a published stage-03 store's when there is one, else the ATLAS grid's. A model whose
module does not exist yet or fails gets rows with status ``missing``/``failed`` (``strict=True``
raises instead); the stage fails only when no model could be measured.

A 3-D model (``unet3d``, ``attention_unet3d``) gets one row, plane ``volume``, whatever ``planes``
says: built for the patch its runs train on (``training.patch_size``, else stage 01's grid plan
rounded up to multiples of 16 and capped at 128, with the plan's channels; before stage 01 the ATLAS
grid, so 128³ with one channel). ``canvas_d``/``input_d`` hold its third axis, and its costs are per
patch, in ``forward_gflops_per_patch``, ``forward_ms_per_patch`` and ``train_step_ms_per_patch``
(its per-slice columns stay empty, as the per-patch ones on slice rows). It is timed one patch per
call: at full width and 128³ a train step takes 1-2 min and 14-17 GB on a CPU, 10-20 min per 3-D
model with the default repeats on two cores (``--models`` leaves them out), and a model whose
measuring process is killed for memory gets ``failed`` rows.

This module imports no Keras at import time, so the command line stays quick to start.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from strokeseg.config import Config, apply_overrides, load_profile
from strokeseg.contracts import DATASET, FOLDERS, MANIFEST_JSON, MODELS, MODELS_TABLE_CSV
from strokeseg.workdir import StageWriter, is_synthetic_run, stage_config, stage_dir, write_csv

STAGE = MODELS
SUMMARIES = "summaries"


def starting_config(workdir: Path, overrides: Iterable[str] = ()) -> Config:
    """The config recorded by the latest published stage before 07 (else the paper profile), plus overrides."""
    for stage in reversed(FOLDERS[:FOLDERS.index(STAGE)]):
        if (stage_dir(workdir, stage) / MANIFEST_JSON).is_file():
            return apply_overrides(stage_config(workdir, stage), overrides).validate()
    return load_profile("paper", overrides)


def run(workdir: Path, config: Config, progress: bool = True, *, models=None, planes=None,
        batch_size: int | None = None, repeats: int | None = None, warmup: int | None = None,
        matmul_size: int | None = None, jit_compile: bool | str | None = None, quick: bool = False,
        strict: bool = False) -> Path:
    """Write ``<workdir>/07_models/``. ``quick`` = small batches and repeats (tests, smoke runs);
    explicit arguments override it. ``models``/``planes`` default to every registered model and
    ``config.prepare.planes``; ``planes`` selects the slice models' rows (a 3-D model has its one
    ``volume`` row)."""
    from strokeseg.report.model_table import ModelReportError, ReportOptions, build_report, report_canvases

    options = ReportOptions.quick() if quick else ReportOptions()
    given = {"models": tuple(models) if models is not None else None,
             "planes": tuple(planes) if planes is not None else None,
             "batch_size": batch_size, "repeats": repeats, "warmup": warmup,
             "matmul_size": matmul_size, "jit_compile": jit_compile}
    options = replace(options, strict=strict, seed=config.seed,
                      **{k: v for k, v in given.items() if v is not None}).validate()
    canvases = report_canvases(workdir, config, options)
    dataset_done = (stage_dir(workdir, DATASET) / MANIFEST_JSON).is_file()
    synthetic = is_synthetic_run(workdir) if dataset_done else config.synthetic
    with StageWriter(workdir, STAGE, config, synthetic=synthetic) as out:
        report = build_report(canvases, options, progress=progress)
        table = report.table
        if not (table["status"] == "ok").any():
            reasons = "; ".join(dict.fromkeys(table["model"] + ": " + table["error"].astype(str)))
            raise ModelReportError(f"no model could be measured ({reasons})")
        write_csv(table, out.path / MODELS_TABLE_CSV)
        (out.path / SUMMARIES).mkdir()
        for name, text in report.summaries.items():
            (out.path / SUMMARIES / f"{name}.txt").write_text(text, encoding="utf-8")
        statuses = {name: sorted(set(table.loc[table["model"] == name, "status"])) for name in report.summaries}
        out.extra["model_status"] = {name: s[0] if len(s) == 1 else s for name, s in statuses.items()}
        out.extra["machine"] = report.machine
        out.extra["timing"] = {"batch_size": options.batch_size, "repeats": options.repeats,
                               "warmup": options.warmup, "jit_compile": options.jit_compile}
        out.extra["canvases"] = {c.plane: {"shape": list(c.shape), "source": c.source,
                                           **({"patch": list(c.patch)} if c.patch is not None else {})}
                                 for c in canvases}
    return stage_dir(workdir, STAGE)


# Command line (used by strokeseg.cli) ----------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``models`` subcommand's own flags."""
    parser.add_argument("--models", type=_names, default=None, metavar="NAME[,NAME...]",
                        help="registered models to measure, comma-separated (default: every registered model)")
    parser.add_argument("--planes", type=_names, default=None, metavar="PLANE[,PLANE...]",
                        help="planes of the slice models' rows, comma-separated (default: the config's "
                             "prepare.planes); a 3-D model always gets its one volume row")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per timed call (default 4; 2 with --quick); 3-D models time one patch")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement, the median is reported (default 5; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls before timing, >= 1 (default 2; 1 with --quick)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="N of the float32 N×N GEMM that measures the machine (default 2048; 1024 with --quick)")
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"), default=None,
                        help="XLA for the timed steps, as keras compile(jit_compile=...) (default auto: "
                             "on for GPUs, off on CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="small batches and few repeats: a smoke test, not a measurement")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first model that is missing or fails (default: flag it in the table)")


def run_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for :func:`run` from the parsed ``models`` subcommand."""
    jit = {"auto": "auto", "true": True, "false": False, None: None}[getattr(args, "jit_compile", None)]
    return {"models": args.models, "planes": args.planes, "batch_size": args.batch_size,
            "repeats": args.repeats, "warmup": args.warmup, "matmul_size": args.matmul_size,
            "jit_compile": jit, "quick": args.quick, "strict": args.strict}


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names
