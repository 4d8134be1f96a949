"""Transformer encoder baseline (Vaswani et al., NeurIPS 2017), as configured in Long Range Arena
(Tay et al., ICLR 2021, `lra_benchmarks/*/configs/base_*_config.py`).

Pre-LayerNorm blocks `x + MHA(LN(x))`, `x + FFN(LN(x))` (GELU), a final LayerNorm, and fixed
sinusoidal positions added to the input (the harness embedding carries no positions).
Three interchangeable attention implementations compute the same function:
- `vanilla`: the materialised (B, H, L, L) softmax the papers call XFM (softmax in fp32);
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels);
- `xformers`: `xformers.ops.memory_efficient_attention`, GPU-only and probed at run time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models.config import config_from_kwargs, registry_defaults

PAPER = "Vaswani et al., NeurIPS 2017; LRA configs: Tay et al., ICLR 2021"
ATTENTIONS = ("vanilla", "sdpa", "xformers")
POSITIONS = ("sinusoidal", "none")  # fixed sin/cos added to the input, or none


def sinusoidal_positions(length: int, dim: int, device, dtype) -> torch.Tensor:
    """(L, d) fixed sin/cos table."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)


def xformers_unavailable_reason() -> str | None:
    """None when xformers' fused attention really runs here, else why not (never raises)."""
    try:
        import xformers.ops as xops
    except Exception as exc:
        return f"xformers does not import: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        return "xformers attention needs a CUDA device (it has no CPU kernels)"
    try:
        q = torch.zeros(1, 8, 1, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
    except Exception as exc:  # e.g. wheel built for another CUDA: "No operator found"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"xformers cannot run its CUDA operators here: {first_line}"
    return None


def check_heads(family: str, d_model: int, n_heads: int) -> None:
    """Heads split the width evenly (each head gets d_model / n_heads channels)."""
    if d_model % n_heads:
        raise invalid(family, "n_heads", n_heads, f"a divisor of d_model={d_model}")


@dataclass
class TransformerConfig:
    """Architecture of the LRA Transformer encoder (LRA's base Text model). The encoders that swap
    its attention (linear attention, Reformer, Linformer, BigBird) extend this dataclass."""

    family: ClassVar[str] = "transformer"  # the name in configuration errors

    d_model: int = 256  # model width (LRA emb_dim)
    n_layers: int = 4  # pre-LN blocks
    n_heads: int = 4  # attention heads, splitting d_model evenly
    d_ffn: int = 1024  # FFN hidden width (LRA mlp_dim)
    dropout: float = 0.1  # on each residual branch and inside the FFN
    attn_dropout: float = 0.0  # on the attention weights
    positions: str = "sinusoidal"  # sinusoidal (fixed sin/cos added to the input) | none

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise a one-line UserError for the first invalid value (subclasses check their own keys)."""
        check_config(self.family, dataclasses.asdict(self), positive=("d_model", "n_layers", "n_heads", "d_ffn"),
                     probability=("dropout", "attn_dropout"), choices=dict(positions=POSITIONS))
        check_heads(self.family, self.d_model, self.n_heads)


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention; `attention` picks the implementation (same function)."""

    def __init__(self, cfg: TransformerConfig, attention: str):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be vanilla, sdpa or xformers, got {attention!r}")
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.attention = attention
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)  # each (B, L, H, Dh)
        p = self.attn_dropout if self.training else 0.0
        if self.attention == "xformers":
            import xformers.ops as xops

            bias = None
            if padding_mask is not None:  # additive (B, H, L, L) bias; xformers does not broadcast
                pad_len = -(-L // 8) * 8  # bias rows must be 16-byte aligned: slice a padded tensor
                full = torch.zeros(B, self.n_heads, L, pad_len, device=x.device, dtype=q.dtype)
                full[..., :L].masked_fill_(padding_mask[:, None, None, :], float("-inf"))
                bias = full[..., :L]
            o = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=p)  # (B, L, H, Dh)
            return self.out(o.reshape(B, L, -1))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)
        if self.attention == "sdpa":
            mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # True = attend
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # (B, H, L, L)
            if padding_mask is not None:
                scores = scores.masked_fill(padding_mask[:, None, None, :], float("-inf"))
            weights = F.dropout(torch.softmax(scores.float(), dim=-1).to(v.dtype), p, self.training)
            o = weights @ v
        return self.out(o.transpose(1, 2).reshape(B, L, -1))


class EncoderBlock(nn.Module):
    """Pre-LN block: x + dropout(attn(LN(x))), then x + dropout(FFN(LN(x))) with a GELU FFN."""

    def __init__(self, cfg: TransformerConfig, attention: str = "vanilla"):
        super().__init__()
        d_model, d_ffn = cfg.d_model, cfg.d_ffn
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(cfg, attention)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(d_ffn, d_model))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, padding_mask):
        x = x + self.dropout(self.attn(self.norm1(x), padding_mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class TransformerEncoder(nn.Module):
    """(B, L, d) + padding mask (B, L, True = pad) -> (B, L, d).

    Encoders with another attention (models/linear_attention.py, reformer.py, linformer.py,
    bigbird.py) pass `swap`: swap(i) builds layer i's attention, which replaces the softmax one
    right after each block is built (the order in which parameters are drawn stays the same)."""

    def __init__(self, cfg: TransformerConfig, attention: str = "sdpa",
                 swap: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.positions = cfg.positions
        self.layers = nn.ModuleList()
        self.final_norm = nn.LayerNorm(cfg.d_model)
        for i in range(cfg.n_layers):
            block = EncoderBlock(cfg, attention if swap is None else "vanilla")
            if swap is not None:
                block.attn = swap(i)
            self.layers.append(block)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.positions == "sinusoidal":
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, padding_mask)
        return self.final_norm(x)


# Per-task architectures of LRA's base Transformer configs (emb_dim, num_layers, num_heads, mlp_dim).
TASK_CONFIGS = {
    "listops": dict(d_model=512, n_layers=4, n_heads=8, d_ffn=1024, dropout=0.1),
    "text": dict(d_model=256, n_layers=4, n_heads=4, d_ffn=1024, dropout=0.1),
    "retrieval": dict(d_model=128, n_layers=4, n_heads=4, d_ffn=512, dropout=0.1),
    "image": dict(d_model=32, n_layers=1, n_heads=1, d_ffn=64, dropout=0.3, attn_dropout=0.2),
    "pathfinder": dict(d_model=32, n_layers=1, n_heads=2, d_ffn=32, dropout=0.1, attn_dropout=0.1),
    "pathx": dict(d_model=32, n_layers=1, n_heads=2, d_ffn=32, dropout=0.1, attn_dropout=0.1),
}
TRAIN_CONFIGS = {  # LRA: lr, weight decay, batch; steps from the configs' epochs
    "listops": dict(lr=5e-4, weight_decay=0.01, batch_size=32, warmup_steps=1000, total_steps=5000),
    "text": dict(lr=5e-4, weight_decay=0.01, batch_size=32, warmup_steps=8000, total_steps=20000),
    "retrieval": dict(lr=5e-4, weight_decay=0.1, batch_size=32, warmup_steps=8000, total_steps=5000),
    "image": dict(lr=5e-4, weight_decay=0.0, batch_size=256, warmup_steps=175, total_steps=35000),
    "pathfinder": dict(lr=1e-3, weight_decay=0.0, batch_size=512, warmup_steps=312, total_steps=62400),
}
# LRA trains every baseline with its task's base settings, the Transformer's; Path-X (absent from LRA)
# reuses Pathfinder's. The encoders that swap the attention register these.
BASELINE_TRAIN_CONFIGS = dict(TRAIN_CONFIGS, pathx=TRAIN_CONFIGS["pathfinder"])
DEFAULTS = registry_defaults(TransformerConfig())
# Tiny variants of every family (mega, s4, mamba, linear attention, this one) are matched within
# 10% in parameters on each task (d_model 32, about 29K parameters with the harness's head on Image;
# tests/models/test_tiny_variants.py) and all use dropout 0 (every dropout-like key, set here so no per-task
# config such as Image's 0.3/0.2 leaks in): tiny runs are a few hundred steps, far from overfitting,
# and one shared value means a gap between families is not a regularisation gap. Here: d_ffn = 4 d.
TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ffn=128, dropout=0.0, attn_dropout=0.0)


# MEGA Table 2 (Ma et al., ICLR 2023): XFM is the 1x reference of its speed and memory ratios at 4K on Text.
XFM_PUBLISHED = dict(speed=1.0, memory=1.0, source="MEGA Table 2: XFM = the 1x reference (MEGA authors' GPU replication)")


def _register(name: str, attention: str, description: str, requires=(), probe=None, published=None,
              efficiency_reference=()):
    def factory(**cfg):
        return TransformerEncoder(config_from_kwargs(TransformerConfig, "transformer", cfg), attention)

    factory.__qualname__ = factory.__name__ = name
    return register_model(name, family="attention", paper=PAPER, complexity="O(L^2)",
                          defaults=DEFAULTS, task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS,
                          tiny=TINY, requires=requires, probe=probe, description=description,
                          published=published, efficiency_reference=efficiency_reference)(factory)


transformer = _register("transformer", "sdpa", "Transformer, fused attention (torch SDPA)",
                        efficiency_reference=(2, "fused attention (torch SDPA)"))
transformer_vanilla = _register("transformer_vanilla", "vanilla",
                                "Transformer, materialised softmax attention (the papers' XFM)",
                                published=XFM_PUBLISHED,
                                efficiency_reference=(1, "materialised softmax attention (the papers' XFM)"))
transformer_xformers = _register("transformer_xformers", "xformers",
                                 "Transformer, xformers memory-efficient attention (GPU only)",
                                 requires=("xformers",), probe=xformers_unavailable_reason)
