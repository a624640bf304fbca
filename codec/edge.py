"""The 8-kHz edge: the power of the log-mel bands around 8 kHz, sent in the low band's words
(``CodecConfig.lowband_coding`` ``arithmetic-edge``, v24).

Why (docs/model_card.md, "The 8-kHz edge"): most speech is recorded at 16 kHz, and brought to
24 kHz it keeps whatever its resampler left between 7.5 and 9 kHz. The codebooks were fitted on
a corpus resampled by soxr, which leaves nothing there, so they carry that band 5-8 dB short,
and the decoder, which learnt the same corpus, makes less still. Envelope matching's gain
cannot make a band the decoder left empty, and its noise fill only makes up what the codes
carry. On the dev speech at 12 kbps (mel distance; v23 1.024, Opus 0.990), the original's
power in these bands, made with noise, gave 0.945; in 3-dB steps 0.970, and 0.981 once the
steps' bits came out of the low band.

How, for each frame with a low band (12 and 24 kbps):

- **Encoder**: each group of bands (:data:`EDGE_HZ`, their centres) has a power ``P`` in the
  original's log-mel frame and in the coded one, both with the floor taken off as envelope
  matching takes it (``P = max(e^x - (1 - s) F, s F)``, ``s`` :data:`EDGE_FLOOR`, ``F`` the
  log-mel floor); the step is ``round(log(P_original / P_coded) / EDGE_STEP)``, from 0 (the
  codes carry the band as it is, or more) to :data:`EDGE_LARGEST` (the powers summed over the
  group's bands). One step a group, arithmetic-coded with :data:`EDGE_TABLE` before the low
  band's coefficients, in the same bits (codec/lowband.py): what they cost, the coefficients
  do not get (0 costs 0.4 bits).
- **Decoder**: where a group's step is over 0, its bands' coded powers scaled by ``2 ** step``
  (:func:`with_edge`) become envelope matching's target, and there envelope matching raises no
  band: noise makes up what the decoded band lacks (codec/envelope.py, ``edge``). Elsewhere
  envelope matching is as without the edge.

Why only upwards: on the corpus's held-out speech, whose copies hold next to nothing there,
steps both ways (to -12 dB) with noise in every frame of those bands cost mel distance (12
kbps: 0.978, against 0.920 with the same bits spent and the steps unused); upwards only, 0.924.

The steps are computed in float64 from the log-mel frames, which streamed and offline encoding
compute alike, so streams give the offline codes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import arith
from .logmel import FLOOR, mel_edges

EDGE_HZ = ((7600.0, 8300.0), (8300.0, 9000.0))  # the groups: bands whose centres lie in [lo, hi)
EDGE_STEP = math.log(2.0)  # a step: 3 dB of power
EDGE_LARGEST = 4  # steps up to 12 dB
EDGE_SCALE = 0.7  # the steps' geometric table's scale: 0 costs 0.4 bits, 1 step 2.5, 4 steps 8.7
EDGE_TABLE = arith.SymbolTable.geometric(EDGE_SCALE, EDGE_LARGEST)  # symbols: the steps
EDGE_COST = EDGE_TABLE.cost()  # [symbols] bits, float64
EDGE_FLOOR = 0.1  # powers counted down to this share of the log-mel floor (as v22's envelope_floor)


def edge_groups(sample_rate: int, n_mels: int) -> list[np.ndarray]:
    """The bands of each group of :data:`EDGE_HZ` (indices of the ``n_mels`` log-mel bands whose
    centres fall in it), leaving out groups with no band (small test models)."""
    centres = mel_edges(sample_rate, n_mels)[1:-1]
    groups = [np.flatnonzero((centres >= lo) & (centres < hi)) for lo, hi in EDGE_HZ]
    return [g for g in groups if g.size]


def _power(log_mel: np.ndarray) -> np.ndarray:
    """Log-mel values -> their powers with the floor taken off, down to EDGE_FLOOR of it."""
    return np.maximum(np.exp(log_mel) - (1.0 - EDGE_FLOOR) * FLOOR, EDGE_FLOOR * FLOOR)


def edge_steps(latent: Tensor, coded: Tensor, groups: list[np.ndarray]) -> Tensor:
    """The original's log-mel frames and the coded ones, ``[B, n_mels, F]`` each -> each
    group's step ``[B, F, G]`` int64 in ``0..EDGE_LARGEST``."""
    x = latent.detach().cpu().double().numpy()
    q = coded.detach().cpu().double().numpy()
    steps = np.zeros((x.shape[0], x.shape[-1], len(groups)), dtype=np.int64)
    for i, g in enumerate(groups):
        ratio = _power(x[:, g]).sum(1) / _power(q[:, g]).sum(1)  # [B, F]
        steps[..., i] = np.clip(np.rint(np.log(ratio) / EDGE_STEP), 0, EDGE_LARGEST)
    return torch.from_numpy(steps).to(latent.device)


def with_edge(coded: Tensor, steps: Tensor, groups: list[np.ndarray]) -> tuple[Tensor, np.ndarray | None]:
    """Coded log-mel frames ``[B, n_mels, F]`` and their groups' steps ``[B, F, G]`` -> the
    frames with each group's bands' powers scaled by ``2 ** step`` where the step is over 0
    (the rest as they were), float64, what envelope matching aims at; and a NumPy ``[B, n_mels, F]``
    bool, the bands and frames so raised, where envelope matching makes the band with noise
    (None if none is)."""
    s = steps.detach().cpu().numpy()
    if not (s > 0).any():  # (most frames: nothing to do)
        return coded, None
    out = coded.detach().cpu().double().numpy().copy()
    raised = np.zeros(out.shape, dtype=bool)
    reach = (1.0 - EDGE_FLOOR) * FLOOR
    for i, g in enumerate(groups):
        up = s[..., i] > 0  # [B, F]
        band = out[:, g]  # [B, bands, F]
        scaled = np.log(_power(band) * np.exp(s[:, None, :, i] * EDGE_STEP) + reach)
        out[:, g] = np.where(up[:, None], scaled, band)
        raised[:, g] = up[:, None]
    return torch.from_numpy(out).to(coded.device), raised  # (the mask stays NumPy: envelope matching's)
