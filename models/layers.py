"""Layers shared by the model families: channel dropout, norms over (B, L, d) sequences with an
optional padding mask, and the one norm switch every family builds its norms with.

Two masked BatchNorms live here, and they are not interchangeable:
- `SequenceBatchNorm` is `nn.BatchNorm1d` (the official MEGA layer, state dict included) run on a
  (B*L, d) view; with a padding mask in training mode it normalises the real rows only.
- `MaskedBatchNorm` writes the statistics out in fp32 (also under autocast) as mask-weighted sums,
  so padded positions carry weight 0 (the S4 backbones; S4's own BatchNorm1d counts pads).
Both give real positions outputs that never depend on pad content. They round differently, so each
family keeps the one its recorded runs were made with.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ChannelDropout(nn.Module):
    """Dropout with one keep/drop decision per (example, channel), shared over all positions
    (S4's `tie_dropout`, MEGA's `feature_dropout`, PyTorch's Dropout2d on a (B, d, L) view)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d), or (B, d) when decoding
        if not self.training or self.p == 0:
            return x
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (B, 1, d)
        keep = torch.rand(shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


def make_dropout(p: float, per_channel: bool) -> nn.Module:
    """`ChannelDropout(p)` when `per_channel`, else element-wise `nn.Dropout(p)`."""
    return ChannelDropout(p) if per_channel else nn.Dropout(p)


class ScaleNorm(nn.Module):
    """g * x / sqrt(mean(x^2) + eps) with one scalar g (RMSNorm with a shared gain)."""

    def __init__(self, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.scalar = nn.Parameter(torch.ones(1)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.scalar is None else x * self.scalar


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over batch x time per channel, on a (B*L, d) view (no permutes).

    In training mode with a padding mask the statistics come from real positions only (pads get
    zeros), so real outputs never depend on pad content; without padding this is BatchNorm1d.
    """

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = x.shape
        flat = x.reshape(B * L, d)
        if not (self.training and padding_mask is not None):
            return super().forward(flat).view(B, L, d)
        real = (~padding_mask).reshape(-1).nonzero().squeeze(1)  # (N_real,)
        normed = super().forward(flat.index_select(0, real))  # (N_real, d), updates running stats
        return flat.new_zeros(flat.shape, dtype=normed.dtype).index_copy(0, real, normed).view(B, L, d)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over (batch, positions) whose fp32 statistics give padded positions weight 0."""

    def __init__(self, d: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        xf = x.float()  # statistics in fp32, also under autocast
        if self.training:
            if padding_mask is None:
                keep = torch.ones(*x.shape[:2], 1, device=x.device)
            else:
                keep = (~padding_mask)[..., None].float()  # (B, L, 1)
            n = keep.sum().clamp_min(1.0)
            mean = (xf * keep).sum((0, 1)) / n
            var = ((xf - mean) ** 2 * keep).sum((0, 1)) / n
            with torch.no_grad():
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)


NORMS = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "masked_batchnorm")


class SequenceNorm(nn.Module):
    """One norm of kind `NORMS` over the last dimension of (B, L, d), all with eps 1e-5 and the
    signature (x, padding_mask=None); the BatchNorms use the mask, the others ignore it.

    batchnorm = `SequenceBatchNorm`, masked_batchnorm = `MaskedBatchNorm` (always affine).
    """

    def __init__(self, kind: str, dim: int, affine: bool = True):
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")
        self.masked = kind in ("batchnorm", "masked_batchnorm")  # statistics that read the padding mask
        if kind == "layernorm":
            self.norm = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=affine)
        elif kind == "scalenorm":
            self.norm = ScaleNorm(eps=1e-5, affine=affine)
        elif kind == "rmsnorm":
            self.norm = nn.RMSNorm(dim, eps=1e-5, elementwise_affine=affine)
        elif kind == "batchnorm":
            self.norm = SequenceBatchNorm(dim, eps=1e-5, affine=affine)
        else:
            if not affine:
                raise ValueError("masked_batchnorm is always affine")
            self.norm = MaskedBatchNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(x, padding_mask) if self.masked else self.norm(x)


def widen_max_positions(config: dict, seq_len: int) -> dict:
    """`register_model(fit_length=...)` hook of models with a learned table sized by `max_positions`
    (MEGA's simple bias, Linformer's projection): a benchmark cell longer than the table widens it
    to the cell's length, as the official long-length measurements did. Returns the overrides."""
    positions = config.get("max_positions")
    return {"max_positions": seq_len} if isinstance(positions, int) and positions < seq_len else {}
