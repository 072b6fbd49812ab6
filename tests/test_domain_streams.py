"""Domain streams: the order, resets and determinism of each setting, from the engine and from released files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config

from fluxbench.benchmarks.base import ImageDataset
from fluxbench.benchmarks.cifar_c import read_cifar_c_domains
from fluxbench.benchmarks.digits import read_digits
from fluxbench.errors import ConfigError, DataError
from fluxbench.streams.corruptions import CORRUPTIONS
from fluxbench.streams.domains import GRADUAL_SEVERITIES, corruption_stream, domain_sequence
from fluxbench.streams.manifest import stream_manifest

N = 12


@pytest.fixture(scope="module")
def clean() -> ImageDataset:
    return read_digits(None).test.subset(np.arange(N), name="digits/test")


def base_ids(data: ImageDataset) -> list[str]:
    return [i.split("@")[0] for i in data.ids]


def test_continual_is_15_domains_at_severity_5_reset_once(clean):
    stream = corruption_stream(clean, "continual", seed=1, params="cifar")
    assert [e.metadata["corruption"] for e in stream] == list(CORRUPTIONS)
    assert [e.metadata["severity"] for e in stream] == [5] * 15
    assert [e.metadata["reset_before"] for e in stream] == [True] + [False] * 14
    assert [e.index for e in stream] == list(range(15))
    order = base_ids(stream[0].test)
    for exp in stream:
        assert exp.train is None and len(exp.test) == N and exp.test.images.dtype == np.uint8
        assert exp.classes == tuple(range(10)) and exp.num_seen_classes == 10
        assert base_ids(exp.test) == order  # one permutation for every equal-sized domain, as the reference
        assert all(i.endswith(f"@{exp.metadata['corruption']}/5") for i in exp.test.ids)
        assert sorted(exp.test.labels) == sorted(clean.labels)
    assert order != list(clean.ids)  # shuffled
    x, y = stream[3].tensors("test")
    assert x.shape == (N, 3, 8, 8) and y.dtype == torch.int64


def test_reset_each_shift_is_continual_with_resets(clean):
    continual = corruption_stream(clean, "continual", seed=1, params="cifar")
    reset = corruption_stream(clean, "reset_each_shift", seed=1, params="cifar")
    assert [e.metadata["reset_before"] for e in reset] == [True] * 15
    for a, b in zip(continual, reset):
        assert np.array_equal(a.test.images, b.test.images) and list(a.test.ids) == list(b.test.ids)
    several = corruption_stream(clean, "reset_each_shift", ["fog", "snow"], [5, 3], seed=1, params="cifar")
    assert [(e.metadata["corruption"], e.metadata["severity"], e.metadata["reset_before"]) for e in several] == [
        ("fog", 5, True), ("fog", 3, True), ("snow", 5, True), ("snow", 3, True)]  # severities are shifts too


@pytest.mark.parametrize("preset", ["cema_cifar10_c", "cema_imagenet_c"])
def test_cema_presets_re_create_the_models_per_domain_as_published(preset):
    assert compose_config(f"+experiment={preset}")["stream"]["setting"] == "reset_each_shift"


def test_gradual_goes_1_to_5_to_1_per_corruption(clean):
    stream = corruption_stream(clean, "gradual", seed=1, params="cifar")
    assert len(stream) == 15 * 9
    for k, name in enumerate(CORRUPTIONS):
        block = stream[9 * k:9 * (k + 1)]
        assert [e.metadata["severity"] for e in block] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
        assert {e.metadata["corruption"] for e in block} == {name}
        assert np.array_equal(block[3].test.images, block[5].test.images)  # severity 4 up and down: one domain
    assert [e.metadata["reset_before"] for e in stream].count(True) == 1 and stream[0].metadata["reset_before"]
    assert domain_sequence("gradual", ["fog"], 5) == [("fog", s) for s in GRADUAL_SEVERITIES]
    assert domain_sequence("gradual", ["fog"], [2, 4]) == [("fog", 2), ("fog", 4)]


def test_mixed_pools_and_shuffles_every_domain(clean):
    continual = corruption_stream(clean, "continual", seed=1, params="cifar")
    [mixed] = corruption_stream(clean, "mixed", seed=1, params="cifar")
    meta = mixed.metadata
    assert len(mixed.test) == 15 * N and meta["reset_before"] and meta["severity"] == 5
    assert [d["corruption"] for d in meta["domains"]] == list(CORRUPTIONS)
    domain = np.array(meta["sample_domain"])
    assert np.array_equal(np.bincount(domain), [N] * 15)
    for sample_id, k in zip(mixed.test.ids, domain):
        assert sample_id.endswith(f"@{CORRUPTIONS[k]}/5")
    same_next = float(np.mean(domain[1:] == domain[:-1]))
    assert same_next < 0.2  # about 1/15 when shuffled, 1 - 1/N in blocks
    # the pixels of a sample are those of the same sample in the continual stream
    pixels = {i: img for exp in continual for i, img in zip(exp.test.ids, exp.test.images)}
    assert all(np.array_equal(pixels[i], img) for i, img in zip(mixed.test.ids, mixed.test.images))


def test_same_seed_same_stream_other_seed_other_order(clean):
    first = corruption_stream(clean, "continual", ["fog", "gaussian_noise"], seed=4, params="cifar")
    again = corruption_stream(clean, "continual", ["fog", "gaussian_noise"], seed=4, params="cifar")
    other = corruption_stream(clean, "continual", ["fog", "gaussian_noise"], seed=5, params="cifar",
                              corruption_seed=4)
    for a, b, c in zip(first, again, other):
        assert np.array_equal(a.test.images, b.test.images) and list(a.test.ids) == list(b.test.ids)
        assert list(a.test.ids) != list(c.test.ids) and sorted(a.test.ids) == sorted(c.test.ids)
        by_id = dict(zip(c.test.ids, c.test.images))  # corruption_seed fixed: same pixels, new order
        assert all(np.array_equal(by_id[i], img) for i, img in zip(a.test.ids, a.test.images))
    unshuffled = corruption_stream(clean, "continual", ["fog"], seed=4, params="cifar", shuffle=False)
    assert base_ids(unshuffled[0].test) == list(clean.ids)


def test_prebuilt_release_files_make_the_stream(tmp_path):
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "labels.npy", np.tile(rng.integers(0, 10, 6).astype(np.uint8), 5))
    for name in ("gaussian_noise", "fog"):
        np.save(folder / f"{name}.npy", rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8))
    domains = read_cifar_c_domains(tmp_path, "cifar10_c", [("gaussian_noise", 5), ("fog", 5)])
    stream = corruption_stream(None, "continual", ["gaussian_noise", "fog"], seed=1, prebuilt=domains)
    assert [e.metadata["corruption"] for e in stream] == ["gaussian_noise", "fog"]
    assert stream[0].metadata["dataset"] == "cifar10_c" and stream[0].classes == tuple(range(10))
    released = domains[("fog", 5)]
    by_id = dict(zip(released.ids, released.images))
    assert sorted(stream[1].test.ids) == sorted(released.ids)
    assert all(np.array_equal(by_id[i], img) for i, img in zip(stream[1].test.ids, stream[1].test.images))
    with pytest.raises(DataError, match="snow at severity 5 is not among the read files"):
        corruption_stream(None, "continual", ["snow"], prebuilt=domains)
    json.dumps(stream_manifest(stream, setting="continual"))  # the manifest of a domain stream is plain JSON


def test_bad_settings_raise_config_errors(clean):
    with pytest.raises(ConfigError, match="unknown stream setting 'online'"):
        corruption_stream(clean, "online")
    with pytest.raises(ConfigError, match="severities must be integers 1..5"):
        corruption_stream(clean, "continual", severities=[0])
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        corruption_stream(clean, "continual", ["rain"])
    with pytest.raises(ConfigError, match="non-empty list"):
        corruption_stream(clean, "continual", "fog")
    assert domain_sequence("mixed_domains", ["fog"]) == [("fog", 5)]
