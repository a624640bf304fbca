"""The 8-kHz edge (codec/edge.py): the power of the bands around 8 kHz, measured by the encoder,
carried in the low band's arithmetic code (codec/lowband.py) and made by envelope matching
with noise (codec/envelope.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from codec import CodecConfig, arith
from codec.edge import EDGE_HZ, EDGE_LARGEST, EDGE_STEP, EDGE_TABLE, edge_groups, edge_steps, with_edge
from codec.envelope import FLOOR_MIN_LEVELS, EnvelopeMatch
from codec.logmel import FLOOR, LogMelEncoder, mel_edges
from codec.lowband import (ARITH_LARGEST, ARITH_TABLE, EDGE_MIN_BINS, GAIN_BITS, LowbandDecoder, LowbandEncoder, _pack_arithmetic,
                           _unpack_arithmetic, quantize_arithmetic)
from conftest import SMALL, make_model, tone

RATE, HOP, MELS = 24000, 320, 80


def power(log_mel: np.ndarray) -> np.ndarray:
    """Log-mel values -> powers with the floor taken off (as the edge counts them, down to 0.1 F)."""
    return np.maximum(np.exp(log_mel) - 0.9 * FLOOR, 0.1 * FLOOR)


def test_the_groups_are_the_bands_centred_in_their_ranges():
    centres = mel_edges(RATE, MELS)[1:-1]
    groups = edge_groups(RATE, MELS)
    assert len(groups) == len(EDGE_HZ) == 2
    for g, (lo, hi) in zip(groups, EDGE_HZ):
        assert g.size >= 2 and (centres[g] >= lo).all() and (centres[g] < hi).all()
        assert centres[g.min() - 1] < lo and centres[g.max() + 1] >= hi  # none left out
    assert edge_groups(8000, 40) == []  # nothing up there at 8 kHz sampling


def test_steps_are_the_power_ratio_in_3_db_steps_upwards_only():
    """Originals whose group powers are the coded ones times 2^k come out as step k, clipped to
    0..EDGE_LARGEST; the frames rebuilt from the steps hold the original's group powers where
    the step is within reach, are marked raised where it is over 0, and are the coded ones
    elsewhere."""
    groups = edge_groups(RATE, MELS)
    g = torch.Generator().manual_seed(0)
    coded = torch.log(torch.rand(1, MELS, 11, generator=g, dtype=torch.float64) * 50 * FLOOR + FLOOR)  # 0..50 F over the floor
    wanted = torch.arange(-5, 6)  # frame t: 2^(t - 5) times the coded power in every group
    original = coded.clone()
    for idx in groups:
        p = power(coded[:, idx].numpy()) * 2.0 ** wanted.numpy()
        original[:, idx] = torch.from_numpy(np.log(p + 0.9 * FLOOR))
    steps = edge_steps(original, coded, groups)
    assert steps.shape == (1, 11, 2) and steps.dtype == torch.int64
    assert torch.equal(steps[0, :, 0], wanted.clamp(0, EDGE_LARGEST))
    assert torch.equal(steps[0, :, 1], steps[0, :, 0])
    rebuilt, raised = with_edge(coded, steps, groups)
    inside = (wanted >= 0) & (wanted <= EDGE_LARGEST)
    for idx in groups:
        assert np.allclose(power(rebuilt[:, idx].numpy())[..., inside], power(original[:, idx].numpy())[..., inside])
        assert np.array_equal(raised[0, idx], (wanted > 0).expand(len(idx), -1).numpy())
        assert torch.allclose(rebuilt[:, idx][..., wanted <= 0], coded[:, idx][..., wanted <= 0])
    others = np.setdiff1d(np.arange(MELS), np.concatenate(groups))
    assert torch.equal(rebuilt[:, others], coded[:, others]) and not raised[:, others].any() and raised.dtype == bool
    half = coded.clone()  # 2^0.4 rounds to step 0, 2^0.6 to step 1
    for idx, k in zip(groups, (0.4, 0.6)):
        half[:, idx] = torch.from_numpy(np.log(power(coded[:, idx].numpy()) * 2.0**k + 0.9 * FLOOR))
    assert edge_steps(half, coded, groups)[0].tolist() == [[0, 1]] * 11
    assert EDGE_STEP == pytest.approx(math.log(2))


def test_the_format_is_as_docs_bitstream_md_writes_it():
    """docs/bitstream.md's ``arithmetic-edge``: 5 frequencies ``max(1, floor(exp(-e / 0.7) / Z x
    (2^15 - 5)))``, the remainder added to 0; steps of 3 dB; groups centred in 7.6-8.3 and
    8.3-9 kHz; steps from 13 coefficients (what a file's codes mean: the weights hash names the
    coding alone)."""
    p = np.exp(-np.arange(5) / 0.7)
    freq = np.maximum(1, np.floor(p / p.sum() * (2**15 - 5)))
    freq[0] += 2**15 - freq.sum()
    assert EDGE_TABLE.freq == tuple(int(f) for f in freq)
    assert EDGE_STEP == math.log(2) and EDGE_HZ == ((7600.0, 8300.0), (8300.0, 9000.0)) and EDGE_MIN_BINS == 13


def test_the_steps_table_is_cheapest_at_zero_and_the_largest_steps_fit_beside_zero_coefficients():
    """The geometric table: frequencies falling with the step, summing to the coder's total;
    at EDGE_MIN_BINS coefficients (4 bits each after the gain) the dearest steps and all-zero
    coefficients fit, and one coefficient fewer they might not."""
    cost = EDGE_TABLE.cost()
    assert len(cost) == EDGE_LARGEST + 1 and (np.diff(cost) > 0).all() and cost[0] < 0.5
    assert sum(EDGE_TABLE.freq) == arith.TOTAL
    zero = ARITH_TABLE.cost()[ARITH_LARGEST]
    worst = len(edge_groups(RATE, MELS)) * cost[-1]
    assert worst + EDGE_MIN_BINS * zero <= 4 * EDGE_MIN_BINS
    assert worst + (EDGE_MIN_BINS - 1) * zero > 4 * (EDGE_MIN_BINS - 1)


def test_arithmetic_code_with_a_table_for_each_symbol():
    """Symbols of two tables in one code: decoded back with the same tables; the code fits
    when their costs do; a table list of the wrong length is refused."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        steps = rng.integers(0, EDGE_LARGEST + 1, 2).tolist()
        coefs = np.clip(np.round(rng.laplace(0, 3, 23)), -ARITH_LARGEST, ARITH_LARGEST).astype(int) + ARITH_LARGEST
        tables = [EDGE_TABLE] * 2 + [ARITH_TABLE] * 23
        cost = EDGE_TABLE.cost()[steps].sum() + ARITH_TABLE.cost()[coefs].sum()
        bits = math.ceil(cost)
        code = arith.encode(steps + coefs.tolist(), tables, bits)
        assert code is not None and 0 <= code < 2 ** bits
        assert arith.decode(code, 25, tables, bits) == steps + coefs.tolist()
        assert arith.encode(steps + coefs.tolist(), tables, math.floor(cost) - 1) is None  # they cost more
    with pytest.raises(ValueError, match="a table for each"):
        arith.encode([0, 0], [EDGE_TABLE], 10)


def test_the_low_band_fits_its_coefficients_in_the_bits_the_steps_leave():
    """Frames with dear steps (4 either way) get coarser coefficients than with free ones, and
    each frame's steps and coefficients cost at most its bits; the words decode back to both."""
    g = torch.Generator().manual_seed(2)
    ratio = torch.randn(1, 40, 23, generator=g, dtype=torch.float64)
    bits = 10 * 10 - GAIN_BITS
    steps = torch.tensor([[[4, 3], [0, 0]] * 20])  # [1, 40, 2]: dear, cheap, ...
    side = EDGE_TABLE.cost()[steps.numpy()].sum(-1)  # [1, 40]
    gain, q = quantize_arithmetic(ratio, bits - side)
    cost = ARITH_TABLE.cost()[(q + ARITH_LARGEST).numpy()].sum(-1)
    assert (cost + side <= bits + 1e-9).all()
    assert cost[0, 0::2].mean() < cost[0, 1::2].mean() - 10  # 15.3 bits of steps against 0.8
    for t in range(40):  # a frame's search depends on its own bits alone
        alone = quantize_arithmetic(ratio[:, t : t + 1], bits - side[0, t])
        assert torch.equal(alone[1][0, 0], q[0, t])
    words = _pack_arithmetic(gain, q, 10, 10, steps)
    gain2, q2, steps2 = _unpack_arithmetic(words, 23, 10, 2)
    assert torch.equal(gain2, gain) and torch.equal(q2, q) and torch.equal(steps2, steps)
    assert torch.equal(_unpack_arithmetic(_pack_arithmetic(gain, q, 10, 10), 23, 10)[1], q)  # no steps: as v21 packs


def test_the_low_band_coder_carries_the_steps_and_the_arithmetic_coding_does_not():
    """LowbandEncoder/Decoder with the edge: the steps given come back (zeros when none are
    given) from EDGE_MIN_BINS coefficients, not under; the plain coding reads none."""
    geometry = (RATE, HOP, 96, MELS, 10)
    x = torch.from_numpy(tone(0.5, RATE)[:1]).float().reshape(1, 1, -1)[..., : 37 * HOP]
    latent = LogMelEncoder(RATE, HOP, MELS)(x)
    steps = torch.randint(0, EDGE_LARGEST + 1, (1, 37, 2), generator=torch.Generator().manual_seed(3))
    enc, dec = LowbandEncoder(*geometry, "arithmetic-edge"), LowbandDecoder(*geometry, "arithmetic-edge")
    for words, carried in ((10, 2), (6, 2), (5, 0), (1, 0)):  # 23, 13, 11 and 1 coefficients
        read = dec.read(enc(x, latent, words, steps), latent)[2]
        assert read.shape == (1, 37, carried)
        assert torch.equal(read, steps[..., :carried])
    assert dec.read(enc(x, latent, 10), latent)[2].abs().max() == 0
    # the coefficients fit beside the steps (a frame that did not would be sent as zeros)
    inp = torch.cat([torch.zeros(1, 96, dtype=torch.float64), x[:, 0].double()], dim=-1)
    wanted = enc.analyse(inp, 23) / enc.steps(latent, 23)
    for given in (steps, torch.full_like(steps, EDGE_LARGEST)):
        got = dec.read(enc(x, latent, 10, given), latent)[0]
        error = ((got - wanted) ** 2).sum(-1) / (wanted**2).sum(-1)  # [1, F]
        assert error.max() < 0.1, error.max()
    plain = LowbandDecoder(*geometry, "arithmetic")
    assert plain.read(LowbandEncoder(*geometry, "arithmetic")(x, latent, 10), latent)[2].shape == (1, 37, 0)
    with pytest.raises(ValueError, match="edge steps"):
        enc(x, latent, 10, steps[..., :1])


def band_noise(frames: int, lo: float, hi: float, level: float, seed: int) -> torch.Tensor:
    """White noise within ``lo``..``hi`` Hz, ``[1, 1, frames * HOP]``."""
    n = frames * HOP
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[(f < lo) | (f >= hi)] = 0
    return torch.from_numpy(np.fft.irfft(spec, n) * level).float().reshape(1, 1, n)


def test_envelope_matching_makes_the_raised_edge_with_noise_and_no_gain_over_one():
    """Decoded audio: a tone at 8.5 kHz; the target asks 16 times its power there. Plain
    matching raises the tone 12 dB; where the edge raised the band (second half) the gain at
    the tone is 1 and noise brings the band to the target; in frames of fewer than
    FLOOR_MIN_LEVELS levels the edge changes nothing."""
    frames = 40
    t = torch.arange(frames * HOP) / RATE
    x = (0.01 * torch.sin(2 * math.pi * 8500 * t)).reshape(1, 1, -1)
    measured = LogMelEncoder(RATE, HOP, MELS)(x)
    idx = torch.from_numpy(np.concatenate(edge_groups(RATE, MELS)))
    target = measured.clone()
    target[:, idx] = torch.log((torch.exp(measured[:, idx]) - FLOOR) * 16 + FLOOR)
    raised = np.zeros(target.shape, dtype=bool)
    raised[:, idx.numpy(), frames // 2 :] = True
    em = EnvelopeMatch(RATE, HOP, MELS, 1.0, floor=0.1, fill=1.0)
    plain = em(x, target, FLOOR_MIN_LEVELS, 0)
    edge = em(x, target, FLOOR_MIN_LEVELS, 0, raised)
    first, second = slice(4 * HOP, (frames // 2 - 2) * HOP), slice((frames // 2 + 2) * HOP, -4 * HOP)

    def tone_amplitude(y: torch.Tensor, part: slice) -> float:
        return float(2 * (y[0, 0, part].double() * torch.sin(2 * math.pi * 8500 * t[part].double())).mean())

    assert tone_amplitude(plain, second) == pytest.approx(0.04, rel=0.1)  # raised 12 dB
    assert tone_amplitude(edge, first) == pytest.approx(0.04, rel=0.1)  # not raised by the edge: as plain
    buf = np.concatenate([np.zeros((1, HOP)), x[:, 0].double().numpy()], axis=1)
    gains, noise = em.match(buf, target.double().numpy(), 0, 0.1, True, raised)
    tone_bin = round(8500 / (RATE / HOP))  # (a one-hop window's bins)
    assert gains[0, 2 : frames // 2, tone_bin].min() > 3.9 and np.abs(gains[0, frames // 2 + 1 :, tone_bin] - 1).max() < 1e-9
    assert noise[0, : frames // 2, tone_bin].max() == 0 and noise[0, frames // 2 + 1 :, tone_bin].min() > 0
    made = LogMelEncoder(RATE, HOP, MELS)(edge)[:, idx, frames // 2 + 2 : -4]
    wanted = target[:, idx, frames // 2 + 2 : -4]
    ratio = (torch.exp(made) - FLOOR).sum(1).mean() / (torch.exp(wanted) - FLOOR).sum(1).mean()
    assert 0.7 < float(ratio) < 1.3
    coarse = em(x, target, FLOOR_MIN_LEVELS - 1, 0, raised)
    assert torch.equal(coarse, em(x, target, FLOOR_MIN_LEVELS - 1, 0))
    with pytest.raises(ValueError, match="edge's bands and frames"):
        em(x, target, FLOOR_MIN_LEVELS, 0, raised[..., 1:])


def test_the_config_needs_the_fill_for_the_edge():
    base = dict(encoder="logmel", latent_dim=80, decoder="spectral", envelope_match=1.0)
    assert CodecConfig(**base, envelope_fill=1.0, lowband_coding="arithmetic-edge").lowband_coding == "arithmetic-edge"
    with pytest.raises(ValueError, match="needs envelope_fill"):
        CodecConfig(**base, lowband_coding="arithmetic-edge")


MODEL = dataclasses.replace(SMALL, encoder="logmel", latent_dim=80, decoder="spectral", decoder_dim=16, decoder_layers=2,
                            output_delay=96, lowband_levels=(0, 0, 0, 6, 8), envelope_match=1.0, envelope_floor=0.1,
                            envelope_fill=1.0, lowband_coding="arithmetic-edge", name="test-edge")


def test_a_model_with_the_edge_streams_its_offline_codes_and_audio():
    """Input with noise at 7.7-8.9 kHz: the codes carry steps (some not 0); encoding streamed
    in chunks gives the offline codes, and decoding streamed gives the offline audio half a
    hop later; without the steps (the plain coding's words read as the edge's) the audio
    differs."""
    model = make_model(MODEL)
    x = torch.from_numpy(tone(1.0, RATE, seed=4)[:1]).float().reshape(1, 1, -1) * 0.3
    x = x + band_noise(75, 7700, 8900, 0.3, 5)[..., : x.shape[-1]]
    codes = model.encode(x, kbps=12)
    levels, words = model.layout(16)
    read = model.lowband_decoder.read(codes[0, :, levels:], model.quantizer.decode(codes[0, :, :levels]))[2]
    assert read.shape[-1] == 2 and (read > 0).float().mean() > 0.2
    with model.streaming():
        parts = [model.encode(x[..., s : s + 777], kbps=12) for s in range(0, x.shape[-1], 777)]
        parts.append(model.flush(1, 1, kbps=12))
    assert torch.equal(torch.cat(parts, dim=-1), codes)
    offline = model.decode(codes)
    with model.streaming():
        streamed = torch.cat([*(model.decode(codes[..., s : s + 3]) for s in range(0, codes.shape[-1], 3)),
                              model.drain(1, 1)], dim=-1)
    assert torch.allclose(streamed[..., HOP // 2 :], offline, atol=1e-5)
    # the same codes decoded as if every step were 0: the output differs, above 7 kHz alone
    zeroed = model.lowband_decoder.read
    try:
        model.lowband_decoder.read = lambda *a: (*zeroed(*a)[:2], torch.zeros_like(zeroed(*a)[2]))
        flat = model.decode(codes)
    finally:
        del model.lowband_decoder.read
    diff = np.abs(np.fft.rfft((offline - flat)[0, 0].double().numpy())) ** 2
    freqs = np.fft.rfftfreq(offline.shape[-1], 1 / RATE)
    assert diff.sum() > 1e-6 and diff[freqs >= 7000].sum() > 0.99 * diff.sum()


def test_info_names_the_edge_where_the_frames_carry_it():
    from codec.lowband import describe

    assert describe(MODEL, 16).endswith("; and the power around 8 kHz)")
    assert "8 kHz" not in describe(dataclasses.replace(MODEL, lowband_coding="arithmetic"), 16)
    assert "8 kHz" not in describe(MODEL, 8)  # 6 kbps: no low band


def test_frames_of_fewer_than_six_levels_ignore_the_steps(monkeypatch):
    """A model whose 12 kbps frames keep 4 levels (envelope matching's noise starts at
    FLOOR_MIN_LEVELS): the steps are coded, but its decoder raises no band with them (a gain
    would, not noise); its 24 kbps frames (8 levels) do."""
    import codec.model

    model = make_model(dataclasses.replace(MODEL, lowband_levels=(0, 0, 0, 4, 8)))
    x = torch.from_numpy(tone(1.0, RATE, seed=4)[:1]).float().reshape(1, 1, -1) * 0.3
    x = x + band_noise(75, 7700, 8900, 0.3, 5)[..., : x.shape[-1]]
    raised = []
    monkeypatch.setattr(codec.model, "with_edge", lambda *a: raised.append(a[1]) or with_edge(*a))
    for kbps, levels, used in ((12, 4, False), (24, 8, True)):
        codes = model.encode(x, kbps=kbps)
        steps = model.lowband_decoder.read(codes[0, :, levels:], model.quantizer.decode(codes[0, :, :levels]))[2]
        assert (steps > 0).any()
        raised.clear()
        model.decode(codes)
        assert bool(raised) == used and (not used or torch.equal(raised[0], steps[None][0])), kbps
