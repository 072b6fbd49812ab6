"""The multimodal method kind (``kind = "clip"``) and the CLIP fine-tuning step CoDyRA and its baselines share.

A CLIP method does not own a classifier head: it keeps a CLIP (a :class:`~fluxbench.backbones.clip.ClipBackbone`,
both encoders) and the protocol scores it by prompted zero-shot classification in whatever label space it
chooses (``protocol=mtil``: per dataset, or the union of all datasets). Its hooks::

    method.train_experience(exp)       # exp.metadata["prompts"][c]: the text of exp's class c
    method.image_features(x)           # (N, D) unit-norm, images in [0, 1]
    method.text_features(texts)        # (M, D) unit-norm
    method.diagnostics()               # numbers about the last task (effective ranks, drift), logged per task

The training step is CoDyRA's (``models/codyra.py`` ``train_model``): a fixed number of AdamW steps with a
cosine learning rate and no warm-up, a new optimizer per task, batches re-drawn from the task's few-shot set
as needed, and the symmetric CLIP loss over the current task's class prompts: image-to-text cross-entropy
plus text-to-image cross-entropy against the multi-hot "image j has class c" targets.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fluxbench.batching import to_float
from fluxbench.errors import ConfigError
from fluxbench.methods.base import Method, MethodContext, check_finite, check_range
from fluxbench.streams.experience import PROMPTS_KEY, Experience


@dataclass
class ClipTuningHparams:
    lr: float = 5e-4
    iterations: int = 500
    batch_size: int = 64
    weight_decay: float = 0.0
    beta2: float = 0.9999  # AdamW betas (0.9, beta2)


def clip_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
              ) -> torch.Tensor:
    """``CE(s * img textᵀ, y) + CE(s * text imgᵀ, M)`` with ``M[c, j] = [y_j == c]`` (classes absent from the
    batch add nothing); ``image``/``text`` are unit-norm, ``text[c]`` is class ``c``'s prompt."""
    scale = logit_scale.exp()
    i2t = F.cross_entropy(scale * image @ text.t(), labels)
    multi_hot = F.one_hot(labels, len(text)).t().to(image.dtype)
    t2i = F.cross_entropy(scale * text @ image.t(), multi_hot)
    return i2t + t2i


def endless_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches, re-iterating the set as often as needed (steps are counted, not epochs);
    shuffling draws from torch's global generator, which the protocol seeds."""
    while True:
        order = torch.randperm(len(x)).to(x.device)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


def cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * step / total))


class ClipMethod(Method):
    """A CLIP kept whole (frozen unless the method says otherwise), scored by its two encoders."""

    kind: ClassVar[str] = "clip"

    def __init__(self, hparams, ctx: MethodContext) -> None:
        super().__init__(hparams, ctx)
        clip = ctx.build_backbone()
        if not hasattr(clip, "encode_text") or not hasattr(clip, "text"):
            raise ConfigError(f"method {self.name!r} needs a CLIP backbone (backbone=tiny_clip or clip_vit_b16), "
                              f"not {type(clip).__name__}")
        self.clip = clip.to(ctx.device).eval().requires_grad_(False)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return F.normalize(self.clip(x).float(), dim=-1)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        with self._autocast():
            return F.normalize(self.clip.encode_text(list(texts), normalize=False).float(), dim=-1)

    def diagnostics(self) -> dict[str, float]:
        return {}

    def _autocast(self):
        return torch.autocast("cuda", torch.bfloat16, enabled=self.ctx.amp)


class ClipTuner(ClipMethod, ABC):
    """A CLIP method that trains ``trainable()`` with :func:`clip_loss`; subclasses add what is their own."""

    @abstractmethod
    def trainable(self) -> list[nn.Parameter]:
        """The parameters this method trains (the optimiser's)."""

    def after_step(self, iteration: int) -> None:
        """Called after each optimiser step (CoDyRA's proximal step)."""

    def end_task(self) -> None:
        """Called once a task's steps are done (merge-and-restart, bookkeeping)."""

    def train_experience(self, exp: Experience) -> None:
        hp = self.hparams
        check_range("iterations", hp.iterations, 1)
        check_range("lr", hp.lr, 0.0, low_open=True)
        prompts = exp.metadata.get(PROMPTS_KEY)
        if not prompts:
            raise ConfigError(f"method {self.name!r} trains on prompted experiences (protocol=mtil); "
                              f"experience {exp.index} has no metadata['{PROMPTS_KEY}']")
        params = self.trainable()
        opt = torch.optim.AdamW(params, lr=hp.lr, betas=(0.9, hp.beta2), weight_decay=hp.weight_decay)
        x, y = exp.uint8_tensors("train", self.device)
        batches = endless_batches(x, y, hp.batch_size)
        for it in range(hp.iterations):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(hp.lr, it, hp.iterations)
            images, labels = next(batches)
            with self._autocast():
                image = F.normalize(self.clip(to_float(images)).float(), dim=-1)
                text = F.normalize(self.clip.encode_text(list(prompts), normalize=False).float(), dim=-1)
                loss = clip_loss(image, text, labels, self.clip.text.logit_scale.float())
            check_finite(loss, f"{self.name}, experience {exp.index}, step {it}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.after_step(it)
        self.end_task()
