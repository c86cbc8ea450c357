"""The beat classifier of the ``holter`` task: a small 1-D CNN on the beat and its chunk's median beat,
joined with a small MLP on the RR and shape features (all carried by one input tensor, see ``holter_beats``)."""

from __future__ import annotations

import torch
from torch import nn

from prescreen.models.holter_beats import CHANNELS, N_FEATURES, WINDOW


def _conv(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
        nn.MaxPool1d(2),
    )


class HolterBeatNet(nn.Module):
    """Beat input ``(batch, 3, 128)`` → logits over N, S, V, F, Q.

    The convolutions see the beat minus the patient's median beat, and the beat itself; an MLP sees the
    RR and shape features.

    Args:
        n_classes: number of beat classes.
        width: channels of the convolutions.
        dropout: dropout before the last layer.
    """

    def __init__(self, n_classes: int = 5, width: int = 24, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(CHANNELS - 1, width, 7),
            _conv(width, width * 2, 5),
            _conv(width * 2, width * 2, 5),
            _conv(width * 2, width * 2, 3),
        )
        flat = width * 2 * (WINDOW // 16)
        self.rr = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(flat + 32, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, n_classes),
        )

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        beat, template = signal[:, 0:1, :], signal[:, 1:2, :]
        morphology = torch.cat([beat - template, beat], dim=1)
        rr = signal[:, CHANNELS - 1, :N_FEATURES]
        shape = self.features(morphology).flatten(1)
        return self.head(torch.cat([shape, self.rr(rr)], dim=1))  # type: ignore[no-any-return]
