"""Seeded, deterministic training loop with progress on stderr."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from training.digits import Split


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W images to the float N x 1 x H x W the models take (same as serving)."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


def train_classifier(
    make_model: Callable[[], nn.Module],
    data: Split,
    *,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> nn.Module:
    """Build a model and train it with Adam and cross-entropy. The same seed gives identical
    weights: it seeds the initialisation as well as the shuffling, with deterministic kernels."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = make_model()
    x, y = as_tensor(data.images), torch.from_numpy(data.labels)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        if progress:
            progress(epoch + 1, epochs, total / len(y))
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    return model(as_tensor(images)).numpy().astype(np.float64)


@torch.no_grad()
def predict_embeddings(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """The penultimate layer (`embed`) for each image: what the region codebook is fitted on."""
    model.eval()
    return model.embed(as_tensor(images)).numpy().astype(np.float64)
