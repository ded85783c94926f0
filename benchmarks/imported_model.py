"""Realistic-sized models for the benchmarks: ResNet layouts (He et al., 2016) with random
weights on 224 x 224 RGB, imported with `classguard import-model` as a user would import one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SIZE = 224


def stem() -> list:
    """ResNet's input stem: a 7x7 stride-2 convolution, batch norm, ReLU and a 3x3 max pool."""
    from torch import nn

    return [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]


def head(features: int, n_classes: int) -> list:
    """Global average pooling and the classifying layer."""
    from torch import nn

    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(features, n_classes)]


def import_torchscript(tmp: Path, name: str, module, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """`module` scripted to tmp/<name>.ts and imported as `name` into a fresh model store under
    `tmp`, with `images` (N x 224 x 224 x 3 uint8) and `labels` as its validation set; the
    environment that serves from that store."""
    import torch

    torch.jit.script(module).save(str(tmp / f"{name}.ts"))
    np.savez(tmp / "val.npz", images=images, labels=labels)
    env = {**os.environ, "BENTOML_HOME": str(tmp / "home")}
    done = subprocess.run([sys.executable, "-m", "ops.cli", "import-model", name, "--torchscript",
                           str(tmp / f"{name}.ts"), "--val-npz", str(tmp / "val.npz"), "--input-size",
                           f"{SIZE}x{SIZE}", "--channels", "3", "--mean", "0.485,0.456,0.406",
                           "--std", "0.229,0.224,0.225"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return env
