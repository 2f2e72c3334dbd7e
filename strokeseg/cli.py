"""The ``strokeseg`` command: one subcommand per stage, and the argument handling every run.py shares.

Stage 01 builds the configuration from a profile and overrides; every later stage starts from the
configuration the previous stage recorded in the workdir, so dataset and profile are given once.
Errors a user can act on are printed as one line (``error: <file or option>: <fault>``) with exit
status 2, a bug as a traceback with exit status 3; :data:`EXIT_STATUS` lists every status.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from strokeseg import __version__
from strokeseg.config import (
    PROFILE_SOURCES,
    PROFILES,
    READER_SOURCES,
    SYNTHETIC_SOURCES,
    apply_overrides,
    field_table,
    load_profile,
)
from strokeseg.contracts import BY_COMMAND
from strokeseg.errors import ConfigError, StrokesegError
from strokeseg.runtime import configure_logging, configure_tensorflow
from strokeseg.workdir import previous_stage, stage_config

log = logging.getLogger("strokeseg")

# Exit status of every command (README, Exit status): scripts can tell a failed case from bad input
# from a crash.
DONE = 0            # everything done
CASES_FAILED = 1    # predict: some cases failed (each has its row and message in predictions.csv)
BAD_INPUT = 2       # a bad option, configuration or input file, found before any work (one line on stderr)
INTERNAL_ERROR = 3  # a bug in strokeseg: a traceback and a request to report it
INTERRUPTED = 130   # Ctrl-C
TERMINATED = 143    # SIGTERM
EXIT_STATUS = {DONE: "done", CASES_FAILED: "some cases failed", BAD_INPUT: "bad option, configuration or input",
               INTERNAL_ERROR: "internal error (a bug)", INTERRUPTED: "interrupted", TERMINATED: "terminated"}


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line, ``error: <command>: <fault>`` (exit 2), like every other error."""

    def error(self, message: str):
        self.exit(BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

# subcommand -> the stage (folder, module under strokeseg.stages, one-line help), from the one registry
COMMANDS = BY_COMMAND

DATASET_CHOICES = SYNTHETIC_SOURCES + READER_SOURCES

# Stages whose module adds flags of its own (add_arguments / run_options); their modules import light.
OWN_ARGUMENTS = {"models", "training", "comparison", "fusion"}

OVERRIDE_HELP = ("override one config value, e.g. --set cv.n_folds=5 --set convert.normalization=slice_max "
                 "(repeatable; the values this stage reads are listed below with their defaults)")

# subcommand -> the config values its stage (with the modules it calls) reads: sections, dotted keys or
# top-level keys, listed with their defaults by --help (strokeseg.config.field_table).
READS = {
    "dataset": ("dataset", "bins", "workers"),
    "splitting": ("split", "seed"),  # stratifies on stage 01's volume_bin column, not on bins.*
    "convert": ("convert", "dataset.binarize_masks", "workers", "training.model", "comparison.models", "seed"),
    "cross-validation": ("cv", "bins", "seed"),
    "batches": ("batches.batch_size", "batches.lesion_per_batch", "batches.inner_validation_fraction",
                "batches.kind", "batches.foreground_floor", "bins.axial_edges", "bins.sagittal_edges",
                "bins.coronal_edges", "seed"),
    "prepare": ("prepare", "cv.n_folds"),
    "models": ("prepare.planes", "convert.canvas_multiple", "training.patch_size", "dataset.source", "seed", "onednn"),
    "training": ("training", "cv.n_folds", "batches.fixed_order", "prepare.channels", "postprocess", "seed",
                 "onednn"),
    "comparison": ("comparison", "training", "cv.n_folds", "batches.fixed_order", "prepare.channels", "seed",
                   "onednn"),
    "fusion": ("training.model", "training.eval_batch_size", "training.window_step", "training.patch_batch_size",
               "convert", "dataset.binarize_masks", "bins.volume_edges", "comparison.recipe", "postprocess",
               "onednn"),
}
NOT_READ = {"comparison": ("training.max_epochs", "training.planes", "training.folds")}  # comparison.* replace them
BINS_NOTE = "bins.*: stage 01 assigned every bin; this stage uses only their count and labels, so set them in stage 01."
NOTES = {
    "cross-validation": BINS_NOTE,
    "batches": BINS_NOTE,
    "fusion": BINS_NOTE,
    "models": "convert.canvas_multiple is used only while no stage-03 store exists, dataset.source only before "
              "stage 01 has run.",
    "comparison": "training.* is stage 08's setup, the base of every run here; with comparison.recipe=published "
                  "each model's\npublished loss, optimiser and schedule replace the training section's.",
}
CONFIG_HEADER = ("configuration values this stage reads; change one with --set KEY=VALUE (recorded in the stage's "
                 "config.json).\nEach line: key, the paper profile's value [demo: the demo profile's, where it "
                 "differs], meaning.")


def config_epilog(command: str) -> str:
    """The --help epilog of a stage: the config values it reads, with defaults and meaning."""
    note = f"\n{NOTES[command]}" if command in NOTES else ""
    return f"{CONFIG_HEADER}{note}\n{field_table(READS[command], NOT_READ.get(command, ()))}"


def build_parser(default_workdir: Path | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="strokeseg", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, stage in COMMANDS.items():
        folder, text = stage.folder, stage.title
        sub = commands.add_parser(name, help=text.replace("%", "%%"), description=text, epilog=config_epilog(name),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--workdir", type=Path, default=default_workdir or Path.cwd(),
                         help="root of the output tree; this stage writes <workdir>/%s/ (default: %%(default)s)"
                              % folder)
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help=OVERRIDE_HELP)
        sub.add_argument("--workers", type=int, default=None,
                         help="processes for per-volume work (default: the recorded config, 0 = one per core)")
        sub.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
        if name == "dataset":
            sub.add_argument("--profile", choices=sorted(PROFILES), default="paper",
                             help="named protocol profile: "
                                  + "; ".join(f"{name} = {what}" for name, what in PROFILE_SOURCES.items())
                                  + " (README, Profiles; default: %(default)s)")
            sub.add_argument("--atlas-dir", type=Path, default=None,
                             help="ATLAS v2.0 root (BIDS: Training/R0XX/sub-*/ses-*/anat/...); "
                                  "omit to build the synthetic ATLAS-like cohort")
            sub.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                             help="the dataset kind: a synthetic cohort, or the reader of --data-dir's layout "
                                  "(default: detected from --data-dir; synthetic without it)")
            sub.add_argument("--data-dir", type=Path, default=None,
                             help="root of the dataset (ATLAS, ISLES'22 BIDS, nnU-Net DatasetNNN_Name, PNG or "
                                  "kaggle_3m slice folders; README, Datasets)")
            sub.add_argument("--channels", default=None, metavar="A,B",
                             help="image channels to use, in this order (default: the reader's; ISLES'22: dwi,adc)")
            sub.add_argument("--label", type=int, default=None,
                             help="nnU-Net datasets: the label value that is the lesion (default 1)")
            sub.add_argument("--resample-flair", action="store_true",
                             help="ISLES'22: accept FLAIR by resampling it onto the DWI grid (world "
                                  "coordinates; not registration)")
            sub.add_argument("--spacing", default=None, metavar="X,Y,Z",
                             help="slice folders: voxel size in mm (default: unknown; mL and mm become voxels)")
            sub.add_argument("--grid-plan", choices=("auto", "fixed", "target_spacing"), default=None,
                             help="auto: fixed when every subject shares one grid, else target_spacing "
                                  "(each subject resampled to one voxel size, nnU-Net's rule)")
            sub.add_argument("--target-spacing", default=None, metavar="X,Y,Z",
                             help="target_spacing plan: voxel size in mm (default: the median per axis)")
            sub.add_argument("--n-subjects", type=int, default=None,
                             help="size of the synthetic cohort (default: the profile's)")
            sub.add_argument("--downsample", type=int, default=None,
                             help="integer downsampling of the synthetic cohort, for tiny test cohorts (default 1)")
            sub.add_argument("--binarize-masks", action="store_true",
                             help="accept masks with values other than 0/1 by taking mask > 0 (default: error)")
            sub.add_argument("--seed", type=int, default=None, help="protocol seed (default: the profile's, 42)")
        if name in OWN_ARGUMENTS:  # imported only here: other stage modules load plotting libraries
            _stage_module(name).add_arguments(sub)
    from strokeseg.infer import predict  # imports no Keras until it runs

    text = "tri-planar inference on T1 NIfTI volumes with trained models (the Docker entrypoint)"
    predict.add_arguments(commands.add_parser("predict", help=text, description=text))
    from strokeseg.serve import command as serve_command  # imports the server only when it runs

    serve_command.add_arguments(commands.add_parser("serve", help=serve_command.HELP, description=serve_command.HELP))
    from strokeseg.evaluate import external  # imports its table code only when it runs

    external.add_arguments(commands.add_parser("evaluate", help=external.HELP, description=external.HELP))
    from strokeseg.data import nnunet_export  # reads no volume until it runs

    nnunet_export.add_arguments(commands.add_parser("export-nnunet", help=nnunet_export.HELP,
                                                    description=nnunet_export.HELP))
    return parser


def _stage_module(command: str):
    return importlib.import_module(f"strokeseg.stages.{COMMANDS[command].module}")


def _dataset_overrides(args: argparse.Namespace) -> list[str]:
    """--dataset, --data-dir and the reader options as overrides; the kind is detected from the
    folder when --data-dir comes without --dataset, so the recorded config names it."""
    extra = []
    kind, folder = getattr(args, "dataset", None), getattr(args, "data_dir", None)
    if folder is not None:
        folder = Path(folder).expanduser().resolve()
        if kind is None:
            from strokeseg.data import readers

            kind = readers.detect(folder)
        extra.append(f"dataset.data_dir={json.dumps(str(folder))}")
    if kind is not None:
        extra.append(f"dataset.source={kind}")
    for flag, key in (("channels", "dataset.channels"), ("spacing", "dataset.spacing"),
                      ("target_spacing", "dataset.target_spacing")):
        value = getattr(args, flag, None)
        if value is not None:
            items = [v.strip() for v in value.split(",") if v.strip()]
            extra.append(f"{key}={json.dumps(items if flag == 'channels' else [_number(flag, v) for v in items])}")
    if getattr(args, "label", None) is not None:
        extra.append(f"dataset.label={args.label}")
    if getattr(args, "resample_flair", False):
        extra.append("dataset.resample_flair=true")
    if getattr(args, "grid_plan", None) is not None:
        extra.append(f"dataset.grid_plan={args.grid_plan}")
    return extra


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--{flag.replace('_', '-')}: {text!r} is not a number") from None


def stage_overrides(args: argparse.Namespace) -> list[str]:
    """Dedicated flags, expressed as config overrides (so they are recorded like any other)."""
    extra = []
    if getattr(args, "atlas_dir", None) is not None:
        extra += ["dataset.source=atlas", f"dataset.atlas_dir={Path(args.atlas_dir).expanduser().resolve()}"]
    extra += _dataset_overrides(args)
    if getattr(args, "n_subjects", None) is not None:
        extra.append(f"dataset.n_subjects={args.n_subjects}")
    if getattr(args, "downsample", None) is not None:
        extra.append(f"dataset.downsample={args.downsample}")
    if getattr(args, "binarize_masks", False):
        extra.append("dataset.binarize_masks=true")
    if getattr(args, "seed", None) is not None:
        extra.append(f"seed={args.seed}")
    if args.workers is not None:
        extra.append(f"workers={args.workers}")
    return extra + list(args.overrides)


def main(argv: list[str] | None = None, default_workdir: Path | None = None) -> int:
    """Run one command; the exit status is :data:`EXIT_STATUS`'s (README, Exit status)."""
    with _terminate_cleanly():
        try:
            return _run(build_parser(default_workdir).parse_args(argv))
        except StrokesegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return BAD_INPUT
        except (KeyboardInterrupt, Terminated) as exc:
            print(f"error: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; no outputs of the "
                  "unfinished step were published", file=sys.stderr)
            return TERMINATED if isinstance(exc, Terminated) else INTERRUPTED
        except Exception:  # a bug: the traceback helps whoever fixes it
            traceback.print_exc()
            print(f"error: internal error in strokeseg {__version__} (a bug, not a fault of your input); please "
                  "report it with the traceback above", file=sys.stderr)
            return INTERNAL_ERROR


def _run(args: argparse.Namespace) -> int:
    configure_logging(args.quiet)
    for flag in ("workdir", "atlas_dir", "data_dir", "output", "models"):
        value = getattr(args, flag, None)
        if isinstance(value, Path):
            setattr(args, flag, resolved(value, f"--{flag.replace('_', '-')}"))
    if args.command == "predict":
        from strokeseg.infer import predict

        return predict.run_from_args(args)
    if args.command == "serve":
        from strokeseg.serve import command as serve_command

        return serve_command.run_from_args(args)
    if args.command == "evaluate":
        from strokeseg.evaluate import external

        return external.run_from_args(args)
    if args.command == "export-nnunet":
        from strokeseg.data import nnunet_export

        return nnunet_export.run_from_args(args)
    folder = COMMANDS[args.command].folder
    workdir = args.workdir
    stage = _stage_module(args.command)
    if args.command == "dataset":
        config = load_profile(args.profile, stage_overrides(args))
    elif hasattr(stage, "starting_config"):  # a stage that can run without its predecessor
        config = stage.starting_config(workdir, stage_overrides(args))
    else:
        config = apply_overrides(stage_config(workdir, previous_stage(folder)), stage_overrides(args)).validate()
    extra = stage.run_options(args) if hasattr(stage, "run_options") else {}
    configure_tensorflow(config.onednn)
    out = stage.run(workdir, config, progress=not args.quiet, **extra)
    log.info("%s finished: outputs in %s", folder, out)
    return DONE


def resolved(path: Path, flag: str) -> Path:
    """``path`` made absolute with its symbolic links resolved; a loop of links is the user's fault."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:   # RuntimeError: Python < 3.13's "Symlink loop"
        raise ConfigError(f"{flag} {path}: cannot resolve the path ({exc.__class__.__name__}: {exc})") from None


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every clean-up (``finally``, staging folders) runs."""


@contextlib.contextmanager
def _terminate_cleanly():
    """While a command runs, SIGTERM unwinds it like Ctrl-C instead of killing it on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(command: str, argv: list[str], default_workdir: Path) -> int:
    """Entry point of ``<stage>/run.py``: the same as ``strokeseg <command> ...``."""
    return main([command, *argv], default_workdir=default_workdir)


if __name__ == "__main__":
    sys.exit(main())
