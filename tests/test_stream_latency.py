"""benchmarks/stream_latency.py counts a model's output delay: the samples its decoder drops at
the start (CodecConfig.output_delay) are latency, and they must not break its per-frame timing."""

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stream_latency import algorithmic_latency, per_frame_compute  # noqa: E402

from codec import Codec  # noqa: E402

from conftest import SMALL, make_model  # noqa: E402

DELAY = 96


def delayed(model: Codec, samples: int) -> Codec:
    out = Codec(dataclasses.replace(model.cfg, output_delay=samples))
    out.load_state_dict(model.state_dict())
    return out.eval()


def pair(samples: int) -> tuple[Codec, Codec]:
    """Encoder and decoder: a model streams one way at a time."""
    return delayed(make_model(SMALL), samples), delayed(make_model(SMALL), samples)


def test_the_output_delay_adds_to_the_algorithmic_latency():
    rate, hop = SMALL.sample_rate, SMALL.hop_length
    a = algorithmic_latency(pair(0), 6.0, rate, hop, 1, 1.0)
    b = algorithmic_latency(pair(DELAY), 6.0, rate, hop, 1, 1.0)
    assert a["max_ms"] == pytest.approx(hop / rate * 1000, abs=0.05)  # one frame of buffering
    assert b["max_ms"] - a["max_ms"] == pytest.approx(DELAY / rate * 1000, abs=0.05)


@pytest.mark.parametrize("packet_frames", [1, 2])
def test_per_frame_timing_runs_for_a_delayed_model(packet_frames):
    report = per_frame_compute(pair(DELAY), 6.0, 4, packet_frames)
    assert report["packet_frames"] == packet_frames
    assert report["decode"]["p50_ms"] > 0 and report["encode"]["p50_ms"] > 0
