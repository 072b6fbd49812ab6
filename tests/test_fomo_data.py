"""FoMo-in-Flux data layer: released layout, caption rule, streams, manifests, bad input, mini-FiF."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from datasets_fixtures import write_image_folder
from fomo_fixtures import CLASSES, PER_CLASS, adapt_entries, write_fif_tree

from fluxbench.benchmarks.folder_cache import ResizeRule, cache_stats
from fluxbench.errors import ConfigError, DataError
from fluxbench.fomo import RELEASED, SOURCE, FifReader
from fluxbench.fomo.captions import candidates, class_prompts, eval_caption, training_captions
from fluxbench.fomo.digits import DIGIT_WORDS, digits_fif
from fluxbench.fomo.mini import MiniSource, build_mini_fif
from fluxbench.fomo.streams import (
    build_stream,
    by_dataset,
    chunk,
    ordering_of,
    read_stream,
    stream_from_datasets,
    stream_from_file,
    stream_from_manifest,
    task_captions,
    task_data,
    task_sizes,
    to_experiences,
    write_manifest,
)

RULE = ResizeRule(16, 1.0)


@pytest.fixture(scope="module")
def fif_root(tmp_path_factory):
    return write_fif_tree(tmp_path_factory.mktemp("fif"))


@pytest.fixture
def reader(fif_root):
    return FifReader.from_root(fif_root, rule=RULE)


def write_stream(root, name, entries):
    path = root / "stream_construction" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


# --- the table and the reader


def test_table_has_the_41_plus_22_datasets_of_the_paper():
    roles = Counter((row.role, row.kind) for row in RELEASED.values())
    assert roles == {("adapt", "classification"): 40, ("adapt", "retrieval"): 1,
                     ("eval", "classification"): 20, ("eval", "retrieval"): 2}
    assert RELEASED["DTD"].prime("banded") == "A photo of a banded texture."
    assert RELEASED["iNATURALIST2021"].splits == ("train_mini", "val")


def test_names_resolve_by_handle_and_case(reader):
    assert reader.table["FGVCAIRCRAFT"].name == "FGVCAircraft"
    assert reader.table["oxford_pets"].name == "OXFORDPETS"
    assert reader.table["dtd"].name == "DTD"


def test_reader_reads_records_targets_and_images(reader):
    split = reader.split("DTD", "train")
    assert len(split) == len(CLASSES["DTD"]) * PER_CLASS["train"]
    assert split.classnames == tuple(CLASSES["DTD"])
    assert split.ids[0] == "DTD/dtd/images/banded/train_000.jpg"
    assert list(np.bincount(split.targets)) == [3, 3, 3]
    images = reader.images("DTD", "train")
    assert images.images.shape == (9, 16, 16, 3) and images.images.dtype == np.uint8
    assert list(images.labels) == list(split.targets)


def test_resized_copies_are_used_and_ids_stay_the_plain_paths(fif_root):
    resized = FifReader.from_root(fif_root, rule=RULE).split("CIFAR100", "test")
    plain = FifReader.from_root(fif_root, rule=RULE, prefer_resized=False).split("CIFAR100", "test")
    assert resized.resized and not plain.resized
    assert resized.files()[0].parent.as_posix().endswith("CIFAR100/CIFAR100_test_224/cifar100/images/apple")
    assert list(resized.ids) == list(plain.ids)


def test_retrieval_sets_read_as_image_caption_pairs(reader):
    assert reader.classnames("MSCOCO") == ()
    pairs = reader.split("MSCOCO", "test").image_text_pairs()
    assert len(pairs) == 4 and len(pairs[2][1]) == 5 and pairs[2][1][0] == "caption 0 of image 2"
    fscoco = reader.split("FSCOCO", "train").image_text_pairs()
    assert fscoco[0][1] == ("A sketch of a cow on grass 0.",)


# --- the caption rule


def test_caption_rule_default_then_synthetic_then_primed_class(reader):
    fscoco = reader.split("FSCOCO", "train")
    assert candidates(fscoco.records[0], fscoco.dataset) == ("A sketch of a cow on grass 0.",)
    dtd = reader.split("DTD", "train")
    assert candidates(dtd.records[0], dtd.dataset) == dtd.records[0].synthetic_merged_caption
    cifar10 = reader.split("CIFAR10", "train")
    assert candidates(cifar10.records[0], cifar10.dataset) == ("A photo of a cat.",)
    assert eval_caption(dtd.records[0], dtd.dataset) == "A banded texture, variant 0."
    assert class_prompts(dtd.classnames, dtd.dataset)[2] == "A photo of a zigzagged texture."


def test_training_captions_are_seeded_and_draw_among_candidates(reader):
    dtd = reader.split("DTD", "train")
    a = training_captions(dtd.records, dtd.dataset, 7)
    assert a == training_captions(dtd.records, dtd.dataset, 7)
    draws = {tuple(training_captions(dtd.records, dtd.dataset, s)) for s in range(8)}
    assert len(draws) > 1  # two candidates per record: the draw depends on the seed
    for caption, record in zip(a, dtd.records):
        assert caption in record.synthetic_merged_caption


# --- streams


ORDERING_FILES = {
    "random_sequence_1": ("random", False), "random_sequence_reverse_1": ("random", True),
    "random_sequence_1_short": ("random", False), "frequency_sequence_1": ("frequency", False),
    "frequency_sequence_reverse_1": ("frequency", True), "performance_sequence_1": ("performance", False),
    "performance_sequence_reverse_1": ("performance", True), "similarity_sequence_3": ("similarity", False),
    "similarity_sequence_reverse_1": ("similarity", True),
    "time_incremental_dschunked_2": ("time_dataset_chunked", False),
    "time_incremental_rsagg_5": ("time_bucket_shuffled", False), "debug_seq_small": ("debug", False),
}


@pytest.mark.parametrize("name", sorted(ORDERING_FILES))
def test_every_released_ordering_reads_and_chunks(fif_root, reader, name):
    entries = list(np.random.default_rng(len(name)).permutation(adapt_entries()))
    if ORDERING_FILES[name][1]:
        entries = entries[::-1]
    write_stream(fif_root, name, [str(e) for e in entries])
    stream = stream_from_file(reader, name, num_tasks=4)
    assert (stream.about["ordering"], stream.about["reverse"]) == ORDERING_FILES[name]
    assert stream.class_order == [str(e) for e in entries]
    sizes = [len(t.classes) for t in stream.tasks]
    assert sizes == [3, 2, 2, 2]  # 9 classes, T=4: first 9 mod 4 = 1 task gets one more
    assert sum(len(t.train_ids) for t in stream.tasks) == 9 * PER_CLASS["train"]


def test_ordering_of_per_dataset_and_custom_files(tmp_path):
    assert ordering_of(tmp_path / "datasets" / "dtd.json").kind == "per_dataset"
    assert ordering_of(tmp_path / "my_order.json").kind == "custom"


@pytest.mark.parametrize("n, t", [(9, 4), (18381, 20), (40, 40), (7, 3), (100, 7)])
def test_chunking_sizes_differ_by_at_most_one_and_cover_the_stream(n, t):
    sizes = task_sizes(n, t)
    assert len(sizes) == t and sum(sizes) == n and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first N mod T tasks are the larger ones
    entries = [str(i) for i in range(n)]
    tasks = chunk(entries, t)
    assert [c for task in tasks for c in task] == entries


def test_default_t20_split_of_the_full_stream():
    assert task_sizes(18381, 20)[:2] == [920, 919] and task_sizes(18381, 20).count(920) == 1


def test_dataset_incremental_one_task_per_dataset(fif_root, reader):
    entries = adapt_entries()
    shuffled = entries[3:7] + entries[:3] + entries[7:]  # CIFAR100 first, then DTD, then FSCOCO
    write_stream(fif_root, "time_incremental_dschunked_1", shuffled)
    stream = stream_from_file(reader, "time_incremental_dschunked_1", dataset_incremental=True)
    assert [t.datasets for t in stream.tasks] == [("CIFAR100",), ("DTD",), ("FSCOCO",)]
    assert [len(t.classes) for t in stream.tasks] == [4, 3, 2]
    assert by_dataset([]) == []


def test_task_data_holds_every_training_image_of_its_classes(fif_root, reader):
    write_stream(fif_root, "random_sequence_2", adapt_entries())
    stream = stream_from_file(reader, "random_sequence_2", num_tasks=3)
    first = stream.tasks[0]
    assert first.classes == ("DTD+++banded", "DTD+++dotted", "DTD+++zigzagged")
    data = task_data(reader, stream, first)
    assert len(data) == 9 and sorted(set(data.labels)) == [0, 1, 2]
    assert data.ids[0] == "DTD/dtd/images/banded/train_000.jpg"
    second = task_data(reader, stream, stream.tasks[1], "test")
    assert sorted(set(second.labels)) == [3, 4, 5] and len(second) == 3 * PER_CLASS["test"]
    experiences = to_experiences(reader, stream)
    assert [e.num_seen_classes for e in experiences] == [3, 6, 9]
    assert experiences[2].metadata["datasets"] == ["CIFAR100", "FSCOCO"]


def test_manifest_replay_gives_identical_tasks_and_images(fif_root, reader, tmp_path):
    write_stream(fif_root, "similarity_sequence_1", list(reversed(adapt_entries())))
    stream = stream_from_file(reader, "similarity_sequence_1", num_tasks=2, reshuffle_seed=3)
    path = write_manifest(stream, tmp_path / "m" / "manifest.json")
    assert not list(path.parent.glob(".*.tmp"))
    replayed = stream_from_manifest(FifReader.from_root(fif_root, rule=RULE), path)
    assert replayed.tasks == stream.tasks
    assert replayed.about["ordering"] == "similarity" and replayed.about["reshuffle_seed"] == 3
    for a, b in zip(stream.tasks, replayed.tasks):
        np.testing.assert_array_equal(task_data(reader, stream, a).images, task_data(reader, replayed, b).images)
    manifest = json.loads(path.read_text())
    assert manifest["captions"] == "released"
    assert [len(e["train_ids"]) for e in manifest["experiences"]] == [15, 12]


def test_task_captions_are_seeded_per_task_and_epoch(fif_root, reader):
    write_stream(fif_root, "random_sequence_3", adapt_entries())
    stream = stream_from_file(reader, "random_sequence_3", num_tasks=3)
    first = stream.tasks[0]
    assert task_captions(reader, first, seed=0) == task_captions(reader, first, seed=0)
    assert len({tuple(task_captions(reader, first, 0, epoch)) for epoch in range(6)}) > 1
    fscoco = task_captions(reader, stream.tasks[2], seed=0)
    assert fscoco[-1] == "A sketch of a zebra on grass 2."  # the default caption wins


def test_reshuffle_matches_the_release_permutation(fif_root, reader):
    write_stream(fif_root, "random_sequence_4", adapt_entries())
    stream = stream_from_file(reader, "random_sequence_4", num_tasks=1, reshuffle_seed=0)
    expected = list(adapt_entries())
    np.random.seed(0)
    np.random.shuffle(expected)
    assert stream.class_order == expected


# --- bad input: one line each, nothing written


def broken_tree(tmp_path_factory):
    return write_fif_tree(tmp_path_factory.mktemp("broken"))


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_root_and_dataset_folder_name_the_layout_and_source(tmp_path, tmp_path_factory):
    with pytest.raises(DataError) as err:
        FifReader.from_root(tmp_path / "nowhere")
    assert "data_lib/00_info" in one_line(err) and SOURCE in one_line(err)
    (tmp_path / "half" / "data").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        FifReader.from_root(tmp_path / "half")
    assert "00_info" in one_line(err) and SOURCE in one_line(err)
    root = broken_tree(tmp_path_factory)
    reader = FifReader.from_root(root, rule=RULE)
    (root / "data_lib" / "00_info" / "STL10_classnames.json").write_text('["cat"]')
    with pytest.raises(DataError) as err:
        reader.split("STL10", "test")
    assert "data/STL10" in one_line(err) and SOURCE in one_line(err)


def test_stream_entries_not_on_disk_are_named_and_counted(fif_root, reader):
    entries = adapt_entries() + ["SUN397+++abbey", "SUN397+++airport", "DTD+++not-a-texture", "NOPE+++x"]
    write_stream(fif_root, "random_sequence_5", entries)
    with pytest.raises(DataError) as err:
        stream_from_file(reader, "random_sequence_5", num_tasks=2)
    message = one_line(err)
    assert "4 of 13 entries" in message and "SUN397" in message and "NOPE" in message
    assert "DTD+++not-a-texture" in message and SOURCE in message


def test_malformed_stream_files(fif_root, tmp_path):
    path = tmp_path / "s.json"
    path.write_text('["DTD+++banded", ')
    with pytest.raises(DataError) as err:
        read_stream(path)
    assert "s.json is not valid JSON" in one_line(err)
    path.write_text('["DTD+++banded", "DTD-banded"]')
    with pytest.raises(DataError) as err:
        read_stream(path)
    assert "entry 1" in one_line(err)
    path.write_text('["DTD+++banded", "DTD+++banded"]')
    with pytest.raises(DataError, match="twice"):
        read_stream(path)


def test_more_tasks_than_classes_is_a_config_error(fif_root, reader):
    write_stream(fif_root, "debug_sequence", adapt_entries()[:3])
    with pytest.raises(ConfigError) as err:
        stream_from_file(reader, "debug_sequence", num_tasks=4)
    assert "4 tasks need at least 4 classes; the stream has 3" in one_line(err)


def test_info_json_with_missing_or_unreadable_image(tmp_path_factory):
    root = broken_tree(tmp_path_factory)
    (root / "data" / "DTD" / "dtd/images/dotted/train_001.jpg").unlink()
    with pytest.raises(DataError) as err:
        FifReader.from_root(root, rule=RULE).split("DTD", "train")
    assert "DTD_train.json lists 1 image(s) missing" in one_line(err)
    assert "dtd/images/dotted/train_001.jpg" in one_line(err)
    (root / "data" / "CIFAR10" / "cifar10/images/dog/test_000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as err:
        FifReader.from_root(root, rule=RULE).images("CIFAR10", "test")
    assert "cifar10/images/dog/test_000.jpg" in one_line(err)


def test_malformed_info_json_and_records(tmp_path_factory):
    root = broken_tree(tmp_path_factory)
    info = root / "data_lib" / "00_info"
    (info / "DTD_test.json").write_text('{"dtd/images/banded/test_000.jpg": {')
    with pytest.raises(DataError) as err:
        FifReader.from_root(root, rule=RULE).split("DTD", "test")
    assert "DTD_test.json is not valid JSON" in one_line(err)
    entries = json.loads((info / "CIFAR10_test.json").read_text())
    first = next(iter(entries))
    entries[first]["target"] = 7
    (info / "CIFAR10_test.json").write_text(json.dumps(entries))
    with pytest.raises(DataError) as err:
        FifReader.from_root(root, rule=RULE).split("CIFAR10", "test")
    assert "target 7" in one_line(err) and first in one_line(err)
    del entries[first]["target"]
    (info / "CIFAR10_test.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match="must be an object with keys"):
        FifReader.from_root(root, rule=RULE).split("CIFAR10", "test")


def test_manifest_whose_samples_are_gone(fif_root, reader, tmp_path):
    write_stream(fif_root, "performance_sequence_reverse_1", adapt_entries())
    stream = stream_from_file(reader, "performance_sequence_reverse_1", num_tasks=3)
    path = write_manifest(stream, tmp_path / "manifest.json")
    manifest = json.loads(path.read_text())
    manifest["experiences"][0]["train_ids"].append("DTD/dtd/images/banded/train_999.jpg")
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        stream_from_manifest(reader, path)
    assert "1 sample id(s)" in one_line(err) and "train_999.jpg" in one_line(err)


# --- the mini-FiF builder


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    write_image_folder(root / "flowers", {"rose": 5, "sun_flower": 5, "tulip": 5}, seed=1)
    write_image_folder(root / "shapes" / "train", {"circle": 3, "square": 3}, seed=2)
    write_image_folder(root / "shapes" / "test", {"circle": 2, "square": 2}, seed=3)
    write_image_folder(root / "pets", {"cat": 4, "dog": 4}, seed=4)
    return root


def mini_sources(folders):
    return [
        MiniSource("FLOWERS", folders / "flowers", primer="A photo of a {}, a type of flower.",
                   templates=("A close-up of a {}.", "A {} in a garden.")),
        MiniSource("SHAPES", folders / "shapes", primer="A drawing of a {}."),
        MiniSource("PETS", folders / "pets", role="eval", primer="A photo of a {}, a type of pet."),
    ]


def test_mini_fif_is_read_by_the_same_reader_and_streams(image_folders, tmp_path):
    mini = build_mini_fif(mini_sources(image_folders), tmp_path / "mini", num_tasks=2, seed=5)
    reader = FifReader.from_root(mini.root, rule=RULE)
    flowers = reader.split("FLOWERS", "train")
    assert flowers.classnames == ("rose", "sun flower", "tulip")
    assert len(flowers) == 12 and len(reader.split("FLOWERS", "test")) == 3  # 80/20 per class
    assert len(reader.split("SHAPES", "train")) == 6 and len(reader.split("SHAPES", "test")) == 4
    assert reader.table["PETS"].role == "eval" and reader.table["FLOWERS"].captions == "templated"
    assert candidates(flowers.records[0], flowers.dataset) == (
        "A photo of a rose, a type of flower.", "A close-up of a rose.", "A rose in a garden.")
    assert reader.images("PETS", "test").images.shape[1:] == (16, 16, 3)
    entries = read_stream(mini.stream)
    expected = [f"FLOWERS+++{c}" for c in ("rose", "sun flower", "tulip")] + ["SHAPES+++circle", "SHAPES+++square"]
    assert sorted(e.key for e in entries) == sorted(expected)  # eval-only PETS is not streamed
    assert [e.key for e in entries] == [expected[i] for i in np.random.RandomState(5).permutation(5)]
    manifest = json.loads(mini.manifest.read_text())
    assert manifest["captions"] == "templated" and "templated" in manifest["caption_note"]
    assert [len(e["classes"]) for e in manifest["experiences"]] == [3, 2]
    replayed = stream_from_manifest(reader, mini.manifest)
    assert replayed.class_order == [e.key for e in entries]
    assert sum(len(t.train_ids) for t in replayed.tasks) == 12 + 6


def test_mini_fif_dataset_chunked_order_and_dataset_incremental(image_folders, tmp_path):
    mini = build_mini_fif(mini_sources(image_folders), tmp_path / "mini", num_tasks=3, order="dataset_chunked")
    reader = FifReader.from_root(mini.root, rule=RULE)
    stream = stream_from_file(reader, mini.stream, dataset_incremental=True)
    assert [t.datasets for t in stream.tasks] == [("FLOWERS",), ("SHAPES",)]
    assert (mini.root / "stream_construction" / "datasets" / "PETS.json").is_file()


def test_mini_fif_bad_input_leaves_nothing(image_folders, tmp_path):
    with pytest.raises(ConfigError) as err:
        build_mini_fif(mini_sources(image_folders), tmp_path / "mini", num_tasks=6)
    assert "6 tasks need at least 6 classes; the stream has 5" in one_line(err)
    with pytest.raises(DataError) as err:
        build_mini_fif([MiniSource("GONE", tmp_path / "gone")], tmp_path / "mini")
    assert "gone" in one_line(err) and "<class>/<image>" in one_line(err)
    with pytest.raises(ConfigError):
        build_mini_fif([MiniSource("A+++B", image_folders / "pets")], tmp_path / "mini")
    assert list(tmp_path.iterdir()) == []  # no tree, no temporary folder
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        build_mini_fif(mini_sources(image_folders), tmp_path / "taken")


# --- the embedded default


def test_digits_fif_is_offline_in_the_released_format_and_cached():
    first = digits_fif()
    again = digits_fif()
    assert again.root == first.root and (first.root / "data_lib" / "00_info" / "DIGITS_NOISE_train.json").is_file()
    reader = FifReader.from_root(first.root, rule=ResizeRule(32, 1.0))
    adapt = {row.name for row in reader.table.by_role("adapt") if row.name.startswith("DIGITS_")}
    evaluation = {row.name for row in reader.table.by_role("eval") if row.name.startswith("DIGITS_")}
    assert adapt == {"DIGITS_INVERTED", "DIGITS_TINTED", "DIGITS_NOISE", "DIGITS_BLUR"}
    assert evaluation == {"DIGITS_CLEAN", "DIGITS_PIXELATE", "DIGITS_CONTRAST"}
    stream = stream_from_manifest(reader, first.manifest)
    assert stream.about["captions"] == "templated" and [len(t.classes) for t in stream.tasks] == [10, 10, 10, 10]
    assert set(stream.class_order) == {f"{d}+++{w}" for d in adapt for w in DIGIT_WORDS}
    clean = reader.images("DIGITS_CLEAN", "test").images.astype(np.float32)
    for name in ("DIGITS_INVERTED", "DIGITS_NOISE", "DIGITS_BLUR", "DIGITS_CONTRAST", "DIGITS_TINTED"):
        other = reader.images(name, "test")
        assert other.images.shape == clean.shape
        assert np.abs(other.images.astype(np.float32) - clean).mean() > 5  # a visibly different sub-domain
    assert task_captions(reader, stream.tasks[0], seed=0)[0].endswith(".")


def test_a_malformed_classnames_file_is_not_reported_as_missing(tmp_path_factory):
    root = broken_tree(tmp_path_factory)
    (root / "data_lib" / "00_info" / "DTD_classnames.json").write_text('["banded", ')
    write_stream(root, "random_sequence_1", adapt_entries())
    with pytest.raises(DataError) as err:
        stream_from_file(FifReader.from_root(root, rule=RULE), "random_sequence_1", num_tasks=2)
    assert "DTD_classnames.json is not valid JSON" in one_line(err)


def test_images_are_decoded_once_through_the_folder_cache(fif_root):
    FifReader.from_root(fif_root, rule=RULE).images("FSCOCO", "test")
    hits = cache_stats()["hits"]
    again = FifReader.from_root(fif_root, rule=RULE).images("FSCOCO", "test")
    assert cache_stats()["hits"] == hits + 1 and len(again) == 4


def test_streams_from_per_dataset_files(fif_root, reader):
    for name in ("dtd", "fscoco"):
        upper = name.upper()
        write_stream(fif_root, f"datasets/{name}",
                     [f"{upper}+++{c}" for c in CLASSES[upper]])
    entries = stream_from_datasets(fif_root / "stream_construction", ["dtd", "fscoco"])
    assert [e.key for e in entries] == [f"DTD+++{c}" for c in CLASSES["DTD"]] + ["FSCOCO+++cow", "FSCOCO+++zebra"]
    stream = build_stream(reader, entries, num_tasks=2)
    assert [len(t.classes) for t in stream.tasks] == [3, 2]
