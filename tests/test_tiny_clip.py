"""The embedded tiny CLIP: open_clip's factory, the recipe-hash cache, its zero-shot figures on the digits FiF,
and the zero-shot helper against open_clip's own computation."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from fluxbench.backbones import build_backbone
from fluxbench.backbones import tiny_clip as tc
from fluxbench.benchmarks import load_dataset
from fluxbench.benchmarks.base import ImageDataset
from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.cache import recipe_hash
from fluxbench.errors import ConfigError
from fluxbench.fomo import zeroshot
from fluxbench.fomo.captions import class_prompts
from fluxbench.fomo.digits import DIGIT_WORDS, PRIMER, SUBDOMAINS, digits_fif
from fluxbench.fomo.info import FifReader

CONF = Path(__file__).resolve().parents[1] / "fluxbench" / "conf" / "backbone" / "tiny_clip.yaml"
LOAD = functools.partial(load_dataset, data_root=Path("."))


def default_cfg() -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF))


@pytest.fixture(scope="module")
def backbone():
    """The default recipe, pre-trained once per test session (about a minute on one core when not cached)."""
    return build_backbone(default_cfg(), LOAD).eval()


@pytest.fixture(scope="module")
def reader() -> FifReader:
    return FifReader.from_root(digits_fif().root, rule=ResizeRule(32, 1.0))


@pytest.fixture(scope="module")
def scores(backbone, reader) -> dict[str, float]:
    return zeroshot.zero_shot_table(backbone, reader, list(SUBDOMAINS))


def test_builds_through_open_clips_factory_with_the_bundled_tokenizer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert tc.register_config() == tc.register_config() == tc.MODEL_NAME
    assert tc.MODEL_NAME in open_clip.list_models()
    model = open_clip.create_model(tc.MODEL_NAME, pretrained=None)
    assert isinstance(model, open_clip.CLIP) and model.visual.image_size == (32, 32)
    tokenizer = open_clip.get_tokenizer(tc.MODEL_NAME)
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    tokens = tokenizer([PRIMER.format("seven"), "A handwritten two."])
    assert tokens.shape == (2, 16) and tokens.max() < model.vocab_size
    with torch.no_grad():
        image, text, scale = model(torch.rand(2, 3, 32, 32), tokens)
    assert image.shape == text.shape == (2, 64)
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))


def test_the_config_names_the_streams_classes():
    pretrain = default_cfg()["pretrain"]
    assert tuple(pretrain["classnames"]) == DIGIT_WORDS
    assert pretrain["pool"] == "pretraining"  # disjoint from the evaluation pool the digits FiF is drawn from


def test_the_backbone_is_the_visual_tower_and_keeps_the_text_tower(backbone):
    assert backbone.num_features == 64 and len(backbone.model.transformer.resblocks) == 3
    assert backbone.text.visual is None and len(backbone.text.transformer.resblocks) == 2
    with torch.no_grad():
        assert backbone(torch.rand(3, 3, 8, 8)).shape == (3, 64)  # resized to 32 px by the backbone
        assert backbone.encode_text(["The digit four."]).shape == (1, 64)
    assert backbone.recipe["recipe_hash"] in backbone.recipe["weights"]


def test_second_build_loads_the_cached_file_without_training(backbone, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached tiny CLIP was trained again")

    monkeypatch.setattr(tc, "_pretrain_to", no_training)
    again = build_backbone(default_cfg(), None).eval()  # no loader needed: nothing is trained
    assert again.recipe["weights"] == backbone.recipe["weights"]
    for (name, a), b in zip(backbone.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    other = dict(default_cfg()["pretrain"], epochs=1)
    assert recipe_hash(tc.tiny_clip_recipe(other)) != backbone.recipe["recipe_hash"]
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="needs its data"):
        build_backbone(dict(default_cfg(), pretrain=other), None)


def test_zero_shot_is_well_above_chance_on_clean_digits(backbone, scores):
    # measured: 0.920 on the evaluation pool's clean test images, 0.878 on the pretraining pool's own test part
    assert scores["DIGITS_CLEAN"] >= 0.85
    test = LOAD({"dataset": "digits", "pool": "pretraining"}).test
    x, _ = test.to_tensors()
    images = (tc.upsample(x) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    plain = ImageDataset(images, test.labels, test.ids, "digits/pretraining/test")
    assert zeroshot.classification_accuracy(backbone, plain, [PRIMER.format(w) for w in DIGIT_WORDS]) >= 0.8


def test_zero_shot_is_lower_on_the_other_sub_domains(scores, reader):
    # measured: pixelate 0.796, contrast 0.380 (evaluation-only); inverted 0.044, tinted 0.131, noise 0.825,
    # blur 0.869 (adaptation); chance is 0.1
    clean = scores["DIGITS_CLEAN"]
    assert scores["DIGITS_PIXELATE"] <= clean - 0.05 and scores["DIGITS_CONTRAST"] <= clean - 0.3
    adapt = [scores[n] for n, (role, _, _) in SUBDOMAINS.items() if role == "adapt"]
    assert max(adapt) < clean and np.mean(adapt) <= clean - 0.3
    assert scores["DIGITS_INVERTED"] <= 0.2 and scores["DIGITS_TINTED"] <= 0.3
    means = zeroshot.role_means(reader, scores)  # A_KA(0) and A_ZS(0) of the digits FiF
    assert means["adapt"] == pytest.approx(np.mean(adapt))
    assert means["eval"] == pytest.approx(np.mean([scores[n] for n in ("DIGITS_CLEAN", "DIGITS_PIXELATE",
                                                                          "DIGITS_CONTRAST")]))


def open_clip_model(backbone) -> torch.nn.Module:
    model = open_clip.create_model(tc.MODEL_NAME, pretrained=None)
    open_clip.load_checkpoint(model, backbone.recipe["weights"])
    return model.eval()


def test_zero_shot_helper_equals_open_clips_own_computation(backbone, reader):
    model, tokenizer = open_clip_model(backbone), open_clip.get_tokenizer(tc.MODEL_NAME)
    for name in ("DIGITS_CLEAN", "DIGITS_CONTRAST", "DIGITS_TINTED"):
        split, images = reader.split(name, "test"), reader.images(name, "test").subset(np.arange(100))
        x = torch.from_numpy(np.ascontiguousarray(images.images)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            image = model.encode_image((x - 0.5) / 0.5, normalize=True)
            text = model.encode_text(tokenizer([split.dataset.prime(c) for c in split.classnames]), normalize=True)
        expected = (image @ text.T).argmax(dim=1).numpy()
        prompts = class_prompts(split.classnames, split.dataset)
        np.testing.assert_array_equal(zeroshot.predictions(backbone, images, prompts), expected)
        assert zeroshot.dataset_score(backbone, reader, name, limit=100) == float(np.mean(expected == images.labels))


def test_recall_at_5_matches_a_brute_force_count(backbone, reader):
    model, tokenizer = open_clip_model(backbone), open_clip.get_tokenizer(tc.MODEL_NAME)
    images = reader.images("DIGITS_CLEAN", "test").subset(np.arange(40))
    captions = [(f"A handwritten {DIGIT_WORDS[y]}.", f"The digit {DIGIT_WORDS[y]}, number {i}.")
                for i, y in enumerate(images.labels)]
    got = zeroshot.retrieval_recall(backbone, images, captions)
    x = torch.from_numpy(np.ascontiguousarray(images.images)).permute(0, 3, 1, 2).float() / 255
    texts = [t for group in captions for t in group]
    with torch.no_grad():
        sim = (F.normalize(model.encode_image((x - 0.5) / 0.5), dim=-1)
               @ F.normalize(model.encode_text(tokenizer(texts)), dim=-1).T).numpy()
    owner = np.repeat(np.arange(len(images)), 2)
    i2t = np.mean([set(owner[np.argsort(-sim[i])[:5]]) >= {i} for i in range(len(images))])
    t2i = np.mean([owner[j] in np.argsort(-sim[:, j])[:5] for j in range(len(texts))])
    assert got["i2t"] == pytest.approx(i2t) and got["t2i"] == pytest.approx(t2i)
    assert got["mean"] == pytest.approx((i2t + t2i) / 2) and 0.0 < got["mean"] < 1.0
