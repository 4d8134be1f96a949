"""BigBird, block-sparse ITC attention (Zaheer et al., "Big Bird: Transformers for Longer
Sequences", NeurIPS 2020, arXiv 2007.14062), as run in Long Range Arena (Tay et al., ICLR 2021,
`lra_benchmarks/models/bigbird/`).

The sequence is cut into nb blocks of b tokens. With the defaults (LRA's, the paper's BigBird-ITC
base): the first and the last block are global (their queries see every key, every query sees
their keys); every other query block i sees the window of blocks i-1, i, i+1 and r = 3 random
blocks. The random blocks are a fixed table, a pure function of (seed, layer, head, nb), drawn
without replacement from the non-global blocks outside the row's window and, as in LRA and the
official code, only from the first `rand_last_idx` = 1024 tokens. The same table is used in
training and evaluation (HF PyTorch's all-zero eval table is not reproduced, spec §3.8).

Computation (no L x L matrix): the global query rows are dense (2 b x L scores); the other rows
gather their (g + w + r) key blocks with one index table and do one batched softmax, cost
O(L (g + w + r) b d). Window slots that fall off the sequence or coincide with a global block are
masked, so no key is ever counted twice. Below g + w + 2r blocks the pattern would cover nearly
everything and cannot always be drawn, so the layer falls back to full attention (as HF does).

Encoder: models/transformer.py's pre-LN blocks (GELU FFN, final LayerNorm, sinusoidal positions)
with the attention swapped, as models/linear_attention.py does. As in LRA the projections have no
bias (xavier init) and the sparse attention has no attention-weight dropout. The attention core
(scores, softmax, weighted sums) runs in float32, also under autocast.

Padding: lengths are padded to a multiple of b (LRA adds a whole extra block when L is already a
multiple: `lra_extra_block=True`); padded keys get a finite -1e9 in every gathered block and padded
query rows are zeroed. Pad content never reaches real positions. The random table depends on the
number of blocks, so, as in LRA, a batch padded to more blocks has a different random pattern.
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
from harness_models.transformer import POSITIONS, TransformerConfig, TransformerEncoder, check_heads

PAPER = "Zaheer et al., NeurIPS 2020 (arXiv 2007.14062); LRA configs: Tay et al., ICLR 2021"
MASK_VALUE = -1e9  # finite: a fully masked row stays finite (its output is a pad row, zeroed)


@dataclass
class BigBirdConfig(TransformerConfig):
    """The Transformer's architecture with ITC block-sparse attention. The sparse path has no
    attention-weight dropout (LRA ignores the argument): `attn_dropout` must stay 0 and is left out
    of the registered config."""

    family = "bigbird"

    qkv_dim: int | None = None  # width of q/k/v; None = d_model (LRA's Image/Pathfinder use less)
    block_size: int = 64  # b tokens per block (LRA, paper ITC base)
    num_rand_blocks: int = 3  # r random key blocks per non-global query block
    window_blocks: int = 3  # w: blocks i-1, i, i+1 (odd)
    global_blocks: int = 2  # g: the first and the last block (even: half at each end)
    rand_last_idx: int | None = 1024  # random blocks only from the first 1024 tokens (LRA, official code); None = all
    seed: int = 0  # the random table is a function of (seed, layer, head, number of blocks)
    lra_extra_block: bool = False  # True: LRA's padding, a whole extra block when L % b == 0

    def check(self) -> None:
        family = self.family
        check_config(family, dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "n_heads", "d_ffn", "qkv_dim", "block_size",
                               "window_blocks", "rand_last_idx"),
                     nonnegative=("num_rand_blocks", "global_blocks", "seed"), probability=("dropout",),
                     flags=("lra_extra_block",), optional=("qkv_dim", "rand_last_idx"),
                     choices=dict(positions=POSITIONS))
        check_heads(family, self.d_model, self.n_heads)
        if self.qkv_dim is not None and self.qkv_dim % self.n_heads:
            raise invalid(family, "qkv_dim", self.qkv_dim, f"a multiple of n_heads={self.n_heads}")
        if self.window_blocks % 2 == 0:  # a window centred on its own block
            raise invalid(family, "window_blocks", self.window_blocks, "an odd number of blocks (ITC: 3)")
        if self.global_blocks % 2:  # as many global blocks at the start as at the end
            raise invalid(family, "global_blocks", self.global_blocks,
                          "an even number (ITC: 2, first and last block)")
        # Every row must have r legal random blocks inside the first rand_last_idx tokens: at most
        # g/2 global and w window blocks are excluded there.
        need = (self.num_rand_blocks + self.window_blocks + self.global_blocks // 2) * self.block_size
        if self.num_rand_blocks and self.rand_last_idx is not None and self.rand_last_idx < need:
            raise invalid(family, "rand_last_idx", self.rand_last_idx,
                          f"None or >= (num_rand_blocks + window_blocks + global_blocks/2) * block_size = {need}")
        if self.attn_dropout != 0:
            raise invalid(family, "attn_dropout", self.attn_dropout,
                          "0 (the block-sparse attention has no attention-weight dropout)")


# ---------------------------------------------------------------------------------------------
# The attention pattern: random-block table and per-row key-block layout
# ---------------------------------------------------------------------------------------------

def padded_length(L: int, block_size: int, lra_extra_block: bool = False) -> int:
    """L rounded up to whole blocks; LRA adds a full block even when L is already a multiple."""
    if lra_extra_block:
        return (L // block_size + 1) * block_size
    return -(-L // block_size) * block_size


def uses_sparse_path(n_blocks: int, window_blocks: int, global_blocks: int, num_rand_blocks: int) -> bool:
    """Block-sparse only from g + w + 2r blocks on (2r + 5 for ITC: HF's threshold); below that
    the pattern covers nearly all keys and the random draw may not have r legal blocks."""
    return n_blocks >= global_blocks + window_blocks + 2 * num_rand_blocks


def random_block_table(n_blocks: int, n_heads: int, num_rand_blocks: int, window_blocks: int,
                       global_blocks: int, block_size: int, rand_last_idx: int | None,
                       seed: int, layer_index: int) -> torch.Tensor:
    """(H, M, r) random key blocks of the M = nb - g non-global query rows, a pure function of its
    arguments. Row i draws r distinct blocks uniformly from the non-global blocks j with
    (j + 1) b <= rand_last_idx (inside the first rand_last_idx tokens) and |j - i| > w // 2."""
    ge, half = global_blocks // 2, window_blocks // 2
    rows = torch.arange(ge, n_blocks - ge)  # (M,) query block indices
    cols = torch.arange(n_blocks)
    last = n_blocks - ge if rand_last_idx is None else min(n_blocks - ge, rand_last_idx // block_size)
    legal = (cols >= ge) & (cols < last)  # (nb,) non-global and inside the first rand_last_idx tokens
    legal = legal[None, :] & ((cols[None, :] - rows[:, None]).abs() > half)  # (M, nb) minus the window
    # the same count in plain Python: no tensor value is read back on the host
    fewest = min((sum(abs(j - i) > half for j in range(ge, last)) for i in range(ge, n_blocks - ge)), default=0)
    if num_rand_blocks and fewest < num_rand_blocks:
        raise ValueError(f"bigbird: only {fewest} legal random blocks for a row at {n_blocks} blocks; "
                         f"{num_rand_blocks} are needed (raise rand_last_idx)")
    tables = []
    for head in range(n_heads):
        g = torch.Generator().manual_seed(((seed * 1_000_003 + layer_index) * 1_000_033 + head) % 2**63)
        u = torch.rand(len(rows), n_blocks, generator=g, dtype=torch.float64)  # (M, nb)
        u = u.masked_fill(~legal, 2.0)  # illegal blocks sort after every legal one
        # the r smallest of i.i.d. uniforms over the legal set: a uniform r-subset, no repeats
        tables.append(u.argsort(dim=-1)[:, :num_rand_blocks])
    return torch.stack(tables)  # (H, M, r)


def key_block_layout(n_blocks: int, window_blocks: int, global_blocks: int,
                     rand_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key blocks of each non-global query row: (H, M, K) indices and (M, K) validity, with
    K = g + w + r slots = [globals] ++ [window i-w//2 .. i+w//2] ++ [random]. A window slot off the
    sequence or on a global block is invalid (masked), so every valid block appears once."""
    H, M, r = rand_table.shape
    ge, half = global_blocks // 2, window_blocks // 2
    rows = torch.arange(ge, n_blocks - ge)  # (M,)
    globals_ = torch.cat([torch.arange(ge), torch.arange(n_blocks - ge, n_blocks)])  # (g,)
    window = rows[:, None] + torch.arange(-half, half + 1)[None, :]  # (M, w)
    window_ok = (window >= ge) & (window < n_blocks - ge)  # off the ends or on a global: masked
    fixed = torch.cat([globals_.expand(M, -1), window.clamp(0, n_blocks - 1)], dim=1)  # (M, g + w)
    idx = torch.cat([fixed.expand(H, -1, -1), rand_table], dim=2)  # (H, M, K)
    valid = torch.cat([torch.ones(M, len(globals_), dtype=torch.bool), window_ok,
                       torch.ones(M, r, dtype=torch.bool)], dim=1)  # (M, K)
    return idx, valid


# ---------------------------------------------------------------------------------------------
# Attention cores: q, k, v (B, H, L, dh) float32, key_pad (B, L) bool True = pad, or None
# ---------------------------------------------------------------------------------------------

def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (a float64 input stays float64, for exact reference checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def additive_mask(masked: torch.Tensor, dtype) -> torch.Tensor:
    """Boolean True = masked -> additive 0 / MASK_VALUE, for the fused attention kernels."""
    return torch.zeros(masked.shape, dtype=dtype, device=masked.device).masked_fill(masked, MASK_VALUE)


def full_attention(q, k, v, key_pad=None):
    """Dense softmax attention (torch SDPA, fp32 inputs): the short-sequence fallback and the
    global query rows. q (B, H, Lq, dh), k, v (B, H, Lk, dh)."""
    bias = None if key_pad is None else additive_mask(key_pad[:, None, None, :], q.dtype)  # (B, 1, 1, Lk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def block_sparse_attention(q, k, v, key_pad, block_size: int, global_blocks: int,
                           idx: torch.Tensor, valid: torch.Tensor):
    """ITC block-sparse attention over a padded length Lp = nb b (Lp a multiple of b), with the
    non-global rows' key blocks `idx` (H, M, K) and their validity `valid` (M, K) on q's device.

    Each non-global query block is one attention problem over its K b gathered keys: torch SDPA
    over a batch of B x H x M of them, so the (b x K b) score blocks are not kept for backward
    where a fused kernel runs (CPU flash, CUDA memory-efficient); masked keys get a finite bias."""
    B, H, Lp, dh = q.shape
    b, nb, ge = block_size, Lp // block_size, global_blocks // 2
    qb, kb, vb = (t.view(B, H, nb, b, dh) for t in (q, k, v))
    parts = []
    if ge:  # global query rows (first ge and last ge blocks): every key
        q_g = torch.cat([qb[:, :, :ge], qb[:, :, nb - ge:]], dim=2).flatten(2, 3)  # (B, H, 2 ge b, dh)
        og = full_attention(q_g, k, v, key_pad).view(B, H, 2 * ge, b, dh)
        parts.append(og[:, :, :ge])
    M, K = idx.shape[1], idx.shape[2]
    heads = torch.arange(H, device=q.device)[:, None, None]
    k_g = kb[:, heads, idx].reshape(B, H * M, K * b, dh)  # each row's gathered key blocks
    v_g = vb[:, heads, idx].reshape(B, H * M, K * b, dh)
    q_m = qb[:, :, ge:nb - ge].reshape(B, H * M, b, dh)
    masked = ~valid[None, None, :, :, None].expand(1, H, M, K, b)  # invalid window slots
    if key_pad is not None:
        masked = masked | key_pad.view(B, nb, b)[:, idx]  # (B, H, M, K, b): pad keys in every block
    bias = additive_mask(masked.reshape(masked.shape[0], H * M, 1, K * b), q.dtype)  # (B | 1, H M, 1, K b)
    o_m = F.scaled_dot_product_attention(q_m, k_g, v_g, attn_mask=bias)  # (B, H M, b, dh)
    parts.append(o_m.view(B, H, M, b, dh))
    if ge:
        parts.append(og[:, :, ge:])
    return torch.cat(parts, dim=2).reshape(B, H, Lp, dh)


# ---------------------------------------------------------------------------------------------
# Attention module (drop-in for harness_models.transformer.SelfAttention)
# ---------------------------------------------------------------------------------------------

class BigBirdSelfAttention(nn.Module):
    """Multi-head ITC block-sparse self-attention. (B, L, d) -> (B, L, d)."""

    def __init__(self, cfg: BigBirdConfig, layer_index: int = 0):
        super().__init__()
        d_model, qkv_dim = cfg.d_model, cfg.qkv_dim or cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, qkv_dim // cfg.n_heads
        self.block_size, self.num_rand_blocks = cfg.block_size, cfg.num_rand_blocks
        self.window_blocks, self.global_blocks = cfg.window_blocks, cfg.global_blocks
        self.rand_last_idx, self.seed, self.layer_index = cfg.rand_last_idx, cfg.seed, layer_index
        self.lra_extra_block = cfg.lra_extra_block
        # LRA: q, k, v and output projections without bias, xavier-uniform each
        self.qkv = nn.Linear(d_model, 3 * qkv_dim, bias=False)
        self.out = nn.Linear(qkv_dim, d_model, bias=False)
        with torch.no_grad():
            for part in self.qkv.weight.chunk(3):  # each (qkv_dim, d) map on its own fan
                nn.init.xavier_uniform_(part)
        nn.init.xavier_uniform_(self.out.weight)
        # (n_blocks, device) -> (idx, valid): derived from the config, so not in the state dict
        self._layouts: dict = {}

    def rand_table(self, n_blocks: int) -> torch.Tensor:
        """(H, M, r) random key blocks of this layer at `n_blocks` blocks."""
        return random_block_table(n_blocks, self.n_heads, self.num_rand_blocks, self.window_blocks,
                                  self.global_blocks, self.block_size, self.rand_last_idx, self.seed,
                                  self.layer_index)

    def layout(self, n_blocks: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached key_block_layout on `device` (drawn once per length, the same in train and eval)."""
        key = (n_blocks, str(device))
        if key not in self._layouts:
            idx, valid = key_block_layout(n_blocks, self.window_blocks, self.global_blocks,
                                          self.rand_table(n_blocks))
            self._layouts[key] = (idx.to(device), valid.to(device))
        return self._layouts[key]

    def attend(self, q, k, v, padding_mask):
        """q, k, v (B, H, L, dh) float32 -> (B, H, L, dh)."""
        L = q.shape[2]
        Lp = padded_length(L, self.block_size, self.lra_extra_block)
        nb = Lp // self.block_size
        if not uses_sparse_path(nb, self.window_blocks, self.global_blocks, self.num_rand_blocks):
            return full_attention(q, k, v, padding_mask)
        if Lp > L:  # zero rows past the end; their keys are masked like pads
            q, k, v = (F.pad(t, (0, 0, 0, Lp - L)) for t in (q, k, v))
            pad = padding_mask if padding_mask is not None else torch.zeros(q.shape[0], L, dtype=torch.bool,
                                                                            device=q.device)
            padding_mask = F.pad(pad, (0, Lp - L), value=True)  # (B, Lp)
        out = block_sparse_attention(q, k, v, padding_mask, self.block_size, self.global_blocks,
                                     *self.layout(nb, q.device))
        return out[:, :, :L]

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)  # each (B, L, H, dh)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, dh), under the ambient autocast
        with torch.autocast(device_type=x.device.type, enabled=False):  # scores and softmax in fp32
            o = self.attend(at_least_fp32(q), at_least_fp32(k), at_least_fp32(v), padding_mask)
        o = o.transpose(1, 2).reshape(B, L, -1)  # (B, L, qkv_dim)
        if padding_mask is not None:  # padded query rows carry nothing (the projection has no bias)
            o = o.masked_fill(padding_mask[..., None], 0.0)
        return self.out(o.to(x.dtype))


# ---------------------------------------------------------------------------------------------
# Encoder: harness_models.transformer's blocks and shell with the attention swapped
# ---------------------------------------------------------------------------------------------

class BigBirdEncoder(TransformerEncoder):
    """(B, L, d) + padding mask (True = pad) -> (B, L, d). Same layout as the Transformer encoder."""

    def __init__(self, cfg: BigBirdConfig):
        super().__init__(cfg, swap=lambda i: BigBirdSelfAttention(cfg, layer_index=i))


# Defaults per task: LRA's BigBird uses the base configs of each task with the Transformer's
# architecture, so the harness's Transformer TASK_CONFIGS apply (same parameter budget; the
# projections lose only their biases). The sparse path has no attention-weight dropout
# (LRA ignores the argument), so `attn_dropout` is dropped. Image and Pathfinder are the
# exception: LRA's BigBird files override them with models 8-10x the Transformer's size, kept in
# PAPER_TASK_CONFIGS below for parity runs (`--set` or `build(task, overrides=...)`).
TASK_CONFIGS = {task: {k: v for k, v in cfg.items() if k != "attn_dropout"}
                for task, cfg in transformer.TASK_CONFIGS.items()}
# LRA's BigBird model blocks (spec §3.5): Image emb 128, qkv 64, mlp 128, 1 layer and, because
# `config.model.num_head = 4` is a typo in cifar10/bigbird_base.py, 1 head; Pathfinder emb 64,
# qkv 32, mlp 64, 4 layers, 2 heads, dropout 0.2. LRA has no BigBird Path-X config: Pathfinder's.
# (LRA's learned Image positions have no table here: positions stay sinusoidal.)
PAPER_TASK_CONFIGS = dict(
    TASK_CONFIGS,
    image=dict(d_model=128, qkv_dim=64, d_ffn=128, n_layers=1, n_heads=1, dropout=0.3),
    pathfinder=dict(d_model=64, qkv_dim=32, d_ffn=64, n_layers=4, n_heads=2, dropout=0.2),
    pathx=dict(d_model=64, qkv_dim=32, d_ffn=64, n_layers=4, n_heads=2, dropout=0.2),
)
# LRA trains BigBird with each task's base config, as the Transformer; Path-X reuses Pathfinder's.
TRAIN_CONFIGS = transformer.BASELINE_TRAIN_CONFIGS
DEFAULTS = registry_defaults(BigBirdConfig(), exclude=("attn_dropout",))
# The Transformer's tiny variant (same size, dropout 0; see models/transformer.py TINY) with LRA's
# attention pattern: at tiny lengths below 11 blocks of 64 it runs as full attention.
TINY = {k: v for k, v in transformer.TINY.items() if k != "attn_dropout"}


@register_model("bigbird", family="attention", paper=PAPER, complexity="O(L)", defaults=DEFAULTS,
                task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS, tiny=TINY,
                published=dict(speed=1.1, memory=0.3, source="MEGA Table 2, from LRA Table 2 (TPU v3, JAX, batch 32)"))
def bigbird(**cfg):
    """BigBird (ITC block-sparse: 3 window, 2 global, 3 random blocks of 64; full attention under 11 blocks)"""
    return BigBirdEncoder(config_from_kwargs(BigBirdConfig, "bigbird", cfg))
