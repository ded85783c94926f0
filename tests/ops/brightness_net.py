"""A user's own classifier, as the import tests bring it: RGB 12x12 in, `dark`/`bright` out."""

import torch
from torch import nn


class BrightnessNet(nn.Module):
    def __init__(self, gain: float = 10.0) -> None:
        super().__init__()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-gain], [gain]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(1, 2, 3)).unsqueeze(1))
