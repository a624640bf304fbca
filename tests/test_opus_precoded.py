"""benchmarks/opus_precoded.py: the copies that went through Opus (needs opus-tools, as
tests/test_eval.py does) are what ``rvqcodec eval`` reads: one per clip, at its rate and
length, in its category, coded (not the original) but close to it."""

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from opus_precoded import precode  # noqa: E402

from codec.evaluate import list_clips  # noqa: E402


def test_each_clip_comes_back_through_opus_at_its_rate_length_and_category(tmp_path):
    rng = np.random.default_rng(0)
    for name, rate in (("speech/a.wav", 16000), ("music/b.flac", 24000)):
        t = np.arange(2 * rate) / rate
        x = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.shape)
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / "in" / name), x.astype(np.float32), rate)
    clips = list_clips(tmp_path / "in")
    (tmp_path / "copies").mkdir()
    manifest = precode(clips, tmp_path / "copies", 24.0)
    copies = list_clips(manifest)
    assert [(c.category, c.sample_rate, c.frames) for c in copies] == [(c.category, c.sample_rate, c.frames) for c in clips]
    for original, copy in zip(clips, copies):
        x, _ = sf.read(str(original.path), dtype="float32")
        y, _ = sf.read(str(copy.path), dtype="float32")
        assert sf.info(str(copy.path)).subtype == "PCM_16"
        core = slice(len(x) // 4, -len(x) // 4)
        assert not np.allclose(x, y, atol=1e-3)  # coded
        assert np.corrcoef(x[core], y[core])[0, 1] > 0.8  # and lined up with the original
