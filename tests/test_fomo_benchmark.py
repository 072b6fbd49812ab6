"""FoMo-in-Flux benchmark configs: they compose with the root config and open into a reader, a stream and
the datasets each metric averages over."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config
from fomo_fixtures import adapt_entries, write_fif_tree

from fluxbench.errors import ConfigError
from fluxbench.fomo.benchmark import open_benchmark
from fluxbench.fomo.digits import SUBDOMAINS
from fluxbench.fomo.streams import write_manifest


def test_fomo_digits_composes_and_opens_the_embedded_stream(tmp_path):
    cfg = compose_config("benchmark=fomo_digits", "backbone=tiny_clip")
    assert cfg["backbone"]["kind"] == "tiny_clip" and cfg["stream"]["scenario"] is None
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    sizes = [len(t.classes) for t in bench.stream.tasks]
    assert len(sizes) == 4 and sum(sizes) == 40 and max(sizes) - min(sizes) <= 1
    assert set(bench.adapt_datasets) == {n for n, (role, _, _) in SUBDOMAINS.items() if role == "adapt"}
    assert bench.eval_datasets == ("DIGITS_CLEAN", "DIGITS_PIXELATE", "DIGITS_CONTRAST")
    assert bench.reader.images("DIGITS_CLEAN", "test").images.shape[1:] == (32, 32, 3)
    assert bench.stream.about["captions"] == "templated"

    three = open_benchmark(dict(cfg["benchmark"], num_tasks=3), cfg["data_root"])
    assert [len(t.classes) for t in three.stream.tasks] == [14, 13, 13]
    by_domain = open_benchmark(dict(cfg["benchmark"], dataset_incremental=True), cfg["data_root"])
    assert [len(t.datasets) for t in by_domain.stream.tasks] == [1, 1, 1, 1]
    manifest = write_manifest(bench.stream, tmp_path / "manifest.json")
    replay = open_benchmark(dict(cfg["benchmark"], manifest=str(manifest), num_tasks=7), cfg["data_root"])
    assert replay.stream.tasks == bench.stream.tasks


def test_fomo_in_flux_reads_the_released_layout_under_data_root(tmp_path):
    root = write_fif_tree(tmp_path / "fomo_in_flux")
    (root / "stream_construction" / "random_sequence_1.json").write_text(json.dumps(adapt_entries()))
    cfg = compose_config("benchmark=fomo_in_flux", f"data_root={tmp_path}", "benchmark.num_tasks=3",
                         "benchmark.image_size=16")
    bench = open_benchmark(cfg["benchmark"], cfg["data_root"])
    assert bench.stream.about["ordering"] == "random" and len(bench.stream.tasks) == 3
    assert bench.adapt_datasets == ("DTD", "CIFAR100", "FSCOCO")
    assert bench.eval_datasets == ("CIFAR10", "MSCOCO")
    with pytest.raises(ConfigError, match="benchmark.source"):
        open_benchmark(dict(cfg["benchmark"], source="web"), tmp_path)
