"""Networks, built by name from a task's network factory."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock1d(nn.Module):
    """Two 1-D convolutions with batch norm and an identity (or projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int = 7, dropout: float = 0.1) -> None:
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(cin, cout, kernel, stride=stride, padding=pad, bias=False),
            nn.BatchNorm1d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv1d(cout, cout, kernel, padding=pad, bias=False),
            nn.BatchNorm1d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.body(x) + self.shortcut(x))
        return out


class ResNet1d(nn.Module):
    """A residual 1-D CNN for single-lead rhythm classification.

    Args:
        n_classes: number of output logits.
        widths: channels of each stage; every stage halves the length.
        blocks_per_stage: residual blocks in each stage.
        in_channels: leads of the input.
    """

    def __init__(
        self,
        n_classes: int,
        widths: tuple[int, ...] = (32, 48, 64, 96, 128),
        blocks_per_stage: int = 1,
        in_channels: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, widths[0], 15, stride=2, padding=7, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for width in widths:
            for b in range(blocks_per_stage):
                layers.append(ResidualBlock1d(cin, width, stride=2 if b == 0 else 1, dropout=dropout))
                cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * cin, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.stem(x))
        pooled = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return self.head(pooled)  # type: ignore[no-any-return]
