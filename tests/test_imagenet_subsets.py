"""The ImageNet-100 pair (UCIR's list for tuning, 100 other seeded classes for evaluation) and benchmark=imagenet50."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config
from datasets_fixtures import write_jpeg

from fluxbench.benchmarks import imagenet_subsets as subsets
from fluxbench.benchmarks import shared_samples
from fluxbench.errors import ConfigError
from fluxbench.protocols.setup import load_split
from fluxbench.protocols.two_phase import check_disjoint

LISTS = subsets.CLASS_LISTS


def published(name: str) -> list[str]:
    return subsets.read_wnids(LISTS / name)


def test_the_lists_hold_100_distinct_imagenet_wnids_each_and_are_disjoint():
    imagenet = published(subsets.IMAGENET_1K)
    assert len(imagenet) == len(set(imagenet)) == 1000 and imagenet == sorted(imagenet)
    tuning, evaluation = published(subsets.TUNING), published(subsets.EVALUATION)
    for wnids in (tuning, evaluation):
        assert len(wnids) == len(set(wnids)) == 100 and set(wnids) <= set(imagenet)
    assert not set(tuning) & set(evaluation)
    assert "n01729322" in tuning  # UCIR's first draw with seed 1993 (gen_imagenet_subset.py)


def test_regeneration_is_deterministic_and_matches_the_published_lists(tmp_path):
    imagenet = published(subsets.IMAGENET_1K)
    assert subsets.subsets(imagenet) == subsets.subsets(list(reversed(imagenet)))  # order of the input is irrelevant
    assert subsets.main(["--check"]) == 0
    assert subsets.main(["--out", str(tmp_path)]) == 0
    for name in (subsets.TUNING, subsets.EVALUATION):
        assert (tmp_path / name).read_text() == (LISTS / name).read_text()
    (tmp_path / subsets.EVALUATION).write_text("n01440764\n")
    assert subsets.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.fixture
def imagenet_root(tmp_path):
    """A full-ImageNet layout (train/<wnid>/, val/<wnid>/) with one tiny image per class and part, for the 200
    listed classes and two others."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "imagenet"
    for wnid in [*published(subsets.TUNING), *published(subsets.EVALUATION), "n01440764", "n15075141"]:
        for part in ("train", "val"):
            write_jpeg(root / part / wnid / f"{wnid}_{part}_0.JPEG", rng, (10, 10))
    return tmp_path / "data"


def test_benchmark_imagenet100_reads_both_lists_from_a_full_imagenet_tree(imagenet_root):
    cfg = compose_config("benchmark=imagenet100", "benchmark.tuning.image_size=8",
                         "benchmark.evaluation.image_size=8", data_root=imagenet_root)
    tuning, evaluation = load_split(cfg, "tuning"), load_split(cfg, "evaluation")
    assert list(tuning.train.class_names) == published(subsets.TUNING)
    assert list(evaluation.train.class_names) == published(subsets.EVALUATION)
    assert tuning.num_classes == evaluation.num_classes == 100 and len(tuning.test) == 100
    assert shared_samples(tuning, evaluation) == 0
    check_disjoint(cfg, tuning, evaluation)  # two_phase's leakage check passes
    assert cfg["stream"]["scenario"] == "B0-Inc10"
    bad = compose_config("benchmark=imagenet100", "benchmark.tuning.subset=imagenet100_nope", data_root=imagenet_root)
    with pytest.raises(ConfigError, match="subset must be one of"):
        load_split(bad, "tuning")


def test_benchmark_imagenet50_is_the_old_pair_of_one_imagenet100_folder():
    cfg = compose_config("benchmark=imagenet50")["benchmark"]
    assert cfg["name"] == "imagenet50" and cfg["tuning"]["classes"] == "0-49"
    assert cfg["evaluation"]["classes"] == "50-99" and cfg["tuning"]["dataset"] == "imagenet100"
