"""Frozen configuration of a codec model, stored as JSON next to every set of weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import CodecError

LOWBAND_CODINGS = ("fixed", "arithmetic", "arithmetic-edge")  # how the low band's words are written (codec/lowband.py)


@dataclass(frozen=True)
class CodecConfig:
    """Everything needed to rebuild a model's architecture.

    Attributes:
        sample_rate: model sample rate in Hz (audio is resampled to it).
        channels: width of the first encoder stage; each downsampling doubles it.
        ratios: encoder strides in order; the decoder uses them reversed.
        latent_dim: dimension of the latent frames that are quantized.
        dilations: dilations of the residual units in each block.
        kernel_size: kernel of the first and last convolutions.
        residual_kernel_size: kernel of the dilated convolution in each residual unit.
        lstm_layers: causal LSTM layers after the encoder and before the decoder (0: none).
        activation: ``elu`` (SEANet) or ``snake`` (DAC's periodic activation).
        n_q: number of codebooks of the residual vector quantizer.
        codebook_size: entries per codebook (a power of two).
        bandwidths: the bitrates in kbps the model serves (each a whole number of codebooks).
        name: model identifier written into `.rvq` headers.
        postfilter: strength of the decoder's pitch postfilter, 0 (off) to 1: the comb
            filter's gain on perfectly periodic audio (codec/postfilter.py).
        decoder: ``seanet`` (the encoder's mirror, codec/seanet.py) or ``spectral`` (ConvNeXt
            blocks at the frame rate and an inverse FFT per frame, codec/spectral.py).
        decoder_dim: width of the spectral decoder (its blocks' hidden layers are 4x).
        decoder_layers: ConvNeXt blocks of the spectral decoder.
        encoder: ``seanet`` (the causal convolutional encoder, codec/seanet.py) or ``logmel``
            (no weights: each frame's log-mel spectrum, ``latent_dim`` bands, codec/logmel.py;
            ``channels``, ``dilations``, kernels, ``lstm_layers`` and ``activation`` then only
            shape a SEANet decoder).
        output_delay: samples (at ``sample_rate``) by which the decoded audio trails the
            input, as measured on held-out audio; file and stream decoders drop that many
            first samples, so that the output lines up with the input (0: none dropped).
        lowband_levels: empty (no low band), or one value per bandwidth (in the order of
            ``bandwidths``): 0, or the log-mel levels a frame of that bitrate keeps, its other
            codes carrying the low band's waveform (codec/lowband.py) in windows that overlap
            by ``output_delay`` samples. Only for a log-mel encoder with a spectral decoder;
            no weights.
        decoder_lowband_bins: 0, or how many of the low band's coefficients the spectral
            decoder reads beside the latent (over their quantizer steps; zeros where a frame
            has fewer or none: all of them without ``lowband_levels``), so that its band above
            can follow the coded one. Changes the decoder's first layer (its weights).
        lowband_coding: how the low band's coefficients are written (codec/lowband.py):
            ``fixed`` (4 bits each), ``arithmetic`` (an arithmetic code in the same bits,
            finer steps) or ``arithmetic-edge`` (the same code, which also carries the power of
            the bands around 8 kHz, codec/edge.py; needs ``envelope_fill``). Changes what the
            low band's codes mean; no weights.
        envelope_match: 0 (off), or the strength (up to 2) with which the decoded audio's
            log-mel spectrum is pulled onto the coded one, band by band and frame by frame
            (codec/envelope.py; 1: all the way, within 12 dB). Only for a log-mel encoder;
            no weights; streamed output trails by half a hop more.
        envelope_floor: how far below the log-mel spectrum's floor (codec/logmel.py's 1e-5)
            envelope matching compares a band's power, as a fraction of it: 1 compares the
            coded and measured log-mel values as they are, so a band the decoder left far
            below the floor stays there whatever the codes say; under 1, each band's power is
            first recovered from its log-mel value (the floor taken off), and the decoded band
            is pulled onto the coded power (within the same 12 dB), counting only what lies
            above this fraction of the floor; only for frames of 6 levels or more
            (codec/envelope.py). No weights.
        envelope_fill: 0 (off), or the share (up to 1) of the power that envelope matching's
            gain limit leaves missing in a band centred from 8 kHz (none at 16 kHz or under)
            that noise makes up, in frames of 6 levels or more: the codes say the band holds
            power and the decoder made next to none (codec/envelope.py). No weights.
    """

    sample_rate: int = 24000
    channels: int = 32
    ratios: tuple[int, ...] = (2, 4, 5, 8)
    latent_dim: int = 128
    dilations: tuple[int, ...] = (1, 3, 9)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    lstm_layers: int = 0
    activation: str = "elu"
    n_q: int = 32
    codebook_size: int = 1024
    bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    name: str = "rvq24k"
    postfilter: float = 0.0
    decoder: str = "seanet"
    decoder_dim: int = 256
    decoder_layers: int = 8
    encoder: str = "seanet"
    output_delay: int = 0
    lowband_levels: tuple[int, ...] = ()
    decoder_lowband_bins: int = 0
    lowband_coding: str = "fixed"
    envelope_match: float = 0.0
    envelope_floor: float = 1.0
    envelope_fill: float = 0.0

    def __post_init__(self) -> None:
        if self.encoder not in ("seanet", "logmel"):
            raise ValueError(f"encoder must be 'seanet' or 'logmel', got {self.encoder!r}")
        if self.decoder not in ("seanet", "spectral"):
            raise ValueError(f"decoder must be 'seanet' or 'spectral', got {self.decoder!r}")
        if self.activation not in ("elu", "snake"):
            raise ValueError(f"activation must be 'elu' or 'snake', got {self.activation!r}")
        if not 0.0 <= self.postfilter <= 1.0:
            raise ValueError(f"postfilter must be in [0, 1], got {self.postfilter}")
        if not 0 <= self.output_delay < self.hop_length:
            raise ValueError(f"output_delay must be in [0, {self.hop_length}) samples, got {self.output_delay}")
        if any(self.lowband_levels):
            if (self.encoder, self.decoder) != ("logmel", "spectral"):
                raise ValueError("lowband_levels needs the log-mel encoder and the spectral decoder")
            if len(self.lowband_levels) != len(self.bandwidths):
                raise ValueError("lowband_levels needs one value per bandwidth")
            if not self.output_delay or (self.hop_length - self.output_delay) % 2:
                raise ValueError("lowband_levels needs an output_delay > 0 with hop_length - output_delay even")
        if self.lowband_coding not in LOWBAND_CODINGS:
            raise ValueError(f"lowband_coding must be one of {LOWBAND_CODINGS}, got {self.lowband_coding!r}")
        if not 0.0 <= self.envelope_match <= 2.0:
            raise ValueError(f"envelope_match must be in [0, 2], got {self.envelope_match}")
        if self.envelope_match and (self.encoder != "logmel" or self.hop_length % 4):
            raise ValueError("envelope_match needs the log-mel encoder and a hop divisible by 4")
        if not 0.0 < self.envelope_floor <= 1.0:
            raise ValueError(f"envelope_floor must be in (0, 1], got {self.envelope_floor}")
        if not 0.0 <= self.envelope_fill <= 1.0:
            raise ValueError(f"envelope_fill must be in [0, 1], got {self.envelope_fill}")
        if self.envelope_fill and not self.envelope_match:
            raise ValueError("envelope_fill needs envelope matching (envelope_match > 0)")
        if self.lowband_coding == "arithmetic-edge" and not self.envelope_fill:
            raise ValueError("lowband_coding 'arithmetic-edge' needs envelope_fill > 0 (its bands are filled with noise)")
        if self.decoder_lowband_bins and self.decoder != "spectral":
            raise ValueError("decoder_lowband_bins needs the spectral decoder")
        if self.codebook_size & (self.codebook_size - 1):
            raise ValueError("codebook_size must be a power of two")
        for kbps in self.bandwidths:
            n = kbps * 1000 / (self.frame_rate * self.bits_per_code)
            if abs(n - round(n)) > 1e-6 or not 1 <= round(n) <= self.n_q:
                raise ValueError(f"bandwidth {kbps} kbps is not a whole number of codebooks")
        for kbps, levels in zip(self.bandwidths, self.lowband_levels):
            if levels and not 0 < levels < self.n_q_for_kbps(kbps):
                raise ValueError(f"lowband_levels at {kbps:g} kbps must be 0 or fewer than its codebooks, got {levels}")

    @property
    def hop_length(self) -> int:
        """Samples per latent frame (product of the strides)."""
        hop = 1
        for r in self.ratios:
            hop *= r
        return hop

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bits_per_code(self) -> int:
        return self.codebook_size.bit_length() - 1

    def kbps(self, n_q: int) -> float:
        """Bitrate of ``n_q`` codebooks: frame_rate * n_q * log2(codebook_size) / 1000."""
        return self.frame_rate * n_q * self.bits_per_code / 1000

    @property
    def valid_n_q(self) -> tuple[int, ...]:
        """Codebook counts of the served bandwidths, ascending."""
        return tuple(sorted(self.n_q_for_kbps(b) for b in self.bandwidths))

    def n_q_for_kbps(self, kbps: float) -> int:
        """Codebooks for a served bitrate; ValueError listing the valid values otherwise."""
        for b in self.bandwidths:
            if abs(b - float(kbps)) < 1e-6:
                return round(b * 1000 / (self.frame_rate * self.bits_per_code))
        valid = ", ".join(f"{b:g}" for b in sorted(self.bandwidths))
        raise CodecError(f"unsupported bitrate {kbps:g} kbps; valid values: {valid}")

    def layout(self, n_q: int) -> tuple[int, int]:
        """What ``n_q`` codes a frame holds: (log-mel or latent levels, low-band words), as
        ``lowband_levels`` says for the largest served bitrate of at most ``n_q`` codes
        (codec/lowband.py)."""
        served = sorted((self.n_q_for_kbps(b), levels) for b, levels in zip(self.bandwidths, self.lowband_levels))
        levels = next((levels for codes, levels in reversed(served) if codes <= n_q), 0)
        return (levels, n_q - levels) if levels else (n_q, 0)

    def same_architecture(self, other: "CodecConfig") -> bool:
        """Whether ``other``'s weights fit this model: everything but the name, the
        postfilter strength, the output delay, the low band and envelope matching (which have no
        weights) and the unused sizes agrees: between SEANet
        decoders the spectral decoder's, between log-mel encoders with spectral decoders the
        SEANet layers' (only the strides, that is the hop, still count)."""
        neutral: dict[str, Any] = {"name": "", "postfilter": 0.0, "output_delay": 0, "lowband_levels": (),
                                   "lowband_coding": "fixed", "envelope_match": 0.0, "envelope_floor": 1.0,
                                   "envelope_fill": 0.0}
        if self.decoder == other.decoder == "seanet":
            neutral |= {"decoder_dim": 0, "decoder_layers": 0}
        if self.encoder == other.encoder == "logmel" and self.decoder == other.decoder == "spectral":
            neutral |= {"channels": 0, "dilations": (), "kernel_size": 0, "residual_kernel_size": 0,
                        "lstm_layers": 0, "activation": "elu"}
        return replace(self, **neutral) == replace(other, **neutral)

    def same_encoder(self, other: "CodecConfig") -> bool:
        """Whether ``other``'s encoder and codebooks fit this model: everything but the
        decoder (and what :meth:`same_architecture` ignores) agrees."""
        # (the low band too: a SEANet decoder cannot take it; same_architecture ignores it anyway)
        decoder = {"decoder": "seanet", "decoder_dim": 0, "decoder_layers": 0, "decoder_lowband_bins": 0, "lowband_levels": ()}
        return replace(self, **decoder).same_architecture(replace(other, **decoder))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CodecConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)
