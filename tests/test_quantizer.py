"""Residual vector quantizer: dropout, explicit n_q, learning hooks, metrics."""

from __future__ import annotations

import pytest
import torch

from codec.quantizer import BEAM_MAX_LEVELS, SEARCH_BEAM, ResidualVectorQuantizer, beam_search, sample_n_q
from conftest import SMALL, make_model


def test_dropout_reaches_every_n_q():
    choices = SMALL.valid_n_q
    draws = sample_n_q(2000, choices, dropout=1.0, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == set(choices)
    none = sample_n_q(100, choices, dropout=0.0)
    assert set(none.tolist()) == {max(choices)}


def test_dropout_draws_bitrates_in_proportion_to_their_weights():
    choices = (2, 4, 8, 16, 32)
    g = torch.Generator().manual_seed(0)
    draws = sample_n_q(20000, choices, dropout=1.0, generator=g, weights=(1.0, 0.0, 3.0, 0.0, 0.0))
    share = {n: (draws == n).float().mean().item() for n in choices}
    assert share[4] == share[16] == share[32] == 0.0
    assert abs(share[8] - 0.75) < 0.02 and abs(share[2] - 0.25) < 0.02


def test_training_forward_masks_inactive_levels():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=16, n_q=6, size=32).train()
    z = torch.randn(3, 16, 10)
    n_q = torch.tensor([1, 3, 6])
    rvq(z, n_q)  # k-means initialisation and one EMA step
    rvq.eval()  # no more updates: the forward pass and decode() see the same codebooks
    out = rvq(z, n_q)
    for b, k in enumerate(n_q.tolist()):
        expected = rvq.decode(out.codes[b : b + 1, :k])
        assert torch.allclose(out.x[b : b + 1], expected, atol=1e-5)
    assert set(out.metrics) >= {f"usage/q{i}" for i in range(6)} | {f"perplexity/q{i}" for i in range(6)}
    assert out.commitment_loss.item() > 0


def test_usage_and_commitment_count_only_the_frames_a_level_reaches():
    """Each level's usage, perplexity and commitment term are over the frames of the examples
    whose depth reaches it, as a per-level computation over those frames alone gives them."""
    torch.manual_seed(3)
    rvq = ResidualVectorQuantizer(dim=8, n_q=4, size=16).train()
    z = torch.randn(3, 8, 40)
    rvq(z, torch.full((3,), 4))  # k-means initialisation
    rvq.eval()
    n_q = torch.tensor([4, 1, 2])
    out = rvq(z, n_q)
    flat = z.transpose(1, 2).reshape(-1, 8)
    depth = n_q.repeat_interleave(40)
    residual, commit = flat, 0.0
    for i in range(4):
        idx = out.codes[:, i].reshape(-1)
        entries = rvq.codebooks[i][idx]
        reached = depth > i
        hist = torch.bincount(idx[reached], minlength=16).float()
        p = hist / hist.sum()
        assert out.metrics[f"usage/q{i}"].item() == pytest.approx((hist > 0).float().mean().item())
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        assert out.metrics[f"perplexity/q{i}"].item() == pytest.approx(entropy.exp().item(), rel=1e-5)
        commit += ((residual[reached] - entries[reached]) ** 2).mean().item()
        residual = residual - entries
    assert out.commitment_loss.item() == pytest.approx(commit / 4, rel=1e-5)
    assert set(rvq(z, torch.tensor([2, 1, 2])).metrics) == {"usage/q0", "perplexity/q0", "usage/q1", "perplexity/q1"}


def test_cached_codes_give_the_training_forward_latent():
    """from_codes (training on a code cache): each example's latent is that of the forward
    pass with the same active levels, from the codes alone, and nothing learns."""
    torch.manual_seed(1)
    rvq = ResidualVectorQuantizer(dim=16, n_q=6, size=32).train()
    z = torch.randn(4, 16, 10)
    rvq(z, torch.full((4,), 6))  # k-means initialisation
    rvq.eval()
    n_q = torch.tensor([1, 2, 6, 4])
    out = rvq(z, n_q)
    before = rvq.codebooks.clone()
    cached = rvq.from_codes(out.codes, n_q)
    assert torch.allclose(cached.x, out.x, atol=1e-5)
    assert not torch.allclose(cached.x[0], rvq.from_codes(out.codes, torch.full((4,), 6)).x[0], atol=1e-3)
    assert float(cached.commitment_loss) == 0.0 and torch.equal(rvq.codebooks, before)


def test_straight_through_and_commitment_gradients_reach_the_input():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=8, n_q=3, size=16).train()
    z = torch.randn(2, 8, 12, requires_grad=True)
    out = rvq(z, torch.tensor([3, 2]))
    out.x.sum().backward(retain_graph=True)
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity through the quantizer
    z.grad = None
    out.commitment_loss.backward()
    assert z.grad.abs().sum() > 0
    assert rvq.codebooks.grad is None and not rvq.codebooks.requires_grad  # codebooks learn by EMA only


def test_n_q_is_honoured_in_eval_mode():
    model = make_model(SMALL)
    wav = torch.randn(1, 1, 3200) * 0.3
    for k in (1, 2, 8, 32):
        codes = model.encode(wav, n_q=k)
        assert codes.shape[2] == k
    c8 = model.encode(wav, n_q=8, levels_only=True)
    c32 = model.encode(wav, n_q=32, levels_only=True)
    assert torch.equal(c8, c32[:, :, :8])  # greedy residual levels are nested
    model.train()
    assert model.encode(wav, n_q=8).shape[2] == 8  # training mode changes nothing at inference


def _greedy(rows: torch.Tensor, books: torch.Tensor, n_q: int) -> torch.Tensor:
    codes, residual = [], rows.clone()
    for level in range(n_q):
        idx = torch.cdist(residual, books[level]).argmin(-1)
        residual = residual - books[level][idx]
        codes.append(idx)
    return torch.stack(codes, dim=1)


def _error(rows: torch.Tensor, books: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    rec = sum(books[level][codes[:, level]] for level in range(codes.shape[1]))
    return ((rows - rec) ** 2).sum(-1)


def test_a_beam_as_wide_as_the_choices_finds_the_best_codes():
    """Two levels of 4 entries: a beam of 4 keeps every first entry, so it finds the best of
    all 16 pairs (checked here by trying them all), which greedy search often misses."""
    g = torch.Generator().manual_seed(0)
    books = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    books[1] *= 0.8  # the second level's entries about as large as the first's: greedy goes wrong
    rows = torch.randn(200, 3, generator=g, dtype=torch.float64)
    norms = (books * books).sum(-1)
    pairs = torch.cartesian_prod(torch.arange(4), torch.arange(4))  # [16, 2]
    every = torch.stack([_error(rows, books, p.expand(len(rows), 2)) for p in pairs], dim=1)  # [N, 16]
    best = every.min(1).values
    found = _error(rows, books, beam_search(rows, books, norms, 2, beam=4))
    assert torch.allclose(found, best)
    greedy = _error(rows, books, beam_search(rows, books, norms, 2, beam=1))
    assert torch.allclose(greedy, _error(rows, books, _greedy(rows, books, 2)))
    assert (greedy > best + 1e-9).sum() > 10


def test_the_inference_search_leaves_less_than_greedy_and_is_the_same_frame_by_frame():
    """The quantizer's search (a beam of SEARCH_BEAM) leaves less squared error than greedy
    search over many frames; one frame at a time it gives the codes of all frames at once
    (a stream's codes are the offline file's)."""
    assert SEARCH_BEAM > 1
    g = torch.Generator().manual_seed(1)
    rvq = ResidualVectorQuantizer(dim=8, n_q=6, size=64).eval()
    with torch.no_grad():
        rvq.codebooks.copy_(torch.randn(6, 64, 8, generator=g) * torch.tensor([1.0, 0.7, 0.5, 0.35, 0.25, 0.18])[:, None, None])
    z = torch.randn(1, 8, 300, generator=g)
    rows, books = z[0].T.double(), rvq.codebooks.double()
    codes = rvq.encode(z, 6)
    assert torch.equal(rvq.encode(z, 6, beam=1)[0].T, _greedy(rows, books, 6))
    searched, greedy = _error(rows, books, codes[0].T), _error(rows, books, _greedy(rows, books, 6))
    assert searched.sum() < 0.95 * greedy.sum(), searched.sum() / greedy.sum()
    one_by_one = torch.cat([rvq.encode(z[..., i : i + 1], 6) for i in range(z.shape[-1])], dim=-1)
    assert torch.equal(one_by_one, codes)


def test_duplicate_entries_leave_the_beam_no_ties():
    """Entries equal to an earlier one of their level are never chosen, so the beam has no
    exact ties to settle: a stream's frames (frame.c's search) and the whole file (PyTorch's)
    get the same codes, weighted or not. (Without that, they differed on every seed.)"""
    g = torch.Generator().manual_seed(5)
    rvq = ResidualVectorQuantizer(dim=8, n_q=4, size=16).eval()
    with torch.no_grad():
        rvq.codebooks.copy_(torch.randn(4, 16, 8, generator=g) * 0.7 ** torch.arange(4.0)[:, None, None])
        rvq.codebooks[:, 9] = rvq.codebooks[:, 2]  # entry 9 repeats entry 2 at every level
        rvq.codebooks[:, 14] = rvq.codebooks[:, 5]
    z = torch.randn(1, 8, 400, generator=g)
    weights = torch.linspace(0.3, 1.0, 8, dtype=torch.float64)
    for w in (None, weights):
        codes = rvq.encode(z, 4, weights=w)
        assert not torch.isin(codes, torch.tensor([9, 14])).any() and torch.isin(codes, torch.tensor([2, 5])).any()
        one_by_one = torch.cat([rvq.encode(z[..., i : i + 1], 4, weights=w) for i in range(z.shape[-1])], dim=-1)
        assert torch.equal(one_by_one, codes)
    with torch.no_grad():  # a first level of 3 distinct entries: fewer than the beam's 8 places
        rvq.codebooks[0] = rvq.codebooks[0, torch.arange(16) % 3]
    codes = rvq.encode(z, 4)
    assert set(codes[0, 0].tolist()) <= {0, 1, 2}
    one_by_one = torch.cat([rvq.encode(z[..., i : i + 1], 4) for i in range(z.shape[-1])], dim=-1)
    assert torch.equal(one_by_one, codes)


def test_searches_of_more_than_eight_levels_stay_greedy():
    """The beam only for searches of up to BEAM_MAX_LEVELS levels (the cost grows with the
    levels; the legacy models' 12 and 24 kbps search 16 and 32); a beam under 1 is refused."""
    g = torch.Generator().manual_seed(2)
    rvq = ResidualVectorQuantizer(dim=8, n_q=12, size=64).eval()
    with torch.no_grad():
        rvq.codebooks.copy_(torch.randn(12, 64, 8, generator=g) * 0.8 ** torch.arange(12.0)[:, None, None])
    z = torch.randn(1, 8, 200, generator=g)
    assert BEAM_MAX_LEVELS == 8
    assert not torch.equal(rvq.encode(z, 8), rvq.encode(z, 8, beam=1))
    assert torch.equal(rvq.encode(z, 9), rvq.encode(z, 9, beam=1))
    with pytest.raises(ValueError, match="beam"):
        rvq.encode(z, 4, beam=0)


def test_a_weighted_search_trades_the_light_dimensions_for_the_others():
    """With weights (the low band's bitrates, codec.lowband.search_weights), the weighted
    squared error is lower than the plain search leaves, and the error of the fully weighted
    dimensions too, at the light ones' expense; one frame at a time as all at once."""
    g = torch.Generator().manual_seed(4)
    rvq = ResidualVectorQuantizer(dim=8, n_q=6, size=64).eval()
    with torch.no_grad():
        rvq.codebooks.copy_(torch.randn(6, 64, 8, generator=g) * 0.7 ** torch.arange(6.0)[:, None, None])
    z = torch.randn(1, 8, 300, generator=g)
    weights = torch.tensor([0.3, 0.3, 0.3, 1, 1, 1, 1, 1], dtype=torch.float64)
    rows, books = z[0].T.double(), rvq.codebooks.double()

    def squares(codes: torch.Tensor) -> torch.Tensor:
        rec = sum(books[level][codes[0, level]] for level in range(6))
        return ((rows - rec) ** 2).sum(0)  # [D]

    plain, weighted = squares(rvq.encode(z, 6)), squares(rvq.encode(z, 6, weights=weights))
    assert (weighted * weights).sum() < (plain * weights).sum()
    assert weighted[3:].sum() < 0.97 * plain[3:].sum() and weighted[:3].sum() > plain[:3].sum()
    codes = rvq.encode(z, 6, weights=weights)
    one_by_one = torch.cat([rvq.encode(z[..., i : i + 1], 6, weights=weights) for i in range(z.shape[-1])], dim=-1)
    assert torch.equal(one_by_one, codes)


def test_ema_quantizer_improves_with_more_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=8, n_q=4, size=32, decay=0.9).train()
    z = torch.randn(4, 8, 64)
    for _ in range(60):
        rvq(z + 0.01 * torch.randn_like(z), torch.tensor([1, 2, 3, 4]))
    rvq.eval()
    errors = [((rvq.decode(rvq.encode(z, k)) - z) ** 2).mean().item() for k in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.3 * ((z - z.mean()) ** 2).mean().item()


def test_ema_moves_each_entry_to_the_mean_of_its_frames():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=2, n_q=1, size=2, decay=0.5, dead_fraction=0.0).train()
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([-3.0, 0.0])
    frames = torch.stack([a, b] * 8) + 0.1 * torch.randn(16, 2)  # two clusters
    z = frames.T.unsqueeze(0)  # [1, 2, 16]
    rvq(z, torch.tensor([1]))
    rvq.codebooks[0] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # move both away, keep the sides
    for _ in range(30):
        rvq(z, torch.tensor([1]))
    means = torch.stack([frames[0::2].mean(0), frames[1::2].mean(0)])
    assert torch.allclose(rvq.codebooks[0], means, atol=1e-3)


def test_kmeans_init_and_dead_code_replacement():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=4, n_q=1, size=16).train()
    assert not bool(rvq.initialized)
    z = torch.randn(2, 4, 64) + 5.0  # far from the random init
    rvq(z, torch.tensor([1, 1]))
    assert bool(rvq.initialized)
    frames = z.transpose(1, 2).reshape(-1, 4)
    assert torch.cdist(rvq.codebooks[0], frames).min(dim=1).values.max() < 1.5  # k-means put entries on the data
    # Send half the entries far away and mark them unused: the next batch re-seeds them
    # from current inputs, so they end up on the data again.
    dead = torch.arange(8)
    rvq.codebooks[0, dead] = 1000.0
    rvq.cluster_size[0, dead] = 0.0
    rvq(z, torch.tensor([1, 1]))
    dists = torch.cdist(rvq.codebooks[0, dead], frames).min(dim=1).values
    assert dists.max().item() < 0.05


def test_inactive_levels_still_learn_from_every_frame():
    """Quantizer dropout limits what the decoder gets, not what the codebooks learn from: a
    level no example uses still takes its EMA step from the batch's full-depth residuals."""
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=4, n_q=3, size=8, dead_fraction=0.0).train()  # no re-seeding
    z = torch.randn(2, 4, 64)
    rvq(z, torch.tensor([3, 3]))  # k-means initialisation
    flat = z.transpose(1, 2).reshape(-1, 4)
    residual = flat - rvq.codebooks[0][rvq.assign(0, flat, exact=False)]
    residual = residual - rvq.codebooks[1][rvq.assign(1, residual, exact=False)]
    idx = rvq.assign(2, residual, exact=False)
    counts = torch.bincount(idx, minlength=8).float()
    before = rvq.cluster_size[2].clone()
    out = rvq(z, torch.tensor([1, 1]))  # only level 0 reaches the decoder
    assert torch.allclose(rvq.cluster_size[2], before * rvq.decay + counts * (1 - rvq.decay))
    assert set(out.metrics) == {"usage/q0", "perplexity/q0"}  # metrics describe what was decoded


def test_training_forward_under_bf16_autocast_keeps_fp32_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=8, n_q=2, size=64).train()
    z = torch.randn(2, 8, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rvq(z, torch.tensor([2, 2]))
        rvq.cluster_size.zero_()  # every entry dead: replacement must cope with autocast
        out = rvq(z, torch.tensor([2, 2]))
    assert out.x.dtype == torch.float32
    assert rvq.codebooks.dtype == torch.float32 and rvq.embed_sum.dtype == torch.float32


def test_inference_search_follows_codebook_changes():
    """The float64 tables used by ``encode`` are cached; any change to the codebooks (a
    training step, ``load_state_dict``, an in-place edit) must be seen by the next search."""
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(8, 2, 16).eval()
    z = torch.randn(2, 8, 10)
    before = q.encode(z, 2)
    other = ResidualVectorQuantizer(8, 2, 16).eval()  # different random entries
    q.load_state_dict(other.state_dict())
    assert torch.equal(q.encode(z, 2), other.encode(z, 2))
    with torch.no_grad():
        q.codebooks.mul_(-1.0)
    expected = ResidualVectorQuantizer(8, 2, 16).eval()
    expected.load_state_dict(q.state_dict())
    assert torch.equal(q.encode(z, 2), expected.encode(z, 2))
    assert not torch.equal(q.encode(z, 2), before)
    live = z[..., :1]  # a live frame: the native search, its own compact and transposed copies, a beam
    assert 1 <= q.NATIVE_MAX_ROWS
    searched = q.encode(live, 2, beam=4)
    with torch.no_grad():
        q.codebooks.mul_(-1.0)
    assert torch.equal(q.encode(live, 2, beam=4)[..., 0], beam_search(live[..., 0].double(), q.codebooks.double(),
                                                                      (q.codebooks.double() ** 2).sum(-1), 2, 4))
    assert not torch.equal(q.encode(live, 2, beam=4), searched)


def test_decode_refuses_codes_outside_the_codebook():
    """Decoding gathers from all levels' entries at once: a code past the end of its level
    would silently read the next level's entry, so it is refused."""
    rvq = ResidualVectorQuantizer(dim=4, n_q=3, size=8).eval()
    good = torch.randint(0, 8, (1, 3, 5))
    assert rvq.decode(good).shape == (1, 4, 5)
    for bad in (8, -1):
        codes = good.clone()
        codes[0, 0, 2] = bad
        with pytest.raises(ValueError, match="0..7"):
            rvq.decode(codes)
