"""The shipped default model: loads offline, checks out, and actually codes speech."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import DEFAULT_MODEL, REGISTRY, Codec, CodecError, compress_file, decompress_file, load, metrics
from codec.bitstream import parse_header
from codec.weights import EARLIER_CODES, WEIGHTS_DIR, codes_fingerprint, fingerprint, save_model
from conftest import SMALL, make_model

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def log_mel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |log spectrum| difference over 64 bands: a quick, model-independent check."""
    def spec(x: np.ndarray) -> torch.Tensor:
        s = torch.stft(torch.from_numpy(x), 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
        bands = torch.stack([s[i * 8 : (i + 1) * 8].mean(0) for i in range(64)])
        return torch.log10(bands + 1e-5)
    return float((spec(a) - spec(b)).abs().mean())


def test_default_model_ships_in_the_package():
    entry = REGISTRY[DEFAULT_MODEL]
    assert (WEIGHTS_DIR / entry.file).stat().st_size < 25 * 2**20
    model = load()
    assert model.cfg.name == DEFAULT_MODEL
    assert model.cfg.bandwidths == (1.5, 3.0, 6.0, 12.0, 24.0)
    assert model.sample_rate == 24000 and model.frame_rate == 75.0


def test_default_model_codes_real_speech(tmp_path):
    clip = SAMPLES / "speech_librispeech_60.flac"
    compress_file(clip, tmp_path / "s.rvq", kbps=6)
    decompress_file(tmp_path / "s.rvq", tmp_path / "s.wav")
    ref, rate = sf.read(str(clip), dtype="float32")
    out, out_rate = sf.read(str(tmp_path / "s.wav"), dtype="float32")
    assert out_rate == rate and out.shape == ref.shape
    # The decoded speech must be far closer to the original than silence or noise are.
    d_codec = log_mel_distance(ref, out)
    d_noise = log_mel_distance(ref, np.random.default_rng(0).standard_normal(len(ref)).astype(np.float32) * 0.05)
    d_silence = log_mel_distance(ref, np.zeros_like(ref))
    assert d_codec < 0.5 * min(d_noise, d_silence), (d_codec, d_noise, d_silence)
    # More bits, a closer latent: each bitrate step must remove part of the quantization error
    # (up to 6 kbps: beyond it, the codes past the log-mel levels carry the low band, below).
    model = load()
    x = torch.from_numpy(ref[: len(ref) // model.hop_length * model.hop_length])[None, None]
    with torch.no_grad():
        z = model.encoder(x)
    errors = [float(((model.quantizer.decode(model.encode(x, kbps=k)[0]) - z) ** 2).mean()) for k in (1.5, 3, 6)]
    assert errors[0] > errors[1] > errors[2], errors


def _below(a: np.ndarray, rate: int, hz: float) -> np.ndarray:
    s = np.fft.rfft(a)
    s[np.fft.rfftfreq(len(a), 1 / rate) > hz] = 0
    return np.fft.irfft(s, len(a))


def test_default_model_codes_the_low_band_waveform_at_12_and_24_kbps(tmp_path):
    """From 12 kbps the default codes the waveform below 862 Hz (2.2 kHz at 24 kbps) in the
    codes beyond 6 (8) log-mel levels: the decoded speech follows the original's waveform
    there (v17, which spends them on the log-mel spectrum, makes up its own: about -2.5 dB)."""
    clip = SAMPLES / "speech_librispeech_60.flac"
    ref, rate = sf.read(str(clip), dtype="float32")
    snr = {}
    for kbps in (6, 12, 24):
        compress_file(clip, tmp_path / f"{kbps}.rvq", kbps=kbps)
        decompress_file(tmp_path / f"{kbps}.rvq", tmp_path / f"{kbps}.wav")
        out = sf.read(str(tmp_path / f"{kbps}.wav"), dtype="float32")[0]
        for hz in (500, 2000):
            low = _below(ref, rate, hz)
            snr[kbps, hz] = float(10 * np.log10((low ** 2).sum() / ((low - _below(out, rate, hz)) ** 2).sum()))
    assert snr[6, 500] < 3 and snr[12, 500] > 15 and snr[24, 500] > 15 and snr[24, 2000] > 15, snr
    assert snr[12, 2000] < snr[24, 2000] - 6, snr  # (12 kbps: up to 862 Hz only)


def test_files_of_v17_decode_with_the_built_in_v17(tmp_path):
    """v18 is v17's weights file with the low band: its 12 and 24 kbps codes mean something
    else, so its weights hash differs although the weights do not. A v17 file decodes without
    --model with the built-in v17; v18 refuses it, naming v17."""
    v17, v18 = load("rvq24k-v17"), load("rvq24k-v18")
    assert v18.cfg.name == "rvq24k-v18" and REGISTRY["rvq24k-v18"].file == REGISTRY["rvq24k-v17"].file
    assert fingerprint(v17) != fingerprint(v18) and codes_fingerprint(v17) != codes_fingerprint(v18)
    clip = SAMPLES / "speech_librispeech_60.flac"
    compress_file(clip, tmp_path / "v17.rvq", kbps=12, model=v17)
    assert parse_header((tmp_path / "v17.rvq").read_bytes())[0].model_id == "rvq24k-v17"
    _decodes_with_its_own_and_not_with(tmp_path / "v17.rvq", v17, v18)


def _decodes_with_its_own_and_not_with(file: Path, own: Codec, other: Codec) -> None:
    """``file`` decodes without --model as with ``own``; ``other`` refuses it, naming ``own``."""
    decompress_file(file, file.with_name("auto.wav"))
    decompress_file(file, file.with_name("named.wav"), model=own)
    assert np.array_equal(sf.read(str(file.with_name("auto.wav")))[0], sf.read(str(file.with_name("named.wav")))[0])
    with pytest.raises(CodecError, match=own.cfg.name):
        decompress_file(file, file.with_name("x.wav"), model=other)
    assert not file.with_name("x.wav").exists()


@pytest.mark.parametrize("release, weights_hash", [("rvq24k-v8", "e9271f8063f42148"), ("rvq24k-v9", "07f2c20aee4c4948")])
def test_files_of_earlier_releases_decode_with_the_built_in_v10(tmp_path, release, weights_hash):
    """rvq24k-v9 and v10 kept v8's encoder and codebooks (v8 was v7's weights); v11 to v17 (the
    default) code the log-mel spectrum instead. A file whose header names v8 or v9 and its
    weights decodes without --model, to what the built-in v10 makes of the same codes; a
    model with another encoder refuses it in one line."""
    earlier = bytes.fromhex(weights_hash)
    v10 = load("rvq24k-v10")
    assert EARLIER_CODES[weights_hash] == codes_fingerprint(v10).hex() != codes_fingerprint(load()).hex()
    assert fingerprint(v10)[:8] != earlier  # (the decoder is new: the earlier weights hash differs)
    clip = SAMPLES / "speech_librispeech_60.flac"
    compress_file(clip, tmp_path / "new.rvq", kbps=3, model=v10)
    data = (tmp_path / "new.rvq").read_bytes()
    header, size = parse_header(data)
    assert header.model_id == "rvq24k-v10"
    old = dataclasses.replace(header, model_id=release, weights_hash=earlier).encode()
    (tmp_path / "earlier.rvq").write_bytes(old + data[size:])
    decompress_file(tmp_path / "new.rvq", tmp_path / "new.wav")
    decompress_file(tmp_path / "earlier.rvq", tmp_path / "earlier.wav")
    assert np.array_equal(sf.read(str(tmp_path / "new.wav"))[0], sf.read(str(tmp_path / "earlier.wav"))[0])
    other = tmp_path / "other.safetensors"
    save_model(make_model(SMALL, seed=1), other)
    with pytest.raises(CodecError, match=release):
        decompress_file(tmp_path / "earlier.rvq", tmp_path / "x.wav", model=other)
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("release, weights_hash", [
    ("rvq24k-v14", "c60942651884af94"), ("rvq24k-v15", "ffc9ae14d9a6bed2"), ("rvq24k-v16", "7f84d3d8f2c7d43a"),
])
def test_files_of_v14_to_v16_decode_with_the_built_in_v17(tmp_path, release, weights_hash):
    """v15 to v17 are v14's codebooks with a decoder trained further, and v14 to v16 left the
    package: a file whose header names one of them and its weights (the first 8 bytes of its
    fingerprint) decodes without --model, to what v17 makes of the same codes (not the
    default v18, whose codes beyond 6 kbps differ); v13, whose codebooks differ, refuses it in
    one line."""
    v17 = load("rvq24k-v17")
    assert release not in REGISTRY and v17.cfg.name == "rvq24k-v17"
    assert EARLIER_CODES[weights_hash] != codes_fingerprint(load()).hex()
    assert EARLIER_CODES[weights_hash] == codes_fingerprint(v17).hex() != codes_fingerprint(load("rvq24k-v13")).hex()
    assert fingerprint(v17)[:8].hex() != weights_hash
    compress_file(SAMPLES / "speech_librispeech_60.flac", tmp_path / "new.rvq", kbps=12, model=v17)
    data = (tmp_path / "new.rvq").read_bytes()
    header, size = parse_header(data)
    assert header.model_id == "rvq24k-v17"
    old = dataclasses.replace(header, model_id=release, weights_hash=bytes.fromhex(weights_hash)).encode()
    (tmp_path / "old.rvq").write_bytes(old + data[size:])
    decompress_file(tmp_path / "new.rvq", tmp_path / "new.wav")
    decompress_file(tmp_path / "old.rvq", tmp_path / "old.wav")
    assert np.array_equal(sf.read(str(tmp_path / "new.wav"))[0], sf.read(str(tmp_path / "old.wav"))[0])
    with pytest.raises(CodecError, match=release):
        decompress_file(tmp_path / "old.rvq", tmp_path / "x.wav", model=load("rvq24k-v13"))
    assert not (tmp_path / "x.wav").exists()


def test_files_of_v13_decode_with_the_built_in_v13(tmp_path):
    """v14 to v18 have v13's architecture (v19 a wider first decoder layer), but codebooks
    fitted afresh, so the same codes mean other spectra. A v13 file decodes without --model
    with the built-in v13, and the default (v19) refuses it, naming v13."""
    v13, default = load("rvq24k-v13"), load()
    assert default.cfg.name != "rvq24k-v13" and load("rvq24k-v18").cfg.same_architecture(v13.cfg)
    assert codes_fingerprint(v13) != codes_fingerprint(default)
    clip = SAMPLES / "speech_librispeech_60.flac"
    compress_file(clip, tmp_path / "v13.rvq", kbps=6, model=v13)
    assert parse_header((tmp_path / "v13.rvq").read_bytes())[0].model_id == "rvq24k-v13"
    decompress_file(tmp_path / "v13.rvq", tmp_path / "auto.wav")
    decompress_file(tmp_path / "v13.rvq", tmp_path / "named.wav", model=v13)
    auto, named = sf.read(str(tmp_path / "auto.wav"))[0], sf.read(str(tmp_path / "named.wav"))[0]
    assert np.array_equal(auto, named)
    with pytest.raises(CodecError, match="rvq24k-v13"):
        decompress_file(tmp_path / "v13.rvq", tmp_path / "x.wav", model=default)
    assert not (tmp_path / "x.wav").exists()


def test_a_file_of_a_model_no_longer_built_in_names_it_and_decodes_with_its_weights(tmp_path, small_model):
    """rvq24k-v11 left the package (its weights are in git history): its files name it, and
    decode with --model and its weights file."""
    gone = Codec(dataclasses.replace(small_model.cfg, name="rvq24k-v11")).eval()
    gone.load_state_dict(small_model.state_dict())
    save_model(gone, tmp_path / "v11.safetensors")
    assert "rvq24k-v11" not in REGISTRY
    clip = SAMPLES / "speech_librispeech_60.flac"
    compress_file(clip, tmp_path / "v11.rvq", kbps=6, model=tmp_path / "v11.safetensors")
    with pytest.raises(CodecError, match="'rvq24k-v11', which is not built in; pass --model"):
        decompress_file(tmp_path / "v11.rvq", tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()
    decompress_file(tmp_path / "v11.rvq", tmp_path / "y.wav", model=tmp_path / "v11.safetensors")
    assert sf.info(str(tmp_path / "y.wav")).frames == sf.info(str(clip)).frames


def test_default_model_output_lines_up_with_the_input(tmp_path):
    """The decoder's own delay (output_delay) is dropped: the decoded loudness contour of
    real speech lies within 2 ms of the original's (it trails by about 4 ms without)."""
    model = load()
    assert model.cfg.output_delay > 0
    clip = SAMPLES / "speech_librispeech_60.flac"
    ref, rate = sf.read(str(clip), dtype="float32")
    compress_file(clip, tmp_path / "s.rvq", kbps=6)
    decompress_file(tmp_path / "s.rvq", tmp_path / "s.wav")
    out, _ = sf.read(str(tmp_path / "s.wav"), dtype="float32")
    lag, corr = metrics.envelope_lag(ref, out, rate // 50, rate)
    assert corr > 0.8 and abs(lag) <= 0.002 * rate, (lag, corr)
    # (the low band needs the delay: v17's decoder without it, v17's files at 6 kbps)
    v17 = load("rvq24k-v17")
    late = Codec(dataclasses.replace(v17.cfg, output_delay=0)).eval()
    late.load_state_dict(v17.state_dict())
    compress_file(clip, tmp_path / "v17.rvq", kbps=6, model=load("rvq24k-v17"))
    decompress_file(tmp_path / "v17.rvq", tmp_path / "late.wav", model=late)
    lag_late, _ = metrics.envelope_lag(ref, sf.read(str(tmp_path / "late.wav"), dtype="float32")[0], rate // 50, rate)
    assert lag_late > 0.002 * rate, (lag, lag_late)  # the same decode without the delay dropped


def test_files_of_v18_decode_with_the_built_in_v18(tmp_path):
    """v19 reads v18's codes with a decoder that also reads the low band (new weights): a v18
    file decodes without --model with the built-in v18, and v19 refuses it, naming v18."""
    v18, v19 = load("rvq24k-v18"), load("rvq24k-v19")
    assert v19.cfg.name == "rvq24k-v19" and v19.cfg.decoder_lowband_bins and not v18.cfg.decoder_lowband_bins
    assert v19.cfg.lowband_levels == v18.cfg.lowband_levels
    clip = SAMPLES / "speech_librispeech_60.flac"
    compress_file(clip, tmp_path / "v18.rvq", kbps=12, model=v18)
    compress_file(clip, tmp_path / "v19.rvq", kbps=12, model=v19)
    codes = [(tmp_path / f"v{n}.rvq").read_bytes() for n in (18, 19)]
    assert codes[0][parse_header(codes[0])[1]:] == codes[1][parse_header(codes[1])[1]:]  # the same codes
    _decodes_with_its_own_and_not_with(tmp_path / "v18.rvq", v18, v19)


def test_v20_pulls_its_decoded_spectrum_onto_the_coded_one():
    """v20 is v19's weights and codes with envelope matching (which v21 and the default, v22,
    keep): on the speech sample its decoded audio, measured as the encoder measures the input,
    lies closer to the log-mel spectrum its codes carry (bands above 862 Hz), and closer to the
    original by the multi-scale mel distance, at 6 and 12 kbps."""
    v20, v19 = load("rvq24k-v20"), load("rvq24k-v19")
    assert load().cfg.envelope_match == v20.cfg.envelope_match
    assert v20.cfg.envelope_match == 1.0 and not v19.cfg.envelope_match
    assert fingerprint(v20) == fingerprint(v19)  # one set of weights: each decodes the other's files
    ref, rate, n, delay = _speech_sample(v20)
    x = torch.from_numpy(ref[:n])[None, None]
    for kbps in (6, 12):
        codes = v20.encode(x, kbps=kbps)
        assert torch.equal(codes, v19.encode(x, kbps=kbps))
        coded = v20.quantizer.decode(codes[0, :, : v20.cfg.layout(codes.shape[2])[0]])  # [1, M, F]
        gaps, distances = [], []
        for model in (v19, v20):
            y = model.decode(codes)
            gaps.append(float((v20.encoder(y) - coded)[:, 19:].abs().mean()))
            distances.append(metrics.mel_distance(ref[: n - delay], y[0, 0, delay:].numpy(), rate))
        assert gaps[1] < 0.75 * gaps[0] and distances[1] < distances[0], (kbps, gaps, distances)


def test_the_default_codes_the_low_band_in_finer_steps(tmp_path):
    """v21 (and v22, v23) is v20 with the low band's coefficients arithmetic-coded: the same
    weights and log-mel codes, other low-band words, in which the decoded speech sample
    follows the original's waveform below 800 Hz (2 kHz at 24 kbps) more closely and lies
    closer to it by the mel distance. Its files name it: each model decodes its own files and
    refuses the other's."""
    v21, v20 = load("rvq24k-v21"), load("rvq24k-v20")
    assert load("rvq24k-v23").cfg.lowband_coding == v21.cfg.lowband_coding == "arithmetic" and v20.cfg.lowband_coding == "fixed"
    assert all(torch.equal(a, b) for a, b in zip(v21.state_dict().values(), v20.state_dict().values()))
    assert fingerprint(v21) != fingerprint(v20)
    ref, rate, n, delay = _speech_sample(v21)
    x = _delayed(ref[:n], delay)
    for kbps, hz, margin in ((12, 800, 1.2), (24, 2000, 4.0)):
        codes = {m.cfg.name: m.encode(x, kbps=kbps) for m in (v20, v21)}
        levels = v21.layout(codes["rvq24k-v21"].shape[2])[0]
        assert torch.equal(codes["rvq24k-v21"][:, :, :levels], codes["rvq24k-v20"][:, :, :levels])
        assert not torch.equal(codes["rvq24k-v21"], codes["rvq24k-v20"])
        snr, distance = {}, {}
        for m in (v20, v21):
            y = m.decode(codes[m.cfg.name])[0, 0, delay : delay + n].numpy().astype(np.float64)
            low = _below(ref[:n].astype(np.float64), rate, hz)
            snr[m.cfg.name] = float(10 * np.log10((low ** 2).sum() / ((low - _below(y, rate, hz)) ** 2).sum()))
            distance[m.cfg.name] = metrics.mel_distance(ref[:n], y, rate)
        assert snr["rvq24k-v21"] > snr["rvq24k-v20"] + margin, (kbps, snr)
        assert distance["rvq24k-v21"] < distance["rvq24k-v20"], (kbps, distance)
    _each_decodes_its_own_files(tmp_path, v21, v20)


def test_v22_raises_bands_the_decoder_left_below_the_log_mel_floor(tmp_path):
    """v22 is v21 whose envelope matching compares band powers down to a tenth of
    the log-mel floor from 6 levels: the same weights, codes and files (each decodes the
    other's with ``model=``; without, a file decodes with the model that wrote it), and on the
    speech sample its decoded audio lies closer to the original by the mel distance at 6, 12
    and 24 kbps, and is v21's at 3 kbps (4 levels)."""
    v22, v21 = load("rvq24k-v22"), load("rvq24k-v21")
    assert v22.cfg.name == "rvq24k-v22" and v22.cfg.envelope_floor == 0.1 and v21.cfg.envelope_floor == 1.0
    assert fingerprint(v22) == fingerprint(v21)  # one set of weights and codes
    ref, rate, n, delay = _speech_sample(v22)
    x = _delayed(ref[:n], delay)
    for kbps in (3, 6, 12, 24):
        codes = v22.encode(x, kbps=kbps)
        assert torch.equal(codes, v21.encode(x, kbps=kbps))
        decoded = [m.decode(codes) for m in (v21, v22)]
        if kbps == 3:
            assert torch.equal(decoded[0], decoded[1])
            continue
        distance = [metrics.mel_distance(ref[:n], y[0, 0, delay : delay + n].numpy(), rate) for y in decoded]
        assert distance[1] < distance[0] - 0.01, (kbps, distance)
    _files_decode_alike_by_one_model(tmp_path, v21, v22, len(ref))


def _speech_sample(model: Codec) -> tuple[np.ndarray, int, int, int]:
    """The speech sample (float32), its rate, its whole frames of ``model`` in samples and the
    model's output delay."""
    ref, rate = sf.read(str(SAMPLES / "speech_librispeech_60.flac"), dtype="float32")
    return ref, rate, len(ref) // model.hop_length * model.hop_length, model.cfg.output_delay


def _delayed(audio: np.ndarray, delay: int) -> torch.Tensor:
    """``[T]`` -> ``[1, 1, T + delay]``, with ``delay`` samples of silence coded past the end
    (what the decoder drops at the start)."""
    return torch.nn.functional.pad(torch.from_numpy(audio)[None, None], (0, delay))


def _each_decodes_its_own_files(tmp_path: Path, first: Codec, second: Codec) -> None:
    """The speech sample's 12 kbps file of either model decodes without ``model=`` as with its
    own, and the other refuses it."""
    clip = SAMPLES / "speech_librispeech_60.flac"
    for own, other in ((first, second), (second, first)):
        (tmp_path / own.cfg.name).mkdir()
        file = tmp_path / own.cfg.name / "speech.rvq"
        compress_file(clip, file, kbps=12, model=own)
        _decodes_with_its_own_and_not_with(file, own, other)


def _files_decode_alike_by_one_model(tmp_path, old, new, length: int) -> None:
    """Two releases of the same weights and codes that decode differently: the speech sample's
    12 kbps file of either decodes to the same samples by one model, without ``model=`` by the
    model the file names, and the two models' decodings differ."""
    clip = SAMPLES / "speech_librispeech_60.flac"
    names = (old.cfg.name, new.cfg.name)
    for m in (old, new):
        compress_file(clip, tmp_path / f"{m.cfg.name}.rvq", kbps=12, model=m)
    out = {}
    for file in names:
        for m in (None, old, new):  # None: the model the file names
            wav = tmp_path / f"{file}-{m.cfg.name if m else 'own'}.wav"
            decompress_file(tmp_path / f"{file}.rvq", wav, model=m)
            out[file, m.cfg.name if m else "own"] = sf.read(str(wav), dtype="float32")[0]
    assert all(len(y) == length for y in out.values())
    for name in names:
        assert np.array_equal(out[names[0], name], out[names[1], name])
        assert np.array_equal(out[name, "own"], out[name, name])
    assert not np.array_equal(out[names[0], names[0]], out[names[0], names[1]])


def test_the_default_fills_with_noise_what_the_gain_limit_leaves_missing(tmp_path):
    """v23 is v22 whose envelope matching fills with noise the power its gain limit
    leaves missing from 8 kHz: the same weights, codes and files (either file decodes alike by
    one model), and on the speech sample its decoded audio lies closer to the original by the
    mel distance at 6, 12 and 24 kbps."""
    v23, v22 = load("rvq24k-v23"), load("rvq24k-v22")
    assert v23.cfg.name == "rvq24k-v23" and v23.cfg.envelope_fill == 1.0 and v22.cfg.envelope_fill == 0.0
    assert fingerprint(v23) == fingerprint(v22)  # one set of weights and codes
    ref, rate, n, delay = _speech_sample(v23)
    x = _delayed(ref[:n], delay)
    for kbps in (6, 12, 24):
        codes = v23.encode(x, kbps=kbps)
        assert torch.equal(codes, v22.encode(x, kbps=kbps))
        decoded = [m.decode(codes)[0, 0, delay : delay + n].numpy() for m in (v22, v23)]
        distance = [metrics.mel_distance(ref[:n], y, rate) for y in decoded]
        assert distance[1] < distance[0] - 0.005, (kbps, distance)
    _files_decode_alike_by_one_model(tmp_path, v22, v23, len(ref))


def test_the_default_carries_the_power_of_the_8_khz_edge(tmp_path):
    """The default (v24) is v23 whose low band's words at 12 and 24 kbps also carry the power of
    the bands around 8 kHz (codec/edge.py): the same weights and log-mel codes, other low-band
    words, so its files name it (each model decodes its own and refuses the other's). The
    speech sample with noise at 7.7-8.9 kHz following its loudness, as a 16-kHz recording's
    resampler leaves there: decoded by v24 it lies closer to the original by the mel distance;
    at 6 kbps (no low band) the two are the same."""
    v24, v23 = load(), load("rvq24k-v23")
    assert v24.cfg.name == "rvq24k-v24" and v24.cfg.lowband_coding == "arithmetic-edge"
    assert all(torch.equal(a, b) for a, b in zip(v24.state_dict().values(), v23.state_dict().values()))
    assert fingerprint(v24) != fingerprint(v23)
    ref, rate, n, delay = _speech_sample(v24)
    loudness = np.convolve(np.abs(ref[:n]), np.ones(640) / 640, mode="same")
    spectrum = np.fft.rfft(np.random.default_rng(7).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < 7700) | (freqs >= 8900)] = 0
    edge = np.fft.irfft(spectrum, n) * 0.015 * loudness / loudness.max()
    original = (ref[:n] + edge).astype(np.float32)
    x = _delayed(original, delay)
    for kbps in (6, 12, 24):
        codes = [m.encode(x, kbps=kbps) for m in (v23, v24)]
        levels = v24.layout(codes[0].shape[2])[0]
        assert torch.equal(codes[0][:, :, :levels], codes[1][:, :, :levels])
        decoded = [m.decode(c)[0, 0, delay : delay + n].numpy() for m, c in zip((v23, v24), codes)]
        distance = [metrics.mel_distance(original, y, rate) for y in decoded]
        if kbps == 6:
            assert np.array_equal(decoded[0], decoded[1])
        else:
            assert distance[1] < distance[0] - 0.01, (kbps, distance)
    _each_decodes_its_own_files(tmp_path, v24, v23)
