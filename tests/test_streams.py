import numpy as np
import pytest

from fluxbench.benchmarks import load_dataset, shared_samples
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.class_incremental import ClassIncrementalScenario, class_incremental_stream, class_order
from fluxbench.streams.manifest import stream_manifest


@pytest.fixture(scope="module")
def pools():
    return {p: load_dataset({"dataset": "digits", "pool": p}, ".") for p in ("pretraining", "tuning", "evaluation")}


def test_digits_pools_are_disjoint_by_content_and_id(pools):
    names = list(pools)
    for a in names:
        for b in names:
            if a != b:
                assert shared_samples(pools[a], pools[b]) == 0
                assert not set(pools[a].train.ids) & set(pools[b].test.ids)
    assert shared_samples(pools["tuning"], pools["tuning"]) == len(pools["tuning"].sample_hashes())


def test_digits_pools_cover_all_classes_with_train_and_test(pools):
    for split in pools.values():
        assert split.num_classes == 10
        assert set(split.train.labels) == set(range(10)) == set(split.test.labels)
        assert split.train.images.shape[1:] == (8, 8, 3) and split.train.images.dtype == np.uint8


def test_five_experiences_of_two_disjoint_classes(pools):
    stream = class_incremental_stream(pools["evaluation"], ClassIncrementalScenario(2), class_order(10, 0))
    assert len(stream) == 5
    seen = set()
    for i, exp in enumerate(stream):
        assert len(exp.classes) == 2 and not seen & set(exp.classes)
        seen |= set(exp.classes)
        # stream labels are positions in the class order: experience i holds 2i, 2i+1
        assert set(exp.train.labels) == set(exp.test.labels) == {2 * i, 2 * i + 1}
        assert exp.num_seen_classes == 2 * (i + 1)
    assert seen == set(range(10))


def test_same_seed_same_order_different_seed_different_order():
    assert class_order(100, 3) == class_order(100, 3)
    assert class_order(100, 3) != class_order(100, 4)
    assert sorted(class_order(100, 3)) == list(range(100))


def test_seed_1993_is_pycil_order():
    # PyCIL: np.random.seed(1993); np.random.permutation(100)
    np.random.seed(1993)
    assert class_order(100, 1993) == np.random.permutation(100).tolist()


def test_scenario_names_and_sizes():
    assert ClassIncrementalScenario.parse("B50-Inc10").experience_sizes(100) == [50] + [10] * 5
    assert ClassIncrementalScenario.parse("B0-Inc20").experience_sizes(100) == [20] * 5
    assert ClassIncrementalScenario.parse("B0-Inc10", 3).experience_sizes(100) == [10] * 3
    with pytest.raises(ConfigError):
        ClassIncrementalScenario.parse("Inc10")
    with pytest.raises(DataError, match="need"):
        ClassIncrementalScenario(5, 0, 30).experience_sizes(100)


def test_manifest_lists_order_and_sample_ids(pools):
    stream = class_incremental_stream(pools["tuning"], ClassIncrementalScenario(5), class_order(10, 1))
    manifest = stream_manifest(stream, seed=1)
    assert manifest["class_order"] == class_order(10, 1)
    assert [len(e["train_ids"]) for e in manifest["experiences"]] == [len(e.train) for e in stream]
    assert manifest["experiences"][0]["train_ids"][0].startswith("digits:")
