"""Reformer: LSH self-attention (Kitaev, Kaiser & Levskaya, "Reformer: The Efficient Transformer",
ICLR 2020, arXiv 2001.04451) in the Long Range Arena encoder (Tay et al., ICLR 2021).

Attention (per head, `mode="standard"`, the textbook algorithm):
- one shared projection gives qk (queries); keys are the unit-normalised qk, so hashing sees the
  similarity the attention uses; values come from a second projection; no biases (HF, LRA);
- n_hashes rounds of angular LSH: bucket = argmax([x R ; -x R]) with a Gaussian R (d_h, n_buckets/2);
  padded positions go to an extra bucket, so they sort after every real token and their content
  can never change which chunk a real token lands in;
- sort by (round, bucket, position), cut the stream into chunks of `bucket_size`, and let each chunk
  attend to itself and to the previous chunk (wrapping around); a token never attends to itself
  unless it has nothing else (self logit -1e5, pad logits -1e9, both finite);
- per round the log-normaliser z = logsumexp(logits) is kept; rounds are combined with weights
  softmax_r(z), which equals one softmax over the union of the keys seen, each key counted as often
  as it was seen (`allow_duplicate_attention=False` subtracts log(count) so each counts once).
- Inputs no longer than one bucket use dense attention with the same shared QK, key normalisation
  and self-mask (as HF does), so short sequences are exact.

`mode="lra"` reproduces LRA's `reformer_attention.py` (spec baselines-table2 §1.5) for parity with
its published row: 10 buckets, the length padded to a multiple of 10 with zero rows (always adding
1..10), one fixed rotation for every head, layer and step, no key normalisation, logits multiplied
(not divided) by sqrt(d_h), no self-, padding- or causal mask, no attention dropout, no output
projection, xavier-uniform projections.

Rotations (standard mode) are a pure function of (hash_seed, layer, draw): a fresh draw per training
forward call, the fixed draw 0 in evaluation. Options beyond LSH: reversible residual layers
(RevNet: Y1 = X1 + Attn(X2), Y2 = X2 + FFN(Y1), recomputed in the backward pass with the same
buckets, dropout masks and autocast state) and a position-wise FFN applied in chunks of the length.
Blocks, FFN, final LayerNorm and sinusoidal positions are models/transformer.py's, with the
attention swapped. The attention core runs in float32, also under autocast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models import transformer
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.transformer import (POSITIONS, EncoderBlock, TransformerConfig, TransformerEncoder,
                                        check_heads, sinusoidal_positions)

PAPER = "Kitaev, Kaiser & Levskaya, ICLR 2020 (arXiv 2001.04451); LRA configs: Tay et al., ICLR 2021"
MODES = ("standard", "lra")
SELF_VALUE = -1e5  # a token's logit on itself: above the pad value, so a token with no other key keeps itself
MASK_VALUE = -1e9  # pads, future keys, other buckets; finite, so no row is ever all -inf (NaN)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32; fp32 and fp64 unchanged (float64 makes the reference identities exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# ---------------------------------------------------------------------------------------------
# Hashing and the chunked attention core (float32 tensors)
# ---------------------------------------------------------------------------------------------

def hash_rotations(n_heads: int, head_dim: int, n_hashes: int, n_buckets: int, seed: int, layer: int,
                   draw: int) -> torch.Tensor:
    """(H, d_h, n_hashes, n_buckets/2) Gaussian rotations, a pure function of (seed, layer, draw),
    drawn on the CPU so that CPU and GPU runs hash alike."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + layer) * 1_000_033 + draw)
    return torch.randn(n_heads, head_dim, n_hashes, n_buckets // 2, generator=g)


def hash_buckets(qk: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Angular LSH: qk (B, H, L, d_h), rotations (H or 1, d_h, R, nb/2) -> buckets (B, H, R, L) in [0, nb)."""
    rotated = torch.einsum("bhld,hdrk->bhrlk", qk, rotations)  # (B, H, R, L, nb/2)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def look_one_back(t: torch.Tensor) -> torch.Tensor:
    """(B, H, n_chunks, c, ...) -> (B, H, n_chunks, 2c, ...): each chunk followed by the chunk before
    it; chunk 0 takes the last chunk of the whole stream (all rounds), as trax/lucidrains/LRA do."""
    return torch.cat([t, t.roll(1, dims=2)], dim=3)


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor, n_ids: int, chunk: int,
                  key_padding: torch.Tensor | None = None, *, normalize_keys: bool = True,
                  scale: float | None = None, self_value: float | None = SELF_VALUE, causal: bool = False,
                  attend_across_buckets: bool = True, allow_duplicate_attention: bool = True,
                  dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Sorted, chunked attention with shared QK.

    qk, v: (B, H, Lp, d_h); buckets: (B, H, R, Lp) ids in [0, n_ids) (pad bucket included);
    Lp * R must be a multiple of `chunk`; key_padding: (B, Lp) bool, True = pad. Returns (B, H, Lp, d_h).
    """
    B, H, Lp, dh = qk.shape
    R = buckets.shape[2]
    N = R * Lp
    n_chunks = N // chunk
    scale = dh ** -0.5 if scale is None else scale
    # Sort key (round, bucket, position) as one integer: unique, so the order is total and deterministic.
    rounds = torch.arange(R, device=qk.device)[:, None] * n_ids
    keys = ((buckets + rounds) * Lp + torch.arange(Lp, device=qk.device)).reshape(B, H, N)
    sorted_keys, perm = keys.sort(dim=-1)  # perm: index into the (round, position) stream
    pos = perm % Lp  # (B, H, N) original position of each sorted item
    undo = torch.empty_like(perm).scatter_(-1, perm, torch.arange(N, device=qk.device).expand(B, H, N))

    def gather(t):  # (B, H, Lp, d) -> (B, H, n_chunks, chunk, d) in sorted order
        return t.gather(2, pos[..., None].expand(-1, -1, -1, t.shape[-1])).view(B, H, n_chunks, chunk, -1)

    q = gather(qk)
    k = F.normalize(q, dim=-1) if normalize_keys else q
    k, vs = look_one_back(k), look_one_back(gather(v))  # (B, H, n_chunks, 2c, d_h)
    qpos = pos.view(B, H, n_chunks, chunk)
    kpos = look_one_back(qpos)  # (B, H, n_chunks, 2c)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, n_chunks, c, 2c)

    if key_padding is not None:
        kpad = look_one_back(key_padding[:, None, :].expand(B, H, Lp).gather(-1, pos).view(B, H, n_chunks, chunk))
        scores = scores.masked_fill(kpad[..., None, :], MASK_VALUE)
    if causal:
        scores = scores.masked_fill(kpos[..., None, :] > qpos[..., :, None], MASK_VALUE)
    if not attend_across_buckets:
        qb = (sorted_keys // Lp).view(B, H, n_chunks, chunk)  # bucket id with its round offset
        scores = scores.masked_fill(look_one_back(qb)[..., None, :] != qb[..., :, None], MASK_VALUE)
    if self_value is not None:  # compare original positions: look-back can repeat a key in a window
        scores = scores.masked_fill(kpos[..., None, :] == qpos[..., :, None], self_value)
    if not allow_duplicate_attention and R > 1:
        # How often key j appears in query i's windows over all rounds: query i's copy of round r'
        # sees chunks {ch, ch - 1}; key j's copy of round r'' sits in one chunk, possibly of another
        # round (the look-back of a round's first chunk wraps into the previous round), so all
        # (r', r'') pairs count. Subtracting log(count) from each slot makes the key count once.
        # Memory: R^2 booleans per score.
        chunk_of = (undo // chunk).view(B, H, R, Lp).transpose(2, 3)  # (B, H, Lp, R)
        ch = chunk_of.gather(2, pos[..., None].expand(-1, -1, -1, R)).view(B, H, n_chunks, chunk, R)
        kch = look_one_back(ch)[..., None, :, None, :]  # (B, H, n_chunks, 1, 2c, 1, R)
        qch = ch[..., :, None, :, None]  # (B, H, n_chunks, c, 1, R, 1)
        seen = (kch == qch) | (kch == (qch - 1) % n_chunks)
        scores = scores - seen.sum((-1, -2)).clamp_min(1).to(scores.dtype).log()

    lse = scores.logsumexp(dim=-1, keepdim=True)  # (B, H, n_chunks, c, 1)
    weights = F.dropout(torch.exp(scores - lse), dropout, training)
    out = (weights @ vs).view(B, H, N, dh)
    # Unsort both the outputs and their log-normalisers back to (round, position).
    out = out.gather(2, undo[..., None].expand(-1, -1, -1, dh)).view(B, H, R, Lp, dh)
    lse = lse.view(B, H, N).gather(-1, undo).view(B, H, R, Lp)
    round_weights = torch.softmax(lse, dim=2)[..., None]  # (B, H, R, Lp, 1)
    return (out * round_weights).sum(dim=2)


def dense_shared_qk_attention(qk: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None = None,
                              causal: bool = False, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """Full attention with shared QK, unit keys and the self-mask: (B, H, L, d_h) -> (B, H, L, d_h).
    What LSH attention computes when all tokens share one bucket; used for inputs up to one bucket."""
    L, dh = qk.shape[-2:]
    scores = (qk @ F.normalize(qk, dim=-1).transpose(-1, -2)) * dh ** -0.5  # (B, H, L, L)
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], MASK_VALUE)
    idx = torch.arange(L, device=qk.device)
    if causal:
        scores = scores.masked_fill(idx[None, :] > idx[:, None], MASK_VALUE)
    scores = scores.masked_fill(idx[None, :] == idx[:, None], SELF_VALUE)
    return F.dropout(torch.softmax(scores, dim=-1), dropout, training) @ v


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class ReformerConfig(TransformerConfig):
    """The Transformer's architecture with LSH attention (shared QK), optionally reversible."""

    family = "reformer"

    mode: str = "standard"  # "standard": textbook LSH attention; "lra": LRA's reformer_attention.py
    n_hashes: int = 1  # hash rounds (LRA 1; the paper's best enwik8 runs 8)
    bucket_size: int = 64  # standard: chunk length c; the length is padded to a multiple of 2c, n_buckets = L/c
    n_buckets: int = 10  # lra mode only: fixed number of buckets (LRA's default 10; chunk = L_pad / 10)
    hash_seed: int = 0  # rotations are a function of (hash_seed, layer, draw); draw 0 = evaluation
    causal: bool = False  # True masks keys after the query (encoder tasks are bidirectional)
    attend_across_buckets: bool = True  # False: a query sees only keys of its own bucket (lucidrains option)
    allow_duplicate_attention: bool = True  # False: a key seen in several rounds counts once (the paper's fix)
    reversible: bool = False  # RevNet residuals, activations recomputed in backward (off in LRA)
    ff_chunk_size: int = 0  # > 0: FFN applied over slices of this many positions (off in LRA)

    def check(self) -> None:
        check_config(self.family, dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "n_heads", "d_ffn", "n_hashes", "bucket_size", "n_buckets"),
                     nonnegative=("hash_seed", "ff_chunk_size"), probability=("dropout", "attn_dropout"),
                     flags=("causal", "attend_across_buckets", "allow_duplicate_attention", "reversible"),
                     choices=dict(mode=MODES, positions=POSITIONS))
        check_heads(self.family, self.d_model, self.n_heads)
        if self.n_buckets < 2 or self.n_buckets % 2:  # buckets come from argmax over [xR, -xR]
            raise invalid(self.family, "n_buckets", self.n_buckets, "an even number >= 2")
        if self.mode == "lra":  # LRA's attention has no masks at all; a mask request would be silently unmet
            for key, unmasked in (("causal", False), ("attend_across_buckets", True),
                                  ("allow_duplicate_attention", True)):
                if getattr(self, key) != unmasked:
                    raise invalid(self.family, key, getattr(self, key),
                                  f"{unmasked} with mode='lra' (LRA's attention applies no masks); "
                                  f"use mode='standard'")



# ---------------------------------------------------------------------------------------------
# Attention module (drop-in for harness_models.transformer.SelfAttention)
# ---------------------------------------------------------------------------------------------

class LSHSelfAttention(nn.Module):
    """Multi-head LSH attention. (B, L, d) + padding mask (B, L, True = pad) -> (B, L, d)."""

    def __init__(self, cfg: ReformerConfig, layer_index: int = 0):
        super().__init__()
        d_model, mode = cfg.d_model, cfg.mode
        self.n_heads, self.head_dim = cfg.n_heads, d_model // cfg.n_heads
        self.mode, self.n_hashes, self.bucket_size, self.n_buckets = mode, cfg.n_hashes, cfg.bucket_size, cfg.n_buckets
        self.attn_dropout, self.causal = cfg.attn_dropout, cfg.causal
        self.attend_across_buckets = cfg.attend_across_buckets
        self.allow_duplicate_attention = cfg.allow_duplicate_attention
        self.hash_seed, self.layer_index = cfg.hash_seed, layer_index
        self.qk = nn.Linear(d_model, d_model, bias=False)  # shared query/key projection
        self.v = nn.Linear(d_model, d_model, bias=False)
        if mode == "lra":  # LRA: xavier projections, heads concatenated without an output projection
            nn.init.xavier_uniform_(self.qk.weight)
            nn.init.xavier_uniform_(self.v.weight)
            self.out = None
        else:
            self.out = nn.Linear(d_model, d_model)
        self.draws = 0  # training calls so far: call n hashes with draw n (a Python int: no device sync)
        self._fixed: dict = {}  # (n_buckets, device) -> the fixed draw-0 rotations (eval, lra mode)

    def get_extra_state(self) -> dict:
        return {"draws": self.draws}

    def set_extra_state(self, state: dict) -> None:
        self.draws = int(state["draws"])

    def next_draw(self) -> int:
        """The rotation draw of this call: a fresh one per training call; the fixed draw 0 in
        evaluation and always in lra mode (LRA keys every call with PRNGKey(0))."""
        if self.mode == "lra" or not self.training:
            return 0
        self.draws += 1
        return self.draws

    def rotations(self, n_buckets: int, draw: int, device) -> torch.Tensor:
        """(H, d_h, R, nb/2); lra mode: one (1, d_h, R, nb/2) for every head and layer."""
        lra = self.mode == "lra"

        def make():
            r = hash_rotations(1 if lra else self.n_heads, self.head_dim, self.n_hashes, n_buckets,
                               self.hash_seed, 0 if lra else self.layer_index, draw)
            if torch.device(device).type == "cuda":  # pinned + non-blocking: the step never waits for the GPU
                return r.pin_memory().to(device, non_blocking=True)
            return r.to(device)

        if draw != 0:
            return make()
        key = (n_buckets, str(device))
        if key not in self._fixed:
            self._fixed[key] = make()
        return self._fixed[key]

    def hash(self, qk: torch.Tensor, n_buckets: int, draw: int) -> torch.Tensor:
        """(B, H, Lp, d_h) -> bucket ids (B, H, R, Lp) in [0, n_buckets). Integer ids carry no gradient."""
        with torch.no_grad():
            return hash_buckets(qk, self.rotations(n_buckets, draw, qk.device).to(qk.dtype))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None, draw: int | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        if draw is None:
            draw = self.next_draw()
        qk = self.qk(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
        v = self.v(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        with torch.autocast(device_type=x.device.type, enabled=False):  # scores, lse, round weights in fp32
            o = self.attend(at_least_fp32(qk), at_least_fp32(v), padding_mask, draw)  # (B, H, L, Dh)
        o = o.transpose(1, 2).reshape(B, L, -1).to(x.dtype)
        return o if self.out is None else self.out(o)

    def attend(self, qk: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None, draw: int) -> torch.Tensor:
        L = qk.shape[2]
        if self.mode == "lra":
            nb = self.n_buckets
            Lp = L + nb - L % nb  # LRA appends 1..nb zero rows (a full nb when L is a multiple)
            qk, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (qk, v))
            buckets = self.hash(qk, nb, draw)
            o = lsh_attention(qk, v, buckets, nb, Lp // nb, None, normalize_keys=False,
                              scale=self.head_dim ** 0.5, self_value=None)
            return o[:, :, :L]
        drop = self.attn_dropout if self.training else 0.0
        c = self.bucket_size
        if L <= c:  # one bucket holds everything: exact dense attention
            return dense_shared_qk_attention(qk, v, padding_mask, self.causal, drop, self.training)
        Lp = -(-L // (2 * c)) * 2 * c  # a multiple of 2c, so n_buckets = Lp / c is even
        nb = Lp // c
        key_padding = padding_mask
        if Lp > L:  # the appended rows are padding too
            tail = torch.ones(qk.shape[0], Lp - L, dtype=torch.bool, device=qk.device)
            head = padding_mask if padding_mask is not None else torch.zeros_like(tail[:, :1]).expand(-1, L)
            key_padding = torch.cat([head, tail], dim=1)
            qk, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (qk, v))
        buckets = self.hash(qk, nb, draw)  # (B, H, R, Lp)
        if key_padding is not None:  # the pad bucket nb: pads sort after every real token of a round
            buckets = buckets.masked_fill(key_padding[:, None, None, :], nb)
        o = lsh_attention(qk, v, buckets, nb + 1, c, key_padding, causal=self.causal,
                          attend_across_buckets=self.attend_across_buckets,
                          allow_duplicate_attention=self.allow_duplicate_attention,
                          dropout=drop, training=self.training)
        return o[:, :, :L]


# ---------------------------------------------------------------------------------------------
# Chunked FFN and reversible layers
# ---------------------------------------------------------------------------------------------

class ChunkedFeedForward(nn.Sequential):
    """The block's FFN (same layers, same parameter names) applied to slices of `chunk` positions:
    the same function; the (B, L, d_ffn) hidden activation exists one slice at a time in inference
    and in the reversible backward pass."""

    def __init__(self, chunk: int, *layers: nn.Module):
        super().__init__(*layers)
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] <= self.chunk:
            return super().forward(x)
        return torch.cat([super(ChunkedFeedForward, self).forward(part) for part in x.split(self.chunk, dim=1)],
                         dim=1)


def _attn_branch(block: EncoderBlock, x: torch.Tensor, mask, draw: int) -> torch.Tensor:
    return block.dropout(block.attn(block.norm1(x), mask, draw=draw))


def _ffn_branch(block: EncoderBlock, x: torch.Tensor) -> torch.Tensor:
    return block.dropout(block.ffn(block.norm2(x)))


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


class _Replay:
    """Re-enter the RNG state (dropout masks) and autocast state of a forward computation."""

    def __init__(self, device: torch.device, rng, autocast_state):
        self.device, self.rng, self.autocast_state = device, rng, autocast_state

    def __enter__(self):
        cuda = self.device.type == "cuda"
        self.fork = torch.random.fork_rng(devices=[self.device] if cuda else [])
        self.fork.__enter__()
        torch.set_rng_state(self.rng[0])
        if cuda:
            torch.cuda.set_rng_state(self.rng[1], self.device)
        enabled, dtype = self.autocast_state
        self.cast = torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)
        self.cast.__enter__()

    def __exit__(self, *exc):
        self.cast.__exit__(*exc)
        return self.fork.__exit__(*exc)


class _ReversibleStack(torch.autograd.Function):
    """Forward without storing activations; the backward pass rebuilds each block's inputs from its
    outputs (X2 = Y2 - FFN(Y1), X1 = Y1 - Attn(X2)) and backpropagates through the recomputation."""

    @staticmethod
    def forward(ctx, x1, x2, padding_mask, layers):
        device = x1.device
        autocast_state = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        records = []
        with torch.no_grad():
            for block in layers:
                draw = block.attn.next_draw()
                rng_f = _rng_state(device)
                y1 = x1 + _attn_branch(block, x2, padding_mask, draw)
                rng_g = _rng_state(device)
                y2 = x2 + _ffn_branch(block, y1)
                records.append((draw, rng_f, rng_g))
                x1, x2 = y1, y2
        ctx.layers, ctx.records, ctx.padding_mask = layers, records, padding_mask
        ctx.autocast_state, ctx.device = autocast_state, device
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        for block, (draw, rng_f, rng_g) in zip(reversed(ctx.layers), reversed(ctx.records)):
            with torch.enable_grad(), _Replay(ctx.device, rng_g, ctx.autocast_state):
                y1 = y1.detach().requires_grad_(True)
                g = _ffn_branch(block, y1)
                torch.autograd.backward(g, dy2.to(g.dtype))
            with torch.no_grad():
                x2 = y2 - g
                dy1 = dy1 + y1.grad
            with torch.enable_grad(), _Replay(ctx.device, rng_f, ctx.autocast_state):
                x2 = x2.detach().requires_grad_(True)
                f = _attn_branch(block, x2, ctx.padding_mask, draw)
                torch.autograd.backward(f, dy1.to(f.dtype))
            with torch.no_grad():
                x1 = y1 - f
                dy2 = dy2 + x2.grad
            y1, y2 = x1, x2
        return dy1, dy2, None, None


def reversible_layers(layers, x: torch.Tensor, padding_mask: torch.Tensor | None,
                      memory_saving: bool = True) -> torch.Tensor:
    """RevNet stack on two copies of x; returns the mean of the two streams (lucidrains' layout).
    `memory_saving=False` runs the same function under plain autograd (the reference for tests)."""
    needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in layers.parameters())
    if memory_saving and needs_grad:
        if not x.requires_grad:  # the Function must be on the graph for parameters to get gradients
            x = x.detach().requires_grad_(True)
        y1, y2 = _ReversibleStack.apply(x, x, padding_mask, layers)
    else:
        y1 = y2 = x
        for block in layers:
            y1 = y1 + _attn_branch(block, y2, padding_mask, block.attn.next_draw())
            y2 = y2 + _ffn_branch(block, y1)
    return (y1 + y2) / 2


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------

class ReformerEncoder(TransformerEncoder):
    """(B, L, d) + padding mask (True = pad) -> (B, L, d). The Transformer encoder's layout (pre-LN
    blocks, GELU FFN, final LayerNorm) with LSH attention; optionally reversible and chunked FFN."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__(cfg, swap=lambda i: LSHSelfAttention(cfg, layer_index=i))
        self.reversible = cfg.reversible
        if cfg.ff_chunk_size:
            for block in self.layers:
                block.ffn = ChunkedFeedForward(cfg.ff_chunk_size, *block.ffn)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.reversible:
            return super().forward(x, padding_mask)
        if self.positions == "sinusoidal":
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        return self.final_norm(reversible_layers(self.layers, x, padding_mask))


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------

# LRA ran Reformer with the base configs of ListOps/Text/Retrieval (the Transformer's) and its own
# model blocks on Image (cifar10/reformer_base.py) and Pathfinder (pathfinder32/reformer_base.py);
# their qkv_dim is ignored by LRA's attention (qkv = emb). Path-X has no LRA config: Pathfinder's.
# Those two blocks are 6-10x the Transformer's parameters, so the registered configs are the
# Transformer's on every task (the same budget, only the attention differs, as for the other
# baselines); LRA's own blocks stay in PAPER_TASK_CONFIGS for parity runs (`--set`).
_PATHFINDER = dict(d_model=64, n_layers=2, n_heads=8, d_ffn=64, dropout=0.2, attn_dropout=0.1)
PAPER_TASK_CONFIGS = {
    "listops": dict(transformer.TASK_CONFIGS["listops"]),
    "text": dict(transformer.TASK_CONFIGS["text"]),
    "retrieval": dict(transformer.TASK_CONFIGS["retrieval"]),
    "image": dict(d_model=64, n_layers=4, n_heads=8, d_ffn=64, dropout=0.3, attn_dropout=0.2),
    "pathfinder": dict(_PATHFINDER),
    "pathx": dict(_PATHFINDER),
}
TASK_CONFIGS = {task: dict(cfg) for task, cfg in transformer.TASK_CONFIGS.items()}
# LRA trains every baseline with the task's base settings: the Transformer's; Path-X reuses Pathfinder's.
TRAIN_CONFIGS = transformer.BASELINE_TRAIN_CONFIGS
DEFAULTS = registry_defaults(ReformerConfig())
# The Transformer's tiny variant (d 32, 2 layers, 2 heads, dropout 0). The shared, bias-free QK and
# bias-free V have 1,120 fewer parameters per layer than the Transformer's q/k/v; d_ffn 144 (4.5 d)
# instead of 128 gives back 1,040, so the tiny variants stay parameter-matched.
TINY = dict(transformer.TINY, d_ffn=144)


@register_model("reformer", family="attention", paper=PAPER, complexity="O(L log L)", defaults=DEFAULTS,
                task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS, tiny=TINY,
                published=dict(speed=0.8, memory=0.24, source="MEGA Table 2, from LRA Table 2 (TPU v3, JAX, batch 32)"))
def reformer(**cfg):
    """Reformer (LSH attention, shared QK), LRA Transformer layout"""
    return ReformerEncoder(config_from_kwargs(ReformerConfig, "reformer", cfg))
