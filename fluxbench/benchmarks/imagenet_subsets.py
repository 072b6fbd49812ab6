"""The ImageNet-100 pair's class lists: UCIR's ImageNet-100 for tuning, 100 other ImageNet-1k classes for evaluation.

Published in ``class_lists/`` (one wnid per line, sorted; ``#`` lines are comments) and regenerated here from
``class_lists/imagenet1k_wnids.txt`` (the 1,000 ILSVRC-2012 wnids, sorted, i.e. torchvision ``ImageFolder``'s
classes on the train tree)::

    python -m fluxbench.benchmarks.imagenet_subsets            # rewrite both lists
    python -m fluxbench.benchmarks.imagenet_subsets --check    # exit 1 if the published lists differ

- Tuning, ``imagenet100_ucir.txt``: UCIR's ImageNet-Subset (Hou et al., CVPR 2019; ``hshustc/
  CVPR19_Incremental_Learning`` ``imagenet-class-incremental/gen_imagenet_subset.py``: ``np.random.seed(1993)``,
  then ``np.random.choice(classes, 100, replace=False)`` over the sorted wnids), re-drawn by the same call.
  (PODNet's ``imagenet_split/*_100.txt`` is another list: its released ``val_100.txt`` holds the first 100
  sorted wnids; pass it as ``class_list`` to use it.)
- Evaluation, ``imagenet100_eval.txt``: 100 of the 900 other classes, drawn by ``numpy.random.default_rng``
  seeded with :data:`EVALUATION_SEED`, so the two phases share no class and hence no image.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fluxbench.errors import DataError

CLASS_LISTS = Path(__file__).parent / "class_lists"
IMAGENET_1K = "imagenet1k_wnids.txt"
TUNING = "imagenet100_ucir.txt"
EVALUATION = "imagenet100_eval.txt"
UCIR_SEED = 1993
EVALUATION_SEED = 0  # fixed forever: the evaluation list is part of the benchmark's definition
SUBSET_SIZE = 100


def read_wnids(path: Path) -> list[str]:
    """The first token of every non-empty, non-comment line."""
    if not path.is_file():
        raise DataError(f"class list {path} does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def ucir_subset(wnids: Sequence[str]) -> list[str]:
    """UCIR's draw: the legacy global ``np.random.seed(1993); np.random.choice`` is ``RandomState(1993).choice``."""
    drawn = np.random.RandomState(UCIR_SEED).choice(sorted(wnids), SUBSET_SIZE, replace=False)
    return sorted(str(w) for w in drawn)


def evaluation_subset(wnids: Sequence[str], tuning: Sequence[str]) -> list[str]:
    """100 classes of ``wnids`` outside ``tuning``, seeded by :data:`EVALUATION_SEED`."""
    rest = sorted(set(wnids) - set(tuning))
    drawn = np.random.default_rng(EVALUATION_SEED).choice(rest, SUBSET_SIZE, replace=False)
    return sorted(str(w) for w in drawn)


def subsets(wnids: Sequence[str]) -> dict[str, list[str]]:
    """Both lists, by file name, from the 1,000 ImageNet-1k wnids."""
    if len(set(wnids)) != 1000:
        raise DataError(f"expected the 1,000 distinct ImageNet-1k wnids, got {len(set(wnids))}")
    tuning = ucir_subset(wnids)
    return {TUNING: tuning, EVALUATION: evaluation_subset(wnids, tuning)}


HEADERS = {
    TUNING: f"# UCIR's ImageNet-100 (np.random.seed({UCIR_SEED}); np.random.choice over the sorted 1k wnids); "
            "fluxbench.benchmarks.imagenet_subsets",
    EVALUATION: f"# 100 other ImageNet-1k classes (numpy default_rng({EVALUATION_SEED})); "
                "fluxbench.benchmarks.imagenet_subsets",
}


def render(name: str, wnids: Sequence[str]) -> str:
    return "\n".join([HEADERS[name], *wnids]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the ImageNet-100 pair's class lists.")
    parser.add_argument("--out", type=Path, default=CLASS_LISTS, help="folder to write to (default: the package's)")
    parser.add_argument("--check", action="store_true", help="compare with the lists in --out instead of writing")
    args = parser.parse_args(argv)
    lists = subsets(read_wnids(CLASS_LISTS / IMAGENET_1K))
    stale = []
    for name, wnids in lists.items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != render(name, wnids):
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(render(name, wnids))
            print(f"wrote {path} ({len(wnids)} wnids)")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m fluxbench.benchmarks.imagenet_subsets", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
