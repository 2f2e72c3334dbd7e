"""The demo's reporting: Markdown tables, the README block, predict-vs-stage-10 agreement. (The demo's
stages themselves are the end-to-end test's; its report over a real study is checked there too.)"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from strokeseg import demo
from strokeseg.errors import StrokesegError

ROOT = Path(__file__).resolve().parents[1]


def test_markdown_table_right_aligns_numbers_and_keeps_text_left():
    table = demo.markdown_table(pd.DataFrame({"stage": ["01_dataset", "total"], "seconds": [12, 40]}))
    assert table.splitlines() == ["| stage | seconds |", "|---|---:|", "| 01_dataset | 12 |", "| total | 40 |"]


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{demo.README_BEGIN}\nold table\n{demo.README_END}\noutro\n")
    demo.update_readme(readme, "new table\n")
    assert readme.read_text() == f"intro\n{demo.README_BEGIN}\nnew table\n{demo.README_END}\noutro\n"
    demo.update_readme(readme, "newer\n")                     # idempotent block, not appended
    assert readme.read_text().count("new") == 1 and "newer" in readme.read_text()


def test_update_readme_without_markers_is_a_clear_error_and_leaves_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(StrokesegError, match="README.md.*demo-results"):
        demo.update_readme(readme, "table\n")
    assert readme.read_text() == "no markers here\n"


def test_the_repository_readme_has_the_demo_results_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(demo.README_BEGIN) == 1 and text.index(demo.README_BEGIN) < text.index(demo.README_END)


def _mask(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.eye(4)), path)


def test_predict_agreement_counts_voxel_identical_masks(tmp_path):
    subjects = ["sub-r001s001", "sub-r002s001"]
    t1w = [f"/data/{s}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz" for s in subjects]
    (tmp_path / "03_convert").mkdir()
    pd.DataFrame({"subject_name": subjects, "t1w": t1w}).to_csv(tmp_path / "03_convert" / "holdout.csv", index=False)
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2, 3] = 1
    for subject in subjects:
        _mask(tmp_path / "10_fusion" / "masks" / f"{subject}_fused_mask.nii.gz", mask)
    _mask(tmp_path / demo.PREDICT_DIR / f"{subjects[0]}_ses-1_space-MNI152NLin2009aSym_mask.nii.gz", mask)
    changed = mask.copy()
    changed[0, 0, 0] = 1                                       # one voxel differs
    _mask(tmp_path / demo.PREDICT_DIR / f"{subjects[1]}_ses-1_space-MNI152NLin2009aSym_mask.nii.gz", changed)
    assert demo.predict_agreement(tmp_path) == (1, 2)


def test_the_demo_ends_with_the_line_that_serves_its_models(tmp_path):
    from strokeseg.cli import build_parser
    from strokeseg.demo import serve_command

    line = serve_command(tmp_path)
    words = line.split("#")[0].split()
    assert words[:4] == ["python", "-m", "strokeseg", "serve"]
    args = build_parser().parse_args(words[3:])
    assert args.models == tmp_path / "10_fusion" / "models" and args.host == "127.0.0.1"


def test_the_transfer_test_reports_both_dice_figures_and_their_ratio_against_the_target(tmp_path):
    from strokeseg.config import load_profile, to_json
    from strokeseg.contracts import DATASET

    seed = load_profile("demo").dataset.synthetic_seed + demo.TRANSFER_SEED_OFFSET
    transfer_01 = tmp_path / demo.TRANSFER_DIR / DATASET
    transfer_01.mkdir(parents=True)
    (transfer_01 / "config.json").write_text(to_json(load_profile("demo", [f"dataset.synthetic_seed={seed}"])))
    (transfer_01 / "manifest.json").write_text("{}")
    holdout = pd.DataFrame({"mask": ["axial", "fused"], "n": [9, 9], "dice_mean": [0.40, 0.50],
                            "dice_std": [0.2, 0.2]}).set_index("mask")
    assert demo.transfer_lines(tmp_path, holdout) == []           # before the transfer test ran
    evaluation = tmp_path / demo.TRANSFER_DIR / "evaluation"
    evaluation.mkdir(parents=True)
    row = {"mask": "predict", "n": 8, "dice_mean": 0.44, "dice_std": 0.1}
    pd.DataFrame([row]).to_csv(evaluation / "summary.csv", index=False)
    [line] = demo.transfer_lines(tmp_path, holdout)
    assert f"seed {seed}" in line and "0.440 ± 0.100 against 0.500 ± 0.200" in line
    assert "ratio 0.880 (target ≥ 0.9 — **not met**)" in line
    pd.DataFrame([{**row, "dice_mean": 0.46}]).to_csv(evaluation / "summary.csv", index=False)
    assert "ratio 0.920 (target ≥ 0.9 — met)" in demo.transfer_lines(tmp_path, holdout)[0]


def test_the_transfer_steps_are_the_commands_a_user_runs(tmp_path):
    from strokeseg.cli import build_parser

    cohort = demo.transfer_cohort(tmp_path)
    for name in ("sub-r002s001", "sub-r001s001"):
        anat = cohort / "Training" / name / "anat"
        anat.mkdir(parents=True)
        (anat / f"{name}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz").write_bytes(b"")
    predict = demo.transfer_predict_argv(tmp_path)
    assert predict[:2] == ["-m", "strokeseg.infer.predict"]
    args = build_parser().parse_args(["predict", *predict[2:]])
    assert [Path(p).name[:12] for p in args.inputs] == ["sub-r001s001", "sub-r002s001"]
    assert args.models == tmp_path / "10_fusion" / "models"
    evaluate = demo.transfer_evaluate_argv(tmp_path)
    args = build_parser().parse_args(evaluate[2:])
    assert args.command == "evaluate" and Path(args.reference) == cohort
    stage_01 = demo.transfer_cohort_argv(tmp_path / demo.TRANSFER_DIR, 7)
    assert stage_01[0].endswith("01_dataset/run.py") and "dataset.synthetic_seed=7" in stage_01


def test_overrides_go_to_stage_01_only_and_the_transfer_steps_follow_predict(tmp_path, monkeypatch):
    calls = []

    def record(name, what, argv, timings):
        calls.append((name, argv))
        timings.append((name, 1.0, 0.1))
        return 0

    monkeypatch.setattr(demo, "_timed", record)
    monkeypatch.setattr(demo, "predict_argv", lambda workdir: ["predict"])
    monkeypatch.setattr(demo, "transfer_seed", lambda workdir: 2023)
    monkeypatch.setattr(demo, "transfer_predict_argv", lambda workdir: ["transfer predict"])
    timing = demo.run_all(tmp_path, ["training.intensity_augment=false"])
    names = [name for name, _ in calls]
    assert names[-4:] == ["predict", "transfer_cohort", "transfer_predict", "transfer_evaluate"]
    with_override = [name for name, argv in calls if "training.intensity_augment=false" in argv]
    assert with_override == ["01_dataset"]
    transfer = dict(calls)["transfer_cohort"]
    assert "dataset.synthetic_seed=2023" in transfer and str(tmp_path / demo.TRANSFER_DIR) in transfer
    assert list(timing["stage"])[-1] == "total" and timing["seconds"].iloc[-1] == len(calls)
