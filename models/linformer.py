"""Linformer: self-attention with linear complexity (Wang, Li, Khabsa, Fang & Ma, arXiv 2006.04768),
in the Long Range Arena encoder (Tay et al., ICLR 2021; `lra_benchmarks/models/linformer/`).

Per head: head_i = softmax(Q_i (E K_i)ᵀ / sqrt(d_h)) (F V_i), where E, F (k × n) project the
*length* axis of the keys and values from n to k, so the score matrix is (n × k): O(n k d) time and
memory. As in LRA, the projection acts after the bias-free K/V maps, its matrix is stored as an
(n_max, k) kernel with xavier-uniform init, and one kernel per layer is shared by keys, values and
all heads (`sharing="kv+headwise"`). The paper's other sharing modes are options: "none" (E_i, F_i per
head), "headwise" (E, F shared by heads) and "layerwise" (one E for every layer, head, K and V).

n_max = `max_positions` is fixed at build time (the harness bench widens it to the measured length).
A shorter input uses the first L rows of the kernel (LRA, fairseq); a longer one is an error.
Padding: the rows of K and V at padded positions are zeroed before the projection, which is exactly
the kernel sliced to the real length, so real outputs do not depend on padding. LRA does not mask
(`mode="lra"` keeps its behaviour: pads enter E K and F V). Causal attention cannot be expressed (each
projected slot mixes all positions) and is not offered.

`projection="pool"` is the paper's §4 "general projection" by mean pooling: slot j averages the
positions [j n_max / k, (j+1) n_max / k), a fixed, parameter-free kernel used in the same way. The
tiny variant uses it, because a learned kernel has n_max k parameters per layer (262K on Path-X),
which no 30K-parameter budget can hold. The attention core runs in float32, also under autocast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import UserError
from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models import transformer
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.layers import widen_max_positions
from harness_models.transformer import POSITIONS, TransformerConfig, TransformerEncoder

PAPER = "Wang et al., arXiv 2006.04768 (2020); LRA configs: Tay et al., ICLR 2021"
MODES = ("standard", "lra")
SHARINGS = ("none", "headwise", "kv+headwise", "layerwise")
PROJECTIONS = ("learned", "pool")


@dataclass
class LinformerConfig(TransformerConfig):
    """The Transformer's architecture with Linformer attention (keys and values projected along the
    length to k)."""

    family = "linformer"

    max_positions: int = 4096  # n_max: longest input; the kernel has n_max rows (bench widens it per length)
    k: int = 16  # projected length (LRA: 16 on every task)
    sharing: str = "kv+headwise"  # one kernel per layer for K, V and all heads (LRA); none | headwise | layerwise
    projection: str = "learned"  # learned kernel (paper, LRA) | pool: fixed mean pooling (paper §4)
    qkv_dim: int | None = None  # attention width split by the heads; None = d_model (LRA's qkv_dim)
    mode: str = "standard"  # standard: pads zeroed before the projection; lra: pads enter it (LRA)

    def check(self) -> None:
        check_config(self.family, dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "n_heads", "d_ffn", "max_positions", "k", "qkv_dim"),
                     probability=("dropout", "attn_dropout"), optional=("qkv_dim",),
                     choices=dict(positions=POSITIONS, sharing=SHARINGS, projection=PROJECTIONS, mode=MODES))
        inner = self.qkv_dim or self.d_model
        if inner % self.n_heads:
            key, value = ("qkv_dim", self.qkv_dim) if self.qkv_dim else ("n_heads", self.n_heads)
            raise invalid(self.family, key, value, f"heads that split the attention width {inner} evenly")


def pooling_kernel(n_max: int, k: int) -> torch.Tensor:
    """(n_max, k) mean-pooling kernel: position p belongs to slot floor(p k / n_max); each slot
    averages its (about n_max / k) positions."""
    slot = torch.arange(n_max) * k // n_max  # (n_max,)
    kernel = F.one_hot(slot, k).float()
    return kernel / kernel.sum(0, keepdim=True).clamp_min(1.0)


class LengthProjection(nn.Module):
    """The E (keys) and F (values) kernels, each (heads, n_max, k) with heads = n_heads or 1.

    `project(K, V)` with K, V (B, H, L, d_h) returns (E K, F V), each (B, H, k, d_h). One instance
    is shared by all layers under `sharing="layerwise"`.
    """

    def __init__(self, n_max: int, k: int, n_heads: int, sharing: str, projection: str):
        super().__init__()
        self.n_max = n_max
        if projection == "pool":  # fixed, a function of (n_max, k): not saved with the weights
            self.register_buffer("E", pooling_kernel(n_max, k)[None], persistent=False)
            self.F = None
            return
        heads = n_heads if sharing == "none" else 1
        self.E = nn.Parameter(torch.empty(heads, n_max, k))
        # Keys and values share one kernel under kv+headwise and layerwise (LRA, paper §4).
        self.F = nn.Parameter(torch.empty(heads, n_max, k)) if sharing in ("none", "headwise") else None
        for kernel in (self.E, self.F):
            if kernel is not None:
                for h in range(heads):  # LRA: xavier-uniform of each (n_max, k) kernel
                    nn.init.xavier_uniform_(kernel.data[h])

    def project(self, K: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = K.shape[2]
        E = self.E[:, :L].to(K.dtype)  # (heads, L, k): a shorter input uses the kernel's first L rows
        Fk = E if self.F is None else self.F[:, :L].to(V.dtype)
        return (torch.einsum("bhld,hlk->bhkd", K, E.expand(K.shape[1], -1, -1)),
                torch.einsum("bhld,hlk->bhkd", V, Fk.expand(V.shape[1], -1, -1)))


class LinformerSelfAttention(nn.Module):
    """Multi-head Linformer attention. (B, L, d) + padding mask (B, L, True = pad) -> (B, L, d)."""

    def __init__(self, cfg: LinformerConfig, projection: LengthProjection):
        super().__init__()
        d_model = cfg.d_model
        inner = cfg.qkv_dim or d_model  # LRA's qkv_dim: the width the heads split (None = d_model)
        self.n_heads, self.head_dim = cfg.n_heads, inner // cfg.n_heads
        self.attn_dropout, self.mode = cfg.attn_dropout, cfg.mode
        self.projection = projection
        # LRA: bias-free q/k/v/out with xavier-uniform init; bias-free K/V also makes "project after
        # the linear map" (LRA) and "project the input first" (fairseq) the same function.
        self.q, self.k, self.v = (nn.Linear(d_model, inner, bias=False) for _ in range(3))
        self.out = nn.Linear(inner, d_model, bias=False)
        for layer in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        n_max = self.projection.n_max
        if L > n_max:
            raise UserError(f"linformer: input length {L} exceeds max_positions={n_max}, the length of its "
                            f"projection kernel; build it with max_positions >= {L} (--set max_positions={L})")
        q, k, v = (t(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
                   for t in (self.q, self.k, self.v))  # (B, H, L, Dh)
        with torch.autocast(device_type=x.device.type, enabled=False):  # projection and softmax in fp32
            q, k, v = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in (q, k, v))  # fp64 stays
            if padding_mask is not None and self.mode == "standard":  # = the kernel sliced to the real length
                keep = (~padding_mask)[:, None, :, None].to(k.dtype)
                k, v = k * keep, v * keep
            k_proj, v_proj = self.projection.project(k, v)  # (B, H, k, Dh)
            scores = (q @ k_proj.transpose(-1, -2)) * self.head_dim ** -0.5  # (B, H, L, k)
            weights = F.dropout(torch.softmax(scores, dim=-1), self.attn_dropout if self.training else 0.0,
                                self.training)
            o = weights @ v_proj  # (B, H, L, Dh)
        return self.out(o.transpose(1, 2).reshape(B, L, -1).to(x.dtype))


class LinformerEncoder(TransformerEncoder):
    """(B, L, d) + padding mask (True = pad) -> (B, L, d), L <= max_positions. The Transformer encoder's
    layout (pre-LN blocks, GELU FFN, final LayerNorm) with Linformer attention."""

    def __init__(self, cfg: LinformerConfig):
        def length_projection() -> LengthProjection:
            return LengthProjection(cfg.max_positions, cfg.k, cfg.n_heads, cfg.sharing, cfg.projection)

        shared = length_projection() if cfg.sharing == "layerwise" else None  # one E for every layer
        super().__init__(cfg, swap=lambda i: LinformerSelfAttention(cfg, shared or length_projection()))
        self.max_positions = cfg.max_positions


# LRA ran Linformer with the base configs of ListOps/Text/Retrieval (the Transformer's) and its own
# model blocks on Image (cifar10/linformer_base.py) and Pathfinder (pathfinder32/linformer_base.py),
# whose qkv_dim LRA's attention does use. k = 16 everywhere (Text's low_rank_features=32 never reached
# the model). max_positions = the harness task's length (no CLS token: the harness pools).
# Path-X has no LRA config: Pathfinder's, at 16384 positions.
_PATHFINDER = dict(d_model=32, n_layers=1, n_heads=2, d_ffn=32, qkv_dim=16, dropout=0.2, attn_dropout=0.1,
                   max_positions=1024)
PAPER_TASK_CONFIGS = {
    "listops": dict(transformer.TASK_CONFIGS["listops"], max_positions=2000),
    "text": dict(transformer.TASK_CONFIGS["text"], max_positions=4096),
    "retrieval": dict(transformer.TASK_CONFIGS["retrieval"], max_positions=4000),
    "image": dict(d_model=128, n_layers=1, n_heads=8, d_ffn=128, qkv_dim=64, dropout=0.3, attn_dropout=0.2,
                  max_positions=1024),
    "pathfinder": dict(_PATHFINDER),
    "pathx": dict(_PATHFINDER, max_positions=16384),
}
# LRA's Image and Pathfinder blocks are 3-10x the Transformer's parameters: the registered configs are
# the Transformer's with the task's length (the same budget but for the learned projection, which
# grows with max_positions x k per layer); LRA's own blocks stay in PAPER_TASK_CONFIGS (`--set`).
TASK_CONFIGS = {task: dict(transformer.TASK_CONFIGS[task], max_positions=cfg["max_positions"])
                for task, cfg in PAPER_TASK_CONFIGS.items()}
# LRA trains every baseline with the task's base settings: the Transformer's; Path-X reuses Pathfinder's.
TRAIN_CONFIGS = transformer.BASELINE_TRAIN_CONFIGS
DEFAULTS = registry_defaults(LinformerConfig())
# The Transformer's tiny variant (d 32, 2 layers, 2 heads, dropout 0) with the parameter-free
# mean-pooling projection (see the module docstring), so its size does not grow with the task length.
TINY = dict(transformer.TINY, projection="pool", qkv_dim=None)


@register_model("linformer", family="attention", paper=PAPER, complexity="O(L k)", defaults=DEFAULTS,
                task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS, tiny=TINY, fit_length=widen_max_positions,
                published=dict(speed=5.5, memory=0.1, source="MEGA Table 2, from LRA Table 2 (TPU v3, JAX, batch 32)"))
def linformer(**cfg):
    """Linformer (keys/values projected along the length to k = 16), LRA Transformer layout"""
    return LinformerEncoder(config_from_kwargs(LinformerConfig, "linformer", cfg))
