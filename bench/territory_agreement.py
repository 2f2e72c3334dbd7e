#!/usr/bin/env python3
"""How often the region atlas agrees with where the synthetic generator placed each lesion.

Generates subjects of the synthetic cohort in memory (no files), locates every lesion with
:func:`strokeseg.data.lesion_locations.locate` on the cohort's grid, and compares its class and
hemisphere with the vascular territory and side the generator recorded
(:func:`strokeseg.data.lesion_locations.agrees_with_territory`). Prints the agreement, the lesions per
territory and the disagreements by (territory, side, class found, hemisphere found).

    python bench/territory_agreement.py                      # 60 subjects at 1 mm, seed 2022
    python bench/territory_agreement.py --n-subjects 30 --downsample 2
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from strokeseg.data import lesion_locations, region_atlas, synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-subjects", type=int, default=60)
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--downsample", type=int, default=1)
    args = parser.parse_args()

    start = time.perf_counter()
    shape, affine = synthetic.template_grid(args.downsample)
    with tempfile.TemporaryDirectory() as cache:
        atlas = region_atlas.cached(Path(cache), shape, affine)
        agree = checked = 0
        per_territory: collections.Counter = collections.Counter()
        misses: collections.Counter = collections.Counter()
        for index in range(args.n_subjects):
            subject = synthetic.synthesize_subject(args.seed, index, args.downsample)
            found = lesion_locations.locate(subject.mask, affine, atlas, [(p.voxel, p) for p in subject.placed])
            for tags, kind, side in zip(found.tags, found.lesions["location_class"], found.lesions["hemisphere"]):
                placed = tags[0]
                verdict = lesion_locations.agrees_with_territory(placed.territory, placed.side, kind, side)
                if verdict is None:      # placed anywhere (no territory to check)
                    continue
                checked += 1
                agree += bool(verdict)
                per_territory[placed.territory] += 1
                if not verdict:
                    misses[(placed.territory, placed.side, kind, side)] += 1
    print(f"{args.n_subjects} subjects (seed {args.seed}, downsample {args.downsample}): the atlas agrees with the "
          f"placed territory for {agree} of {checked} lesions ({100 * agree / max(checked, 1):.1f} %) "
          f"in {time.perf_counter() - start:.0f} s")
    print("lesions per territory:", dict(per_territory.most_common()))
    for (territory, side, kind, found_side), n in misses.most_common():
        print(f"  disagree: {territory} {side or '-'} -> {kind}, {found_side}: {n}")


if __name__ == "__main__":
    main()
