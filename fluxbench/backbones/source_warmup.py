"""Source warm-up of parameters a method adds to a source model (ViDA's adapters), cached by recipe hash.

ViDA's published runs start from adapters already trained on the source data (the authors ship
the warmed-up checkpoints, not the code that made them: ``specs/vida.md`` section 3). This module
does the warm-up the spec describes: supervised cross-entropy on the source model's own training
data (``benchmark.source_models.<name>.train_on``) for a short schedule, only the given parameters
trained, every other tensor of the model (weights and BatchNorm statistics: eval mode) untouched.
The result is saved as safetensors under ``cache_dir("warmups")``, keyed by a hash of the source
model's recipe hash, the warm-up recipe, the trained tensors' names and shapes and a digest of
their initial values (write-then-rename), and loaded from there afterwards. A released warmed-up
checkpoint (safetensors, or a torch file read with ``weights_only=True``) loads instead when the
recipe names one. Unverified against the authors: the schedule (epochs, lr, Adam), the one-pixel
shift augmentation (the one fluxbench's source models are trained with) and training in eval mode.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fluxbench.backbones.base import DatasetLoader, require_loader
from fluxbench.backbones.source_models import _shift, _training_data
from fluxbench.batching import iterate_batches
from fluxbench.cache import cache_dir, recipe_hash
from fluxbench.errors import ConfigError, DataError

WARMUP_VERSION = 1


def warm_up_source(
    models: Mapping[str, Mapping[str, Any]], name: str, model: nn.Module, params: Mapping[str, nn.Parameter],
    recipe: Mapping[str, Any], load_data: DatasetLoader | None = None, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Warm ``params`` (named as in ``model.state_dict()``) of source model ``name`` up, in place; returns the record.

    ``recipe``: ``epochs``, ``lr``, ``batch_size``, ``seed`` for a warm-up on the source data, or
    ``checkpoint`` (a file) for a released one. The record (recipe hash, file, source-train accuracy
    before and after) is what the protocol logs beside the run.
    """
    if recipe.get("checkpoint"):
        return load_checkpoint(model, params, Path(str(recipe["checkpoint"])).expanduser())
    spec = dict(models.get(name) or {})
    train_on = [dict(s) for s in spec.get("train_on") or []]
    if not train_on:
        raise ConfigError(f"the source warm-up trains on the source data, but benchmark.source_models.{name} has no "
                          "train_on; give a released checkpoint (method.warmup_checkpoint) or method.warmup=none")
    full = {"source": getattr(model, "recipe", {}).get("recipe_hash"), "train_on": train_on,
            "epochs": int(recipe.get("epochs", 2)), "lr": float(recipe.get("lr", 1e-3)),
            "batch_size": int(recipe.get("batch_size", 64)), "seed": int(recipe.get("seed", 0)),
            "params": {n: list(p.shape) for n, p in params.items()}, "init": _digest(params), "version": WARMUP_VERSION}
    key = recipe_hash(full)
    path = cache_dir("warmups") / f"{name}-{key}.safetensors"
    if not path.is_file():
        x, y, _ = _training_data(train_on, require_loader(load_data, "the source warm-up"))
        before = accuracy(model, x, y, full["batch_size"], device)
        train_subset(model, params, x, y, full, device)
        after = accuracy(model, x, y, full["batch_size"], device)
        _save(params, path, {"accuracy_before": f"{before:.6f}", "accuracy_after": f"{after:.6f}"})
    _load_into(params, _read_safetensors(path, "cached warm-up"), path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return {"kind": "source", "recipe_hash": key, "path": str(path), **{k: float(v) for k, v in meta.items()}}


def train_subset(model: nn.Module, params: Mapping[str, nn.Parameter], x: torch.Tensor, y: torch.Tensor,
                 recipe: Mapping[str, Any], device: torch.device | str) -> None:
    """Adam on ``params`` only, cross-entropy, one-pixel shifts, the model in eval mode (BatchNorm statistics stay the
    source model's); its own seed, so the caller's RNG is untouched; no gradient is left behind."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    was_training = model.training
    model.eval()
    x, y = x.to(device), y.to(device)
    try:
        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(int(recipe["seed"]) + 1)
            opt = torch.optim.Adam(list(params.values()), lr=float(recipe["lr"]))
            for _ in range(int(recipe["epochs"])):
                for xb, yb in iterate_batches(x, y, int(recipe["batch_size"]), shuffle=True, transform=_shift):
                    loss = nn.functional.cross_entropy(model(xb), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device | str) -> float:
    """Top-1 accuracy of ``model`` in eval mode (the spec asks to record it before and after the warm-up)."""
    was_training = model.training
    model.eval()
    hits = sum(int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
               for i in range(0, len(y), batch_size))
    model.train(was_training)
    return hits / max(len(y), 1)


def load_checkpoint(model: nn.Module, params: Mapping[str, nn.Parameter], path: Path) -> dict[str, Any]:
    """A released warm-up: the added tensors only, or the whole model (loaded strictly, as the official code does)."""
    if not path.is_file():
        raise DataError(f"warm-up checkpoint {path} does not exist; give the path of a warmed-up model "
                        "(safetensors or a torch state dict) or set method.warmup=none")
    state = _read_checkpoint(path)
    if set(state) == set(params):
        _load_into(params, state, path)
    else:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise DataError(f"warm-up checkpoint {path} matches neither the adapters ({len(params)} tensors) nor the "
                            f"whole model ({str(err).splitlines()[0][:200]})") from None
    return {"kind": "checkpoint", "path": str(path), "recipe_hash": _file_digest(path)}


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path, "warm-up checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; one line names the file
        raise DataError(f"warm-up checkpoint {path} does not load as a torch state dict "
                        f"({str(err).splitlines()[0][:200]})") from None
    for wrapper in ("state_dict", "model"):  # the usual containers of released checkpoints
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"warm-up checkpoint {path} is not a state dict (name -> tensor)")
    return state


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise DataError(f"{what} {path} does not load ({str(err).splitlines()[0][:200]}); "
                        "delete the file and run again to rebuild it") from None


def _load_into(params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor], path: Path) -> None:
    if set(state) != set(params) or any(state[n].shape != p.shape for n, p in params.items()):
        raise DataError(f"warm-up file {path} does not match the adapters it is loaded into; delete it to rebuild")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def _digest(params: Mapping[str, nn.Parameter]) -> str:
    """The initial values are part of the recipe: the same warm-up from another initialisation is another file."""
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _save(params: Mapping[str, nn.Parameter], path: Path, metadata: dict[str, str]) -> None:
    # write-then-rename: parallel processes may build the same file at once
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)
