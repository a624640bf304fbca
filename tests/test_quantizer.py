"""Residual vector quantizer: dropout, explicit n_q, learning hooks, metrics."""

from __future__ import annotations

import torch

from codec.quantizer import ResidualVectorQuantizer, sample_n_q
from conftest import SMALL, make_model


def test_dropout_reaches_every_n_q():
    choices = SMALL.valid_n_q
    draws = sample_n_q(2000, choices, dropout=1.0, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == set(choices)
    none = sample_n_q(100, choices, dropout=0.0)
    assert set(none.tolist()) == {max(choices)}


def test_training_forward_masks_inactive_levels():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=16, n_q=6, size=32, code_dim=4).train()
    z = torch.randn(3, 16, 10)
    n_q = torch.tensor([1, 3, 6])
    out = rvq(z, n_q)
    rvq.eval()
    for b, k in enumerate(n_q.tolist()):
        expected = rvq.decode(out.codes[b : b + 1, :k])
        assert torch.allclose(out.x[b : b + 1], expected, atol=1e-5)
    assert set(out.metrics) >= {f"usage/q{i}" for i in range(6)} | {f"perplexity/q{i}" for i in range(6)}
    assert out.commitment_loss.item() > 0 and out.codebook_loss.item() > 0


def test_n_q_is_honoured_in_eval_mode():
    model = make_model(SMALL)
    wav = torch.randn(1, 1, 3200) * 0.3
    for k in (1, 2, 8, 32):
        codes = model.encode(wav, n_q=k)
        assert codes.shape[2] == k
    c8 = model.encode(wav, n_q=8)
    c32 = model.encode(wav, n_q=32)
    assert torch.equal(c8, c32[:, :, :8])  # residual levels are nested
    model.train()
    assert model.encode(wav, n_q=8).shape[2] == 8  # training mode changes nothing at inference


def test_trained_quantizer_improves_with_more_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=8, n_q=4, size=32, code_dim=4).train()
    z = torch.randn(4, 8, 64)
    opt = torch.optim.Adam(rvq.parameters(), lr=1e-2)
    for _ in range(150):
        out = rvq(z, torch.tensor([1, 2, 3, 4]))
        loss = ((out.x - z) ** 2).mean() + out.codebook_loss + 0.25 * out.commitment_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    rvq.eval()
    errors = [((rvq.decode(rvq.encode(z, k)) - z) ** 2).mean().item() for k in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.5 * ((z - z.mean()) ** 2).mean().item()


def test_kmeans_init_and_dead_code_replacement():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=4, n_q=1, size=16, code_dim=4).train()
    level = rvq.levels[0]
    assert not bool(level.initialized)
    z = torch.randn(2, 4, 64) + 5.0  # far from the random init
    rvq(z, torch.tensor([1, 1]))
    assert bool(level.initialized)
    # Send half the codes far away and mark them unused: the next batch replaces them
    # with current inputs, so they end up next to the data again.
    dead = torch.arange(8)
    level.codebook.data[dead] = 1000.0
    level.usage[dead] = 0.0
    rvq(z, torch.tensor([1, 1]))
    projected = level.project(z.transpose(1, 2).reshape(-1, 4)).detach()
    dists = torch.cdist(level.codebook.detach()[dead], projected).min(dim=1).values
    assert dists.max().item() < 0.05


def test_training_forward_under_bf16_autocast_keeps_fp32_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=8, n_q=2, size=64, code_dim=4).train()
    z = torch.randn(2, 8, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rvq(z, torch.tensor([2, 2]))
        for level in rvq.levels:
            level.usage.zero_()  # every code dead: replacement must cope with autocast
        out = rvq(z, torch.tensor([2, 2]))
    assert out.x.dtype == torch.float32
    assert all(level.codebook.dtype == torch.float32 for level in rvq.levels)
