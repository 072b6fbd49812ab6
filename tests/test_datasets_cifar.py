"""CIFAR-10/100 readers on real-format pickles: contents, class ranges, streams, and every way a file can be bad."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from datasets_fixtures import dump_py2, write_cifar10, write_cifar100

from fluxbench.benchmarks import cifar  # noqa: F401  (registers cifar10, cifar100)
from fluxbench.benchmarks.base import shared_samples
from fluxbench.benchmarks.registry import load_dataset
from fluxbench.benchmarks.safe_pickle import load_pickle
from fluxbench.errors import DataError
from fluxbench.streams.class_incremental import ClassIncrementalScenario, class_incremental_stream, class_order


@pytest.fixture()
def cifar100_root(tmp_path):
    written = write_cifar100(tmp_path)
    return tmp_path, written


def test_cifar100_counts_labels_and_pixel_layout(cifar100_root):
    root, written = cifar100_root
    split = load_dataset({"dataset": "cifar100"}, root)
    assert split.num_classes == 100
    assert split.train.images.shape == (300, 32, 32, 3) and split.test.images.shape == (100, 32, 32, 3)
    assert split.train.images.dtype == np.uint8
    data, labels = written["train"]
    np.testing.assert_array_equal(split.train.labels, labels)
    # rows are channel-major: R plane, G plane, B plane of 32x32
    np.testing.assert_array_equal(split.train.images[7], data[7].reshape(3, 32, 32).transpose(1, 2, 0))
    assert split.train.images[7, 0, 0, 1] == data[7, 1024]
    assert split.train.class_names[:2] == ("class_00", "class_01") and len(split.train.class_names) == 100
    assert split.train.ids[0] == "cifar100/train/0" and split.test.ids[-1] == "cifar100/test/99"
    assert np.bincount(split.test.labels).tolist() == [1] * 100


def test_cifar10_reads_five_training_batches(tmp_path):
    written = write_cifar10(tmp_path, per_batch=20)
    split = load_dataset({"dataset": "cifar10"}, tmp_path)
    assert split.num_classes == 10 and len(split.train) == 100 and len(split.test) == 20
    np.testing.assert_array_equal(split.train.labels, np.concatenate([labels for _, labels in written["train"]]))
    last_batch = written["train"][4][0]
    np.testing.assert_array_equal(split.train.images[80], last_batch[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert split.train.class_names[9] == "truck"


def test_class_ranges_and_lists_through_load_dataset(cifar100_root):
    root, written = cifar100_root
    upper = load_dataset({"dataset": "cifar100", "classes": "50-99"}, root)
    assert upper.num_classes == 50 and len(upper.train) == 150 and len(upper.test) == 50
    assert sorted(set(upper.train.labels.tolist())) == list(range(50))
    data, labels = written["train"]
    first = int(np.flatnonzero(labels == 50)[0])
    at = int(np.flatnonzero(upper.train.ids == f"cifar100/train/{first}")[0])
    assert upper.train.labels[at] == 0  # class 50 becomes 0
    np.testing.assert_array_equal(upper.train.images[at], data[first].reshape(3, 32, 32).transpose(1, 2, 0))
    picked = load_dataset({"dataset": "cifar100", "classes": [7, 3]}, root)
    assert picked.num_classes == 2 and picked.train.class_names == ("class_07", "class_03")
    assert set(picked.train.ids) == {f"cifar100/train/{i}" for i in np.flatnonzero(np.isin(labels, [7, 3]))}


def test_fingerprints_tell_the_two_phase_halves_apart(cifar100_root):
    root, _ = cifar100_root
    tuning = load_dataset({"dataset": "cifar100", "classes": "0-49"}, root)
    evaluation = load_dataset({"dataset": "cifar100", "classes": "50-99"}, root)
    again = load_dataset({"dataset": "cifar100", "classes": "0-49"}, root)
    assert tuning.fingerprint() == again.fingerprint()
    assert tuning.fingerprint() != evaluation.fingerprint()
    assert shared_samples(tuning, evaluation) == 0
    assert shared_samples(tuning, again) == len(tuning.train) + len(tuning.test)


def test_b0_inc5_stream_from_a_cifar_pickle(cifar100_root):
    root, _ = cifar100_root
    split = load_dataset({"dataset": "cifar100", "classes": "0-49"}, root)
    order = class_order(50, 1993)
    stream = class_incremental_stream(split, ClassIncrementalScenario.parse("B0-Inc5"), order, "cifar100")
    assert len(stream) == 10
    assert [list(exp.classes) for exp in stream] == [order[i:i + 5] for i in range(0, 50, 5)]
    for exp in stream:
        assert len(exp.train) == 15 and len(exp.test) == 5
        assert sorted(set(exp.train.labels.tolist())) == list(exp.new_class_range)
    assert stream[-1].num_seen_classes == 50
    all_train = np.concatenate([exp.train.ids for exp in stream])
    assert len(set(all_train)) == 150


def test_scenario_needing_more_classes_than_the_data_has(tmp_path):
    write_cifar10(tmp_path)
    split = load_dataset({"dataset": "cifar10"}, tmp_path)
    with pytest.raises(DataError, match="needs 50 classes"):
        class_incremental_stream(split, ClassIncrementalScenario.parse("B50-Inc10"), class_order(10, 0))
    with pytest.raises(DataError, match="6 experiences"):
        class_incremental_stream(split, ClassIncrementalScenario.parse("B0-Inc2", 6), class_order(10, 0))


def test_class_range_beyond_the_data_is_refused(cifar100_root):
    root, _ = cifar100_root
    with pytest.raises(DataError, match=r"classes \[100, 101"):
        load_dataset({"dataset": "cifar100", "classes": "90-120"}, root)


def test_missing_data_root_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"data_root .*nowhere does not exist; .*cifar-100-python/ .*kriz/cifar"):
        load_dataset({"dataset": "cifar100"}, tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*cifar-10-python.tar.gz.*www.cs.toronto.edu"):
        load_dataset({"dataset": "cifar10"}, tmp_path)
    write_cifar100(tmp_path)
    os.remove(tmp_path / "cifar-100-python" / "test")
    with pytest.raises(DataError, match=r"cifar-100-python/test does not exist; extract a fresh copy"):
        load_dataset({"dataset": "cifar100"}, tmp_path)


def test_truncated_pickle_is_a_one_line_data_error(cifar100_root):
    root, _ = cifar100_root
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[: 5000])
    with pytest.raises(DataError, match="train is truncated or corrupt") as info:
        load_dataset({"dataset": "cifar100"}, root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("garbage", [b"", b"not a pickle at all", b"\x80\x02}q\x00(U\x04dataq\x01"])
def test_garbage_files_are_refused(tmp_path, garbage):
    path = tmp_path / "batch"
    path.write_bytes(garbage)
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_pickle(path)


def test_wrong_contents_are_refused(cifar100_root):
    root, _ = cifar100_root
    folder = root / "cifar-100-python"
    dump_py2({b"data": np.zeros((3, 100), dtype=np.uint8), b"fine_labels": [0, 1, 2]}, folder / "test")
    with pytest.raises(DataError, match=r"'data' must be a \(N, 3072\) uint8 array, got \(3, 100\)"):
        load_dataset({"dataset": "cifar100"}, root)
    dump_py2({b"data": np.zeros((2, 3072), dtype=np.uint8), b"fine_labels": [0, 1, 2]}, folder / "test")
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load_dataset({"dataset": "cifar100"}, root)
    dump_py2({b"data": np.zeros((1, 3072), dtype=np.uint8), b"fine_labels": [100]}, folder / "test")
    with pytest.raises(DataError, match=r"labels outside 0..99"):
        load_dataset({"dataset": "cifar100"}, root)
    dump_py2([1, 2, 3], folder / "test")
    with pytest.raises(DataError, match="is not a CIFAR batch"):
        load_dataset({"dataset": "cifar100"}, root)


class _RunsCommand:
    """What an attacker would pickle: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_never_runs(cifar100_root, protocol):
    root, _ = cifar100_root
    marker = root / "pwned"
    payload = {"data": _RunsCommand(f"touch {marker}"), "fine_labels": [0]}
    with open(root / "cifar-100-python" / "train", "wb") as handle:
        pickle.dump(payload, handle, protocol=protocol)
    with pytest.raises(DataError, match=r"not a plain data pickle \(refused to import (posix|os)\.system\)"):
        load_dataset({"dataset": "cifar100"}, root)
    assert not marker.exists()
    with open(root / "cifar-100-python" / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": _Evaluates()}, handle, protocol=2)
    with pytest.raises(DataError, match=r"refused to import (__builtin__|builtins)\.eval"):
        load_dataset({"dataset": "cifar100"}, root)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_written_by_python3_are_read(tmp_path, protocol):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251
    path = tmp_path / "batch"
    with open(path, "wb") as handle:
        pickle.dump({"data": data, "labels": [3, 4], "mean": np.float64(0.5)}, handle, protocol=protocol)
    loaded = load_pickle(path)
    np.testing.assert_array_equal(loaded["data"], data)
    assert loaded["labels"] == [3, 4] and loaded["mean"] == 0.5


def test_numpy1_module_names_are_admitted(tmp_path):
    path = tmp_path / "old"
    dump_py2({b"data": np.arange(6, dtype=np.uint8)}, path)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(load_pickle(path)["data"], np.arange(6, dtype=np.uint8))


def test_arrays_that_are_not_plain_data_are_refused(tmp_path):
    path = tmp_path / "objects"
    path.write_bytes(pickle.dumps({"data": np.array([1, "two"], dtype=object)}, protocol=2))
    with pytest.raises(DataError, match=r"dtype '\|?O8?' is not a plain numeric or string type"):
        load_pickle(path)
    dump_py2({b"data": np.arange(8, dtype=np.uint8)}, path)
    raw = path.read_bytes()
    # the SHORT_BINSTRING holding the array's 8 bytes, rewritten to hold 7
    path.write_bytes(raw.replace(b"U\x08\x00\x01\x02\x03\x04\x05\x06\x07", b"U\x07\x00\x01\x02\x03\x04\x05\x06"))
    with pytest.raises(DataError, match=r"needs 8 bytes, the file holds 7"):
        load_pickle(path)
