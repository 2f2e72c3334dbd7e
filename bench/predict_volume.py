#!/usr/bin/env python3
"""Seconds and peak memory per 197×233×189 volume of tri-planar inference, through ``strokeseg predict``'s
own per-case function (:func:`strokeseg.infer.predict.predict_case`), split into its phases.

Two cases, predicted one after the other in one process:

- ``MNI 1 mm``: a volume on the MNI152NLin2009aSym grid (197×233×189, 1 mm), used as is;
- ``1.5 mm grid``: the same volume resampled (trilinear, outside this timing) onto a 1.5 mm grid of
  the same field of view (132×156×126), so predict resamples it onto the MNI grid and the fused
  mask back.

Each case runs ``predict_case`` once, whose inner calls are wrapped with timers (module attributes
monkey-patched for the run, so the code path is exactly the command's):

    read        load_channels (gzip NIfTI read and validation)
    resample    resample.to_grid (input → the models' grid, and the mask and map back)
    normalise   tri_planar.normalized_volume (per-volume robust window, once for the three planes)
    axial …     tri_planar.plane_probability per plane (slicing, padding, batched model calls, crop)
    fusion      fusion.fuse (+ fused_probability, remove_small_components when asked)
    write       write_nifti of the mask (and probability map)
    other       the rest of predict_case (lesion count and volume for predictions.csv)
    s / slice   the three planes' prediction seconds ÷ 619 slices (197 + 233 + 189, skipped ones included)

Before the cases, untimed: the models are built or loaded (``load_predictor``, as the command does)
and every plane's model is called once on a small batch, so graph tracing and kernel set-up — paid
once per process, not per volume — are reported apart ("warm-up").

With ``--repeats N`` the cases are run N times, interleaved, and each phase's median is shown.
Peak RSS is the process's ``ru_maxrss`` (Linux: KiB) after each case: the whole process,
TensorFlow and the models included; "RSS before cases" is the resident set after loading and warm-up.

Models: untrained RAX-Net per plane (``build_model("raxnet", canvas + (1,))``) saved to a temporary
models folder, unless ``--models DIR``; the speed of an untrained model is the speed of a trained one.
Input: subject 0 of the synthetic cohort (``strokeseg.data.synthetic.synthesize_subject``), unless ``--input``.

    python bench/predict_volume.py
    python bench/predict_volume.py --models 10_fusion/models --input sub-X_T1w.nii.gz --batch-size 32
    python bench/predict_volume.py --skip-empty-slices --flip-tta
Targets: ≤ 30 s per volume and ≤ 3 GB peak RSS.
"""
from __future__ import annotations

import argparse
import contextlib
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

TARGET_SECONDS, TARGET_GB = 30.0, 3.0
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
               (fusion, "fused_probability", "fusion"), (fusion, "remove_small_components", "fusion"),
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


def warm_up(predictor, batch_size: int) -> float:
    from strokeseg.config import PLANES
    from strokeseg.data import planes, resample

    start = time.perf_counter()
    for plane in PLANES:
        canvas = planes.canvas_for(resample.MNI_SHAPE, plane).shape
        plane_predictor = predictor.predictors[plane]
        plane_predictor.predict(np.zeros((batch_size,) + tuple(canvas) + (plane_predictor.channels,), np.float32))
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: untrained RAX-Net)")
    parser.add_argument("--input", type=Path, default=None, help="a T1 NIfTI (default: synthetic subject 0)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per model call (default: predict's)")
    parser.add_argument("--flip-tta", action="store_true")
    parser.add_argument("--skip-empty-slices", action="store_true")
    parser.add_argument("--min-lesion-voxels", type=int, default=0)
    parser.add_argument("--save-probabilities", action="store_true")
    parser.add_argument("--no-resample-case", action="store_true", help="only the input as given")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; medians are shown (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import tensorflow as tf

    from strokeseg.infer import predict
    from strokeseg.infer.fusion import FusionSettings

    batch = args.batch_size or predict.DEFAULT_BATCH_SIZE
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        models = args.models
        if models is None:
            models = tmp / "models"
            models.mkdir()
            build_models(models)
        build_s = time.perf_counter() - start
        cases = write_inputs(tmp, args.input)
        if args.no_resample_case:
            cases = cases[:1]
        convert = predict.convert_config(models)
        settings = FusionSettings(flip_tta=args.flip_tta, min_lesion_voxels=args.min_lesion_voxels)
        options = predict.Options(convert=convert, settings=settings, save_probabilities=args.save_probabilities,
                                  batch_size=batch, skip_empty=args.skip_empty_slices)
        start = time.perf_counter()
        predictor = predict.load_predictor(models, options)
        load_s = time.perf_counter() - start
        warm_s = warm_up(predictor, batch)
        baseline = current_rss_gb()

        runs: dict = {label: [] for label, _ in cases}
        for _ in range(args.repeats):          # cases interleaved, so a noisy machine loads them alike
            for label, path in cases:
                times: dict = defaultdict(float)
                out = tmp / "out"
                out.mkdir(exist_ok=True)
                with timed_phases(times):
                    row = predict.predict_case(predict.Case(predict.case_name(path), (("t1w", path),)),
                                               predictor, options, out)
                if row["status"] != "ok":
                    print(f"case {label} failed: {row['message']}", file=sys.stderr)
                    return 1
                times["total"] = float(row["seconds"])
                times["other"] = max(times["total"] - sum(times[p] for p in PHASES), 0.0)
                runs[label].append((dict(times), row))
        results = []
        for label, measured in runs.items():
            median = {k: float(np.median([m[0].get(k, 0.0) for m in measured])) for k in (*PHASES, "other", "total")}
            results.append((label, median["total"], median, peak_rss_gb(), measured[-1][1]))

    print(f"strokeseg predict, per volume — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU core(s) visible, TensorFlow {tf.__version__}, "
          f"GPU: {', '.join(d.name for d in tf.config.list_physical_devices('GPU')) or 'none'}")
    source = f"untrained RAX-Net (built and saved in {build_s:.1f} s)" if args.models is None else args.models
    print(f"models: {source}; "
          f"batch {batch}; flip TTA {'on' if args.flip_tta else 'off'}; skip empty slices "
          f"{'on' if args.skip_empty_slices else 'off'}")
    print(f"once per process: load models {load_s:.1f} s, warm-up (tracing, first calls) {warm_s:.1f} s; "
          f"RSS before cases {baseline:.2f} GiB")
    print()
    print(f"medians of {args.repeats} run(s) per case" if args.repeats > 1 else "one run per case")
    header = f"{'phase (s)':<12}" + "".join(f"{label:>22}" for label, *_ in results)
    print(header)
    print("-" * len(header))
    for phase in (*PHASES, "other"):
        print(f"{phase:<12}" + "".join(f"{r[2][phase]:>22.2f}" for r in results))
    print("-" * len(header))
    print(f"{'total':<12}" + "".join(f"{r[1]:>22.2f}" for r in results))
    slices = 197 + 233 + 189
    print(f"{'s / slice':<12}" + "".join(f"{sum(r[2][p] for p in ('axial', 'sagittal', 'coronal')) / slices:>22.3f}"
                                         for r in results))
    print(f"{'peak RSS GiB':<12}" + "".join(f"{r[3]:>22.2f}" for r in results))
    print(f"{'lesion mL':<12}" + "".join(f"{r[4]['lesion_volume_ml']:>22.1f}" for r in results))
    print()
    worst_s, worst_gb = max(r[1] for r in results), max(r[3] for r in results)
    print(f"targets: ≤ {TARGET_SECONDS:g} s per volume: {'met' if worst_s <= TARGET_SECONDS else 'NOT met'} "
          f"(worst {worst_s:.1f} s); ≤ {TARGET_GB:g} GB peak RSS: "
          f"{'met' if worst_gb * 1.073741824 <= TARGET_GB else 'NOT met'} (peak {worst_gb:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
