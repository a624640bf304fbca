"""The spectral decoder: its synthesis inverts per-frame spectra exactly, and it is causal."""

from __future__ import annotations

import torch

from codec.spectral import FFTSynthesis, SpectralDecoder, crossfade_window


def test_fades_of_neighbouring_frames_sum_to_one():
    hop, fade = 12, 5
    w = crossfade_window(hop, fade)
    assert w.shape == (hop + fade,)
    torch.testing.assert_close(w[:fade] + w[hop:], torch.ones(fade))
    assert torch.equal(w[fade:hop], torch.ones(hop - fade))
    assert bool((w[:fade].diff() > 0).all())  # a fade-in, not a step


def test_synthesis_of_each_frames_own_spectrum_gives_the_signal_back():
    """Frame t given the spectrum of the signal from its own block on: the fades of
    neighbouring frames add up to the signal (the first fade-in has no frame before it)."""
    hop, fade, n_fft, frames = 16, 8, 32, 9
    torch.manual_seed(0)
    s = torch.randn(frames * hop + n_fft, dtype=torch.float64)
    spectra = torch.stack([torch.fft.rfft(s[t * hop : t * hop + n_fft]) for t in range(frames)])  # [F, bins]
    x = torch.cat([spectra.abs().log(), spectra.angle()], dim=-1).T[None].float()  # [1, n_fft + 2, F]
    y = FFTSynthesis(n_fft, hop, fade)(x)[0, 0]
    assert y.shape == (frames * hop,)
    torch.testing.assert_close(y[fade:], s[fade : frames * hop].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:fade], (s[:fade] * crossfade_window(hop, fade)[:fade].double()).float(), atol=1e-5, rtol=0)


def test_decoder_output_never_depends_on_later_frames():
    torch.manual_seed(1)
    decoder = SpectralDecoder(latent_dim=6, hop=20, dim=16, hidden=32, layers=2).eval()
    z = torch.randn(2, 6, 10)
    later = z.clone()
    later[..., 6:] += torch.randn(2, 6, 4)
    with torch.no_grad():
        y, y_later = decoder(z), decoder(later)
    assert y.shape == (2, 1, 200)
    assert torch.equal(y[..., : 6 * 20], y_later[..., : 6 * 20])
    assert not torch.equal(y[..., 6 * 20 :], y_later[..., 6 * 20 :])
