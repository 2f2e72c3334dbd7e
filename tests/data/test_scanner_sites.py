"""Scanner profiles of the synthetic cohort's sites: deterministic, distinct, in range, in the right proportions."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from strokeseg.data import scanner_sites
from strokeseg.data.scanner_sites import (
    BIAS_RANGE,
    GAMMA_RANGE,
    KIND_COUNTS,
    N_SITES,
    NOISE_RANGE,
    NOISY,
    NOISY_SHELL,
    SCALE_RANGE,
    SHELL_CONTRAST,
    SHELL_GAP_MM,
    SHELL_THICKNESS_MM,
    SKULL_STRIPPED,
    SiteProfile,
    cohort_profiles,
    site_profile,
)

SITES = range(1, N_SITES + 1)


def _fresh(seed: int, site: int) -> SiteProfile:
    """Drawn again, not served from the caches."""
    scanner_sites._site_profile.cache_clear()
    scanner_sites._site_kinds.cache_clear()
    return site_profile(seed, site)


def test_profiles_are_deterministic_per_seed_and_site():
    first = [site_profile(7, s) for s in SITES]
    assert [_fresh(7, s) for s in SITES] == first
    assert all(p.site == s and p.name == f"R{s:03d}" for p, s in zip(first, SITES))
    with pytest.raises(dataclasses.FrozenInstanceError):
        first[0].gamma = 1.0


def test_profiles_differ_between_sites_and_between_seeds():
    for seed in (7, 2022):
        values = {(p.gamma, p.scale, p.noise, p.bias) for p in (site_profile(seed, s) for s in SITES)}
        assert len(values) == N_SITES
    for s in SITES:
        a, b = site_profile(7, s), site_profile(8, s)
        assert (a.gamma, a.scale, a.noise, a.bias) != (b.gamma, b.scale, b.noise, b.bias)
    kinds = {seed: [site_profile(seed, s).kind for s in SITES] for seed in (7, 8, 2022)}
    assert kinds[7] != kinds[8] and kinds[7] != kinds[2022]


@pytest.mark.parametrize("seed", [0, 7, 2022])
def test_every_cohort_has_the_stated_proportions(seed):
    profiles = [site_profile(seed, s) for s in SITES]
    assert Counter(p.kind for p in profiles) == KIND_COUNTS == {SKULL_STRIPPED: 10, NOISY: 10, NOISY_SHELL: 10}
    for p in profiles:
        assert not (p.skull_stripped and p.shell)
        assert (p.shell_gap_mm is not None) is p.shell
        assert (p.shell_thickness_mm is not None) is p.shell and (p.shell_contrast is not None) is p.shell


def test_values_lie_in_the_documented_ranges():
    fields = Counter()
    for seed in range(6):
        for p in (site_profile(seed, s) for s in SITES):
            fields[p.field_strength_t] += 1
            assert GAMMA_RANGE[0] <= p.gamma <= GAMMA_RANGE[1]
            assert SCALE_RANGE[0] <= p.scale <= SCALE_RANGE[1]
            assert NOISE_RANGE[p.field_strength_t][0] <= p.noise <= NOISE_RANGE[p.field_strength_t][1]
            assert BIAS_RANGE[p.field_strength_t][0] <= p.bias <= BIAS_RANGE[p.field_strength_t][1]
            if p.shell:
                assert SHELL_GAP_MM[0] <= p.shell_gap_mm <= SHELL_GAP_MM[1]
                assert SHELL_THICKNESS_MM[0] <= p.shell_thickness_mm <= SHELL_THICKNESS_MM[1]
                assert SHELL_CONTRAST[0] <= p.shell_contrast <= SHELL_CONTRAST[1]
    assert set(fields) == {1.5, 3.0} and min(fields.values()) > 50      # both field strengths, even odds
    # wider than generator version 1 (noise 0.015..0.035 of the scale, bias 0.05..0.09 everywhere)
    noise = [site_profile(seed, s).noise for seed in range(6) for s in SITES]
    bias = [site_profile(seed, s).bias for seed in range(6) for s in SITES]
    assert min(noise) < 0.015 and max(noise) > 0.035 and min(bias) < 0.05 and max(bias) > 0.09


def test_describe_and_record():
    for s in SITES:
        p = site_profile(2022, s)
        line = p.describe()
        assert line.startswith(p.name) and "\n" not in line and len(line) < 140
        assert ("skull-stripped" in line) is p.skull_stripped and ("shell" in line) is p.shell
        record = p.to_dict()
        assert json.loads(json.dumps(record)) == record
        assert SiteProfile(**{k: v for k, v in record.items() if k not in ("kind", "background", "description")}) == p
        assert record["background"] == ("zero" if p.skull_stripped else "rician") and record["kind"] == p.kind
    assert list(cohort_profiles(2022, 3)) == ["R001", "R002", "R003"]
    assert len(cohort_profiles(2022, 655)) == N_SITES


def test_bad_arguments_are_refused():
    for site in (0, N_SITES + 1, 1.0, True):
        with pytest.raises(ValueError, match="site"):
            site_profile(7, site)
    with pytest.raises(ValueError, match="seed"):
        site_profile(-1, 1)
