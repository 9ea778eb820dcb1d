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
        if torch.compiler.is_exporting():  # torch.export cannot trace packed sequences
            return self.fc(self.drop(self.final_state_masked(x, lengths)))
        # pack_padded_sequence wants the lengths on the CPU; padding never enters the cell
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        if isinstance(h, tuple):  # LSTM: (h_n, c_n)
            h = h[0]
        last = h[-self.dirs :].transpose(0, 1).reshape(x.shape[0], -1)  # (B, dirs * hidden), batch order kept
        return self.fc(self.drop(last))

    def final_state_masked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """What the packed forward computes (the last layer's final states, in eval mode), step
        by step over the padded batch: a sequence's state changes only at its own steps, so the
        backward direction starts at each sequence's last step, as packing makes it."""
        rnn = self.rnn
        steps = x.shape[1]
        valid = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        inputs = x
        for layer in range(rnn.num_layers):
            outs, finals = [], []
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w = [getattr(rnn, f"{n}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                h = x.new_zeros(x.shape[0], rnn.hidden_size)
                c = h if rnn.mode == "LSTM" else None
                seq = [h] * steps
                for t in reversed(range(steps)) if d else range(steps):
                    h_new, c_new = _cell(rnn.mode, inputs[:, t], h, c, *w)
                    keep = valid[:, t, None]
                    h = torch.where(keep, h_new, h)
                    c = torch.where(keep, c_new, c) if c is not None else None
                    seq[t] = h
                outs.append(torch.stack(seq, 1))
                finals.append(h)
            inputs = torch.cat(outs, 2)
        return torch.cat(finals, 1)  # (B, dirs * hidden): forward then backward, as h_n orders them


def _cell(mode: str, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step of torch's RNN_TANH / GRU / LSTM cell: (h, c) after it."""
    gi, gh = nn.functional.linear(x, w_ih, b_ih), nn.functional.linear(h, w_hh, b_hh)
    if mode == "GRU":
        ri, zi, ni = gi.chunk(3, 1)
        rh, zh, nh = gh.chunk(3, 1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        n = torch.tanh(ni + r * nh)
        return (1 - z) * n + z * h, None
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    return torch.tanh(gi + gh), None


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
