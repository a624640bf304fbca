"""benchmarks/heldout.py: its Opus row (a clip through Opus comes back aligned, at its length;
needs opus-tools, as tests/test_eval.py does) and its choice of one category's excerpts."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from heldout import _levels, load_any, of_category, opus_round_trip  # noqa: E402

from codec.errors import CodecError  # noqa: E402
from train.data import ValidationClip  # noqa: E402

RATE = 24000


def test_a_clip_through_opus_comes_back_aligned_and_at_its_length():
    t = np.arange(2 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * np.minimum(1, t * 4)).astype(np.float32)
    y = opus_round_trip(ValidationClip("tone", "music", tone), 24.0, RATE)
    assert y.shape == tone.shape
    core = slice(RATE // 2, -RATE // 4)
    assert np.corrcoef(y[core], tone[core])[0, 1] > 0.95  # not shifted: a lag of 1/880 s would give -1
    shifted = np.roll(tone, 27)[core]
    assert np.corrcoef(y[core], shifted)[0, 1] < np.corrcoef(y[core], tone[core])[0, 1]


def test_one_category_keeps_its_excerpts_in_their_order_and_none_keeps_all():
    silence = np.zeros(10, np.float32)
    clips = [ValidationClip(name, cat, silence) for name, cat in
             [("a", "speech"), ("b", "music"), ("c", "speech"), ("d", "general"), ("e", "speech")]]
    assert [c.name for c in of_category(clips, "speech")] == ["a", "c", "e"]
    assert [c.name for c in of_category(clips, "music")] == ["b"]
    assert of_category(clips, None) == clips


def test_lowband_rebuilds_a_model_with_those_levels():
    """``--lowband``: the same weights, laid out as asked (v17 has no low band; 'none' drops v18's)."""
    v17 = load_any("rvq24k-v17", lowband=_levels("0,0,0,6,8"))
    assert v17.layout(16) == (6, 10) and v17.layout(32) == (8, 24)
    assert load_any("rvq24k-v18", lowband=_levels("none")).layout(16) == (16, 0)
    assert load_any("rvq24k-v18").layout(16) == (6, 10)


def test_envelope_floor_and_postfilter_rebuild_a_model_with_them():
    """``--envelope-floor`` / ``--postfilter``: the same weights, decoding with those settings
    (v22 with floor 1 decodes as v21)."""
    v22 = load_any("rvq24k-v22", envelope_floor=1.0, postfilter=0.5)
    assert v22.cfg.envelope_floor == 1.0 and v22.cfg.postfilter == 0.5 and v22.cfg.name == "rvq24k-v22"
    as_v21 = load_any("rvq24k-v22", envelope_floor=1.0)
    v21 = load_any("rvq24k-v21")
    assert all(torch.equal(a, b) for a, b in zip(as_v21.state_dict().values(), v21.state_dict().values()))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(3200).astype(np.float32) * 0.1)[None, None]
    codes = v21.encode(x, kbps=12)
    assert torch.equal(as_v21.decode(codes), v21.decode(codes))
    assert not torch.equal(load_any("rvq24k-v22").decode(codes), v21.decode(codes))
    assert not torch.equal(load_any("rvq24k-v21", postfilter=0.0).decode(codes), v21.decode(codes))
    with pytest.raises(CodecError, match="envelope matching"):
        load_any("rvq24k-v19", envelope_floor=0.1)  # (v19 has none: the floor would do nothing)
    with pytest.raises(CodecError, match="envelope_floor"):
        load_any("rvq24k-v22", envelope_floor=0.0)


def test_aligned_round_trips_drop_the_output_delay_as_files_do():
    """``--aligned``: the model's output delay dropped and the end still decoded (the encoder
    codes that much silence past it), so the decoded audio lines up with the input; without
    it, the same audio that much later."""
    import dataclasses

    from conftest import SMALL, make_model, tone
    from heldout import round_trip

    model = make_model(dataclasses.replace(SMALL, encoder="logmel", latent_dim=40, decoder="spectral", decoder_dim=16,
                                           decoder_layers=2, output_delay=96, name="test-aligned"))
    x = tone(0.5, RATE)[0][: 37 * 320]  # whole frames: the padding, not the last frame's, must cover the delay
    late, aligned = round_trip(model, x, 6.0), round_trip(model, x, 6.0, aligned=True)
    assert late.shape == aligned.shape == x.shape
    assert np.abs(aligned[: -96 - 320] - late[96:-320]).max() < 1e-5 * np.abs(late).max()
    assert np.abs(aligned[-96:]).max() > 0.01 * np.abs(late).max()  # the end is there, not zeros
