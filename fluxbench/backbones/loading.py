"""Building timm models with weights from a local file or the local Hugging Face cache, never the network.

Weights come from, in this order:

1. ``weights=/path/file`` given explicitly: ``.safetensors``, ``.pth``/``.pt``/``.bin`` (a torch state dict),
   or ``.npz`` (Google's JAX ViT checkpoints, read by timm's own ``load_pretrained``);
2. the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``),
   for the hub repository timm names in the model's pretrained config (``hf_hub_id``). The lookup only reads
   the cache directory (``huggingface_hub.try_to_load_from_cache``); nothing here can download.

A missing file is a :class:`DataError` naming the path looked for and the command that fetches it on a
machine with internet access.
"""

from __future__ import annotations

import difflib
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError
from torch import nn
from torch.nn import functional as F

from fluxbench.backbones.base import FeatureBackbone
from fluxbench.errors import ConfigError, DataError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
LOAD_ERRORS = (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)


def hf_cache_dir() -> Path:
    """The hub cache directory, read from the environment at call time (as ``huggingface_hub`` does at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    home = os.environ.get("HF_HOME", os.path.join(xdg, "huggingface"))
    return Path(home).expanduser() / "hub"


def find_in_hf_cache(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` present in the local cache snapshot of ``repo_id`` (``refs/main``), else None."""
    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=hf_cache_dir())
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def hf_cache_path(repo_id: str, filename: str) -> Path:
    """Where the cache layout keeps ``filename`` of ``repo_id`` (for error messages)."""
    folder = "models--" + repo_id.replace("/", "--")
    return hf_cache_dir() / folder / "snapshots" / "<revision>" / filename


def fetch_command(repo_id: str, filename: str) -> str:
    """The command that puts ``filename`` of ``repo_id`` into the hub cache on a machine with internet access."""
    return f"hf download {repo_id} {filename}"


def timm_hub_source(model_name: str) -> tuple[str, tuple[str, ...]]:
    """The hub repository and candidate file names timm records for ``model_name`` (``arch.tag``)."""
    _check_timm_name(model_name)
    cfg = timm.models.get_pretrained_cfg(model_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise ConfigError(
            f"timm model {model_name!r} has no Hugging Face weights; set backbone.weights=/path/to/weights.safetensors"
        )
    if repo.endswith("/"):  # timm writes "timm/" for "timm/<model_name>"
        repo += model_name
    files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else TIMM_HUB_FILES
    return repo, files


def resolve_timm_weights(model_name: str, weights: str | Path | None = None) -> Path:
    """The local weight file for ``model_name``: ``weights`` if given, else the hub cache entry."""
    if weights is not None:
        return check_weight_file(weights, model_name)
    repo, files = timm_hub_source(model_name)
    found = find_in_hf_cache(repo, files)
    if found is None:
        raise DataError(
            f"no weights for {model_name}: looked for {hf_cache_path(repo, files[0])}; on a machine with internet "
            f"access run `{fetch_command(repo, files[0])}`, then copy that machine's hub cache into "
            f"{hf_cache_dir()} (or set backbone.weights=/path/{files[0]})"
        )
    return found


def check_weight_file(weights: str | Path, model_name: str, repo: str | None = None) -> Path:
    """``weights`` as an existing file with a known suffix, else a one-line :class:`DataError`."""
    path = Path(weights).expanduser()
    if not path.is_file():
        if repo is None:
            try:
                repo = timm_hub_source(model_name)[0]
            except ConfigError:
                repo = None
        how = "fix backbone.weights"
        if repo is not None:
            how = f"on a machine with internet access run `hf download {repo} {path.name} --local-dir {path.parent}`"
        raise DataError(f"weight file {path} for {model_name} does not exist; {how}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise DataError(f"weight file {path} has suffix {path.suffix!r}; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    return path


def create_timm_model(model_name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with weights from ``weights`` (a local file); no file means random init.

    The file must fill every tensor of the model except its classifier (a head of a different size,
    or none with ``num_classes=0``, is left as built); anything else is a :class:`DataError`.
    """
    _check_timm_name(model_name)
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if weights is None:
        return model
    path = check_weight_file(weights, model_name)
    try:
        _load_into(model, path)
    except LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"weight file {path} does not load into {model_name}: {first[:300]}") from err
    return model


def _load_into(model: nn.Module, path: Path) -> None:
    """Load ``path`` with timm's readers: its JAX ``.npz`` loader, or its state-dict reader and the
    architecture's own ``checkpoint_filter_fn`` (key renames, position-embedding resizing)."""
    if path.suffix == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise ValueError(f"{type(model).__name__} cannot read .npz checkpoints")
        model.load_pretrained(str(path))
        return
    state = timm.models.load_state_dict(str(path))
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    heads = _classifier_prefixes(model)
    for key in [k for k in state if k.startswith(heads)]:
        if key not in own or own[key].shape != state[key].shape:
            del state[key]  # a pre-training head the model does not have (or of another size)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(heads)]
    if missing or result.unexpected_keys:
        raise ValueError(f"tensors do not match the model: missing {_few(missing)}, "
                         f"unexpected {_few(result.unexpected_keys)}")


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names) or ("head.",)


def _few(keys: Sequence[str]) -> str:
    return "none" if not keys else ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def build_timm_backbone(cfg: dict[str, Any]) -> FeatureBackbone:
    """A :class:`FeatureBackbone` around ``timm.create_model(cfg["model"], num_classes=0)``.

    ``cfg``: ``model`` (timm name, optionally ``arch.tag``), ``pretrained`` (false = random init),
    ``weights`` (a local file, or null for the hub cache), ``mean``/``std`` (null = raw [0, 1] pixels),
    ``model_kwargs`` (passed to ``timm.create_model``, e.g. ``img_size``, ``drop_path_rate``).
    """
    name = cfg.get("model")
    if not name:
        raise ConfigError("backbone.model is missing; set it to a timm name such as vit_base_patch16_224.augreg_in21k")
    weights = None
    if cfg.get("pretrained", True):
        weights = resolve_timm_weights(name, cfg.get("weights"))
    model = create_timm_model(name, weights, num_classes=0, **dict(cfg.get("model_kwargs") or {}))
    data_cfg = timm.data.resolve_model_data_config(model)
    # the size the model was built for (model_kwargs may change it), not the pretrained config's
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    input_size = [data_cfg["input_size"][0], *built] if built else list(data_cfg["input_size"])
    recipe = {
        "name": name,
        "weights": str(weights) if weights is not None else None,
        "input_size": input_size,
        "interpolation": data_cfg.get("interpolation", "bicubic"),
        "crop_pct": float(data_cfg.get("crop_pct", 1.0)),
    }
    backbone = FeatureBackbone(model, model.num_features, cfg.get("mean"), cfg.get("std"), recipe=recipe)
    backbone.transform = ResizeCrop(input_size[1:], recipe["interpolation"], recipe["crop_pct"])
    return backbone


class ResizeCrop:
    """Batched eval transform to a backbone's input size: resize the short side to ``size / crop_pct``, centre crop.

    Works on float NCHW batches in [0, 1] (what streams yield); a batch already at ``size`` passes unchanged.
    """

    def __init__(self, size: Sequence[int], interpolation: str = "bicubic", crop_pct: float = 1.0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        self.crop_pct = float(crop_pct)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        short = round(min(self.size) / self.crop_pct)
        scale = short / min(h, w)
        new = (max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale)))
        kwargs = {"antialias": True} if self.mode != "nearest" else {}
        x = F.interpolate(x, size=new, mode=self.mode, **kwargs)
        top, left = (new[0] - self.size[0]) // 2, (new[1] - self.size[1]) // 2
        x = x[..., top:top + self.size[0], left:left + self.size[1]]
        return x.clamp_(0.0, 1.0) if self.mode == "bicubic" else x

    def __repr__(self) -> str:
        return f"ResizeCrop(size={self.size}, interpolation={self.mode!r}, crop_pct={self.crop_pct})"


def _check_timm_name(model_name: str) -> None:
    arch = model_name.split(".", 1)[0]
    if timm.is_model(arch):
        if "." in model_name and model_name not in timm.list_pretrained(f"{arch}.*"):
            tags = timm.list_pretrained(f"{arch}.*")
            raise ConfigError(f"timm has no pretrained tag {model_name!r}; known: {', '.join(tags) or 'none'}")
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3)
    raise ConfigError(f"unknown timm model {model_name!r}; did you mean {', '.join(close) or '(no close match)'}?")
