"""Validation: code the held-out excerpts at several bitrates and measure the result.

Metrics per bitrate: mel distance and SI-SDR on every excerpt, wideband PESQ on speech
(the metric is meaningless on music). They come from :func:`codec.metrics.score_clip`, the
scorer of the evaluation reports, so training curves and release numbers agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from codec.metrics import mean_scores, score_clip
from codec.model import Codec

from .data import ValidationClip

AUDIO_EXAMPLES = 2  # excerpts written to TensorBoard at every bitrate
METRICS = ("mel_distance", "si_sdr", "pesq_wb")  # the quick ones; STOI and ViSQOL take longer


@dataclass
class Validation:
    """``metrics``: ``val/{metric}/{kbps}kbps`` -> mean over excerpts; ``audio``: tag -> ``[T]``."""

    metrics: dict[str, float] = field(default_factory=dict)
    audio: dict[str, np.ndarray] = field(default_factory=dict)


@torch.no_grad()
def validate(model: Codec, clips: list[ValidationClip], device: torch.device) -> Validation:
    """Encode and decode every clip at every bitrate the model serves (float32, offline)."""
    was_training = model.training
    model.eval()
    result = Validation()
    examples = _examples(clips)
    for i in examples:
        result.audio[f"reference/{clips[i].category}_{clips[i].name}"] = clips[i].audio
    for n_q in model.cfg.valid_n_q:
        kbps = f"{model.cfg.kbps(n_q):g}kbps"
        rows = []
        for i, clip in enumerate(clips):
            x = torch.from_numpy(clip.audio).to(device)[None, None]
            y = model.decode(model.encode(x, n_q=n_q), length=x.shape[-1])[0, 0].float().cpu().numpy()
            rows.append(score_clip(clip.audio, y, model.sample_rate, clip.category, METRICS))
            if i in examples:
                result.audio[f"{kbps}/{clip.category}_{clip.name}"] = y
        # (PESQ scores speech only, and only where it can score)
        result.metrics.update({f"val/{name}/{kbps}": value for name, value in mean_scores(rows).items()})
    model.train(was_training)
    return result


def _examples(clips: list[ValidationClip]) -> list[int]:
    """Indices of the excerpts to listen to: one per category first (speech and music)."""
    firsts: dict[str, int] = {}
    for i, clip in enumerate(clips):
        firsts.setdefault(clip.category, i)
    order = sorted(firsts.values()) + [i for i in range(len(clips)) if i not in firsts.values()]
    return order[:AUDIO_EXAMPLES]
