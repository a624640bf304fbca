"""The low band's waveform (codec/lowband.py): the transform, the bit layout, and a log-mel
model that codes it at its higher bitrates, offline and streamed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from codec import Codec
from codec.weights import fingerprint, reads
from codec import arith
from codec.lowband import (
    ARITH_LARGEST, ARITH_TABLE, COEF_BITS, GAIN_BITS, GAIN_OFFSET, LEVELS, LowbandDecoder, LowbandEncoder, _pack, _pack_arithmetic, _unpack,
    _unpack_arithmetic, bins_for, quantize, quantize_arithmetic,
)
from conftest import SMALL, make_model, tone

HOP, OVERLAP = 320, 96
LOWBAND = dataclasses.replace(SMALL, encoder="logmel", latent_dim=40, decoder="spectral", decoder_dim=16, decoder_layers=2,
                              output_delay=OVERLAP, lowband_levels=(0, 0, 0, 8, 8), name="test-lowband")
ARITHMETIC = dataclasses.replace(LOWBAND, lowband_coding="arithmetic")


def test_every_coefficient_gives_back_the_input_overlap_samples_later():
    """With all ``hop`` coefficients unquantized, the low-overlap MDCT's aliasing cancels:
    block ``t`` is the input's ``[t * hop - overlap, (t + 1) * hop - overlap)``."""
    enc, dec = LowbandEncoder(24000, HOP, OVERLAP, 80, 10), LowbandDecoder(24000, HOP, OVERLAP, 80, 10)
    x = torch.randn(2, 12 * HOP, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coefs = enc.analyse(torch.cat([torch.zeros(2, OVERLAP, dtype=torch.float64), x], dim=-1), HOP)
    y = dec.synthesise(coefs)[:, 0]
    assert y.shape == x.shape
    assert torch.allclose(y[:, OVERLAP:].double(), x[:, :-OVERLAP], atol=1e-5)
    assert y[:, :OVERLAP].abs().max() < 1e-5


def test_the_bands_under_a_narrow_low_band_weigh_less_in_the_search():
    """At 12 kbps (the band to 862 Hz) the mel bands that end under it count SEARCH_WEIGHT in
    the levels' search (found here from the filters themselves: their last non-zero bin),
    and the model's codes are that search's; at 6 kbps (no band) and 24 (to 2,175 Hz) all
    count 1."""
    from codec.logmel import mel_filterbank
    from codec.lowband import SEARCH_WEIGHT, search_weights
    from codec.weights import registered_config

    cfg = registered_config("rvq24k")
    filters = mel_filterbank(24000, 24000, 80)  # 1-Hz bins
    tops = np.array([np.nonzero(f)[0].max() + 1 for f in filters])  # each band's upper edge, Hz
    w = search_weights(cfg, 16)
    assert w.dtype == torch.float64 and set(w.tolist()) == {SEARCH_WEIGHT, 1.0}
    assert torch.equal(w < 1, torch.from_numpy(tops <= 23 * 24000 / 640)) and int((w < 1).sum()) > 10
    assert search_weights(cfg, 8) is None and search_weights(cfg, 32) is None
    search_weights.cache_clear()
    with torch.inference_mode():  # a first call there must not keep an inference tensor (no caching on it)
        assert not search_weights(cfg, 16).is_inference()
    model = make_model(LOWBAND)  # 12 kbps: 8 levels and the band to 675 Hz
    x = torch.from_numpy(tone(0.48, 24000))[None]
    with torch.no_grad():
        z = model.encoder(x)
    weights = search_weights(model.cfg, 16)
    assert weights is not None
    levels = model.encode(x, kbps=12)[0, :, :8]
    assert torch.equal(levels, model.quantizer.encode(z, 8, weights=weights))
    assert not torch.equal(levels, model.quantizer.encode(z, 8))


def test_a_cast_model_keeps_the_transform_exact():
    """``model.half()`` (or ``.to(dtype)``) casts weights, not the low band's float64 basis,
    window and envelope weights: rounded, they would change the codes."""
    model = make_model(LOWBAND)
    exact = {name: b.clone() for name, b in model.lowband_encoder.named_buffers()}
    model.half()
    model.to(torch.bfloat16)
    for part in (model.lowband_encoder, model.lowband_decoder):
        for name, b in part.named_buffers():
            assert b.dtype == torch.float64 and torch.equal(b, exact[name]), name
    assert next(model.decoder.parameters()).dtype == torch.bfloat16


def test_the_words_carry_the_gain_and_coefficient_codes_unchanged():
    words, bits = 8, 10
    bins = bins_for(words, bits)
    assert GAIN_BITS + bins * COEF_BITS <= words * bits < GAIN_BITS + (bins + 1) * COEF_BITS
    g = torch.Generator().manual_seed(1)
    gain = torch.randint(0, 2 ** GAIN_BITS, (3, 5, 1), generator=g)
    q = torch.randint(-LEVELS, LEVELS + 1, (3, 5, bins), generator=g)
    packed = _pack(gain, q, words, bits)
    assert packed.shape == (3, words, 5) and 0 <= packed.min() and packed.max() < 2 ** bits
    gain2, q2 = _unpack(packed, bins, bits)
    assert torch.equal(gain2, gain) and torch.equal(q2, q)


def test_the_gain_brings_the_decoded_coefficients_closer_than_the_largest_ones_gain():
    """The encoder's gain (``quantize``), as the decoder reads it back from the words, leaves
    no more squared error than the gain that just covers the frame's largest ratio (rounded up
    to 1.5 dB, as written here) on any frame, and less over frames of Laplace-distributed
    ratios (a few large coefficients, many small ones, as in speech), where it is often lower."""
    bins, words, bits, frames = 23, 10, 10, 200
    g = torch.Generator().manual_seed(3)
    magnitude = -torch.log(torch.rand(2, frames, bins, dtype=torch.float64, generator=g))
    ratio = magnitude * torch.where(torch.rand(2, frames, bins, generator=g) < 0.5, -1.0, 1.0).double()
    gain, q = quantize(ratio)
    dec = LowbandDecoder(24000, HOP, OVERLAP, 80, bits)
    decoded, _ = dec.coefficients(_pack(gain, q, words, bits), torch.zeros(2, 80, frames))
    error = ((decoded - ratio) ** 2).sum(-1)
    peak_code = torch.ceil(torch.log2(ratio.abs().amax(-1, keepdim=True)) * 4 - 1e-9) + 32
    step = torch.exp2((peak_code - 32) / 4) / 7
    peak_error = ((torch.round(ratio / step).clamp(-7, 7) * step - ratio) ** 2).sum(-1)
    assert (error <= peak_error * (1 + 1e-12)).all()
    assert error.sum() < 0.9 * peak_error.sum(), error.sum() / peak_error.sum()
    assert (gain < peak_code).double().mean() > 0.3


def _laplace_ratios(frames: int, bins: int, seed: int) -> torch.Tensor:
    """``[2, frames, bins]`` float64: Laplace-distributed ratios, frame levels over 60 dB."""
    g = torch.Generator().manual_seed(seed)
    magnitude = -torch.log(torch.rand(2, frames, bins, dtype=torch.float64, generator=g))
    sign = torch.where(torch.rand(2, frames, bins, generator=g) < 0.5, -1.0, 1.0).double()
    level = torch.exp(torch.linspace(-3.5, 3.5, frames, dtype=torch.float64))[None, :, None]
    return magnitude * sign * level


@pytest.mark.parametrize("bins, words", [(23, 10), (58, 24)])  # 12 and 24 kbps
def test_arithmetic_coding_fits_the_frame_and_comes_closer_than_four_bits(bins, words):
    """Every frame's coefficients, as :func:`quantize_arithmetic` steps them, cost at most the
    bits after the gain; read back from the words they are what it chose; and in the same bits
    they come closer to Laplace-distributed ratios than the fixed 4 bits each (by 3.5 dB on
    these, more on speech, whose coefficients are smaller than their peak more often)."""
    bits, frames = 10, 150
    ratio = _laplace_ratios(frames, bins, bins)
    gain, q = quantize_arithmetic(ratio, words * bits - GAIN_BITS)
    assert q.abs().max() <= ARITH_LARGEST
    cost = torch.from_numpy(ARITH_TABLE.cost())[(q + ARITH_LARGEST)].sum(-1)
    # (one 1.5-dB step of the gain moves the cost by about a quarter of a bit a coefficient)
    assert (cost <= words * bits - GAIN_BITS).all() and (cost > words * bits - GAIN_BITS - 0.3 * bins).float().mean() > 0.9
    packed = _pack_arithmetic(gain, q, words, bits)
    assert packed.shape == (2, words, frames) and 0 <= packed.min() and packed.max() < 2 ** bits
    gain2, q2, _ = _unpack_arithmetic(packed, bins, bits)
    assert torch.equal(gain2, gain) and torch.equal(q2, q)
    dec = LowbandDecoder(24000, HOP, OVERLAP, 80, bits, "arithmetic")
    decoded, _ = dec.coefficients(packed, torch.zeros(2, 80, frames))
    assert torch.allclose(decoded, q.double() * torch.exp2((gain.double() - 32) / 4) / 7)
    fixed_gain, fixed_q = quantize(ratio)
    fixed, _ = LowbandDecoder(24000, HOP, OVERLAP, 80, bits).coefficients(_pack(fixed_gain, fixed_q, words, bits),
                                                                         torch.zeros(2, 80, frames))
    gap = 10 * torch.log10(((fixed - ratio) ** 2).sum() / ((decoded - ratio) ** 2).sum())
    assert gap > 2.5, gap


def test_rounding_towards_zero_lets_a_finer_gain_fit(monkeypatch):
    """Where plain rounding at a gain costs more than the frame's bits, moving the cheapest
    coefficients one step towards zero can make it fit: the chosen codes still fit, no frame
    comes out farther from its ratios than with plain rounding alone, and over Laplace frames
    they come closer and use more of the bits."""
    import codec.lowband as lowband

    ratio = _laplace_ratios(200, 23, 17)
    cost = torch.from_numpy(ARITH_TABLE.cost())

    def chosen(monkeypatched: bool) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(lowband, "lowband_search", lambda *a, **k: None)  # the NumPy steps (frame.c's are the same)
        if monkeypatched:
            monkeypatch.setattr(lowband, "_rounded_to_fit", lambda q, *rest: q)
        gain, q = quantize_arithmetic(ratio, 94)
        monkeypatch.undo()
        error = ((q.double() * torch.exp2((gain.double() - GAIN_OFFSET) / 4) / LEVELS - ratio) ** 2).sum(-1)
        return error, cost[q + ARITH_LARGEST].sum(-1)

    (error, used), (plain_error, plain_used) = chosen(False), chosen(True)
    assert (used <= 94).all() and (error <= plain_error * (1 + 1e-12)).all()
    assert error.sum() < 0.98 * plain_error.sum() and used.mean() > plain_used.mean() + 0.5, (
        error.sum() / plain_error.sum(), used.mean(), plain_used.mean())


@pytest.mark.parametrize("word_bits, words", [(5, 20), (7, 14), (13, 8)])
def test_arithmetic_words_of_any_width_carry_the_gain_and_coefficients(word_bits, words):
    """Codebooks of other sizes cut the frame's bits into words of their width; the gain and
    the coefficients come back unchanged (also with bits that are not whole bytes)."""
    bins = bins_for(words, word_bits)
    ratio = _laplace_ratios(9, bins, word_bits)
    gain, q = quantize_arithmetic(ratio, words * word_bits - GAIN_BITS)
    packed = _pack_arithmetic(gain, q, words, word_bits)
    assert packed.shape == (2, words, 9) and 0 <= packed.min() and packed.max() < 2 ** word_bits
    gain2, q2, _ = _unpack_arithmetic(packed, bins, word_bits)
    assert torch.equal(gain2, gain) and torch.equal(q2, q) and q.abs().max() > 1


def test_arithmetic_words_hold_the_gain_then_the_code_most_significant_first():
    """The layout docs/bitstream.md gives: the frame's bits are the 6-bit gain code, then the
    arithmetic code of the coefficients' symbols (steps + 40) in the rest, cut into words
    first bit first."""
    words, word_bits = 10, 10
    ratio = _laplace_ratios(3, 23, 11)
    gain, q = quantize_arithmetic(ratio, words * word_bits - GAIN_BITS)
    packed = _pack_arithmetic(gain, q, words, word_bits)
    for b in range(2):
        for t in range(3):
            code = arith.encode((q[b, t] + 40).tolist(), ARITH_TABLE, words * word_bits - GAIN_BITS)
            value = (int(gain[b, t, 0]) << (words * word_bits - GAIN_BITS)) | code
            expected = [(value >> (word_bits * (words - 1 - i))) & 1023 for i in range(words)]
            assert packed[b, :, t].tolist() == expected


def test_frames_that_no_gain_fits_are_clipped_alike_in_every_row_and_block():
    """Frames too costly at every gain tried, in several rows and past the first block of
    frames, get the largest gain and the most steps that fit, each as it would alone."""
    from codec.lowband import ARITH_BLOCK_FRAMES

    frames = ARITH_BLOCK_FRAMES + 40
    ratio = _laplace_ratios(frames, 23, 5) * 1e-3
    loud = [(0, 3), (1, 3), (1, ARITH_BLOCK_FRAMES + 7), (0, frames - 1)]
    for i, (b, t) in enumerate(loud):
        ratio[b, t] = 110.0 + 600.0 * i  # (even 110, within the largest gain, is too costly at it)
    gain, q = quantize_arithmetic(ratio, 94)
    cost = torch.from_numpy(ARITH_TABLE.cost())
    for b, t in loud:
        alone_gain, alone_q = quantize_arithmetic(ratio[b : b + 1, t : t + 1], 94)
        assert int(gain[b, t, 0]) == int(alone_gain) == 63 and torch.equal(q[b, t], alone_q[0, 0])
        limit = int(q[b, t].abs().max())
        assert cost[q[b, t] + ARITH_LARGEST].sum() <= 94 < cost[(q[b, t].sign() * (limit + 1)).long() + ARITH_LARGEST].sum()
    quiet = torch.ones(2, frames, dtype=torch.bool)
    for b, t in loud:
        quiet[b, t] = False
    assert (gain[..., 0][quiet] < 40).all()


def test_arithmetic_coding_takes_any_frame():
    """Silence, one huge coefficient among tiny ones, a frame of tiny ones, a wide one, one
    louder than the largest gain reaches, and non-finite ones: every frame fits its bits;
    silence comes back as zeros, a coefficient beyond the largest gain as the most it can say
    (``ARITH_LARGEST`` of that gain's steps), a frame too loud for every gain as the largest
    gain's steps clipped to what fits (not as silence), and a NaN as 0."""
    ratio = torch.zeros(1, 7, 23, dtype=torch.float64)
    ratio[0, 1, 5] = 1e6
    ratio[0, 1, 6:] = 1e-9
    ratio[0, 2] = 1e-30 * torch.linspace(1, 2, 23, dtype=torch.float64)
    ratio[0, 3] = torch.linspace(-30, 30, 23, dtype=torch.float64)
    ratio[0, 4] = 2000.0  # every coefficient beyond 40 steps of the largest gain
    ratio[0, 5, 0], ratio[0, 5, 1:] = float("nan"), 1.0
    ratio[0, 6, 0], ratio[0, 6, 1:] = float("inf"), 1.0
    gain, q = quantize_arithmetic(ratio, 94)
    cost = torch.from_numpy(ARITH_TABLE.cost())[(q + ARITH_LARGEST)].sum(-1)
    assert (cost <= 94).all()
    decoded, _ = LowbandDecoder(24000, HOP, OVERLAP, 80, 10, "arithmetic").coefficients(
        _pack_arithmetic(gain, q, 10, 10), torch.zeros(1, 80, 7))
    step = 2 ** (31 / 4) / 7  # the largest gain's step
    assert torch.equal(decoded[0, 0], torch.zeros(23)) and decoded[0, 1, 5] == pytest.approx(ARITH_LARGEST * step)
    assert decoded[0, 2].abs().max() < 1e-28
    assert ((decoded[0, 3] - ratio[0, 3]) ** 2).mean() < 0.02 * (ratio[0, 3] ** 2).mean()  # 17 dB at about 4 bits each
    assert int(gain[0, 4]) == 63 and (q[0, 4] == q[0, 4, 0]).all() and 2 <= int(q[0, 4, 0]) < ARITH_LARGEST
    assert cost[0, 4] > 94 - 0.6 * 23  # the most steps that fit: one more would not
    assert decoded[0, 5, 0] == 0 and (decoded[0, 5, 1:] - 1).abs().max() < 0.1
    assert decoded[0, 6, 0] > 0 and torch.isfinite(decoded).all()


def test_a_frame_whose_code_would_not_fit_is_sent_as_zeros():
    """(The encoder never asks for it: :func:`quantize_arithmetic` keeps to the bits.)"""
    q = torch.full((1, 1, 23), ARITH_LARGEST)
    assert arith.encode((q[0, 0] + ARITH_LARGEST).tolist(), ARITH_TABLE, 94) is None
    gain2, q2, _ = _unpack_arithmetic(_pack_arithmetic(torch.tensor([[[40]]]), q, 10, 10), 23, 10)
    assert int(gain2) == 40 and torch.equal(q2, torch.zeros_like(q))


def test_the_low_band_coding_is_a_known_one_and_part_of_the_weights_hash():
    with pytest.raises(ValueError, match="lowband_coding"):
        dataclasses.replace(LOWBAND, lowband_coding="huffman")
    with pytest.raises(ValueError, match="coding"):
        LowbandEncoder(24000, HOP, OVERLAP, 80, 10, "huffman")
    fixed, coded = make_model(LOWBAND), make_model(ARITHMETIC)
    assert all(torch.equal(a, b) for a, b in zip(fixed.state_dict().values(), coded.state_dict().values()))
    assert fixed.cfg.same_architecture(coded.cfg)
    assert not reads(coded, fingerprint(fixed)[:8]) and not reads(fixed, fingerprint(coded)[:8])
    plain = make_model(dataclasses.replace(LOWBAND, lowband_levels=()))  # without a band the coding means nothing
    assert fingerprint(plain) == fingerprint(make_model(dataclasses.replace(ARITHMETIC, lowband_levels=())))


def test_arithmetic_coding_carries_the_low_band_waveform_more_closely():
    """An untrained decoder: below 500 Hz the output follows a tone at 12 and 24 kbps with
    either coding, and at least 6 dB more closely with the arithmetic one."""
    x = torch.from_numpy(tone(1.0, 24000))[None]
    ref = x[0, 0, : x.shape[-1] - OVERLAP].numpy().astype(np.float64)
    snr = {}
    for cfg in (LOWBAND, ARITHMETIC):
        model = make_model(cfg)
        for kbps in (12, 24):
            y = model.decode(model.encode(x, kbps=kbps))[0, 0, OVERLAP : x.shape[-1]].numpy()
            snr[cfg.lowband_coding, kbps] = _snr(_low(ref, 24000, 500), _low(y, 24000, 500))
    for kbps in (12, 24):
        assert snr["fixed", kbps] > 15 and snr["arithmetic", kbps] > snr["fixed", kbps] + 6, snr


def _low(a: np.ndarray, rate: int, hz: float) -> np.ndarray:
    s = np.fft.rfft(a)
    s[np.fft.rfftfreq(len(a), 1 / rate) > hz] = 0
    return np.fft.irfft(s, len(a))


def _snr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((ref - out) ** 2).sum()))


def test_codes_beyond_the_log_mel_levels_carry_the_low_band_waveform():
    """An untrained decoder makes up its waveform; with the low band (12 kbps: 8 levels and 8
    words) the output below 500 Hz follows the input's, at 6 kbps it does not."""
    model = make_model(LOWBAND)
    assert model.layout(8) == (8, 0) and model.layout(16) == (8, 8) and model.layout(32) == (8, 24)
    x = torch.from_numpy(tone(1.0, 24000))[None]  # [1, 1, T]
    snr = {}
    for kbps in (6, 12, 24):
        codes = model.encode(x, kbps=kbps)
        assert codes.shape[2] == model.n_q_for(kbps) and codes.max() < 1024
        y = model.decode(codes)[0, 0, OVERLAP : x.shape[-1]].numpy()
        ref = x[0, 0, : x.shape[-1] - OVERLAP].numpy().astype(np.float64)
        snr[kbps] = _snr(_low(ref, 24000, 500), _low(y, 24000, 500))
    assert snr[6] < 3 and snr[12] > 15 and snr[24] > 15, snr


def test_the_decoders_own_band_is_silenced_where_the_low_band_is_coded():
    """A decoder made loud everywhere: at 12 kbps its bins below the coded band are silent
    (else the low band would drown), at 6 kbps they are not."""
    model = make_model(LOWBAND)
    with torch.no_grad():
        model.decoder[-1].proj.bias[: HOP + 1] += 4.0  # every log magnitude e^4 times louder
    x = torch.from_numpy(tone(1.0, 24000))[None]
    snr = {}
    for kbps in (6, 12):
        y = model.decode(model.encode(x, kbps=kbps))[0, 0, OVERLAP : x.shape[-1]].numpy()
        ref = x[0, 0, : x.shape[-1] - OVERLAP].numpy().astype(np.float64)
        snr[kbps] = _snr(_low(ref, 24000, 300), _low(y, 24000, 300))
    assert snr[6] < 0 and snr[12] > 15, snr


def test_one_model_decodes_on_several_threads_at_different_bitrates():
    """The cut of the decoder's band holds for the calling thread only."""
    from concurrent.futures import ThreadPoolExecutor

    model = make_model(LOWBAND)
    x = torch.from_numpy(tone(0.5, 24000))[None]
    codes = {kbps: model.encode(x, kbps=kbps) for kbps in (6, 12)}
    alone = {kbps: model.decode(c) for kbps, c in codes.items()}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda k: (k, model.decode(codes[k])), [6, 12] * 20))
    assert all(torch.equal(y, alone[k]) for k, y in results)


@pytest.mark.parametrize("coding", ["fixed", "arithmetic"])
@pytest.mark.parametrize("channels, most_frames", [(2, 6), (1, 3)])  # mono, 1-2 frames: the live plan
def test_streamed_codes_and_audio_are_the_offline_ones_with_the_low_band(channels, most_frames, coding):
    model = make_model(dataclasses.replace(LOWBAND, lowband_coding=coding))
    x = torch.from_numpy(tone(0.8, 24000, channels=channels))[None]  # [1, C, T]
    for kbps in (12, 24):
        offline = model.encode(x, kbps=kbps)
        rng = np.random.default_rng(kbps)
        with model.streaming():
            parts, start = [], 0
            while start < x.shape[-1]:
                size = int(rng.integers(1, 900))
                parts.append(model.encode(x[..., start : start + size], kbps=kbps))
                start += size
            parts.append(model.flush(1, channels, kbps=kbps))
        streamed = torch.cat(parts, dim=-1)
        assert torch.equal(streamed, offline)
        audio = model.decode(offline)
        with model.streaming():
            pieces, start = [], 0
            while start < offline.shape[-1]:
                size = int(rng.integers(1, most_frames))
                pieces.append(model.decode(offline[..., start : start + size]))
                start += size
        assert torch.allclose(torch.cat(pieces, dim=-1), audio, atol=1e-5)


def test_each_bitrate_keeps_its_own_log_mel_levels():
    """``lowband_levels`` has one value per bandwidth; a codebook count between two served
    bitrates is laid out as the lower one."""
    model = make_model(dataclasses.replace(LOWBAND, lowband_levels=(0, 0, 0, 6, 8)))
    assert [model.layout(n) for n in (2, 8, 15, 16, 20, 32)] == [(2, 0), (8, 0), (15, 0), (6, 10), (6, 14), (8, 24)]


def test_the_low_band_needs_a_log_mel_model_with_an_output_delay():
    with pytest.raises(ValueError, match="log-mel"):
        dataclasses.replace(SMALL, lowband_levels=(0, 0, 0, 8, 8))
    with pytest.raises(ValueError, match="output_delay"):
        dataclasses.replace(LOWBAND, output_delay=0)
    with pytest.raises(ValueError, match="one value per bandwidth"):
        dataclasses.replace(LOWBAND, lowband_levels=(8, 8))
    with pytest.raises(ValueError, match="fewer than its codebooks"):
        dataclasses.replace(LOWBAND, lowband_levels=(0, 0, 0, 16, 8))
    assert Codec(dataclasses.replace(LOWBAND, lowband_levels=())).lowband_encoder is None


def test_levels_only_gives_every_level_of_the_quantizer():
    """Codebook statistics and training on codes (train/codes.py) need the quantizer's codes at
    every level, not the low band's words beyond ``lowband_levels``."""
    model = make_model(LOWBAND)
    x = torch.from_numpy(tone(0.48, 24000))[None]  # (whole frames)
    levels = model.encode(x, n_q=32, levels_only=True)
    with torch.no_grad():
        z = model.encoder(x)
    assert torch.equal(levels[0], model.quantizer.encode(z, 32, beam=1))  # greedy: level k's codes at any count
    assert torch.equal(levels[0, :, :8], model.quantizer.encode(z, 8, beam=1))
    hybrid = model.encode(x, n_q=32)  # 8 levels searched for 8, then the low band
    assert torch.equal(hybrid[0, :, :8], model.quantizer.encode(z, 8)) and not torch.equal(hybrid[:, :, 8:], levels[:, :, 8:])


def test_a_run_from_weights_with_a_low_band_exports_it(tmp_path):
    """The low band has no weights: a run started from a release that codes it (as the shipped
    model does) carries its lowband_levels, with its output delay and coding, into the model it
    validates and its exports; a recipe that sets its own (zeros: none) keeps it."""
    from train.export import export_run
    from train.loop import run
    from train.trainer import Trainer
    from train.prepare import build_cache
    from train_support import tiny_config, write_corpus

    from codec import load, save_model

    root = tmp_path / "corpus"
    build_cache(write_corpus(root / "data", speech=2, music=1), root / "cache", 8000, workers=1)
    model = {"encoder": "logmel", "ratios": (4, 8), "latent_dim": 16, "decoder": "spectral", "decoder_dim": 8,
             "decoder_layers": 1, "bandwidths": (1.0, 2.0, 4.0)}
    cfg = tiny_config(model=model, loss={"adversarial": 0.0, "feature_matching": 0.0}, optim={"ema": 0.9})
    release = Codec(dataclasses.replace(cfg.model, output_delay=8, lowband_levels=(0, 0, 1),  # 3 words: 1 coefficient
                                        lowband_coding="arithmetic")).eval()
    save_model(release, tmp_path / "release.safetensors")
    trainer = Trainer(cfg, root / "cache", tmp_path / "t")
    trainer.init_from(str(tmp_path / "release.safetensors"))
    assert trainer.gen.layout(4) == (1, 3) and trainer.ema.layout(4) == (1, 3)  # what it validates
    x = trainer.data.batch(0)
    assert torch.equal(trainer.release_model.encode(x, n_q=4), load(tmp_path / "release.safetensors").encode(x, n_q=4))
    run(cfg, root / "cache", tmp_path / "run", max_steps=1, init=str(tmp_path / "release.safetensors"), progress=False)
    exported = load(export_run(tmp_path / "run", tmp_path / "out.safetensors"))
    assert exported.cfg.lowband_levels == (0, 0, 1) and exported.cfg.output_delay == 8
    assert exported.cfg.lowband_coding == trainer.cfg.model.lowband_coding == "arithmetic"
    resumed = Trainer(cfg, root / "cache", tmp_path / "run")  # (the recipe alone: no low band)
    assert resumed.resume() and resumed.cfg.model.lowband_coding == "arithmetic" and resumed.gen.layout(4) == (1, 3)
    assert exported.layout(4) == (1, 3)
    none = tiny_config(model={**model, "lowband_levels": (0, 0, 0)}, loss={"adversarial": 0.0, "feature_matching": 0.0})
    plain = Trainer(none, root / "cache", tmp_path / "p")
    plain.init_from(str(tmp_path / "release.safetensors"))
    assert plain.gen.layout(4) == (4, 0) and plain.cfg.model.lowband_levels == (0, 0, 0)


def test_the_same_weights_with_and_without_a_low_band_refuse_each_others_files():
    """What the codes mean differs, so the weights hash does, whichever way it is checked;
    also with another overlap (the output delay), and after set_lowband, which changes a
    model in place."""
    plain, coded = make_model(dataclasses.replace(LOWBAND, lowband_levels=())), make_model(LOWBAND)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), coded.state_dict().values()))
    assert reads(coded, fingerprint(coded)[:8]) and reads(plain, fingerprint(plain)[:8])
    assert not reads(coded, fingerprint(plain)[:8]) and not reads(plain, fingerprint(coded)[:8])
    assert fingerprint(make_model(dataclasses.replace(LOWBAND, output_delay=64))) != fingerprint(coded)
    plain.set_lowband(LOWBAND.lowband_levels)
    assert fingerprint(plain) == fingerprint(coded) and plain.layout(16) == coded.layout(16)


def test_a_frame_without_the_band_leaves_no_tail_while_streaming():
    """Within one streaming session (the API allows a bitrate per call), a 6 kbps call after a
    12 kbps one ends the band: the next 12 kbps call starts it afresh."""
    model = make_model(LOWBAND)
    x = torch.from_numpy(tone(0.2, 24000))[None]
    with model.streaming():
        model.decode(model.encode(x, kbps=12))
        assert model.lowband_decoder.state is not None
        model.decode(model.encode(x, kbps=6))
        assert model.lowband_decoder.state is None


READER = dataclasses.replace(LOWBAND, decoder_lowband_bins=40, name="test-lowband-reader")


def test_a_decoder_that_reads_the_low_band_hears_it_and_streams_as_offline():
    """decoder_lowband_bins: the coded band's coefficients go into the decoder beside the
    latent. Other words, the same levels: the decoder's own band changes too. Streamed (mono,
    1-2 frames a call: the live plan) as offline."""
    model = make_model(READER)
    x = torch.from_numpy(tone(0.4, 24000))[None]
    codes = model.encode(x, kbps=12)
    other = codes.clone()
    other[:, :, 8:] = torch.flip(codes[:, :, 8:], dims=[-1])  # another band, the same levels
    levels, _ = model.layout(16)
    z = model.quantizer.decode(codes[:, 0, :levels])
    own = lambda c: model.decode(c)[0] - model.lowband_decoder(c[:, 0, levels:], z)  # noqa: E731  (the decoder's band)
    assert not torch.allclose(own(codes), own(other), atol=1e-6)
    audio = model.decode(codes)
    rng = np.random.default_rng(0)
    with model.streaming():
        pieces, start = [], 0
        while start < codes.shape[-1]:
            size = int(rng.integers(1, 3))
            pieces.append(model.decode(codes[..., start : start + size]))
            start += size
    assert torch.allclose(torch.cat(pieces, dim=-1), audio, atol=1e-5)


def test_a_run_teaches_a_decoder_from_one_that_did_not_read_the_band(tmp_path):
    """--init from weights whose decoder does not read the band: the new inputs start at zero
    weights (the run decodes as the release), and a training step moves them."""
    from train.prepare import build_cache
    from train.trainer import FIRST_DECODER_WEIGHT, Trainer
    from train_support import tiny_config, write_corpus

    from codec import load, save_model

    root = tmp_path / "corpus"
    build_cache(write_corpus(root / "data", speech=2, music=1), root / "cache", 8000, workers=1)
    model = {"encoder": "logmel", "ratios": (4, 8), "latent_dim": 16, "decoder": "spectral", "decoder_dim": 8,
             "decoder_layers": 1, "bandwidths": (1.0, 2.0, 4.0), "output_delay": 8, "lowband_levels": (0, 0, 1)}
    release = Codec(tiny_config(model=model).model).eval()
    save_model(release, tmp_path / "release.safetensors")
    release = load(tmp_path / "release.safetensors")
    cfg = tiny_config(model={**model, "decoder_lowband_bins": 2}, loss={"adversarial": 0.0, "feature_matching": 0.0})
    trainer = Trainer(cfg, root / "cache", tmp_path / "run")
    trainer.init_from(str(tmp_path / "release.safetensors"))
    weight = trainer.gen.state_dict()[FIRST_DECODER_WEIGHT]
    assert weight.shape[1] == 16 + 2 and not weight[:, 16:].any()
    x = trainer.data.batch(0)
    gen = trainer.gen.eval()
    assert torch.allclose(gen.decode(gen.encode(x, n_q=4)), release.decode(release.encode(x, n_q=4)), atol=1e-5)
    gen.train()
    n_q = torch.full((x.shape[0],), 4)
    out = trainer.gen(x, n_q, codes=None)
    out.audio.pow(2).mean().backward()
    assert trainer.gen.decoder[0].conv.weight.grad[:, 16:].abs().sum() > 0


def test_a_decoder_that_reads_the_band_trains_and_decodes_without_one():
    """decoder_lowband_bins with no low band coded (a recipe that turns it off): its extra
    inputs are zeros, in training as in decoding; and its encoder and codebooks still count
    as v19-like weights' (same_encoder)."""
    model = make_model(dataclasses.replace(READER, lowband_levels=()))
    x = torch.from_numpy(tone(0.2, 24000))[None]
    out = model(x[:, :1, : 15 * 320], torch.tensor([16]))
    assert out.audio.shape == (1, 1, 15 * 320)
    assert model.decode(model.encode(x, kbps=12)).shape[-1] >= x.shape[-1]
    assert READER.same_encoder(dataclasses.replace(LOWBAND, lowband_levels=(), output_delay=0))
