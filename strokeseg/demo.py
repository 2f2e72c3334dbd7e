"""``make demo``: the whole study, stages 01 → 10, on the synthetic cohort with the demo profile.

Each stage runs as its own process through the same ``run.py`` a user runs (so the demo exercises
exactly the documented interface), timed; then the held-out volumes are predicted through
``strokeseg predict``, the command the Docker image runs, and its masks are checked against stage
10's. At the end the demo prints the per-stage wall times, the fused 3-D Dice of the held-out
subjects and where the tables and figures are, and writes ``demo_results.md`` (the README's Results
section is that file's content, pasted by ``--update-readme``, never typed by hand).

Then the transfer test: a small synthetic cohort made with another seed, so every one of its sites has a
scanner profile (contrast, noise, bias, background, shell) that no training site has, is built by stage
01 in its own workdir, predicted with ``strokeseg predict`` and scored with ``strokeseg evaluate`` — the
commands a user with new scans runs — and its mean Dice is reported next to the hold-out's.

    python -m strokeseg.demo --workdir DIR [--update-readme README.md] [--set KEY=VALUE ...]

``--set`` passes config overrides to stage 01 (recorded there and carried to every stage), e.g.
``--set training.intensity_augment=false`` for the comparison run without intensity augmentation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from strokeseg.contracts import (
    BY_VOLUME_BIN_CSV,
    COMPARISON,
    CONVERT,
    DATASET,
    FUSION,
    FUSION_GAIN_CSV,
    HOLDOUT_CSV,
    LOSS_COMPARISON_CSV,
    MASKS_DIR,
    MODEL_COMPARISON_CSV,
    MODELS,
    MODELS_DIR,
    STAGES,
    SUMMARY_CSV,
    TRAINING,
    fused_mask_file,
    plane_folds_results_csv,
)
from strokeseg.errors import StrokesegError
from strokeseg.workdir import atomic_write_text, is_synthetic_run, read_csv, stage_config, write_csv

ROOT = Path(__file__).resolve().parents[1]
PREDICT_DIR = "demo_predict"
TRANSFER_DIR = "demo_transfer"   # its own workdir: 01_dataset/ (the cohort), predict/, evaluation/
TRANSFER_SUBJECTS = 8            # every ATLAS volume bin with p >= 1/8 is in any 8-subject prefix
TRANSFER_SEED_OFFSET = 1         # transfer cohort seed = the study's synthetic seed + this
TRANSFER_TARGET = 0.9            # transfer Dice / hold-out Dice
RESULTS_FILE = "demo_results.md"
TIMINGS_FILE = "demo_timings.csv"
TARGET_MINUTES = 15         # on the project's 2-core, no-GPU machine (README, Quick start)
README_BEGIN = "<!-- demo-results:begin (written by python -m strokeseg.demo --update-readme) -->"
README_END = "<!-- demo-results:end -->"


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]      # after the interpreter, before --workdir
    what: str


# The demo's own flags of some stages; the stages, their run.py and summaries come from the registry.
DEMO_FLAGS = {DATASET: ("--profile", "demo"), MODELS: ("--quick", "--models", "raxnet", "--planes", "axial"),
              FUSION: ("--min-lesion-voxels", "auto")}
STEPS = tuple(Step(stage.folder, (stage.run_script, *DEMO_FLAGS.get(stage.folder, ())), stage.summary)
              for stage in STAGES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strokeseg.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT,
                        help="root of the output tree (default: the repository, outputs beside each run.py)")
    parser.add_argument("--update-readme", type=Path, default=None, metavar="README",
                        help="also replace the block between the demo-results markers of this file with the "
                             "results (default: leave the README alone)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for stage 01, carried to every stage (repeatable)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite demo_results.md (and the README block with --update-readme) "
                             "from this workdir's finished demo and its demo_timings.csv")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    try:
        timing = read_csv(workdir / TIMINGS_FILE) if args.report_only else run_all(workdir, args.overrides)
        if timing is None:
            return 1
        agreement = predict_agreement(workdir)
        report = results_markdown(workdir, timing, agreement)
        atomic_write_text(workdir / RESULTS_FILE, report)
        if args.update_readme:
            update_readme(args.update_readme, report)
    except StrokesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(closing_lines(workdir, timing, agreement), flush=True)
    return 0


def run_all(workdir: Path, overrides: list[str] = ()) -> pd.DataFrame | None:
    """Every stage, then predict, then the transfer test; the timing table (None when a step failed,
    after saying which)."""
    workdir.mkdir(parents=True, exist_ok=True)
    timings = []
    for step in STEPS:
        extra = [a for item in overrides for a in ("--set", item)] if step.name == DATASET else []
        if _timed(step.name, step.what, [*step.argv, "--workdir", str(workdir), *extra], timings):
            return None
    if _timed("predict", "strokeseg predict (the Docker entrypoint) on the held-out T1 volumes",
              predict_argv(workdir), timings):   # its inputs are known once stage 03 has run
        return None
    seed = transfer_seed(workdir)
    transfer = workdir / TRANSFER_DIR
    if _timed("transfer_cohort", f"stage 01 builds {TRANSFER_SUBJECTS} synthetic subjects with seed {seed}: "
              "other scanner profiles than every training site", transfer_cohort_argv(transfer, seed), timings):
        return None
    if _timed("transfer_predict", "strokeseg predict on the transfer cohort's T1 volumes",
              transfer_predict_argv(workdir), timings):
        return None
    if _timed("transfer_evaluate", "strokeseg evaluate: the transfer cohort's masks against its references",
              transfer_evaluate_argv(workdir), timings):
        return None
    timing = pd.DataFrame(timings, columns=["stage", "seconds", "peak_rss_gib"])
    timing.loc[len(timing)] = ["total", timing["seconds"].sum(), timing["peak_rss_gib"].max()]
    write_csv(timing, workdir / TIMINGS_FILE)
    return timing


def _timed(name: str, what: str, argv: list[str], timings: list) -> int:
    """Run ``python argv`` from the repository root; record its wall time and peak RSS (the largest
    of the process and the workers it waited for); return its exit status."""
    print(f"\n==> {name}: {what}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = code = os.waitstatus_to_exitcode(status)
    timings.append((name, time.perf_counter() - started, usage.ru_maxrss / 2 ** 20))   # KiB -> GiB
    print(f"==> {name}: {timings[-1][1]:.0f} s", flush=True)
    if code:
        print(f"demo: {name} failed with exit status {code}; its messages are above", file=sys.stderr)
    return code


def predict_argv(workdir: Path) -> list[str]:
    """``strokeseg predict`` on every hold-out T1 volume with the models folder stage 10 wrote."""
    holdout = read_csv(workdir / CONVERT / HOLDOUT_CSV)
    return ["-m", "strokeseg.infer.predict", *holdout["t1w"], "--models", str(workdir / FUSION / MODELS_DIR),
            "--output", str(workdir / PREDICT_DIR)]


# Transfer test ---------------------------------------------------------------------------------------
def transfer_seed(workdir: Path) -> int:
    """The transfer cohort's seed: the study cohort's plus :data:`TRANSFER_SEED_OFFSET`, so its sites'
    scanner profiles (drawn per seed and site) are none of the training sites'."""
    return stage_config(workdir, DATASET).dataset.synthetic_seed + TRANSFER_SEED_OFFSET


def transfer_cohort_argv(transfer: Path, seed: int) -> list[str]:
    return [next(s.run_script for s in STAGES if s.folder == DATASET), "--workdir", str(transfer),
            "--profile", "demo", "--n-subjects", str(TRANSFER_SUBJECTS), "--set", f"dataset.synthetic_seed={seed}"]


def transfer_cohort(workdir: Path) -> Path:
    return workdir / TRANSFER_DIR / DATASET / "synthetic_cohort"


def transfer_predict_argv(workdir: Path) -> list[str]:
    t1w = sorted(str(p) for p in transfer_cohort(workdir).rglob("*_T1w.nii.gz"))
    return ["-m", "strokeseg.infer.predict", *t1w, "--models", str(workdir / FUSION / MODELS_DIR),
            "--output", str(workdir / TRANSFER_DIR / "predict")]


def transfer_evaluate_argv(workdir: Path) -> list[str]:
    return ["-m", "strokeseg", "evaluate", str(workdir / TRANSFER_DIR / "predict"),
            "--reference", str(transfer_cohort(workdir)), "--output", str(workdir / TRANSFER_DIR / "evaluation")]


def transfer_summary(workdir: Path) -> pd.Series | None:
    """The transfer cohort's summary row (``strokeseg evaluate``'s summary.csv), None before it ran."""
    path = workdir / TRANSFER_DIR / "evaluation" / SUMMARY_CSV
    if not path.exists():
        return None
    return read_csv(path).set_index("mask").loc["predict"]


def transfer_lines(workdir: Path, summary: pd.DataFrame) -> list[str]:
    """The transfer test in one sentence: both Dice figures, their ratio against the target."""
    row = transfer_summary(workdir)
    if row is None:
        return []
    holdout, transfer = summary.loc["fused", "dice_mean"], row["dice_mean"]
    ratio = transfer / holdout if holdout > 0 else float("nan")
    seed = stage_config(workdir / TRANSFER_DIR, DATASET).dataset.synthetic_seed   # as its stage 01 recorded it
    return [f"Transfer cohort ({int(row['n'])} synthetic subjects made with seed {seed}: "
            f"every site's scanner profile differs from the training sites'; `strokeseg predict`, then "
            f"`strokeseg evaluate`, `{TRANSFER_DIR}/evaluation/summary.csv`): mean Dice "
            f"{_mean_std(row, 'dice')} against {_mean_std(summary.loc['fused'], 'dice')} on the hold-out; "
            f"ratio {ratio:.3f} (target ≥ {TRANSFER_TARGET} — {_met(ratio >= TRANSFER_TARGET)})."]


# Results ---------------------------------------------------------------------------------------------
def fused_dice(workdir: Path) -> pd.DataFrame:
    """Stage 10's summary rows (mask = axial, sagittal, coronal, fused)."""
    return read_csv(workdir / FUSION / SUMMARY_CSV).set_index("mask")


def best_plane(summary: pd.DataFrame) -> str:
    """The single plane with the highest mean per-subject Dice in :func:`fused_dice`'s table."""
    return summary.drop(index="fused")["dice_mean"].idxmax()


def predict_agreement(workdir: Path) -> tuple[int, int]:
    """(cases whose ``strokeseg predict`` mask equals stage 10's fused mask voxel for voxel, cases)."""
    from strokeseg.data.nifti import load_mask
    from strokeseg.infer.predict import MASK_SUFFIX, case_name

    holdout = read_csv(workdir / CONVERT / HOLDOUT_CSV)
    same = 0
    for subject, t1w in zip(holdout["subject_name"], holdout["t1w"]):
        predicted = workdir / PREDICT_DIR / f"{case_name(t1w)}{MASK_SUFFIX}"
        fused = workdir / FUSION / MASKS_DIR / fused_mask_file(subject)
        same += bool(np.array_equal(load_mask(predicted, allow_empty=True), load_mask(fused, allow_empty=True)))
    return same, len(holdout)


def closing_lines(workdir: Path, timing: pd.DataFrame, agreement: tuple[int, int]) -> str:
    """What the demo prints last: wall times, the fused Dice, where everything is."""
    summary = fused_dice(workdir)
    best = best_plane(summary)
    same, n = agreement
    lines = ["", "Wall time per stage (s) and peak RSS (GiB):"]
    lines += [f"  {stage:<22} {seconds:7.0f} {rss:6.2f}" for stage, seconds, rss in timing.itertuples(index=False)]
    lines += ["",
              f"Fused 3-D Dice on the {int(summary.loc['fused', 'n'])} held-out subjects: "
              f"{_mean_std(summary.loc['fused'], 'dice')} (best single plane: {best}, "
              f"{_mean_std(summary.loc[best], 'dice')})",
              f"strokeseg predict reproduced stage 10's fused mask voxel for voxel on {same} of {n} subjects.",
              *transfer_lines(workdir, summary),
              "",
              "Tables and figures:",
              f"  {workdir / RESULTS_FILE}  (every table of this summary, as Markdown)",
              f"  {workdir / '08_training'}/  fold tables <plane>_folds_results.csv, runs.csv, test_dice_3d.png",
              f"  {workdir / '09_comparison'}/  model_comparison.csv, wilcoxon.csv, rainclouds (loss_*.csv when "
              "losses are compared)",
              f"  {workdir / '10_fusion'}/  subjects.csv, summary.csv, fusion_gain.csv, by_volume_bin.csv, "
              "masks/, overlays/, figures",
              f"  {workdir / PREDICT_DIR}/  predict's masks and predictions.csv",
              f"  {workdir / TRANSFER_DIR}/  the transfer cohort (01_dataset/), its masks (predict/) and scores "
              "(evaluation/)",
              "",
              "See the models at work in a browser (this machine only; Ctrl-C stops it):",
              f"  {serve_command(workdir)}"]
    return "\n".join(lines)


def serve_command(workdir: Path) -> str:
    """The one line that serves the demo's models in the local web app."""
    return f"python -m strokeseg serve --models {workdir / FUSION / MODELS_DIR}   # then open http://127.0.0.1:8000/"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _mean_std(row: pd.Series, metric: str, digits: int = 3) -> str:
    return f"{row[f'{metric}_mean']:.{digits}f} ± {row[f'{metric}_std']:.{digits}f}"


SUMMARY_METRICS = (("dice", "Dice"), ("precision", "precision"), ("recall", "recall"),
                   ("lesionwise_f1", "lesion-wise F1"), ("hd95_mm", "HD95 mm"))


def results_markdown(workdir: Path, timing: pd.DataFrame, agreement: tuple[int, int]) -> str:
    """The demo's tables as Markdown, every number read from the stages' CSVs."""
    config = stage_config(workdir, TRAINING)
    same, n_holdout = agreement
    training = config.training
    data = (f"**Synthetic data, not ATLAS**: {config.dataset.n_subjects} subjects of strokeseg's ATLAS-like cohort"
            if is_synthetic_run(workdir) else f"Data: `{config.dataset.atlas_dir}`")
    summary = fused_dice(workdir)
    best = summary.loc[best_plane(summary), "dice_mean"]
    fused, total = summary.loc["fused", "dice_mean"], timing["seconds"].iloc[-1]
    targets = (f"Demo targets on this machine: whole demo within {TARGET_MINUTES} minutes — "
               f"{_met(total <= TARGET_MINUTES * 60)} "
               f"({total / 60:.1f} min); fused mask better than the best single plane — {_met(fused > best)} "
               f"(mean Dice {fused:.3f} vs {best:.3f}); mean fused Dice ≥ 0.70 — {_met(fused >= 0.70)} "
               f"({fused:.3f}).")
    parts = [
        f"{data} (profile `{config.profile}`), {n_holdout} of them held out; "
        f"`{training.model}` with options `{_json(training.model_options)}`, test fold(s) "
        f"{', '.join(map(str, config.training_folds(training.folds)))} of {config.cv.n_folds}, "
        f"{training.max_epochs} epochs × {training.steps_per_epoch or 'all'} steps of "
        f"{config.batches.batch_size} slices, {training.optimizer} lr {training.learning_rate:g} "
        f"({training.schedule}), "
        f"spatial augmentation {'on' if training.augment else 'off'}, intensity augmentation "
        f"{'on' if training.intensity_augment else 'off'}, normalisation window from the "
        f"{'robust head region' if config.convert.head_region == 'robust' else 'non-zero voxels'}; "
        f"run on {os.cpu_count()} CPU cores.",
        "",
        targets,
        "",
        "Wall time per stage:", "",
        markdown_table(pd.DataFrame({"stage": timing["stage"], "seconds": timing["seconds"].round(0).astype(int),
                                     "peak RSS GiB": timing["peak_rss_gib"].round(2)})),
        "",
        "Hold-out, per-subject 3-D metrics (stage 10, `10_fusion/summary.csv`; mean ± std, median):", "",
        markdown_table(_summary_rows(summary)),
        "",
        "Fusion gain (`10_fusion/fusion_gain.csv`, per-subject Dice, paired Wilcoxon):", "",
        markdown_table(_gain_rows(read_csv(workdir / FUSION / FUSION_GAIN_CSV))),
        "",
        "Fused Dice by 3-D lesion volume (`10_fusion/by_volume_bin.csv`, voxels):", "",
        markdown_table(_bin_rows(read_csv(workdir / FUSION / BY_VOLUME_BIN_CSV))),
        "",
        "Cross-validation test fold, per-subject 3-D Dice per plane (stage 08, `<plane>_folds_results.csv`, "
        "`subject_3d` rows) and per-slice upstream protocol (`slice_upstream`):", "",
        markdown_table(_fold_rows(workdir, config)),
    ]
    comparison = workdir / COMPARISON / MODEL_COMPARISON_CSV
    if comparison.exists():
        parts += ["", "Model comparison on the cross-validation test fold (stage 09, `model_comparison.csv`):", "",
                  markdown_table(_comparison_rows(read_csv(comparison)))]
    losses = workdir / COMPARISON / LOSS_COMPARISON_CSV
    if losses.exists():
        parts += ["", "Loss comparison (stage 09, `loss_comparison.csv`, `subject_3d` rows):", "",
                  markdown_table(_loss_rows(read_csv(losses)))]
    parts += ["", f"`strokeseg predict` on the {n_holdout} hold-out T1 files reproduced stage 10's fused masks "
                  f"voxel for voxel on {same} of {n_holdout}."]
    transfer = transfer_lines(workdir, summary)
    if transfer:
        parts += ["", *transfer]
    return "\n".join(parts) + "\n"


def _summary_rows(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for mask, row in summary.iterrows():
        cells = {"mask": mask, "n": int(row["n"])}
        for metric, label in SUMMARY_METRICS:
            digits = 1 if metric == "hd95_mm" else 3
            cells[label] = f"{_mean_std(row, metric, digits)} ({row[f'{metric}_median']:.{digits}f})"
        rows.append(cells)
    return pd.DataFrame(rows)


def _gain_rows(gain: pd.DataFrame) -> pd.DataFrame:
    dice = gain[gain["metric"] == "dice"]
    return pd.DataFrame({"plane": dice["plane"], "n": dice["n_pairs"],
                         "plane Dice": dice["plane_mean"].map("{:.3f}".format),
                         "fused Dice": dice["fused_mean"].map("{:.3f}".format),
                         "mean difference": dice["mean_difference"].map("{:+.3f}".format),
                         "p": dice["p_value"].map("{:.3g}".format)})


def _bin_rows(bins: pd.DataFrame) -> pd.DataFrame:
    fused = bins[(bins["mask"] == "fused") & (bins["n"] > 0)]
    return pd.DataFrame({"lesion volume": fused["volume_bin_label"], "subjects": fused["n"],
                         "fused Dice": fused["dice_mean"].map("{:.3f}".format)})


def _fold_rows(workdir: Path, config) -> pd.DataFrame:
    rows = []
    for plane in config.training.planes:
        table = read_csv(workdir / TRAINING / plane_folds_results_csv(plane))
        table = table[table["fold"].astype(str) == "All"].set_index("evaluation")
        rows.append({"plane": plane, "subjects": int(table.loc["subject_3d", "n"]),
                     "3-D Dice": f"{table.loc['subject_3d', 'dice_mean']:.3f}",
                     "3-D recall": f"{table.loc['subject_3d', 'recall_mean']:.3f}",
                     "3-D precision": f"{table.loc['subject_3d', 'precision_mean']:.3f}",
                     "slices": int(table.loc["slice_upstream", "n"]),
                     "per-slice Dice (+1 smoothing)": f"{table.loc['slice_upstream', 'dice_mean']:.3f}"})
    return pd.DataFrame(rows)


def _comparison_rows(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"plane": table["plane"], "model": table["model"], "subjects": table["n"],
                         "3-D Dice": [_mean_std(row, "dice") for _, row in table.iterrows()]})


def _loss_rows(table: pd.DataFrame) -> pd.DataFrame:
    table = table[(table["evaluation"] == "subject_3d") & (table["fold"].astype(str) == "All")]
    return pd.DataFrame({"loss": table["loss"], "plane": table["plane"], "subjects": table["n"],
                         "3-D Dice": table["dice_mean"].map("{:.3f}".format)})


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (cells as text; numbers right-aligned)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    align = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, align, *body])


def update_readme(readme: Path, report: str) -> None:
    """Replace the text between the demo-results markers of ``readme`` with ``report``."""
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise StrokesegError(f"{readme}: no '{README_BEGIN}' … '{README_END}' block to replace")
    atomic_write_text(readme, text[:begin + len(README_BEGIN)] + "\n" + report + text[end:])


def _json(value) -> str:
    return json.dumps(value, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
