"""Networks of the sequence and yesno recipes (imports torch: the recipes import this lazily)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class SequenceClassifier(nn.Module):
    """RNN/LSTM/GRU over packed sequences; the class comes from the last layer's final state
    (forward and backward directions concatenated when bidirectional)."""

    def __init__(
        self, cell: str, features: int, hidden: int, layers: int, bidirectional: bool, dropout: float, classes: int
    ) -> None:
        super().__init__()
        self.dirs = 2 if bidirectional else 1
        self.rnn = CELLS[cell](
            features,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden * self.dirs, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # pack_padded_sequence wants the lengths on the CPU; padding never enters the cell
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        if isinstance(h, tuple):  # LSTM: (h_n, c_n)
            h = h[0]
        last = h[-self.dirs :].transpose(0, 1).reshape(x.shape[0], -1)  # (B, dirs * hidden), batch order kept
        return self.fc(self.drop(last))


class CTCNet(nn.Module):
    """Frames (B, T, F) -> per-frame log-probabilities (T / 4, B, classes) for CTC.

    A stack of 1-D convolutions: two with stride 2 (10 ms frames -> 40 ms), then dilated ones.
    The receptive field (about 0.6 s for 10 ms input frames) spans one word and its
    surroundings, so each output frame decides locally whether a word ends there -- unlike a
    recurrent layer over the whole file, which can settle on one long token. Every layer's
    output is zeroed beyond the true length, so padding in a batch changes nothing."""

    # (kernel, stride, dilation) of each convolution
    layers = ((5, 2, 1), (5, 2, 1), (5, 1, 1), (5, 1, 2))

    def __init__(self, features: int, channels: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = features
        for k, stride, dilation in self.layers:
            self.convs.append(
                nn.Conv1d(width, channels, k, stride=stride, padding=dilation * (k // 2), dilation=dilation)
            )
            self.norms.append(nn.LayerNorm(channels))
            width = channels
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Conv1d(channels, classes, 1)
        with torch.no_grad():  # start out predicting mostly blank, CTC's usual first phase
            self.fc.bias.zero_()
            self.fc.bias[0] = 2.0

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        h = x.transpose(1, 2) * keep[:, None, :].to(x.dtype)  # (B, F, T), zero beyond each length
        for (k, stride, dilation), conv, norm in zip(self.layers, self.convs, self.norms, strict=True):
            lengths = (lengths + 2 * dilation * (k // 2) - dilation * (k - 1) - 1) // stride + 1
            h = norm(conv(h).transpose(1, 2)).transpose(1, 2)  # LayerNorm over the channels of each frame
            keep = torch.arange(h.shape[2], device=h.device)[None, :] < lengths[:, None]
            h = self.drop(torch.relu(h)) * keep[:, None, :].to(h.dtype)
        logits = self.fc(h)  # (B, classes, T')
        return logits.float().log_softmax(1).permute(2, 0, 1), lengths
