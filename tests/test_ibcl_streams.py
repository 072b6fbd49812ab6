"""IBCL's CelebA-attribute and TinyImageNet-pair streams, read from tiny trees in the released layouts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config
from ibcl_stream_fixtures import CELEBA_ATTRIBUTES, TINY_WORDS, write_celeba, write_tiny_imagenet

from fluxbench.errors import ConfigError, DataError
from fluxbench.protocols import preference
from fluxbench.protocols.setup import build_stream, load_split
from fluxbench.tracking import Tracker

CELEBA = ("benchmark=celeba_attributes", "benchmark.tuning.image_size=8", "benchmark.evaluation.image_size=8")
# two of upstream's pairs, one by wnid, one by words.txt names
TINY = ("benchmark=tiny_imagenet_pairs", "benchmark.evaluation.image_size=16", "benchmark.evaluation.train_per_class=3",
        "benchmark.class_pairs=[[n01443537,n09246464],['european fire salamander',espresso]]")


@pytest.fixture
def data_root(tmp_path):
    return tmp_path / "data"


def test_celeba_task_i_is_attribute_i_on_the_official_partitions(data_root):
    written = write_celeba(data_root)
    cfg = compose_config(*CELEBA, data_root=data_root)
    stream = build_stream(cfg, load_split(cfg, "evaluation"), seed=0)
    assert len(stream) == 15 and [e.classes for e in stream][:2] == [(0, 1), (2, 3)]
    assert [e.metadata["attribute"] for e in stream] == CELEBA_ATTRIBUTES[:15]
    by_part = {p: sorted(f for f, q in written["partition"].items() if q == p) for p in (0, 1, 2)}
    for i, exp in enumerate(stream):
        for data, part in ((exp.train, 0), (exp.test, 2)):
            files = [str(s).rsplit("/", 1)[1] for s in data.ids]
            assert files == by_part[part]
            np.testing.assert_array_equal(data.labels - 2 * i, [written["rows"][f][i] for f in files])
    tuning = build_stream(cfg, load_split(cfg, "tuning"), seed=0)
    assert [str(s).rsplit("/", 1)[1] for s in tuning[0].test.ids] == by_part[1]
    assert stream[0].train.images is stream[14].train.images  # one image array (and tensor) for all tasks
    (x0, y0), (x3, y3) = (stream[k].uint8_tensors("train", "cpu") for k in (0, 3))
    assert x0 is x3
    assert y0.tolist() == stream[0].train.labels.tolist() and y3.tolist() == stream[3].train.labels.tolist()
    assert stream[0].train.images.shape[1:] == (8, 8, 3)


def test_tiny_imagenet_pairs_by_wnid_or_name_train_and_official_val(data_root):
    written = write_tiny_imagenet(data_root)
    cfg = compose_config(*TINY, data_root=data_root)
    split = load_split(cfg, "evaluation")
    assert list(split.train.class_names) == written["wnids"]  # ids follow the sorted wnids, as upstream's indices
    stream = build_stream(cfg, split, seed=0)
    wnids = [[split.train.class_names[c] for c in e.classes] for e in stream]
    assert wnids == [["n01443537", "n09246464"], ["n01629819", "n07920052"]]
    for i, exp in enumerate(stream):
        for label, wnid in enumerate(wnids[i]):
            train = sorted(str(s) for s in exp.train.ids[exp.train.labels - 2 * i == label])
            assert train == [f"tiny_imagenet/train/{wnid}/images/{wnid}_{k}.JPEG" for k in range(3)]
            test = sorted(str(s).rsplit("/", 1)[1] for s in exp.test.ids[exp.test.labels - 2 * i == label])
            assert test == sorted(f for f, w in written["val"].items() if w == wnid)
    assert split.test.images.shape[1:] == (16, 16, 3)


@pytest.mark.parametrize("bench", ["celeba", "tiny"])
def test_a_short_preference_run_on_each_stream(bench, data_root, make_config):
    if bench == "celeba":
        write_celeba(data_root)
        overrides = (*CELEBA, "benchmark.num_experiences=3")
    else:
        write_tiny_imagenet(data_root)
        overrides = (*TINY, "method.epochs=2")
    cfg = make_config("protocol=preference", "method=ibcl", "backbone=small_cnn", *overrides,
                      "protocol.prefs_per_task=2", "protocol.sweep_points=3", "method.num_models_per_pref=2",
                      "method.epochs=2", data_root=data_root)
    result = preference.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))["seeds"][0]
    tasks = 3 if bench == "celeba" else 2
    assert result.matrix.shape == (tasks, tasks)
    assert 0.0 <= result.metrics["avg_per_task_acc_mean"] <= 1.0
    assert result.metrics["models_trained"] == 3 * tasks


def test_missing_files_fail_in_one_line_naming_the_file_and_the_source(data_root):
    write_celeba(data_root)
    (data_root / "celeba" / "list_eval_partition.txt").unlink()
    cfg = compose_config(*CELEBA, data_root=data_root)
    with pytest.raises(DataError, match=r"list_eval_partition.txt does not exist.*mmlab.ie.cuhk.edu.hk") as err:
        load_split(cfg, "evaluation")
    assert "\n" not in str(err.value)
    write_tiny_imagenet(data_root)
    (data_root / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    cfg = compose_config(*TINY, data_root=data_root)
    with pytest.raises(DataError, match=r"val_annotations.txt does not exist.*tiny-imagenet-200.zip") as err:
        load_split(cfg, "evaluation")
    assert "\n" not in str(err.value)
    cfg = compose_config(*TINY, data_root=data_root / "nowhere")
    with pytest.raises(DataError, match="does not exist.*tiny-imagenet-200.zip"):
        load_split(cfg, "evaluation")


def test_non_binary_streams_and_unknown_classes_are_refused_in_one_line(data_root, make_config):
    write_celeba(data_root)
    write_tiny_imagenet(data_root)
    cfg = compose_config(*CELEBA, "stream.classes_per_exp=3", data_root=data_root)
    with pytest.raises(ConfigError, match="binary") as err:
        build_stream(cfg, load_split(cfg, "evaluation"), seed=0)
    assert "\n" not in str(err.value)
    cfg = make_config("protocol=preference", "method=ibcl", *CELEBA, "stream.classes_per_exp=3", data_root=data_root)
    with pytest.raises(ConfigError, match="needs binary tasks"):
        preference.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    for pairs, message in (("[[n01443537,n09246464,n07920052]]", "pair of classes"),
                           ("[[n01443537,platypus]]", "'platypus' is not a class")):
        cfg = compose_config(*TINY, f"benchmark.class_pairs={pairs}", data_root=data_root)
        with pytest.raises(ConfigError, match=message) as err:
            build_stream(cfg, load_split(cfg, "evaluation"), seed=0)
        assert "\n" not in str(err.value)
    cfg = compose_config(*CELEBA, "benchmark.attributes=[Smiling,Dimples]", data_root=data_root)
    with pytest.raises(ConfigError, match=r"unknown \['Dimples'\]"):
        load_split(cfg, "evaluation")
    assert set(TINY_WORDS) <= set(load_split(compose_config(*TINY, data_root=data_root), "evaluation")
                                  .train.class_names)
