"""The log-mel encoder (codec/logmel.py) and models built on it: the features against an
independent computation, the filterbank against librosa's, streaming, files, training."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import torch

from codec import CodecConfig, load, save_model
from codec.logmel import LogMelEncoder, mel_filterbank
from codec.native import round_narrow_weights
from codec.streaming import streaming
from conftest import SMALL, make_model
from train.prepare import build_cache
from train.trainer import Trainer
from train_support import tiny_config, write_corpus

LOGMEL = dataclasses.replace(SMALL, encoder="logmel", latent_dim=40, decoder="spectral", decoder_dim=16, decoder_layers=2)


@pytest.mark.parametrize("rate,n_fft,n_mels", [(24000, 640, 80), (16000, 512, 64), (8000, 64, 8)])
def test_filterbank_is_librosa_s_default(rate, n_fft, n_mels):
    ours = mel_filterbank(rate, n_fft, n_mels)
    theirs = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels)
    np.testing.assert_allclose(ours, theirs, atol=1e-6 * theirs.max())


def test_frames_are_the_log_mel_of_their_own_and_the_previous_hop():
    hop, rate, n_mels = 320, 24000, 80
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5 * hop) * 0.1
    got = LogMelEncoder(rate, hop, n_mels)(torch.from_numpy(x).float()[None, None])[0].numpy()
    assert got.shape == (n_mels, 5)
    padded = np.concatenate([np.zeros(hop), x.astype(np.float32).astype(np.float64)])
    window = np.hanning(2 * hop + 1)[:-1]  # periodic Hann
    fb = librosa.filters.mel(sr=rate, n_fft=2 * hop, n_mels=n_mels).astype(np.float64)
    for t in range(5):
        power = np.abs(np.fft.rfft(padded[t * hop : t * hop + 2 * hop] * window)) ** 2
        np.testing.assert_allclose(got[:, t], np.log(fb @ power + 1e-5), atol=2e-4)


def test_silence_is_the_floor_and_louder_is_higher():
    enc = LogMelEncoder(24000, 320, 80)
    silence = enc(torch.zeros(1, 1, 3 * 320))
    assert torch.allclose(silence, torch.full_like(silence, float(np.log(1e-5))))
    t = torch.arange(3 * 320) / 24000
    quiet = enc((0.01 * torch.sin(2 * np.pi * 440 * t))[None, None])
    loud = enc((0.1 * torch.sin(2 * np.pi * 440 * t))[None, None])
    band = int(loud[0, :, 1].argmax())
    assert loud[0, band, 1] - quiet[0, band, 1] == pytest.approx(np.log(100.0), abs=0.05)  # power: 20 dB


def test_log_mel_frames_see_only_their_own_and_the_previous_hop():
    hop, frames = 320, 10
    features = LogMelEncoder(24000, hop, 80)
    x = torch.randn(2, 1, frames * hop) * 0.1
    before = features(x)
    assert before.shape == (2, 80, frames)
    later = x.clone()
    later[..., 6 * hop:] = torch.randn(2, 1, 4 * hop)  # change what follows frame 5
    after = features(later)
    assert torch.equal(after[..., :6], before[..., :6])
    assert not torch.allclose(after[..., 6], before[..., 6])
    earlier = x.clone()
    earlier[..., : 3 * hop] = 0.0  # frames 0-2 and the first half of frame 3's window
    changed = (features(earlier) - before).abs().amax(dim=(0, 1)) > 0
    assert changed[:4].all() and not changed[4:].any()


def test_streaming_in_chunks_of_any_size_gives_the_offline_frames():
    """Chunks shorter than a hop, or not whole hops, as a caller other than Codec may send."""
    hop = 320
    features = LogMelEncoder(24000, hop, 80)
    x = torch.randn(2, 1, 17 * hop + 123) * 0.1
    offline = features(x)
    assert offline.shape == (2, 80, 17)
    rng = np.random.default_rng(0)
    parts, i = [], 0
    with streaming(features):
        while i < x.shape[-1]:
            n = int(rng.integers(1, 2 * hop))
            parts.append(features(x[..., i : i + n]))
            i += n
    assert torch.equal(torch.cat(parts, dim=-1), offline)


def test_a_model_cast_to_float32_still_encodes():
    model = make_model(LOGMEL)
    wav = torch.randn(1, 1, 4000) * 0.3
    codes = model.encode(wav, n_q=16)
    assert torch.equal(model.float().encode(wav, n_q=16), codes)


def test_config_names_the_known_encoders():
    with pytest.raises(ValueError, match="encoder must be"):
        CodecConfig(encoder="mfcc")


def test_seanet_sizes_do_not_matter_between_log_mel_models_with_spectral_decoders():
    other = dataclasses.replace(LOGMEL, channels=LOGMEL.channels * 2, dilations=(1, 2), lstm_layers=1, activation="snake")
    assert LOGMEL.same_architecture(other) and make_model(other).load_state_dict(make_model(LOGMEL).state_dict())
    for changed in ({"latent_dim": 32}, {"decoder_dim": 32}, {"decoder_layers": 3}, {"encoder": "seanet"}):
        assert not LOGMEL.same_architecture(dataclasses.replace(LOGMEL, **changed)), changed
    seanet = dataclasses.replace(SMALL, decoder="spectral")  # with a SEANet encoder its sizes count
    assert not seanet.same_architecture(dataclasses.replace(seanet, channels=seanet.channels * 2))


def test_a_log_mel_model_file_has_no_encoder_weights_and_reads_back(tmp_path):
    model = make_model(LOGMEL, seed=3)
    with torch.no_grad():  # the file keeps float16: round first, so that the codes must agree exactly
        for t in model.state_dict().values():
            t.copy_(t.half().float())
    path = tmp_path / "mel.safetensors"
    save_model(model, path)
    again = load(path)
    assert again.cfg == model.cfg
    assert not any(k.startswith("encoder.") for k in again.state_dict())
    wav = torch.randn(1, 2, 4000) * 0.3
    codes = model.encode(wav, n_q=16)
    assert torch.equal(again.encode(wav, n_q=16), codes)
    assert torch.equal(again.decode(codes), model.decode(codes))


def test_rounding_for_the_live_runtime_skips_the_log_mel_encoder():
    model = make_model(LOGMEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert round_narrow_weights(model) == 0  # a spectral decoder is left as trained, and there is no encoder
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_a_log_mel_model_fits_the_codebooks_to_the_features(tmp_path):
    root = tmp_path / "corpus"
    build_cache(write_corpus(root / "data", speech=3, music=1), root / "cache", 8000, workers=1)
    cfg = tiny_config(model={"encoder": "logmel", "ratios": (4, 8), "latent_dim": 16, "decoder": "spectral",
                             "decoder_dim": 8, "decoder_layers": 1, "bandwidths": (1.0, 2.0, 4.0)},
                      loss={"adversarial": 0.0, "feature_matching": 0.0})
    trainer = Trainer(cfg, root / "cache", tmp_path / "run")
    assert not list(trainer.gen.encoder.parameters())
    decoder_before = [p.detach().clone() for p in trainer.gen.decoder.parameters()]
    # Crops no step trains on: step 0's k-means fits its own crops however the EMA updates
    # behave, so only unseen ones show that the codebooks go on learning.
    with torch.no_grad():
        unseen = trainer.gen.encoder(trainer.data.batch(1000))
    errors = []
    for step in range(6):
        trainer.train_step(trainer.data.batch(step))
        q = trainer.gen.quantizer
        errors.append(float((q.decode(q.encode(unseen, 4)) - unseen).pow(2).mean()))
    assert bool(trainer.gen.quantizer.initialized)
    assert errors[-1] < 0.5 * errors[0] and errors[-1] < 0.2 * float(unseen.var()), errors
    assert any(not torch.equal(a, b) for a, b in zip(decoder_before, trainer.gen.decoder.parameters()))
