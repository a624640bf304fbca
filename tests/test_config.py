"""Bitrate mapping and config round trips."""

from __future__ import annotations

import dataclasses

import pytest

from codec import CodecConfig, CodecError


def test_kbps_mapping_of_the_default_config():
    cfg = CodecConfig()
    assert cfg.frame_rate == 75.0 and cfg.hop_length == 320
    expected = {1.5: 2, 3: 4, 6: 8, 12: 16, 24: 32}
    for kbps, n_q in expected.items():
        assert cfg.n_q_for_kbps(kbps) == n_q
        assert cfg.kbps(n_q) == pytest.approx(kbps)


@pytest.mark.parametrize("bad", [5, 0, 7.5, 48, -6])
def test_unsupported_kbps_lists_valid_values(bad):
    with pytest.raises(CodecError) as err:
        CodecConfig().n_q_for_kbps(bad)
    assert "1.5, 3, 6, 12, 24" in str(err.value)


def test_bandwidth_that_is_not_whole_codebooks_is_rejected():
    with pytest.raises(ValueError):
        CodecConfig(bandwidths=(1.0,))


def test_json_round_trip():
    cfg = CodecConfig(channels=8, ratios=(2, 4), bandwidths=(30.0,), n_q=4, name="x")
    import json

    assert CodecConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError):
        CodecConfig.from_dict({"nonsense": 1})


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        CodecConfig(activation="relu")


def test_unknown_decoder_is_rejected():
    with pytest.raises(ValueError, match="decoder"):
        CodecConfig(decoder="wavenet")


def test_same_encoder_ignores_only_the_decoder():
    spectral = CodecConfig(decoder="spectral", decoder_dim=64, name="other")
    assert spectral.same_encoder(CodecConfig())
    assert not spectral.same_architecture(CodecConfig())
    assert not spectral.same_encoder(CodecConfig(channels=24))
    assert not spectral.same_encoder(CodecConfig(latent_dim=64))
    assert CodecConfig(decoder_dim=64).same_architecture(CodecConfig())  # unused by a SEANet decoder
    assert not spectral.same_architecture(CodecConfig(decoder="spectral"))


def test_same_architecture_ignores_only_the_name_the_postfilter_the_output_delay_and_the_low_band():
    cfg = CodecConfig()
    assert cfg.same_architecture(CodecConfig(name="other", postfilter=0.75, output_delay=96))
    logmel = CodecConfig(encoder="logmel", decoder="spectral", latent_dim=80, output_delay=96)
    assert logmel.same_architecture(dataclasses.replace(logmel, lowband_levels=(0, 0, 0, 6, 8)))
    assert not cfg.same_architecture(CodecConfig(channels=24))
    assert not cfg.same_architecture(CodecConfig(n_q=16, bandwidths=(1.5, 3.0, 6.0, 12.0)))


@pytest.mark.parametrize("delay", [-1, 320])
def test_output_delay_stays_within_a_frame(delay):
    with pytest.raises(ValueError, match="output_delay"):
        CodecConfig(output_delay=delay)  # hop 320
