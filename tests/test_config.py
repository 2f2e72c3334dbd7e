import dataclasses
import json
import math

import pytest

from strokeseg.config import (
    FIELD_HELP,
    Config,
    derive_seed,
    describe_fields,
    field_table,
    from_dict,
    load_profile,
    read_config,
    to_json,
)
from strokeseg.errors import ConfigError


def test_paper_profile_holds_the_upstream_protocol_numbers():
    config = load_profile("paper")
    assert config.dataset.n_subjects == 655
    assert config.split.holdout_fraction == 0.2
    assert config.cv.n_folds == 5
    assert (config.batches.batch_size, config.batches.lesion_per_batch) == (32, 16)
    assert config.bins.volume_edges == (0, 5000, 30000, 60000, 100000, 200000, math.inf)
    assert config.bins.slice_edges("sagittal") == (0, 500, 1000, 2000, 3000, 5000, math.inf)


def test_demo_profile_is_small_and_overrides_apply_with_types():
    config = load_profile("demo", ["cv.n_folds=3", "convert.normalization=slice_max", "prepare.channels=[1,4]",
                                   "bins.volume_edges=[0, 10, \"inf\"]", "dataset.atlas_dir=null"])
    assert config.dataset.n_subjects < 100
    assert config.cv.n_folds == 3 and isinstance(config.cv.n_folds, int)
    assert config.convert.normalization == "slice_max"
    assert config.prepare.channels == (1, 4)
    assert config.bins.volume_edges == (0.0, 10.0, math.inf)


@pytest.mark.parametrize("override, fragment", [
    ("cv.n_fold=3", "unknown config key"),
    ("cv.n_folds=three", "not a valid int"),
    ("cv.n_folds=2.5", "not a valid int"),
    ("cv=3", "is a section"),
    ("convert.normalization=zscore", "convert.normalization"),
    ("split.holdout_fraction=1.5", "holdout_fraction"),
    ("dataset.source=atlas", "atlas_dir \\(or data_dir\\) is required"),
    ("dataset.source=isles22", "dataset.data_dir is required"),
    ("novalue", "section.field=value"),
])
def test_bad_overrides_are_clear_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_profile("paper", [override])


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("fast")


def test_json_round_trip_is_exact(tmp_path):
    config = load_profile("demo", ["prepare.channels=[1,3,4]", "seed=7"])
    path = tmp_path / "config.json"
    path.write_text(to_json(config))
    assert read_config(path) == config
    assert json.loads(to_json(config))["bins"]["volume_edges"][-1] == "inf"
    assert from_dict(json.loads(to_json(Config()))) == Config()


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(42, "normals", "axial", 1) == derive_seed(42, "normals", "axial", 1)
    assert len({derive_seed(42, "normals", p, k) for p in ("axial", "sagittal") for k in (1, 2)}) == 4
    assert derive_seed(42, "x") != derive_seed(43, "x")


def test_every_config_value_has_a_one_line_help_text():
    keys = []
    for section in dataclasses.fields(Config):
        value = getattr(Config(), section.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(value)]
        else:
            keys.append(section.name)
    for key in keys:
        text = FIELD_HELP.get(key, "")
        assert text.strip() and "\n" not in text, key
    assert sorted(FIELD_HELP) == sorted(keys)  # no help for a value that no longer exists
    sections = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))]
    assert [row[0] for row in describe_fields(["", *sections])] == keys  # top-level first, as declared


def test_described_values_are_the_profiles():
    paper, demo = load_profile("paper"), load_profile("demo")
    rows = {key: (value, other) for key, value, other, _ in
            describe_fields(["training", "bins.volume_edges", "seed"], exclude=["training.planes"])}
    assert "training.planes" not in rows and "training.folds" in rows and "cv.n_folds" not in rows
    for key in ("training.max_epochs", "training.folds", "seed"):
        section, _, name = key.rpartition(".")
        value = getattr(getattr(paper, section) if section else paper, name)
        other = getattr(getattr(demo, section) if section else demo, name)
        assert rows[key] == (json.dumps(list(value) if isinstance(value, tuple) else value),
                             None if other == value else json.dumps(list(other) if isinstance(other, tuple) else other))
    assert rows["training.max_epochs"][0] == "500" and rows["training.folds"][0] == "[]"
    assert rows["bins.volume_edges"][0] == '[0, 5000, 30000, 60000, 100000, 200000, "inf"]'
    table = field_table(["split"]).split()
    assert table == ["split.holdout_fraction", "0.2", *FIELD_HELP["split.holdout_fraction"].split()]
    with pytest.raises(ConfigError, match="unknown config key"):
        describe_fields(["trainig"])


def test_raxnet_is_the_paper_profile_under_its_own_name():
    paper, raxnet = load_profile("paper"), load_profile("raxnet")
    assert raxnet.profile == "raxnet" and dataclasses.replace(paper, profile="raxnet") == raxnet


@pytest.mark.parametrize("name", ["lgg", "lcnn", "strokeseg-ct", "isles3d"])
def test_each_source_profile_trains_its_model_with_the_published_recipe(name):
    from strokeseg.config import TrainingConfig
    from strokeseg.train.recipes import PUBLISHED, RECIPE_FIELDS

    config = load_profile(name)
    published = {**{f: getattr(TrainingConfig(), f) for f in RECIPE_FIELDS}, **PUBLISHED[config.training.model]}
    assert {f: getattr(config.training, f) for f in RECIPE_FIELDS} == published
    assert config.training.model not in config.comparison.models      # the others are its comparison


def test_source_profiles_hold_what_their_projects_fixed_besides_the_recipe():
    lgg = load_profile("lgg")
    assert (lgg.batches.kind, lgg.batches.batch_size, lgg.training.max_epochs) == ("foreground_weighted", 16, 100)
    assert (lgg.training.selection, lgg.postprocess.rule, lgg.cv.edge_slices) == ("subject_dice", "largest", 1)
    assert lgg.convert.mr_normalization == "clip_zscore" and lgg.training.model_options == {"base_filters": 32}
    lcnn = load_profile("lcnn")
    assert (lcnn.prepare.channels, lcnn.batches.batch_size, lcnn.batches.kind) == ((1, 3), 4, "every_slice")
    isles = load_profile("isles3d")
    assert isles.dataset.source == "synthetic_multimodal" and isles.training.patch_size == (112, 112, 80)
    assert (isles.training.loss, isles.training.plateau_factor) == ("focal_tversky", 0.5)
