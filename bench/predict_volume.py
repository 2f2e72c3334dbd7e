#!/usr/bin/env python3
"""Seconds and peak memory per 197×233×189 volume of tri-planar inference, through ``strokeseg predict``'s
own per-case function (:func:`strokeseg.infer.predict.predict_case`), split into its phases, next to
the whole-volume FLOP floor and to predicting every slice.

Each case is predicted three times per repeat, one after the other in one process:

- ``predict``: as the command runs — the slices outside the head (an all-zero model input) share
  one model call, and fully convolutional models see only the canvas window that holds the head
  (:func:`strokeseg.infer.inference.predict_plane`);
- ``whole canvas``: the same on the whole canvas (``--whole-canvas``);
- ``every slice``: every slice predicted one by one on the whole canvas (``--all-slices --whole-canvas``).

The masks of the first two are compared voxel for voxel with every slice's (and, for ``--workdir``,
each way's mean Dice with the manual masks is printed), and
each time is divided by the **whole-volume FLOP floor**: the forward FLOPs of every slice of the
three planes (each plane's model counted on its canvas by the package's graph counter,
:func:`strokeseg.report.model_table.count_flops`, × the plane's slices on the models' grid, × 2 for a
plane that flip TTA mirrors) ÷ this machine's float32 matmul throughput measured in the same run.

Cases (default): ``MNI 1 mm``, a volume on the MNI152NLin2009aSym grid (197×233×189, 1 mm), used as
is; ``1.5 mm grid``, the same volume resampled (trilinear, outside this timing) onto a 1.5 mm grid of
the same field of view (132×156×126), so predict resamples it onto the MNI grid and the fused mask
back. ``--workdir W``: the hold-out T1 volumes of a finished study in W (``03_convert/holdout.csv``),
predicted with its stage-10 models folder (``10_fusion/models``), e.g. the demo's.

The ``predict`` run's inner calls are wrapped with timers (module attributes monkey-patched for the
run, so the code path is exactly the command's):

    read        load_channels (gzip NIfTI read and validation)
    resample    resample.to_grid (input → the models' grid, and the mask and map back)
    normalise   tri_planar.normalized_volume (per-volume robust window, once for the three planes)
    axial …     tri_planar.plane_probability per plane (slicing, padding, batched model calls, crop)
    fusion      fusion.fuse (+ fused_probability, postprocess: small components, largest only)
    write       write_nifti of the mask (and probability map)
    other       the rest of predict_case (the lesion table: components, and their atlas regions in MNI space)

Before the cases, untimed: the models are built or loaded (``load_predictor``, as the command does),
every plane's model is called once on a small batch (graph tracing and kernel set-up: the model's
step is traced once, for every window size, :func:`strokeseg.infer.inference.model_forward`), and the
region atlas of the MNI grid is built (lesion locations); these are paid once per process, not per
volume, and are reported apart.

With ``--repeats N`` each case is run N times (interleaved) and medians are shown. Peak RSS is the
process's ``ru_maxrss`` (Linux: KiB) at the end: the whole process, TensorFlow and the models
included; "RSS before cases" is the resident set after loading and warm-up.

Models: untrained RAX-Net per plane (``build_model("raxnet", canvas + (1,))``) saved to a temporary
models folder, unless ``--models DIR`` or ``--workdir``; the speed of an untrained model is the speed
of a trained one, but masks are only worth comparing with trained models (``--workdir``).
Input: subject 0 of the synthetic cohort (``strokeseg.data.synthetic.synthesize_subject``), unless
``--input`` or ``--workdir``.

    python bench/predict_volume.py
    python bench/predict_volume.py --workdir /tmp/demo         # a finished `make demo WORKDIR=/tmp/demo`
    python bench/predict_volume.py --models 10_fusion/models --input sub-X_T1w.nii.gz --batch-size 32
Targets: ≤ 0.8 × the whole-volume FLOP floor and ≤ 3 GB peak RSS; masks identical to every slice's, or
(the head's window) a measured difference that leaves the Dice where it was.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TARGET_FLOOR, TARGET_GB = 0.8, 3.0
PHASES = ("read", "resample", "normalise", "axial", "sagittal", "coronal", "fusion", "write")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # KiB → GiB


def current_rss_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def build_models(folder: Path) -> None:
    """Untrained RAX-Net per plane on its MNI canvas, saved as <plane>.keras."""
    import keras

    from strokeseg.config import PLANES
    from strokeseg.data import planes, resample
    from strokeseg.models import build_model

    for plane in PLANES:
        canvas = planes.canvas_for(resample.MNI_SHAPE, plane).shape
        model = build_model("raxnet", tuple(canvas) + (1,))
        model.save(folder / f"{plane}.keras")
        keras.backend.clear_session()


def write_inputs(folder: Path, source: Path | None) -> list[tuple[str, Path]]:
    """(label, path) of the MNI-grid input and of the same volume on a 1.5 mm grid."""
    import nibabel as nib

    from strokeseg.data import resample
    from strokeseg.data.nifti import load_t1

    if source is None:
        from strokeseg.data.synthetic import synthesize_subject

        subject = synthesize_subject(2022, 0)
        image = nib.Nifti1Image(subject.t1, subject.affine)
        image.set_qform(subject.affine, code=4)
        image.set_sform(subject.affine, code=4)
        source = folder / "synthetic_T1w.nii.gz"
        nib.save(image, source)
    t1, image = load_t1(source)
    affine = np.asarray(image.affine, dtype=float)
    label = "MNI, 1 mm" if resample.on_grid(t1.shape, affine) else f"{'x'.join(map(str, t1.shape))} (input)"
    cases = [(label, Path(source))]
    # The same field of view at 1.5 mm: voxel size × 1.5, the same first-voxel corner.
    coarse_shape = tuple(int(np.ceil(s / 1.5)) for s in t1.shape)
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] *= 1.5
    coarse_affine[:3, 3] = affine[:3, 3] + (affine[:3, :3] @ np.full(3, 0.25))   # voxel centres stay inside
    coarse = resample.to_grid(t1, affine, coarse_shape, coarse_affine, order=1)
    coarse_image = nib.Nifti1Image(np.rint(coarse).astype(np.int16), coarse_affine)
    coarse_image.set_qform(coarse_affine, code=4)
    coarse_image.set_sform(coarse_affine, code=4)
    path = folder / "coarse_1.5mm_T1w.nii.gz"
    nib.save(coarse_image, path)
    cases.append((f"{'x'.join(map(str, coarse_shape))}, 1.5 mm", path))
    return cases


@contextlib.contextmanager
def timed_phases(times: dict):
    """Wrap predict_case's inner calls with timers (restored on exit)."""
    from strokeseg.data import resample
    from strokeseg.infer import fusion, predict, tri_planar

    # to_grid is the one resampling call (to the models' grid, and the mask and map back).
    patches = [(predict, "load_channels", "read"), (resample, "to_grid", "resample"),
               (tri_planar, "normalized_volume", "normalise"), (fusion, "fuse", "fusion"),
               (fusion, "fused_probability", "fusion"), (fusion, "postprocess", "fusion"),
               (predict, "write_nifti", "write")]
    saved = []

    def wrap(function, phase):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[phase] += time.perf_counter() - start
        return timed

    def plane_wrap(function):
        def timed(predict_fn, volume, plane, *args, **kwargs):
            start = time.perf_counter()
            try:
                return function(predict_fn, volume, plane, *args, **kwargs)
            finally:
                times[plane] += time.perf_counter() - start
        return timed

    try:
        for module, name, phase in patches:
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, wrap(getattr(module, name), phase))
        saved.append((tri_planar, "plane_probability", tri_planar.plane_probability))
        tri_planar.plane_probability = plane_wrap(tri_planar.plane_probability)
        yield times
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def workdir_cases(workdir: Path) -> tuple[Path, list[tuple[str, Path]], dict[str, Path]]:
    """The stage-10 models folder of a finished study, its hold-out T1 volumes as (label, path) and
    their manual masks by label."""
    from strokeseg.contracts import CONVERT, FUSION, HOLDOUT_CSV, MODELS_DIR
    from strokeseg.workdir import read_csv

    holdout = read_csv(workdir / CONVERT / HOLDOUT_CSV)
    cases = [(name, Path(t1w)) for name, t1w in zip(holdout["subject_name"], holdout["t1w"])]
    return workdir / FUSION / MODELS_DIR, cases, dict(zip(holdout["subject_name"], map(Path, holdout["mask"])))


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    total = int(np.count_nonzero(mask)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(mask & truth)) / total


def floor_seconds(models: Path, predictor, flip_tta: bool, matmul: float) -> float:
    """Whole-volume FLOP floor: every slice of every plane through its model(s) once (twice where flip
    TTA mirrors the plane), at the measured matmul throughput."""
    from strokeseg.data import planes, resample
    from strokeseg.infer.inference import load_plane_models
    from strokeseg.report.model_table import count_flops

    flops = 0.0
    for plane, members in load_plane_models(models, planes_wanted=tuple(predictor.predictors)).items():
        channels = predictor.predictors[plane].channels
        canvas = planes.canvas_for(resample.MNI_SHAPE, plane, predictor.convert.canvas_multiple)
        slices = planes.n_slices(resample.MNI_SHAPE, plane)
        per_slice = sum(count_flops(model, (*canvas.shape, channels)).total for model in members)
        mirrored = flip_tta and (planes.left_right_axis(plane) is not None or channels > 1)
        flops += per_slice * slices * (2 if mirrored else 1)
    return flops / (matmul * 1e9)


def warm_up(predictor, batch_size: int) -> tuple[float, float]:
    """Seconds of (the first model calls of every plane, building the MNI grid's region atlas): both paid
    once per process, by the first volume (the atlas only by the first with a lesion in MNI space)."""
    from strokeseg.data import planes, resample
    from strokeseg.infer.lesion_report import atlas_for

    start = time.perf_counter()
    for plane, plane_predictor in predictor.predictors.items():
        canvas = planes.canvas_for(resample.MNI_SHAPE, plane, predictor.convert.canvas_multiple).shape
        for size in (1, batch_size):        # the all-zero canvas goes alone
            plane_predictor.predict(np.zeros((size,) + tuple(canvas) + (plane_predictor.channels,), np.float32))
    calls = time.perf_counter() - start
    start = time.perf_counter()
    atlas_for(resample.MNI_SHAPE, resample.MNI_AFFINE)
    return calls, time.perf_counter() - start


def run_case(predict, predictor, options, path: Path, out: Path, phases: bool):
    """(phase times, predictions.csv row, mask) of one predict_case run."""
    from strokeseg.data.nifti import load_mask

    times: dict = defaultdict(float)
    out.mkdir(exist_ok=True)
    case = predict.Case(predict.case_name(path), (("t1w", path),))
    with timed_phases(times) if phases else contextlib.nullcontext():
        row = predict.predict_case(case, predictor, options, out)
    if row["status"] != "ok":
        raise RuntimeError(f"case {path} failed: {row['message']}")
    times["total"] = float(row["seconds"])
    times["other"] = max(times["total"] - sum(times[p] for p in PHASES), 0.0)
    return dict(times), row, load_mask(out / f"{case.name}{predict.MASK_SUFFIX}", allow_empty=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: untrained RAX-Net)")
    parser.add_argument("--input", type=Path, default=None, help="a T1 NIfTI (default: synthetic subject 0)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="a finished study: its 10_fusion/models on its hold-out T1 volumes")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per model call (default: predict's)")
    parser.add_argument("--flip-tta", action="store_true")
    parser.add_argument("--min-lesion-voxels", type=int, default=0)
    parser.add_argument("--no-resample-case", action="store_true", help="only the input as given")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; medians are shown (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import tensorflow as tf

    from strokeseg.data.nifti import load_mask
    from strokeseg.infer import predict
    from strokeseg.infer.fusion import FusionSettings
    from strokeseg.report.model_table import matmul_gflops

    batch = args.batch_size or predict.DEFAULT_BATCH_SIZE
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        models, cases, truths = args.models, None, {}
        if args.workdir is not None:
            models, cases, truths = workdir_cases(args.workdir)
        elif models is None:
            models = tmp / "models"
            models.mkdir()
            build_models(models)
        build_s = time.perf_counter() - start
        if cases is None:
            cases = write_inputs(tmp, args.input)
            if args.no_resample_case:
                cases = cases[:1]
        convert = predict.convert_config(models)
        settings = FusionSettings(flip_tta=args.flip_tta, min_lesion_voxels=args.min_lesion_voxels)
        options = predict.Options(convert=convert, settings=settings, batch_size=batch)
        start = time.perf_counter()
        predictor = predict.load_predictor(models, options)
        load_s = time.perf_counter() - start
        whole = dataclasses.replace(predictor, crop_to_head=False)
        predictors = {"predict": predictor, "whole canvas": whole,
                      "every slice": dataclasses.replace(whole, skip_empty=False)}
        warm_s, atlas_s = warm_up(predictor, batch)
        matmul = matmul_gflops()
        floor = floor_seconds(models, predictor, args.flip_tta, matmul)
        baseline = current_rss_gb()

        runs: dict = {label: {way: [] for way in predictors} for label, _ in cases}
        differences = {label: dict.fromkeys(predictors, 0) for label, _ in cases}
        scores: dict = {label: {} for label in truths}          # the masks are the same in every repeat
        for _ in range(args.repeats):          # cases and ways interleaved, so a noisy machine loads them alike
            for label, path in cases:
                results = {way: run_case(predict, predictors[way], options, path, tmp / way.replace(" ", "_"),
                                         phases=way == "predict") for way in predictors}
                for way, (times, *_) in results.items():
                    runs[label][way].append(times)
                every_mask = results["every slice"][2]
                truth = load_mask(truths[label], allow_empty=True) > 0 if label in truths else None
                for way, (_, _, mask) in results.items():
                    differences[label][way] = max(differences[label][way],
                                                  int(np.count_nonzero(mask != every_mask)))
                    if truth is not None:
                        scores[label][way] = dice(mask > 0, truth)
                runs[label]["row"] = results["predict"][1]

    def median(label: str, way: str, key: str) -> float:
        return float(np.median([m.get(key, 0.0) for m in runs[label][way]]))

    print(f"strokeseg predict, per volume — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU core(s) visible, TensorFlow {tf.__version__}, "
          f"GPU: {', '.join(d.name for d in tf.config.list_physical_devices('GPU')) or 'none'}")
    source = (f"untrained RAX-Net (built and saved in {build_s:.1f} s)" if args.models is None and args.workdir is None
              else models)
    print(f"models: {source}; batch {batch}; flip TTA {'on' if args.flip_tta else 'off'}")
    print(f"once per process: load models {load_s:.1f} s, warm-up (tracing, first calls) {warm_s:.1f} s, "
          f"region atlas of the MNI grid {atlas_s:.1f} s; RSS before cases {baseline:.2f} GiB")
    print(f"whole-volume FLOP floor: {floor:.2f} s (float32 matmul {matmul:.0f} GFLOP/s, measured now)")
    print()
    print(f"medians of {args.repeats} run(s) per case" if args.repeats > 1 else "one run per case")
    width = max(14, *(len(label) + 2 for label, _ in cases))
    header = f"{'phase (s)':<14}" + "".join(f"{label:>{width}}" for label, _ in cases)
    print(header)
    print("-" * len(header))
    for phase in (*PHASES, "other"):
        print(f"{phase:<14}" + "".join(f"{median(label, 'predict', phase):>{width}.2f}" for label, _ in cases))
    print("-" * len(header))
    totals = {label: {way: median(label, way, "total") for way in predictors} for label, _ in cases}
    rows = [("predict s", lambda t: t["predict"], ".2f"), ("× floor", lambda t: t["predict"] / floor, ".2f"),
            ("whole canvas s", lambda t: t["whole canvas"], ".2f"),
            ("× floor", lambda t: t["whole canvas"] / floor, ".2f"),
            ("every slice s", lambda t: t["every slice"], ".2f"),
            ("× floor", lambda t: t["every slice"] / floor, ".2f"),
            ("predict/every", lambda t: t["predict"] / t["every slice"], ".2f")]
    for name, value, spec in rows:
        print(f"{name:<14}" + "".join(f"{value(totals[label]):>{width}{spec}}" for label, _ in cases))
    for way in ("predict", "whole canvas"):
        print(f"{'voxels ≠ every':<14}" + "".join(f"{differences[label][way]:>{width}d}" for label, _ in cases)
              + f"   ({way})")
    print(f"{'lesion mL':<14}" + "".join(f"{runs[label]['row']['lesion_volume_ml']:>{width}.1f}"
                                         for label, _ in cases))
    peak = peak_rss_gb()
    print(f"peak RSS {peak:.2f} GiB (whole process, both ways)")
    print()
    worst = max(totals[label]["predict"] / floor for label, _ in cases)
    if scores:
        print("mean Dice with the manual masks: " + ", ".join(
            f"{way} {np.mean([scores[label][way] for label in scores]):.4f}" for way in predictors)
              + f" ({len(scores)} cases); largest |predict - every slice| per case "
              f"{max(abs(scores[label]['predict'] - scores[label]['every slice']) for label in scores):.4f}")
    identical = not any(differences[label]["predict"] for label in differences)
    print(f"targets: ≤ {TARGET_FLOOR:g} × the whole-volume floor: {'met' if worst <= TARGET_FLOOR else 'NOT met'} "
          f"(worst {worst:.2f}); ≤ {TARGET_GB:g} GB peak RSS: {'met' if peak * 1.073741824 <= TARGET_GB else 'NOT met'}"
          f" ({peak:.2f} GiB); masks identical to every slice's: {'yes' if identical else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
