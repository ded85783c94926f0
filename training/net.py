"""The classifier architecture shared by the baseline and the retrained model."""

from __future__ import annotations

import torch
from torch import nn


class DigitCNN(nn.Module):
    """A small CNN for 1 x 8 x 8 inputs in [0, 1]. `embed` exposes the penultimate layer so
    monitors can watch feature drift that leaves the predicted classes unchanged."""

    def __init__(self, n_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(width * 16, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, n_classes)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
