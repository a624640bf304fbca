"""Residual vector quantizer with EMA codebooks in the full latent dimension.

Level ``i`` quantizes what levels ``0..i-1`` left over; each entry of its codebook is the
running mean (exponential moving average) of the latent frames assigned to it, as in
SoundStream and EnCodec. K-means initialisation (first training batch) and dead-code
replacement (from the current batch) keep every entry in use, and every level learns from
every frame of the batch: quantizer dropout only limits which levels the decoder gets.

Why EMA codebooks, and not learned low-dimensional codes: we trained DAC-style projected codes
first. Their input and output projections are free parameters, and after an hour of training
the quantized latent was 45 times off the encoder's own latent in RMS: the decoder saw two
different inputs, and more codebooks did not improve the output. An EMA entry is by
construction a mean of real latent frames, so the quantized latent stays on the encoder's
scale, and every added level removes part of the remaining error. The cost is a search in the
full latent dimension; at inference it is a beam search (:func:`beam_search`, session 26),
most of a log-mel model's encoding time.

The number of active codebooks is always an explicit argument: ``n_q`` per example during
training (quantizer dropout is drawn by :func:`sample_n_q`), an int at inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .cache import TensorCache
from .kmeans import kmeans, nearest
from .native import beam_bounds, compact, rvq_beam, rvq_decode, rvq_search

SEARCH_BEAM = 8  # code sequences kept per level by the inference search (beam_search; 1: greedy)
BEAM_MAX_LEVELS = 8  # searches of more levels stay greedy (the default's bitrates search at most 8)
BEAM_ROWS = 64  # frames searched at once: their distances, [rows, beam, entries], stay in cache (30-s encode 0.76 s; 1.3 s at 256, session 26)


@dataclass
class QuantizerOutput:
    """Result of a training forward pass.

    Attributes:
        x: quantized latent ``[B, D, F]`` (straight-through gradients to the input).
        codes: code indices ``[B, K, F]`` (inactive levels are still searched: their
            codebooks learn from every frame).
        commitment_loss: pulls encoder outputs towards their codes, mean over levels (scalar).
        metrics: per-level ``usage/q{i}`` (fraction of entries used) and ``perplexity/q{i}``.
    """

    x: Tensor
    codes: Tensor
    commitment_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def sample_n_q(batch: int, choices: tuple[int, ...], dropout: float, generator: torch.Generator | None = None,
               weights: tuple[float, ...] = ()) -> Tensor:
    """Quantizer dropout: per example, with probability ``dropout`` draw n_q from ``choices``
    (uniformly, or in proportion to ``weights``, one per choice in ascending order),
    otherwise use the largest. Returns ``[B]`` int64."""
    n_max = max(choices)
    options = torch.tensor(sorted(choices))
    if weights:
        index = torch.multinomial(torch.tensor(weights, dtype=torch.float64), batch, replacement=True, generator=generator)
    else:
        index = torch.randint(len(options), (batch,), generator=generator)
    pick = options[index]
    drop = torch.rand(batch, generator=generator) < dropout
    return torch.where(drop, pick, torch.full_like(pick, n_max))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class ResidualVectorQuantizer(nn.Module):
    """``n_q`` EMA codebooks of ``size`` entries of dimension ``dim``.

    State (buffers, saved with the weights): ``codebooks`` ``[n_q, size, dim]``; for training,
    ``cluster_size`` ``[n_q, size]`` and ``embed_sum`` ``[n_q, size, dim]`` (EMAs of the
    count and sum of frames assigned to each entry) and ``initialized``.

    Args:
        decay: EMA decay per step. 0.97 averages over about 30 steps: at our small CPU batches
            (~300 frames for 1024 entries) that is ~10 frames per entry, and it lets the codes
            follow an encoder that is still moving.
        dead_fraction: an entry whose EMA count falls below this fraction of the mean count
            is re-seeded from a frame of the current batch. At 0.2, levels 12-31 of the
            interim model used 70-77% of their entries on held-out audio; 750 steps at 0.5
            raised every level to 85% or more, at the same STOI.
    """

    def __init__(self, dim: int, n_q: int, size: int, decay: float = 0.97, dead_fraction: float = 0.5, eps: float = 1e-5) -> None:
        super().__init__()
        self.codebook_size, self.decay, self.dead_fraction, self.eps = size, decay, dead_fraction, eps
        # Random entries until k-means runs, so that an untrained model still gives varied codes.
        self.register_buffer("codebooks", torch.randn(n_q, size, dim))
        self.register_buffer("cluster_size", torch.ones(n_q, size))
        self.register_buffer("embed_sum", self.codebooks.clone())
        self.register_buffer("initialized", torch.tensor(False))
        self._exact_cache: TensorCache[tuple[Tensor, Tensor]] = TensorCache()  # see _exact_tables
        self._compact_cache: TensorCache[Tensor] = TensorCache()  # codebooks for the native search
        self._transposed_cache: TensorCache[Tensor] = TensorCache()  # and as [L, D, K], for its beam's float32 pass
        self._beam_cache: TensorCache[tuple[Tensor, Tensor, Tensor | None]] = TensorCache()  # see _beam_norms
        self._weighted_cache: TensorCache[tuple[Tensor, Tensor, Tensor | None]] = TensorCache()

    # Buffers only training needs: release files leave them out (they would double the size).
    TRAINING_BUFFERS = ("cluster_size", "embed_sum")

    @torch.no_grad()
    def reset_statistics(self) -> None:
        """Restart the EMA statistics from the current codebooks (after loading a release)."""
        self.cluster_size.fill_(1.0)
        self.embed_sum.copy_(self.codebooks)

    @property
    def n_q(self) -> int:
        return self.codebooks.shape[0]

    @property
    def dim(self) -> int:
        return self.codebooks.shape[2]

    def assign(self, level: int, r: Tensor, exact: bool = True) -> Tensor:
        """Index of the nearest entry of ``level`` for each row of ``r`` ``[N, D]`` -> ``[N]``.

        ``exact`` computes in float64, so that the choice does not depend on how many frames
        are searched at once (streaming and offline agree exactly); training uses float32.
        A float32 search that re-checks near-ties in float64 was measured too: the tie test
        cost more than it saved."""
        if not exact:
            return nearest(r, self.codebooks[level])
        c, norms = self._exact_tables()
        return nearest(r.double(), c[level], norms[level])

    def _compact_codebooks(self) -> Tensor:
        """The codebooks as the native search and decode read them (float16 where exact)."""
        return self._compact_cache.get([self.codebooks], lambda: compact(self.codebooks))

    def _transposed_codebooks(self) -> Tensor:
        """:meth:`_compact_codebooks` as ``[L, D, K]``: the native beam search reads 16 entries a vector."""
        return self._transposed_cache.get([self.codebooks], lambda: self._compact_codebooks().transpose(1, 2).contiguous())

    def _exact_tables(self) -> tuple[Tensor, Tensor]:
        """Float64 codebooks ``[L, K, D]`` and their squared norms ``[L, K]``, converted once
        per codebook change rather than at every call (a streaming frame would otherwise
        convert 32 MB for a few one-row searches)."""
        def tables() -> tuple[Tensor, Tensor]:
            c = self.codebooks.detach().double()
            return c, (c * c).sum(-1)

        return self._exact_cache.get([self.codebooks], tables)

    def _beam_norms(self, weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """What the beam search ranks entries with: the squared norms ``[L, K]`` float64,
        summed with ``weights`` ``[D]`` where given, and infinite for an entry equal to an
        earlier one of its level, so that no two entries tie (which of two tied sequences a
        top-k keeps is not defined, and frame.c keeps the first: the two searches would
        differ); codec/native.py's bounds of its float32 pass (:func:`codec.native.beam_bounds`),
        ``[L, 2]``; and the weights as float64 beside the codebooks. Kept until the codebooks
        or the caller's weights tensor change (one bitrate's weights, as a stream or a file
        uses them)."""
        def norms() -> tuple[Tensor, Tensor, Tensor | None]:
            tables, plain = self._exact_tables()
            w = None if weights is None else weights.to(device=tables.device, dtype=torch.float64)
            found = plain if w is None else (tables * tables * w).sum(-1)
            found = found.masked_fill(_later_duplicates(tables), float("inf"))
            return found, beam_bounds(plain, found), w

        if weights is None:
            return self._beam_cache.get([self.codebooks], norms)
        return self._weighted_cache.get([self.codebooks, weights], norms)

    # Training -----------------------------------------------------------------------
    def forward(self, z: Tensor, n_q: Tensor) -> QuantizerOutput:
        """Training pass. ``z``: ``[B, D, F]``; ``n_q``: active codebooks per example ``[B]``.

        Always runs in float32, even under autocast: code choices and EMAs need the precision,
        and the cost is small next to the convolutions."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float(), n_q)

    def _forward(self, z: Tensor, n_q: Tensor) -> QuantizerOutput:
        b, d, f = z.shape
        flat = z.transpose(1, 2).reshape(b * f, d)
        if self.training and not bool(self.initialized):
            self._initialize(flat.detach())
        active = n_q.to(z.device).repeat_interleave(f)  # [B*F]
        # Host-side from here: one device sync for the depth, none per level (a GPU step is
        # launch-bound, and a sync per level would stall it 32 times).
        deepest = min(int(n_q.max()), self.n_q) if n_q.numel() else 0
        residual, quantized = flat, torch.zeros_like(flat)
        counts = z.new_zeros(self.n_q, self.codebook_size)
        sums = z.new_zeros(self.n_q, self.codebook_size, d)
        inputs: list[Tensor] = []  # each level's residuals [B*F, D]: seeds for dead entries
        codes, commit = [], z.new_zeros(())
        for i in range(self.n_q):
            # Every frame goes through every level: ``residual`` is the full-depth residual,
            # and dropout only decides which levels' entries the decoder gets (``mask``). An
            # example active at level i was active at all levels before, so for it the two
            # residuals agree.
            mask = (active > i).to(flat.dtype)
            idx = self.assign(i, residual.detach(), exact=not self.training)
            entries = self.codebooks[i][idx]
            if i < deepest:  # the mean over the active frames (masked, so no sync for their count)
                commit = commit + (((residual - entries) ** 2).sum(-1) * mask).sum() / (mask.sum().clamp(min=1) * d)
            if self.training:
                # Codebook statistics from all frames, not only the active ones: under uniform
                # dropout over five bitrates the deepest levels would otherwise see a fifth of
                # the batch, and their noisy EMAs left a third of their entries unused on
                # held-out audio.
                counts[i] = torch.bincount(idx, minlength=self.codebook_size).to(counts)
                sums[i].index_add_(0, idx, residual.detach())
                inputs.append(residual.detach())
            quantized = quantized + entries * mask[:, None]
            residual = residual - entries  # the codes carry no gradient: residuals stay functions of z
            codes.append(idx)
        if self.training:
            self._update(counts, sums, inputs)
        metrics = _usage_metrics(torch.stack(codes), active, self.codebook_size, deepest)
        x = flat + (quantized - flat).detach()  # straight-through
        x = x.reshape(b, f, d).transpose(1, 2)
        codes_t = torch.stack(codes, dim=1).reshape(b, f, -1).transpose(1, 2)
        return QuantizerOutput(x, codes_t, commit / max(deepest, 1), metrics)

    @torch.no_grad()
    def _initialize(self, flat: Tensor) -> None:
        """K-means of each level on the first batch's residuals ``[N, D]`` (rank 0 under DDP)."""
        residual = flat.clone()
        for i in range(self.n_q):
            centres = kmeans(residual, self.codebook_size, iters=10)
            self.codebooks[i] = centres
            self.cluster_size[i] = 1.0
            self.embed_sum[i] = centres
            residual -= centres[self.assign(i, residual, exact=False)]
        self.initialized.fill_(True)
        if _distributed():
            for t in (self.codebooks, self.cluster_size, self.embed_sum):
                dist.broadcast(t, 0)

    @torch.no_grad()
    def _update(self, counts: Tensor, sums: Tensor, inputs: list[Tensor]) -> None:
        """EMA step from this batch's ``counts`` ``[L, K]`` and ``sums`` ``[L, K, D]`` of the
        assigned frames, then dead entries are re-seeded from each level's ``inputs``
        ``[N, D]``. Under DDP the statistics are summed over processes (one all-reduce), so
        every process finds the same dead entries, and rank 0's seeds are broadcast."""
        if _distributed():
            stats = torch.cat([counts.unsqueeze(-1), sums], dim=-1)
            dist.all_reduce(stats)
            counts, sums = stats[..., 0], stats[..., 1:]
        a = 1.0 - self.decay
        self.cluster_size.mul_(self.decay).add_(counts, alpha=a)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=a)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total  # Laplace
        self.codebooks.copy_(self.embed_sum / smoothed.unsqueeze(-1))
        mean = self.cluster_size.mean(-1, keepdim=True)
        dead = self.cluster_size < self.dead_fraction * mean
        if not bool(dead.any()):
            return
        seeds = torch.cat([  # level-major, like self.codebooks[dead]
            inputs[i][torch.randint(inputs[i].shape[0], (int(n),), device=inputs[i].device)]
            for i, n in enumerate(dead.sum(-1).tolist()) if n
        ])  # [n_dead, D]
        if _distributed():
            dist.broadcast(seeds, 0)
        self.codebooks[dead] = seeds
        self.cluster_size[dead] = mean.expand_as(dead)[dead]
        self.embed_sum[dead] = seeds * self.cluster_size[dead].unsqueeze(-1)

    # Inference ----------------------------------------------------------------------
    NATIVE_MAX_ROWS = 8  # searches and decodes of up to this many frames run in codec/native.py

    @torch.no_grad()
    def encode(self, z: Tensor, n_q: int, beam: int = SEARCH_BEAM, weights: Tensor | None = None) -> Tensor:
        """``[B, D, F]`` -> codes ``[B, n_q, F]``: with ``beam`` 1, or more than
        ``BEAM_MAX_LEVELS`` levels, each level's nearest entry to what the levels before left
        (greedy), else :func:`beam_search`'s codes, which leave less (their first levels are
        then not the best codes of fewer levels: encode at the bitrate to be sent).
        ``weights`` ``[D]``: how much each dimension's squared error counts in the search
        (:func:`beam_search`; a weighted search is never greedy's). A few frames at a time
        (live streaming) are searched by codec/native.py in one call."""
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in 1..{self.n_q}, got {n_q}")
        b, d, f = z.shape
        rows = z.transpose(1, 2).reshape(b * f, d)
        tables, norms = self._exact_tables()
        if beam < 1:
            raise ValueError(f"beam must be 1 or more, got {beam}")
        if n_q > BEAM_MAX_LEVELS:
            beam = 1
        searched = beam > 1 or weights is not None  # (a weighted search is never greedy's)
        if searched:
            norms, bounds, weights = self._beam_norms(weights)
        if b * f <= self.NATIVE_MAX_ROWS:  # live streaming: a frame or a few, in one native call
            books = self._compact_codebooks()
            if searched:
                codes = rvq_beam(books, norms, rows, n_q, beam, weights, bounds, self._transposed_codebooks)
            else:
                codes = rvq_search(books, norms, rows, n_q)
            if codes is not None:
                return codes.reshape(b, f, n_q).transpose(1, 2)
        if searched:
            parts = rows.split(BEAM_ROWS)
            codes = torch.cat([beam_search(part.double(), tables, norms, n_q, beam, weights) for part in parts])
            return codes.reshape(b, f, n_q).transpose(1, 2)
        # The residual stays in float64 with the exact search's tables: no conversion per level.
        residual = rows.double()
        codes = []
        for i in range(n_q):
            idx = nearest(residual, tables[i], norms[i])
            residual = residual - tables[i].index_select(0, idx)
            codes.append(idx)
        return torch.stack(codes, dim=1).reshape(b, f, n_q).transpose(1, 2)

    def from_codes(self, codes: Tensor, n_q: Tensor) -> QuantizerOutput:
        """Training on codes computed before (a frozen encoder's, :mod:`train.codes`): example
        ``b``'s latent from its first ``n_q[b]`` levels of ``codes`` ``[B, K, F]``; no
        search, no codebook update, no commitment loss."""
        active = torch.arange(codes.shape[1], device=codes.device)[None, :] < n_q.to(codes.device)[:, None]  # [B, K]
        x = (self._entries(codes) * active[:, :, None, None]).sum(1).transpose(1, 2)
        return QuantizerOutput(x, codes, x.new_zeros(()))

    def _entries(self, codes: Tensor) -> Tensor:
        """The entries ``codes`` ``[B, K, F]`` pick, level k from codebook k: ``[B, K, F, D]``,
        one gather from all levels at once (entry j of level i is row i * size + j)."""
        b, k, f = codes.shape
        offsets = torch.arange(k, device=codes.device)[:, None] * self.codebook_size  # [K, 1]
        return self.codebooks.reshape(-1, self.dim).index_select(0, (codes + offsets).reshape(-1)).view(b, k, f, self.dim)

    def decode(self, codes: Tensor) -> Tensor:
        """codes ``[B, K, F]`` (K <= n_q) -> latent ``[B, D, F]``."""
        b, k, f = codes.shape
        if k > self.n_q:
            raise ValueError(f"{k} codebooks given, the model has {self.n_q}")
        codes = codes.to(self.codebooks.device)  # (codes read from a file are on the CPU)
        if b * f <= self.NATIVE_MAX_ROWS:  # live streaming: one native call (None: not here, or a bad code)
            z = rvq_decode(self._compact_codebooks(), codes)
            if z is not None:
                return z
        low, high = torch.aminmax(codes) if codes.numel() else (0, 0)
        if low < 0 or high >= self.codebook_size:
            raise ValueError(f"codes must be in 0..{self.codebook_size - 1}, got {int(low)}..{int(high)}")
        return self._entries(codes).sum(1).transpose(1, 2)


def _later_duplicates(tables: Tensor) -> Tensor:
    """``[L, K]`` bool: entries of ``tables`` ``[L, K, D]`` equal to an earlier entry of their level."""
    found = torch.zeros(tables.shape[:2], dtype=torch.bool, device=tables.device)
    for level, book in enumerate(tables):
        _, group = torch.unique(book, dim=0, return_inverse=True)
        index = torch.arange(len(book), device=book.device)
        first = torch.full((int(group.max()) + 1,), len(book), device=book.device).scatter_reduce(0, group, index, "amin")
        found[level] = first[group] != index
    return found


def beam_search(rows: Tensor, tables: Tensor, norms: Tensor, n_q: int, beam: int, weights: Tensor | None = None) -> Tensor:
    """Codes of ``n_q`` levels for rows ``[N, D]`` float64 (codebooks ``tables`` ``[L, K, D]``
    and their squared norms ``[L, K]``, float64) -> ``[N, n_q]``: at each level, of every kept
    code sequence extended by every entry, the ``beam`` that leave the smallest residual are
    kept; the best at the end wins. With ``weights`` ``[D]`` float64, each dimension's squared
    error counts that many times (``norms`` then the entries' weighted squares).

    Why (session 26): greedy search takes each level's nearest entry, and the residual it
    leaves may suit the next levels worse than a slightly farther entry's. On the sample
    files, 8 sequences leave 14-21% less squared error than greedy at 6 and 8 levels (a beam
    of 16: 16-23%; of 32: 17-25%), and on 20 held-out speech excerpts at 12 kbps speech PESQ rose 3.317 -> 3.356
    and ViSQOL 3.420 -> 3.473 (docs/model_card.md). Nothing changes for a decoder.

    Float64 and each row on its own, so that a stream of single frames gets the codes of the
    whole file at once: the distance products of one row and of many round differently in
    the last bits, far below the gaps between the distances a beam chooses among (on the
    sample files the closest call at a beam's edge was 4.5e-8 apart, relatively; 3.9e-7 with
    12 kbps's weights). Exact ties go either way here, while frame.c keeps the first: the
    caller rules out the ones duplicate entries make (``ResidualVectorQuantizer._beam_norms``);
    others need sums of entries that are exactly equal, which a random test met only in one
    dimension. codec/csrc/frame.c (``rvq_beam``) runs the same search for live frames."""
    if not len(rows):
        return rows.new_zeros(0, n_q, dtype=torch.long)
    n, d = rows.shape
    def weighed(x: Tensor) -> Tensor:
        return x if weights is None else x * weights

    residual = rows[:, None, :]  # [N, kept, D]
    error = weighed(residual * residual).sum(-1)  # [N, kept]
    codes = rows.new_zeros(n, 1, 0, dtype=torch.long)  # [N, kept, levels so far]
    for level in range(n_q):
        kept = residual.shape[1]
        # |r - c|^2 = |r|^2 + |c|^2 - 2 r.c (each weighed) for every kept sequence and entry: [N, kept, K]
        dist = torch.addmm(norms[level], weighed(residual).reshape(n * kept, d), tables[level].T, alpha=-2.0).view(n, kept, -1)
        dist = dist + error[..., None]
        size = dist.shape[-1]
        # the best extensions of all sequences at once (one selection over kept * K: a third
        # faster than each sequence's best, then the best of those)
        chosen, best = dist.view(n, kept * size).topk(min(beam, kept * size), dim=-1, largest=False)
        parent = torch.div(best, size, rounding_mode="floor")  # [N, beam]
        entry = best - parent * size
        residual = residual.gather(1, parent[..., None].expand(-1, -1, d)) - tables[level].index_select(0, entry.reshape(-1)).view(n, -1, d)
        # (a sequence that took a masked duplicate fills a place only when fewer sequences are
        # finite; it stays out of the running, as frame.c never keeps it)
        error = weighed(residual * residual).sum(-1).masked_fill(torch.isposinf(chosen), float("inf"))
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, codes.shape[2])), entry[..., None]], dim=2)
    return codes[:, 0]


def code_usage(counts: Tensor) -> tuple[Tensor, Tensor]:
    """From code histograms ``[..., K]``: the fraction of entries used and the perplexity
    (exp of the entropy of the code distribution), each ``[...]``."""
    counts = counts.float()
    p = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)
    return (counts > 0).float().mean(-1), entropy.exp()


def _usage_metrics(codes: Tensor, active: Tensor, size: int, levels: int) -> dict[str, Tensor]:
    """Usage and perplexity of levels ``0 .. levels - 1`` over their active frames, from the
    codes ``[L, N]`` and each frame's active depth ``active`` ``[N]``: one histogram for all
    levels (each level's codes offset into its own bins, inactive frames into a spare one)."""
    if levels == 0:
        return {}
    codes = codes[:levels]
    level = torch.arange(levels, device=codes.device)[:, None]
    bins = torch.where(active[None, :] > level, codes + level * (size + 1), level * (size + 1) + size)
    hist = torch.bincount(bins.reshape(-1), minlength=levels * (size + 1)).reshape(levels, size + 1)[:, :size]
    used, perplexity = code_usage(hist)
    metrics: dict[str, Tensor] = {}
    for i in range(levels):
        metrics[f"usage/q{i}"], metrics[f"perplexity/q{i}"] = used[i], perplexity[i]
    return metrics
