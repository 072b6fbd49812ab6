"""Backbones from local weight files and the Hugging Face cache layout, offline; one-line errors otherwise."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from fluxbench.backbones import build_backbone
from fluxbench.backbones.loading import ResizeCrop, create_timm_model
from fluxbench.errors import ConfigError, DataError

TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k"  # hub repo timm/vit_tiny_patch16_224.augreg_in21k
SMALL_VIT = dict(img_size=32, patch_size=8, depth=2)
SMALL_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
)
CONF = Path(__file__).resolve().parents[1] / "fluxbench" / "conf" / "backbone"


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache under tmp_path, and no network for huggingface_hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


def write_hub_cache(hub: Path, repo: str, filename: str, tensors: dict) -> Path:
    """Write ``filename`` the way huggingface_hub does: a blob, a snapshot symlink, refs/main."""
    root = hub / ("models--" + repo.replace("/", "--"))
    blob = root / "blobs" / "incoming"
    blob.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(blob))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    blob = blob.rename(blob.with_name(digest))
    revision = "1a2b3c4d" * 5
    snapshot = root / "snapshots" / revision / filename
    snapshot.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return snapshot


def random_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, **SMALL_VIT).eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def timm_cfg(**extra) -> dict:
    base = {"kind": "timm", "model": TIMM_NAME, "pretrained": True, "weights": None, "mean": None, "std": None,
            "model_kwargs": SMALL_VIT}
    base.update(extra)
    return base


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_a_plain_file(tmp_path, suffix):
    source = random_vit()
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    backbone = build_backbone(timm_cfg(weights=str(path)))
    x = torch.rand(2, 3, 32, 32)
    assert same_outputs(backbone.model, source, x)
    assert backbone.num_features == 192 and backbone.recipe["weights"] == str(path)
    assert same_outputs(backbone, source, x)  # mean/std null: raw [0, 1] pixels go straight in


def test_timm_weights_from_the_hub_cache_layout(offline_cache):
    source = random_vit()
    snapshot = write_hub_cache(offline_cache, f"timm/{TIMM_NAME}", "model.safetensors", source.state_dict())
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    backbone = build_backbone(timm_cfg(mean=[0.5] * 3, std=[0.5] * 3))
    assert Path(backbone.recipe["weights"]).resolve() == snapshot.resolve()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), source((x - 0.5) / 0.5), rtol=0, atol=0)


def test_missing_timm_weights_name_the_path_and_the_fetch_command(offline_cache, tmp_path):
    with pytest.raises(DataError) as err:
        build_backbone(timm_cfg())
    message = str(err.value)
    assert "\n" not in message
    assert str(offline_cache / f"models--timm--{TIMM_NAME}" / "snapshots") in message
    assert f"hf download timm/{TIMM_NAME} model.safetensors" in message
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(DataError) as err:
        build_backbone(timm_cfg(weights=str(missing)))
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    assert f"hf download timm/{TIMM_NAME} model.safetensors --local-dir {missing.parent}" in message


def test_corrupt_or_mismatched_weight_files_are_data_errors(tmp_path):
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="does not load"):
        build_backbone(timm_cfg(weights=str(garbage)))
    wrong = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(2)}, str(wrong))
    with pytest.raises(DataError, match="does not load") as err:
        build_backbone(timm_cfg(weights=str(wrong)))
    assert "\n" not in str(err.value)
    bad = tmp_path / "model.txt"
    bad.write_text("x")
    with pytest.raises(DataError, match="suffix"):
        build_backbone(timm_cfg(weights=str(bad)))


def test_unknown_timm_names_and_tags_are_config_errors():
    with pytest.raises(ConfigError, match="vit_base_patch16_224"):
        build_backbone(dict(kind="timm", model="vit_base_patch16_244", pretrained=False))
    with pytest.raises(ConfigError, match="augreg_in21k"):
        build_backbone({"kind": "timm", "model": "vit_base_patch16_224.augreg_in22k", "pretrained": True})
    with pytest.raises(ConfigError, match="unknown backbone kind"):
        build_backbone(dict(kind="timmm"))


def test_tiny_vit_loads_through_the_same_path_without_a_timm_warning(tmp_path, caplog):
    import fluxbench.backbones.tiny_vit  # noqa: F401  registers vit_digits_patch2

    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        source = timm.create_model("vit_digits_patch2", num_classes=0)
        path = tmp_path / "tiny.safetensors"
        save_file(source.state_dict(), str(path))
        loaded = create_timm_model("vit_digits_patch2", weights=path, num_classes=0)
    assert "No pretrained configuration" not in caplog.text
    assert same_outputs(loaded, source, torch.rand(3, 3, 8, 8))


def test_backbone_configs_name_real_weights_and_fail_offline_with_the_fetch_command():
    expected = {
        "vit_b16_in21k.yaml": "hf download timm/vit_base_patch16_224.augreg_in21k model.safetensors",
        "vit_b16_in1k.yaml": "hf download timm/vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors",
        "clip_vit_b16.yaml": "hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors",
        "vit_b16_in21k_orig.yaml": "hf download timm/vit_base_patch16_224.orig_in21k model.safetensors",
        "clip_vit_b32.yaml": "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors",
    }
    for name, command in expected.items():
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / name))
        assert {"kind", "model", "pretrained", "weights", "mean", "std"} <= set(cfg)
        assert cfg["weights"] is None
        with pytest.raises(DataError) as err:
            build_backbone(cfg)
        assert command in str(err.value) and "\n" not in str(err.value)


def random_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", **SMALL_CLIP).eval()


def clip_cfg(**extra) -> dict:
    base = dict(kind="open_clip", model="ViT-B-32", pretrained="openai", weights=None, mean=None, std=None,
                quick_gelu=False, model_kwargs=SMALL_CLIP)
    base.update(extra)
    return base


def test_clip_from_a_file_exposes_visual_features_and_a_zero_shot_head(tmp_path):
    source = random_clip()
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = build_backbone(clip_cfg(weights=str(path))).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source.encode_image(x), rtol=0, atol=0)
        head = backbone.zero_shot_head(["cat", "dog", "truck"], templates=["a photo of a {}.", "a {}."])
        tokens = open_clip.get_tokenizer("ViT-B-32", context_length=16)(["a photo of a dog.", "a dog."])
        dog = torch.nn.functional.normalize(source.encode_text(tokens, normalize=True).mean(0), dim=0)
        logits = backbone.logits(x, head)
    assert head.shape == (3, 32)
    torch.testing.assert_close(head[1], dog, rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 3)
    assert backbone.num_features == 32 and backbone.transform(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_clip_from_the_hub_cache_layout_and_missing_error(offline_cache):
    with pytest.raises(DataError) as err:
        build_backbone(clip_cfg())
    assert "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors" in str(err.value)
    source = random_clip()
    write_hub_cache(offline_cache, "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors",
                    source.state_dict())
    backbone = build_backbone(clip_cfg()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source.encode_image(x), rtol=0, atol=0)


def test_openai_tag_builds_quick_gelu_unless_told_otherwise(tmp_path):
    source = open_clip.create_model("ViT-B-32", force_quick_gelu=True, **SMALL_CLIP)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = build_backbone(clip_cfg(weights=str(path), quick_gelu=None))
    assert type(backbone.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_clip_from_an_open_clip_folder(tmp_path):
    source = random_clip()
    folder = tmp_path / "clip"
    folder.mkdir()
    cfg = {"model_cfg": {**open_clip.get_model_config("ViT-B-32"), **SMALL_CLIP}, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    backbone = build_backbone(dict(kind="open_clip", model=f"local-dir:{folder}", pretrained=None, mean=None,
                                   std=None)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source.encode_image(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="download"):
        build_backbone(dict(kind="open_clip", model="hf-hub:laion/CLIP-ViT-B-32"))
    with pytest.raises(ConfigError, match="no pretrained tag"):
        build_backbone(clip_cfg(pretrained="laion9b"))


def test_resize_crop_matches_the_backbone_input_size():
    transform = ResizeCrop((224, 224), "bicubic", 0.875)
    x = torch.rand(4, 3, 32, 32)
    y = transform(x)
    assert y.shape == (4, 3, 224, 224) and 0.0 <= y.min() and y.max() <= 1.0
    assert transform(torch.rand(1, 3, 224, 224)).shape == (1, 3, 224, 224)
    wide = ResizeCrop((224, 224), "bilinear", 1.0)(torch.rand(1, 3, 32, 64))
    assert wide.shape == (1, 3, 224, 224)
