"""benchmarks/opus_precoded.py: the copies that went through Opus (needs opus-tools, as
tests/test_eval.py does) are what ``rvqcodec eval`` reads: one per clip, at its rate, length
and channels, in its category, coded (not the original) but close to it; and the comparison
scores the originals as ``rvqcodec eval`` does, the copies apart."""

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from opus_precoded import compare, precode  # noqa: E402

from codec import load  # noqa: E402
from codec.eval_results import means  # noqa: E402
from codec.evaluate import evaluate, list_clips  # noqa: E402


def write_clips(root: Path, names: list[tuple[str, int, int]]) -> Path:
    rng = np.random.default_rng(0)
    for name, rate, channels in names:
        t = np.arange(2 * rate) / rate
        x = 0.3 * np.sin(2 * np.pi * 330 * t * (1 + 0.3 * t))[:, None] + 0.05 * rng.standard_normal((len(t), channels))
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / name), x.astype(np.float32), rate)
    return root


def test_each_clip_comes_back_through_opus_at_its_rate_length_channels_and_category(tmp_path):
    # (an Ogg Vorbis clip: opusenc reads WAV and FLAC only)
    clips = list_clips(write_clips(tmp_path / "in", [("speech/a.wav", 16000, 1), ("music/b.flac", 24000, 2),
                                                      ("music/c.ogg", 48000, 1)]))
    (tmp_path / "copies").mkdir()
    copies = list_clips(precode(clips, tmp_path / "copies", 24.0))
    assert [(c.category, c.sample_rate, c.frames, c.channels) for c in copies] == \
        [(c.category, c.sample_rate, c.frames, c.channels) for c in clips]
    assert sorted(p.name for p in (tmp_path / "copies").iterdir()) == ["000.wav", "001.wav", "002.wav", "manifest.tsv"]
    for original, copy in zip(clips, copies):
        x, _ = sf.read(str(original.path), dtype="float32", always_2d=True)
        y, _ = sf.read(str(copy.path), dtype="float32", always_2d=True)
        assert sf.info(str(copy.path)).subtype == "PCM_16"
        core = slice(len(x) // 4, -len(x) // 4)
        assert not np.allclose(x, y, atol=1e-3)  # coded
        assert np.corrcoef(x[core, 0], y[core, 0])[0, 1] > 0.8  # and lined up with the original


def test_the_originals_score_as_rvqcodec_eval_scores_them_and_the_copies_apart(tmp_path):
    root = write_clips(tmp_path / "in", [("speech/a.wav", 24000, 1)])
    model = load()
    results = compare(list_clips(root), (12.0,), model, 24.0)
    assert set(results) == {"originals", "through Opus 24 kbps"}
    (tmp_path / "work").mkdir()
    direct = evaluate(root, tmp_path / "work", (12.0,), model, baseline="opus")
    for system in ("rvqcodec", "opus"):
        assert results["originals"][system]["12"] == pytest.approx(means(direct, "speech", system, 12.0))
        assert results["through Opus 24 kbps"][system]["12"]["mel_distance"] != \
            pytest.approx(results["originals"][system]["12"]["mel_distance"])
