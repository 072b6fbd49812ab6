"""The one object methods get as "the backbone": a timm-surface model plus its input normalisation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fluxbench.errors import ConfigError

# reads a dataset spec ({dataset: digits, pool: pretrain, ...}) into a DataSplit; given by the protocol layer
DatasetLoader = Callable[[Mapping[str, Any]], Any]


def require_loader(load_data: DatasetLoader | None, what: str) -> DatasetLoader:
    if load_data is None:
        raise ConfigError(f"{what} is trained on first use and needs its data: build it through fluxbench's setup "
                          "(protocols.setup.method_context), which passes the dataset loader")
    return load_data


class FeatureBackbone(nn.Module):
    """Maps images in [0, 1] to pooled features.

    ``model`` is the untouched library model (a timm ``VisionTransformer``, an open_clip
    visual tower, a small CNN) built with no classifier, so adapters, LoRA and prompts
    attach to its own surface (``model.blocks``, ``forward_features``...). Normalisation
    is part of the backbone's config: ``mean``/``std`` of ``None`` feeds raw [0, 1]
    pixels, as several pre-trained-model CL methods do.
    """

    def __init__(
        self,
        model: nn.Module,
        num_features: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        recipe: dict | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_features = num_features
        self.recipe = dict(recipe or {})
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = self.std = None

    # batched resize/crop to the model's input size (set by builders of fixed-size models); None: feed as is
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x)
        return self.model(self.normalize(x))
