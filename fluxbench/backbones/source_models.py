"""Source classifiers for test-time adaptation: the trained model a TTA method starts from.

A benchmark names its source models in ``benchmark.source_models`` (``default`` first, then
variants such as ``vit`` for ViDA or ``large`` for CEMA's foundation model); a method asks
for one by name through ``MethodContext.build_source_model(name)``. Two kinds:

- ``trained``: fluxbench trains it once on clean data (the embedded default: a BatchNorm
  ``small_cnn`` or a ``tiny_vit`` on the digits pretraining and tuning pools, both disjoint
  from the evaluation pool that becomes digits-C), saves it as safetensors under
  ``cache_dir("sources")`` keyed by a hash of its recipe (write-then-rename), and loads it
  from there afterwards, like the tiny backbone;
- ``timm``: a timm classifier with its trained head (e.g. ResNet-50 or ViT-B/16 on
  ImageNet-1k for ImageNet-C), from a local file or the Hugging Face cache, never the network.

Every model maps images in [0, 1] to logits and carries ``recipe`` (with ``recipe_hash``),
which the protocol records in the run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fluxbench.backbones.base import DatasetLoader, FeatureBackbone, require_loader
from fluxbench.batching import iterate_batches
from fluxbench.cache import cache_dir, recipe_hash
from fluxbench.errors import ConfigError, DataError

RECIPE_VERSION = 1
ARCHS = ("small_cnn", "tiny_vit", "tiny_vit_conv_stem")


class SourceClassifier(nn.Module):
    """Images in [0, 1] -> logits: a :class:`FeatureBackbone` (resize, normalisation, library model) and a head.

    PEFT modules attach to ``backbone`` (its ``model`` is the untouched library model); a timm
    classifier keeps its own head inside ``backbone.model`` and ``head`` is the identity.
    """

    def __init__(self, backbone: FeatureBackbone, head: nn.Module, recipe: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.recipe = dict(recipe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transform = getattr(self.backbone, "transform", None)
        return self.head(self.backbone(transform(x) if transform is not None else x))


def build_source_model(
    models: Mapping[str, Mapping[str, Any]] | None, name: str = "default", load_data: DatasetLoader | None = None,
    device: torch.device | str = "cpu",
) -> SourceClassifier:
    """The source model ``name`` of a benchmark's ``source_models`` node, on the CPU, in eval mode."""
    if not models:
        raise ConfigError("this benchmark defines no source_models; test-time methods need benchmark.source_models")
    if name not in models:
        raise ConfigError(f"benchmark.source_models has no {name!r}; defined: {', '.join(models)}")
    spec = dict(models[name])
    kind = spec.pop("kind", None)
    if kind == "trained":
        return trained_source(spec, load_data, device).eval()
    if kind == "timm":
        return timm_source(spec).eval()
    raise ConfigError(f"benchmark.source_models.{name}.kind={kind!r}; use 'trained' or 'timm'")


# -- kind "trained" ---------------------------------------------------------------------------------
def _architecture(arch: str, args: Mapping[str, Any], num_classes: int, mean, std) -> tuple[FeatureBackbone, nn.Module]:
    if arch == "small_cnn":
        from fluxbench.backbones.small_cnn import SmallCNN

        model = SmallCNN(width=int(args.get("width", 32)))
    elif arch == "tiny_vit":
        from fluxbench.backbones.tiny_vit import vit_digits_patch2

        model = vit_digits_patch2(num_classes=0, **dict(args))
    elif arch == "tiny_vit_conv_stem":
        model = conv_stem_vit(**dict(args))
    else:
        raise ConfigError(f"source model arch={arch!r}; use one of {', '.join(ARCHS)}")
    return FeatureBackbone(model, model.num_features, mean, std), nn.Linear(model.num_features, num_classes)


def conv_stem_vit(stem: tuple[int, ...] = (32, 64), **kwargs: Any) -> nn.Module:
    """The tiny digits ViT with a convolutional stem instead of patchify (Xiao et al., "Early Convolutions Help
    Transformers See Better", NeurIPS 2021): 3x3 conv-BN-ReLU layers, the last with stride 2, then timm's
    ``HybridEmbed`` (1x1 projection) feeds the same timm transformer blocks. Its BatchNorm gives test-time
    methods statistics to adapt, as in a CNN; the blocks are timm's, so PEFT modules attach as usual."""
    from functools import partial

    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    from fluxbench.backbones.tiny_vit import TINY_VIT_ARGS

    layers, channels = [], 3
    for i, width in enumerate(stem):
        stride = 2 if i == len(stem) - 1 else 1
        layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    args = dict(TINY_VIT_ARGS, patch_size=1, num_classes=0, **kwargs)
    return VisionTransformer(embed_layer=partial(HybridEmbed, backbone=nn.Sequential(*layers)), **args)


def trained_source(spec: Mapping[str, Any], load_data: DatasetLoader | None = None, device: torch.device | str = "cpu"
                   ) -> SourceClassifier:
    """A classifier trained by fluxbench on ``spec["train_on"]`` (dataset specs), cached by recipe hash.

    ``spec``: ``arch`` (small_cnn | tiny_vit), ``args`` (architecture options, e.g. ``width``),
    ``init`` (tiny_vit: the embedded backbone's ``pretrain`` recipe to start from), ``train_on``
    (dataset specs, each with ``parts``: train and/or test, default train), ``epochs``, ``lr``,
    ``batch_size``, ``seed``, ``mean``/``std`` (input normalisation). Training runs on ``device``.
    """
    recipe = {
        "arch": spec.get("arch", "small_cnn"), "args": dict(spec.get("args") or {}),
        "train_on": [dict(s) for s in spec.get("train_on") or []], "epochs": int(spec.get("epochs", 30)),
        "lr": float(spec.get("lr", 2e-3)), "batch_size": int(spec.get("batch_size", 64)),
        "seed": int(spec.get("seed", 0)), "mean": spec.get("mean"), "std": spec.get("std"),
        "init": spec.get("init"), "version": RECIPE_VERSION,
    }
    if not recipe["train_on"]:
        raise ConfigError("a trained source model needs train_on: a list of dataset specs (e.g. {dataset: digits})")
    key = recipe_hash(recipe)
    path = cache_dir("sources") / f"{recipe['arch']}-{key}.safetensors"
    x, y, num_classes = _training_data(recipe["train_on"], require_loader(load_data, "a trained source model"))
    with torch.random.fork_rng():  # the initialisation follows the recipe's seed, not the caller's RNG
        torch.manual_seed(recipe["seed"])
        backbone, head = _architecture(recipe["arch"], recipe["args"], num_classes, recipe["mean"], recipe["std"])
    model = SourceClassifier(backbone, head, {"kind": "trained", "recipe_hash": key, "path": str(path), **recipe})
    if not path.is_file():
        if recipe["init"] is not None:
            _initialise(backbone, recipe["arch"], recipe["init"], load_data)
        _train(model, x, y, recipe, device)
        _save(model, path)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, OSError, SafetensorError) as err:
        raise DataError(f"cached source model {path} does not load ({str(err).splitlines()[0][:200]}); "
                        "delete the file and run again to retrain it") from None
    return model


def _initialise(backbone: FeatureBackbone, arch: str, init: Mapping[str, Any], load_data: DatasetLoader | None
                ) -> None:
    """Start from the pre-trained embedded backbone (``init`` is its ``pretrain`` recipe, cached on its own)."""
    if arch != "tiny_vit":
        raise ConfigError(f"source model init is for arch=tiny_vit (the pre-trained embedded backbone), not {arch!r}")
    from fluxbench.backbones.tiny_vit import pretrained_tiny_vit

    backbone.model.load_state_dict(pretrained_tiny_vit(dict(init), load_data)[0].state_dict())


def _training_data(specs: list[dict], load_data: DatasetLoader) -> tuple[torch.Tensor, torch.Tensor, int]:
    xs, ys, num_classes = [], [], 0
    for spec in specs:
        spec = dict(spec)
        parts = spec.pop("parts", ["train"])
        bad = [p for p in parts if p not in ("train", "test")]
        if bad:
            raise ConfigError(f"source model train_on parts {bad}: use train and/or test")
        split = load_data(spec)
        num_classes = max(num_classes, split.num_classes)
        for part in (split.train if p == "train" else split.test for p in parts):
            if len(part):
                x, y = part.to_tensors()
                xs.append(x)
                ys.append(y)
    if not xs:
        raise DataError(f"the source model's train_on datasets {specs} hold no images")
    return torch.cat(xs), torch.cat(ys), num_classes


def _train(model: SourceClassifier, x: torch.Tensor, y: torch.Tensor, recipe: Mapping[str, Any],
           device: torch.device | str) -> None:
    """AdamW with a one-cycle schedule and one-pixel shifts; its own seed, so callers' RNG is untouched."""
    epochs, batch = recipe["epochs"], recipe["batch_size"]
    model.to(device)
    x, y = x.to(device), y.to(device)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(recipe["seed"] + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"],
                                                    total_steps=epochs * -(-len(y) // batch))
        model.train()
        for _ in range(epochs):
            for xb, yb in iterate_batches(x, y, batch, shuffle=True, transform=_shift):
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    # the last batch's gradients must not reach a test-time method: its first step would differ from the
    # official code's on a cold cache only (a warm cache loads weights without any .grad)
    model.zero_grad(set_to_none=True)
    model.eval().cpu()


def _shift(x: torch.Tensor) -> torch.Tensor:
    """Random one-pixel shifts of the whole batch (the tiny backbone's augmentation)."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _save(model: nn.Module, path: Path) -> None:
    # write-then-rename: parallel processes may build the same file at once
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


# -- kind "timm" ------------------------------------------------------------------------------------
def timm_source(spec: Mapping[str, Any]) -> SourceClassifier:
    """A timm classifier with its trained head: ``model`` (timm name), ``weights`` (a local file, or null for
    the Hugging Face cache), ``num_classes`` (of the head in the file), ``mean``/``std`` (absent: the model's
    pretrained config; null: raw [0, 1] pixels), ``model_kwargs``."""
    import timm

    from fluxbench.backbones.loading import ResizeCrop, create_timm_model, resolve_timm_weights

    name = spec.get("model")
    if not name:
        raise ConfigError("a timm source model needs model: a timm name such as resnet50.tv_in1k")
    num_classes = int(spec.get("num_classes", 1000))
    weights = resolve_timm_weights(name, spec.get("weights"))
    model = create_timm_model(name, weights, num_classes=num_classes, **dict(spec.get("model_kwargs") or {}))
    _check_head(model, weights, name)
    data_cfg = timm.data.resolve_model_data_config(model)
    recipe = {"kind": "timm", "model": name, "weights": str(weights), "num_classes": num_classes,
              "input_size": list(data_cfg["input_size"])}
    recipe["recipe_hash"] = recipe_hash(recipe)
    mean = spec["mean"] if "mean" in spec else data_cfg["mean"]  # absent: the model's own normalisation
    std = spec["std"] if "std" in spec else data_cfg["std"]
    backbone = FeatureBackbone(model, num_classes, mean, std)
    backbone.transform = ResizeCrop(data_cfg["input_size"][1:], data_cfg.get("interpolation", "bicubic"),
                                    float(data_cfg.get("crop_pct", 1.0)))
    return SourceClassifier(backbone, nn.Identity(), recipe)


def _check_head(model: nn.Module, weights: Path, name: str) -> None:
    """A source model must come with its trained classifier; a file without one is a DataError."""
    import timm

    if weights.suffix == ".npz":
        return  # timm's JAX reader loads the head itself when its size matches
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    prefixes = tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    found = timm.models.load_state_dict(str(weights))
    if not own or any(k not in found or found[k].shape != v.shape for k, v in own.items()):
        raise DataError(f"weight file {weights} has no {prefixes[0]}* classifier of the shape {name} needs "
                        f"({len(own)} tensors); a TTA source model needs its trained head (set num_classes to match)")
