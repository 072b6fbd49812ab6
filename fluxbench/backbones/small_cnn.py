"""A small CNN for from-scratch baselines (and a BatchNorm source model for TTA)."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages and global average pooling; any input size."""

    def __init__(self, in_chans: int = 3, width: int = 32) -> None:
        super().__init__()
        self.num_features = 4 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.features(x)
