"""Linear-attention Transformers: the linear Transformer and the Performer (FAVOR+).

- Linear Transformer: Katharopoulos, Vyas, Pappas & Fleuret, "Transformers are RNNs: Fast
  Autoregressive Transformers with Linear Attention", ICML 2020 (arXiv 2006.16236). Softmax
  similarity replaced by φ(q)·φ(k) with φ(x) = elu(x) + 1; non-causal
  out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / (φ(q_i)ᵀ Σ_j φ(k_j) + ε).
- Performer: Choromanski et al., "Rethinking Attention with Performers", ICLR 2021
  (arXiv 2009.14794). FAVOR+: positive orthogonal random features
  φ(x) = m^-1/2 (exp(Wx − |x|²/2 − stabiliser) + ε) with inputs scaled by d^-1/4, so that
  E[φ(q)·φ(k)] ∝ exp(q·k/√d). Stabilisers: a per-row max for queries, one max over all real key
  positions and features for keys (shared by all keys, so it cancels between numerator and
  denominator; the causal form leaves keys unshifted, see `favor_features`). W is redrawn every
  `redraw_interval` training forward calls and fixed at evaluation; draws are deterministic
  functions of (seed, layer, draw index) via torch.Generator.

Both run in the same encoder as models/transformer.py (pre-LN blocks, GELU FFN, final LayerNorm,
sinusoidal positions): its classes are reused with the attention module swapped. The attention
core (sums of φ(k) vᵀ and φ(k)) always runs in float32, also under autocast. Padding: φ(k) and v
are zeroed at padded keys. A causal form (prefix sums, computed chunkwise: C×C masked products
inside a chunk plus a float32 state carried across chunks) is available with `causal=True`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models import transformer
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.transformer import POSITIONS, TransformerConfig, TransformerEncoder, check_heads

PAPER_LINEAR = "Katharopoulos et al., ICML 2020 (arXiv 2006.16236)"
PAPER_PERFORMER = "Choromanski et al., ICLR 2021 (arXiv 2009.14794)"


# ---------------------------------------------------------------------------------------------
# Attention cores: phi_q, phi_k (B, H, L, m) >= 0, v (B, H, L, dv) -> (B, H, L, dv), float32
# ---------------------------------------------------------------------------------------------

def linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Non-causal: two einsums, O(L m dv)."""
    kv = torch.einsum("bhlm,bhld->bhmd", phi_k, v)  # (B, H, m, dv)
    z = phi_k.sum(dim=2)  # (B, H, m)
    num = torch.einsum("bhlm,bhmd->bhld", phi_q, kv)
    den = torch.einsum("bhlm,bhm->bhl", phi_q, z)
    return num / (den[..., None] + eps)


def causal_linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor,
                            eps: float = 1e-6, chunk: int = 64) -> torch.Tensor:
    """Causal, chunkwise: out_i uses keys j <= i.

    Inside a chunk of C positions, masked quadratic products (C×C); across chunks, the prefix state
    S = Σ φ(k) vᵀ (m×dv) and z = Σ φ(k) of all earlier chunks (exclusive cumulative sums, float32).
    Compute O(L C m + L m dv); memory O(L m + (L/C) m dv) instead of the naive O(L m dv).
    """
    Bsz, H, L, m = phi_q.shape
    dv = v.shape[-1]
    C = min(chunk, L)
    pad = (-L) % C
    if pad:  # zero queries/keys past the end: they add nothing and their outputs are dropped
        phi_q, phi_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    n = (L + pad) // C
    q = phi_q.view(Bsz, H, n, C, m)
    k = phi_k.view(Bsz, H, n, C, m)
    vc = v.view(Bsz, H, n, C, dv)
    kv = torch.einsum("bhncm,bhncd->bhnmd", k, vc)  # per-chunk state increments
    S = torch.cumsum(kv, dim=2) - kv  # state before each chunk (exclusive prefix), (B, H, n, m, dv)
    z = torch.cumsum(k.sum(3), dim=2) - k.sum(3)  # (B, H, n, m)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    scores = torch.einsum("bhncm,bhnsm->bhncs", q, k).masked_fill(~causal, 0.0)  # (B, H, n, C, C)
    num = scores @ vc + q @ S  # (B, H, n, C, dv)
    den = scores.sum(-1) + torch.einsum("bhncm,bhnm->bhnc", q, z)
    out = num / (den[..., None] + eps)
    return out.reshape(Bsz, H, n * C, dv)[:, :, :L]


def causal_linear_attention_naive(phi_q, phi_k, v, eps: float = 1e-6):
    """Reference prefix-sum form with the full (B, H, L, m, dv) cumulative state."""
    S = torch.cumsum(torch.einsum("bhlm,bhld->bhlmd", phi_k, v), dim=2)
    z = torch.cumsum(phi_k, dim=2)
    num = torch.einsum("bhlm,bhlmd->bhld", phi_q, S)
    den = (phi_q * z).sum(-1)
    return num / (den[..., None] + eps)


# ---------------------------------------------------------------------------------------------
# Feature maps
# ---------------------------------------------------------------------------------------------

def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def orthogonal_random_features(m: int, d: int, generator: torch.Generator, scaling: int = 0) -> torch.Tensor:
    """(m, d) rows in orthogonal blocks of d (QR of Gaussian blocks, sign-corrected to be Haar),
    rescaled by chi-distributed norms (`scaling=0`) or by sqrt(d) (`scaling=1`)."""
    gauss = torch.randn(math.ceil(m / d), d, d, generator=generator)  # one batched QR for all blocks
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # fixes QR's sign ambiguity
    W = q.transpose(-1, -2).reshape(-1, d)[:m]  # orthonormal rows within each block
    if scaling == 0:
        norms = torch.randn(m, d, generator=generator).norm(dim=1)  # as if rows were Gaussian
    elif scaling == 1:
        norms = torch.full((m,), math.sqrt(d))
    else:
        raise ValueError(f"scaling must be 0 or 1, got {scaling}")
    return norms[:, None] * W


def favor_features(x: torch.Tensor, W: torch.Tensor, is_query: bool,
                   padding_mask: torch.Tensor | None = None, eps: float = 1e-4,
                   key_max: bool = True) -> torch.Tensor:
    """Positive random features of x (B, H, L, d) for the softmax kernel: (B, H, L, m).

    Queries subtract their own row max (it cancels in the row's normalisation); keys subtract one
    max over all real positions and features per (batch, head), so numerator and denominator share
    it and pad content cannot change it. With `key_max=False` keys are not shifted: the global max
    would let later keys change earlier outputs through the ε term, so the causal form omits it
    (fp32 stays safe: wx − |x|²/2 <= |w|²/2, about d/2).
    """
    d, m = x.shape[-1], W.shape[0]
    x = x * d ** -0.25
    wx = x @ W.T  # (B, H, L, m)
    half_norm = (x * x).sum(-1, keepdim=True) / 2
    if is_query:
        stab = wx.amax(dim=-1, keepdim=True)
    elif not key_max:
        stab = torch.zeros_like(half_norm)
    else:
        masked = wx if padding_mask is None else wx.masked_fill(padding_mask[:, None, :, None], float("-inf"))
        stab = masked.amax(dim=(-1, -2), keepdim=True)
        stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))  # an all-pad row
    return m ** -0.5 * (torch.exp(wx - half_norm - stab.detach()) + eps)


def favor_attention(q, k, v, W, padding_mask=None, causal: bool = False, chunk: int = 64):
    """Performer attention estimate of softmax(q kᵀ / sqrt(d)) v; q, k, v (B, H, L, d), W (m, d)."""
    phi_q = favor_features(q, W, is_query=True)
    phi_k = favor_features(k, W, is_query=False, padding_mask=padding_mask, key_max=not causal)
    if padding_mask is not None:
        keep = (~padding_mask)[:, None, :, None].to(phi_k.dtype)
        phi_k, v = phi_k * keep, v * keep
    if causal:
        return causal_linear_attention(phi_q, phi_k, v, chunk=chunk)
    return linear_attention(phi_q, phi_k, v)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class LinearTransformerConfig(TransformerConfig):
    """The Transformer's architecture with linear attention (elu+1 features). There is no attention
    matrix, so `attn_dropout` must stay 0 (it is left out of the registered config)."""

    family = "linear_transformer"

    causal: bool = False  # encoder tasks are bidirectional; True = prefix sums (autoregressive)
    chunk_size: int = 64  # chunk of the causal form

    def check(self, positive=(), nonnegative=(), optional=(), choices=None) -> None:
        """Also checks a subclass's keys: `positive`, `nonnegative`, `optional`, `choices`."""
        check_config(self.family, dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "n_heads", "d_ffn", "chunk_size", *positive),
                     nonnegative=nonnegative, probability=("dropout",), flags=("causal",), optional=optional,
                     choices=dict(positions=POSITIONS, **(choices or {})))
        check_heads(self.family, self.d_model, self.n_heads)
        if self.attn_dropout != 0:
            raise invalid(self.family, "attn_dropout", self.attn_dropout,
                          "0 (linear attention has no attention weights to drop)")


@dataclass
class PerformerConfig(LinearTransformerConfig):
    """The Transformer's architecture with FAVOR+ attention (positive orthogonal random features)."""

    family = "performer"

    nb_features: int | None = None  # m random features; None = d_head * ln(d_head) (266 for d_head 64)
    redraw_interval: int | None = 1000  # training forward calls between feature redraws; None/0 = never
    feature_seed: int = 0  # draws are a function of (seed, layer, draw index)
    feature_scaling: int = 0  # 0: chi-distributed row norms, 1: sqrt(d_head)

    def check(self) -> None:
        super().check(positive=("nb_features",), nonnegative=("redraw_interval", "feature_seed"),
                      optional=("nb_features", "redraw_interval"), choices=dict(feature_scaling=(0, 1)))


# ---------------------------------------------------------------------------------------------
# Attention modules (drop-in for harness_models.transformer.SelfAttention)
# ---------------------------------------------------------------------------------------------

class LinearSelfAttention(nn.Module):
    """Multi-head linear attention with the elu+1 feature map. (B, L, d) -> (B, L, d)."""

    def __init__(self, cfg: LinearTransformerConfig, eps: float = 1e-6):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.causal, self.chunk_size, self.eps = cfg.causal, cfg.chunk_size, eps
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def heads(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).unbind(2)
        return tuple(t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, Dh)

    def attend(self, q, k, v, padding_mask):
        phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
        if padding_mask is not None:  # padded keys contribute nothing
            keep = (~padding_mask)[:, None, :, None].to(phi_k.dtype)
            phi_k, v = phi_k * keep, v * keep
        if self.causal:
            return causal_linear_attention(phi_q, phi_k, v, self.eps, self.chunk_size)
        return linear_attention(phi_q, phi_k, v, self.eps)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.heads(x)  # projections under the ambient autocast
        with torch.autocast(device_type=x.device.type, enabled=False):  # sums of φ(k)vᵀ in fp32
            o = self.attend(q.float(), k.float(), v.float(), padding_mask)  # (B, H, L, Dh)
        return self.out(o.transpose(1, 2).reshape(B, L, -1).to(x.dtype))


class PerformerSelfAttention(LinearSelfAttention):
    """Multi-head FAVOR+ attention; one (m, d_head) feature matrix per layer, shared by its heads."""

    def __init__(self, cfg: PerformerConfig, layer_index: int = 0):
        super().__init__(cfg)
        d = self.head_dim
        # m = d ln d by default (266 for d = 64), at least d
        self.nb_features = int(cfg.nb_features) if cfg.nb_features else max(d, int(d * math.log(d)))
        self.redraw_interval, self.scaling = cfg.redraw_interval, cfg.feature_scaling
        self.seed, self.layer_index = cfg.feature_seed, layer_index
        # Python ints (no device sync per call), saved with the features through the extra state
        self.draws, self.calls_since_redraw = 0, 0
        self.register_buffer("projection", self._draw(0))

    def get_extra_state(self) -> dict:
        return {"draws": self.draws, "calls_since_redraw": self.calls_since_redraw}

    def set_extra_state(self, state: dict) -> None:
        self.draws, self.calls_since_redraw = int(state["draws"]), int(state["calls_since_redraw"])

    def _draw(self, index: int) -> torch.Tensor:
        """Draw `index` of this layer: a pure function of (seed, layer, index)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.layer_index) * 1_000_033 + index)
        return orthogonal_random_features(self.nb_features, self.head_dim, g, self.scaling)

    @torch.no_grad()
    def redraw(self) -> None:
        self.draws += 1
        self.projection.copy_(self._draw(self.draws))
        self.calls_since_redraw = 0

    def attend(self, q, k, v, padding_mask):
        if self.training and self.redraw_interval:
            if self.calls_since_redraw >= self.redraw_interval:
                self.redraw()
            self.calls_since_redraw += 1
        return favor_attention(q, k, v, self.projection.float(), padding_mask, self.causal, self.chunk_size)


# ---------------------------------------------------------------------------------------------
# Encoder: harness_models.transformer's blocks and encoder with the attention swapped
# ---------------------------------------------------------------------------------------------

class LinearAttentionEncoder(TransformerEncoder):
    """(B, L, d) + padding mask (True = pad) -> (B, L, d). Same layout as the Transformer encoder."""

    def __init__(self, cfg: LinearTransformerConfig):
        if isinstance(cfg, PerformerConfig):
            super().__init__(cfg, swap=lambda i: PerformerSelfAttention(cfg, layer_index=i))
        else:
            super().__init__(cfg, swap=lambda i: LinearSelfAttention(cfg))


# The LRA Transformer architectures per task (identical parameter counts: the attention has the same
# q/k/v/out projections; the Performer's features are a buffer). LRA's attention-weight dropout has
# no counterpart in linear attention (no attention matrix), so `attn_dropout` is dropped.
TASK_CONFIGS = {task: {k: v for k, v in cfg.items() if k != "attn_dropout"}
                for task, cfg in transformer.TASK_CONFIGS.items()}
# The Transformer's tiny variant (same size, dropout 0), without the attention-weight dropout.
TINY = {k: v for k, v in transformer.TINY.items() if k != "attn_dropout"}
# LRA's training settings as for the Transformer; Path-X (absent there) reuses Pathfinder's.
TRAIN_CONFIGS = transformer.BASELINE_TRAIN_CONFIGS
COMMON_DEFAULTS = registry_defaults(LinearTransformerConfig(), exclude=("attn_dropout",))
PERFORMER_DEFAULTS = registry_defaults(PerformerConfig(), exclude=("attn_dropout",))


@register_model("linear_transformer", family="linear-attention", paper=PAPER_LINEAR,
                complexity="O(L)", defaults=COMMON_DEFAULTS, task_configs=TASK_CONFIGS,
                train_configs=TRAIN_CONFIGS, tiny=TINY)
def linear_transformer(**cfg):
    """Linear Transformer (elu+1 feature map), LRA Transformer layout"""
    return LinearAttentionEncoder(config_from_kwargs(LinearTransformerConfig, "linear_transformer", cfg))


@register_model("performer", family="linear-attention", paper=PAPER_PERFORMER, complexity="O(L)",
                defaults=PERFORMER_DEFAULTS, task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS,
                tiny=TINY, published=dict(speed=5.7, memory=0.11, source="MEGA Table 2, from LRA Table 2 "
                                          "(TPU v3, JAX, batch 32)"))
def performer(**cfg):
    """Performer (FAVOR+ positive orthogonal random features), LRA Transformer layout"""
    return LinearAttentionEncoder(config_from_kwargs(PerformerConfig, "performer", cfg))
