"""Envelope matching (codec/envelope.py): the decoded audio's bands pulled onto the coded
log-mel spectrum, offline and streamed, alone and inside a model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import Codec, CodecConfig, compress_file, decompress_file
from codec.envelope import FILL_MIN_HZ, FLOOR_MIN_LEVELS, MAX_GAIN, MIN_HZ, MIN_LEVELS, EnvelopeMatch
from codec.logmel import FLOOR, LogMelEncoder, mel_edges
from codec.stream import StreamDecoder
from conftest import SMALL, make_model, tone

RATE, HOP, MELS = 24000, 320, 80
ACTIVE = MIN_LEVELS  # levels at which the gains apply


def noise(frames: int, rows: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(rows, 1, frames * HOP, generator=g)


def measure(audio: torch.Tensor) -> torch.Tensor:
    """The encoder's log-mel frames of ``audio`` ``[N, 1, T]``: ``[N, M, F]``, frame ``t`` over
    ``[(t - 1) hop, (t + 1) hop)``, where envelope matching measures frame ``t``."""
    return LogMelEncoder(RATE, HOP, MELS)(audio)


FILTERS = EnvelopeMatch(RATE, HOP, MELS, 1.0).filterbank.numpy()  # [M, HOP + 1]
MIN_BIN = math.ceil(MIN_HZ * 2 * HOP / RATE)  # bins of RATE / (2 HOP) Hz
LEAK = 4  # bins: a one-hop window's main lobe reaches 2 of its own, 75-Hz bins either side


def bands_from(first: int) -> torch.Tensor:
    """Bands whose filter starts at or above bin ``first``."""
    return torch.from_numpy(np.argmax(FILTERS > 0, axis=1) >= first)


def bands_under(last: int) -> torch.Tensor:
    """Bands whose filter ends under bin ``last``."""
    return torch.from_numpy(FILTERS.shape[1] - 1 - np.argmax(FILTERS[:, ::-1] > 0, axis=1) < last)


def test_gains_of_one_give_the_audio_back_offline_and_half_a_hop_later_streamed():
    """Under MIN_LEVELS levels no gain applies: the overlap-add alone, whose square-root Hann
    windows multiply to a Hann window that sums to one at half-hop steps."""
    em, x = EnvelopeMatch(RATE, HOP, MELS, 1.0), noise(12, rows=2)
    target = measure(noise(12, rows=2, seed=1))  # would change every band if it counted
    y = em(x, target, ACTIVE - 1, 0)
    assert y.shape == x.shape and torch.allclose(y, x, atol=1e-7)
    em.streaming_on = True
    streamed = torch.cat([em(x[..., :5 * HOP], target[..., :5], ACTIVE - 1, 0),
                          em(x[..., 5 * HOP:], target[..., 5:], ACTIVE - 1, 0), em.drain()], dim=-1)
    assert em.lag == HOP // 2 and streamed.shape[-1] == x.shape[-1] + em.lag
    assert torch.allclose(streamed[..., em.lag:], x, atol=1e-7)
    assert streamed[..., : em.lag].abs().max() < 1e-3 * x.abs().max()  # before the start: only the window's edge


def test_nothing_in_gives_nothing_out_and_the_tail_keeps_the_audio_type():
    em = EnvelopeMatch(RATE, HOP, MELS, 1.0)
    empty = torch.zeros(1, 1, 0)
    assert em(empty, torch.zeros(1, MELS, 0), ACTIVE, 0).shape == (1, 1, 0)  # offline
    em.streaming_on = True
    x = noise(3).double()
    em(x, measure(x), ACTIVE, 0)
    assert em.drain().dtype == torch.float64


def test_a_frame_gains_start_with_the_window_centred_on_its_block():
    """Gains of 1 up to frame T and 2 (6 dB) from it: the audio is untouched up to half a hop
    before block T (the first window with frame T's gains is centred on its start) and
    changed from there on."""
    x, first = noise(12), 6
    target = measure(x) + torch.where(torch.arange(12) >= first, math.log(4.0), 0.0)
    y = EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, target, ACTIVE, 0)
    start = first * HOP - HOP // 2
    assert (y - x)[..., :start].abs().max() < 1e-5 * x.abs().max()
    changed = (y - x)[..., start : first * HOP].square().sum() / x[..., start : first * HOP].square().sum()
    assert changed > 0.05, changed  # (a window's gain fades in under its square-root Hann)


def test_long_audio_offline_in_blocks_equals_any_stream_of_it():
    """Offline the frames go BLOCK_FRAMES at a time; streamed in uneven chunks across those
    blocks, the same samples half a hop later."""
    frames = 600
    x = noise(frames, rows=2)
    target = measure(noise(frames, rows=2, seed=1))
    offline = EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, target, ACTIVE, 23)
    em = EnvelopeMatch(RATE, HOP, MELS, 1.0)
    em.streaming_on = True
    edges = [0, 5, 262, 262, 562, frames]  # (one call of no frames)
    parts = [em(x[..., a * HOP : b * HOP], target[..., a:b], ACTIVE, 23) for a, b in zip(edges, edges[1:])]
    streamed = torch.cat([*parts, em.drain()], dim=-1)
    assert torch.allclose(streamed[..., em.lag :], offline, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_streamed_in_chunks_of_any_size_gives_the_offline_output_half_a_hop_later(chunk):
    x, frames = noise(20, rows=2), 20
    target = measure(noise(frames, rows=2, seed=1))  # another noise's spectrum: gains far from 1
    offline = EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, target, ACTIVE, 0)
    assert (offline - x).abs().max() > 0.1 * x.abs().max()  # it did change the audio
    em = EnvelopeMatch(RATE, HOP, MELS, 1.0)
    em.streaming_on = True
    parts = [em(x[..., s * HOP : (s + chunk) * HOP], target[..., s : s + chunk], ACTIVE, 0) for s in range(0, frames, chunk)]
    streamed = torch.cat([*parts, em.drain()], dim=-1)
    assert em.state is None and em.drain() is None  # drained: nothing more owed
    assert torch.allclose(streamed[..., em.lag :], offline, atol=1e-6)


def test_every_band_above_450_hz_moves_onto_the_coded_level_and_the_others_stay():
    """Noise coded 6 dB louder above MIN_HZ and 6 dB quieter below: the decoded bands above
    come out about 6 dB louder, those below (and those under a low band's cut) as they were."""
    x = noise(30)
    before = measure(x)
    up = bands_from(MIN_BIN)
    target = before + torch.where(up[:, None], math.log(4.0), -math.log(4.0))
    for cut in (0, 23):  # no low band, and one of 23 bins (862 Hz): a higher cut
        change = (measure(EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, target, ACTIVE, cut)) - before)[0, :, 2:-2]
        pulled = bands_from(max(cut, MIN_BIN) + LEAK)  # (clear of the gains' edge)
        kept = bands_under(max(cut, MIN_BIN) - LEAK)
        assert pulled.sum() > 40 and kept.sum() >= 3
        assert (change[pulled].mean(dim=1) - math.log(4.0)).abs().max() < 0.1, change[pulled].mean(dim=1)
        assert change[kept].mean(dim=1).abs().max() < 0.02, change[kept].mean(dim=1)


def test_the_last_half_hop_is_pulled_too():
    """The end of the audio (completed offline, drained when streamed) takes the last frame's
    gains: noise coded 6 dB louder comes out about 4 times as strong up to its last samples."""
    x = noise(10)
    y = EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, measure(x) + math.log(4.0), ACTIVE, 0)
    ratio = [float(y[..., s].square().sum() / x[..., s].square().sum()) for s in (slice(None), slice(-HOP // 4, None))]
    assert all(2.8 < r < 5.0 for r in ratio), ratio  # (the bands under MIN_HZ hold a few percent of it)


def test_gains_stop_at_12_db():
    x = noise(20)
    before = measure(x)
    louder = measure(EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, before + 10.0, ACTIVE, 0))  # e^10: far beyond
    up = bands_from(MIN_BIN + LEAK)
    change = (louder - before)[0][up][:, 2:-2].mean(dim=1)
    assert (change - 2 * math.log(MAX_GAIN)).abs().max() < 0.3, change
    weaker = EnvelopeMatch(RATE, HOP, MELS, 0.5)(x, before + math.log(4.0), ACTIVE, 0)  # half way: +3 dB
    change = (measure(weaker) - before)[0][up][:, 2:-2].mean(dim=1)
    assert (change - math.log(2.0)).abs().max() < 0.3, change


def test_a_floor_under_one_raises_bands_the_decoder_left_below_the_log_mel_floor():
    """Decoded noise 17 dB under the log-mel floor F (band powers 0.02 F) where the codes carry
    F: compared as log-mel values (floor 1) the power gain is (F + F) / (0.02 F + F), about 2;
    compared as powers down to a tenth of the floor, (2 F - 0.9 F) / (0.02 F + 0.1 F), about 9
    (taking the floor off both sides without keeping a tenth of it would give 50, clipped to
    16). Far above the floor the two agree, and so do they in frames of fewer than
    FLOOR_MIN_LEVELS levels; silence with a tiny floor stays finite."""
    floor_sigma = 1.26e-3  # white noise whose every band's mel power is about FLOOR (-58 dBFS)
    x = noise(30) * (floor_sigma / 0.1) * math.sqrt(0.02)
    target = measure(noise(30, seed=1) * (floor_sigma / 0.1))
    up = bands_from(MIN_BIN + LEAK)

    def power(audio: torch.Tensor) -> float:  # mean mel power of the bands above, the floor taken off
        return float((measure(audio)[0][up][:, 2:-2].exp() - FLOOR).mean())

    assert 0.01 < power(x) / FLOOR < 0.04 and 0.7 < float((target[0][up].exp() - FLOOR).mean()) / FLOOR < 1.4
    fine = FLOOR_MIN_LEVELS
    as_logs = power(EnvelopeMatch(RATE, HOP, MELS, 1.0)(x, target, fine, 0)) / power(x)
    as_powers = power(EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1)(x, target, fine, 0)) / power(x)
    assert 1.7 < as_logs < 2.2 and 6.0 < as_powers < 12.0, (as_logs, as_powers)
    coarse = [EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=f)(x, target, fine - 1, 0) for f in (1.0, 0.1)]
    assert fine - 1 >= MIN_LEVELS and torch.equal(coarse[0], coarse[1])
    loud = noise(30)  # some 38 dB above the floor, coded 6 dB louder
    ys = [EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=f)(loud, measure(loud) + math.log(4.0), fine, 0) for f in (1.0, 0.1)]
    assert torch.allclose(ys[0], ys[1], rtol=0, atol=1e-3 * float(ys[0].abs().max()))
    under = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1)(x, torch.full_like(target, math.log(FLOOR) - 0.1), fine, 0)
    assert torch.isfinite(under).all() and power(under) <= power(x)  # coded under the floor: kept, not raised
    silence = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=1e-16)(torch.zeros_like(x), target, fine, 0)
    assert torch.equal(silence, torch.zeros_like(x))  # (e^log F can round under F: no 0 / 0)
    with pytest.raises(ValueError, match="floor"):
        EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.0)


def test_a_fill_makes_up_in_noise_the_power_the_gain_limit_leaves_missing():
    """Decoded noise 40 dB under the coded noise: the gains stop at 12 dB; with a fill of 1 the
    bands centred from FILL_MIN_HZ come out at the coded power, with 0.5 half way there in
    power, without a fill 28 dB short; the bands under FILL_MIN_HZ are not filled, nor frames
    of fewer than FLOOR_MIN_LEVELS levels. From 15 dB short, the noise adds only what the gain
    does not; at strength 0.5 it makes up half the way in decibels (20 dB short). Near the
    log-mel floor F, with the audio next to nothing: 20 F coded is made up but for 1.5 F, and F
    coded is not filled (the comparison counts the band as holding a tenth of F)."""
    x = noise(40) * 0.01
    target = measure(noise(40, seed=1))
    centres = torch.from_numpy(mel_edges(RATE, MELS)[1:-1])
    filled = centres >= FILL_MIN_HZ * 1.05  # (clear of the edge: neighbouring bands share bins)
    unfilled = (centres < FILL_MIN_HZ * 0.85) & bands_from(MIN_BIN + LEAK)

    def power(audio: torch.Tensor) -> torch.Tensor:  # each band's mean mel power over the frames
        return measure(audio)[0][:, 2:-2].exp().mean(dim=1) - FLOOR

    coded = target[0][:, 2:-2].exp().mean(dim=1) - FLOOR
    out = {f: power(EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=f)(x, target, FLOOR_MIN_LEVELS, 0))
           for f in (0.0, 0.5, 1.0)}
    short = {f: torch.log(p / coded) for f, p in out.items()}  # natural log of power: 0 = the coded power
    assert filled.sum() >= 6 and unfilled.sum() > 20
    assert short[1.0][filled].abs().max() < 0.25, short[1.0][filled]
    assert (short[0.5][filled] - math.log(0.5)).abs().max() < 0.25, short[0.5][filled]
    assert (short[0.0][filled] - math.log(16 * 1e-4)).abs().max() < 0.5, short[0.0][filled]  # 16 x 40 dB under
    for f in (0.5, 1.0):
        assert torch.allclose(out[f][unfilled], out[0.0][unfilled], rtol=0.02)  # (a window's side lobes)
    near = power(EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)(x * 10 ** (25 / 20), target, FLOOR_MIN_LEVELS, 0))
    assert torch.log(near / coded)[filled].abs().max() < 0.25  # 15 dB short: the gain gives 12 of them, the noise the rest
    half = power(EnvelopeMatch(RATE, HOP, MELS, 0.5, floor=0.1, fill=1.0)(x, target, FLOOR_MIN_LEVELS, 0))
    assert (torch.log(half / coded)[filled] - math.log(1e-2)).abs().max() < 0.25
    coarse = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)(x, target, FLOOR_MIN_LEVELS - 1, 0)
    assert torch.equal(coarse, EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1)(x, target, FLOOR_MIN_LEVELS - 1, 0))
    quiet = x * 1e-3  # next to nothing: its bands hold about 1e-4 F
    for coded_power, made in ((20 * FLOOR, (1 - 15 * 0.1 / 20) * 20 * FLOOR), (FLOOR, 0.0)):
        level = torch.full_like(target, math.log(coded_power + FLOOR))
        low = power(EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)(quiet, level, FLOOR_MIN_LEVELS, 0))[filled]
        if made:  # 20 F coded: the gain stops at the limit; the noise gives all but 1.5 F of it
            assert (torch.log(low / made)).abs().max() < 0.25, low / FLOOR
        else:  # F coded: within the limit of the 0.1 F the comparison counts the band as holding
            assert low.max() < 0.01 * FLOOR, low / FLOOR
    with pytest.raises(ValueError, match="fill"):
        EnvelopeMatch(RATE, HOP, MELS, 1.0, fill=1.5)


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_the_fill_is_the_same_noise_streamed_in_any_chunks_and_offline_in_blocks(chunk):
    """Each frame's noise is fixed by its index: a stream in chunks (across offline's blocks of
    BLOCK_FRAMES) gives the offline output half a hop later. A row's output does not depend on
    the other rows: two of the same audio and codes come out the same."""
    frames = 270
    x = noise(frames, rows=2) * 0.01
    target = measure(noise(frames, rows=2, seed=1))
    offline = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)(x, target, FLOOR_MIN_LEVELS, 23)
    unfilled = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1)(x, target, FLOOR_MIN_LEVELS, 23)
    assert (offline - unfilled).square().sum() > 10 * unfilled.square().sum()  # the fill did add noise
    em = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)
    em.streaming_on = True
    parts = [em(x[..., s * HOP : (s + chunk) * HOP], target[..., s : s + chunk], FLOOR_MIN_LEVELS, 23)
             for s in range(0, frames, chunk)]
    streamed = torch.cat([*parts, em.drain()], dim=-1)
    assert torch.allclose(streamed[..., em.lag :], offline, atol=1e-6)
    twins = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)(x[:1].repeat(2, 1, 1), target[:1].repeat(2, 1, 1),
                                                                     FLOOR_MIN_LEVELS, 23)
    assert torch.equal(twins[0], twins[1]) and torch.allclose(twins[0], offline[0], atol=1e-6)


def test_the_config_takes_envelope_matching_only_for_a_log_mel_model():
    assert CodecConfig(encoder="logmel", latent_dim=80, envelope_match=1.0).envelope_match == 1.0
    with pytest.raises(ValueError, match="log-mel"):
        CodecConfig(envelope_match=1.0)  # a SEANet encoder's latent is no spectrum to match
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        CodecConfig(encoder="logmel", latent_dim=80, envelope_match=2.5)
    with pytest.raises(ValueError, match="envelope_floor"):
        CodecConfig(encoder="logmel", latent_dim=80, envelope_match=1.0, envelope_floor=1.5)
    with pytest.raises(ValueError, match=r"envelope_fill must be in \[0, 1\]"):
        CodecConfig(encoder="logmel", latent_dim=80, envelope_match=1.0, envelope_fill=-0.5)
    with pytest.raises(ValueError, match="envelope_fill needs envelope matching"):
        CodecConfig(encoder="logmel", latent_dim=80, envelope_fill=1.0)
    cfg = CodecConfig(encoder="logmel", latent_dim=80, decoder="spectral")
    assert cfg.same_architecture(dataclasses.replace(cfg, envelope_match=1.0, envelope_floor=0.1, envelope_fill=1.0))  # no weights


MODEL = dataclasses.replace(SMALL, encoder="logmel", latent_dim=40, decoder="spectral", decoder_dim=16, decoder_layers=2,
                            output_delay=96, lowband_levels=(0, 0, 0, 8, 8), envelope_match=1.0, envelope_floor=0.1,
                            name="test-envelope")  # (the floor applies at 6 and 12 kbps: 8 levels each)


def test_a_model_with_the_fill_streams_as_it_decodes_offline_whatever_the_batch():
    """A model whose envelope matching fills: its streamed output (chunks of 1 and 3 frames,
    a call of none between) is the offline output half a hop later, and a channel decodes the
    same alone as in a batch of 2 x 2."""
    model = make_model(dataclasses.replace(MODEL, envelope_fill=1.0))
    plain = make_model(MODEL)
    x = torch.from_numpy(np.stack([tone(1.0, RATE, seed=s)[0] for s in range(4)])).float().reshape(2, 2, -1)
    codes = model.encode(x, kbps=12)
    offline = model.decode(codes)
    assert (offline - plain.decode(codes)).abs().max() > 1e-3  # the fill did something
    assert torch.allclose(model.decode(codes[1:, 1:]), offline[1:, 1:], atol=1e-6)
    for chunk in (1, 3):
        with model.streaming():
            parts = [model.decode(codes[..., s : s + chunk]) for s in range(0, codes.shape[-1], chunk)]
            parts.insert(2, model.decode(codes[..., :0]))
            streamed = torch.cat([*parts, model.drain(2, 2)], dim=-1)
        assert torch.allclose(streamed[..., HOP // 2 :], offline, atol=1e-5)


@pytest.mark.parametrize("kbps", [6, 12])
def test_a_model_streams_with_half_a_hop_more_delay_and_files_still_line_up(kbps, tmp_path):
    model = make_model(MODEL)
    plain = Codec(dataclasses.replace(MODEL, envelope_match=0.0)).eval()
    plain.load_state_dict(model.state_dict())
    assert model.stream_delay == MODEL.output_delay + HOP // 2 and plain.stream_delay == MODEL.output_delay
    x = torch.from_numpy(tone(24200 / RATE, RATE, seed=3)).float().reshape(1, 1, -1)  # (76 frames with the silence
    # coded past the end: without the drained half hop, 136 samples short)
    codes = model.encode(x, kbps=kbps)
    offline = model.decode(codes)
    assert not torch.allclose(offline, plain.decode(codes), atol=1e-3)  # the gains did something
    with model.streaming():
        parts = [model.decode(codes[..., s : s + 4]) for s in range(0, codes.shape[-1], 4)]
        streamed = torch.cat([*parts, model.drain(1, 1)], dim=-1)
    assert torch.allclose(streamed[..., HOP // 2 :], offline, atol=1e-5)
    # a file: the stream decoder drops the longer lead and adds the drained tail
    wav = tmp_path / "in.wav"
    sf.write(wav, x[0, 0].numpy(), RATE, subtype="FLOAT")  # (the same codes as x's)
    compress_file(wav, tmp_path / "a.rvq", kbps=kbps, model=model)
    decompress_file(tmp_path / "a.rvq", tmp_path / "out.wav", model=model)
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    assert out.shape == (x.shape[-1],)
    assert np.abs(out[-HOP // 2 :]).max() > 0.2 * np.abs(out).max()  # the drained tail is there
    # (the file codes output_delay samples of silence past the end: from the last frame's
    # window on, its output also has that frame's)
    delay, end = MODEL.output_delay, x.shape[-1] - MODEL.output_delay - HOP
    assert np.allclose(out[:end], offline[0, 0, delay : delay + end].numpy(), atol=1e-4)


def test_a_cut_file_fades_out_to_its_end_drained_tail_included(tmp_path):
    """The frames missing from a cut file are concealed, fading out to silence; the half hop
    that envelope matching owes at the end takes the last frame's gain (0) too."""
    model = make_model(MODEL)
    wav = tmp_path / "in.wav"
    sf.write(wav, tone(2.0, RATE, seed=3)[0], RATE, subtype="FLOAT")
    compress_file(wav, tmp_path / "a.rvq", kbps=6, model=model)
    data = (tmp_path / "a.rvq").read_bytes()
    with StreamDecoder(model) as decoder:  # (not strict: the frames past the cut are concealed)
        out = np.concatenate([decoder.push(data[: len(data) * 2 // 3]), decoder.finish()])[:, 0]
    assert decoder.stats.lost_frames > 50 and len(out) > 1.9 * RATE  # (the file writer pads the rest)
    assert np.abs(out[: RATE // 2]).max() > 0.01 and not out[-HOP:].any()
