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

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config
from harness_models.transformer import (
    DEFAULTS as TRANSFORMER_DEFAULTS,
    POSITIONS,
    TASK_CONFIGS as TRANSFORMER_TASK_CONFIGS,
    TINY as TRANSFORMER_TINY,
    TRAIN_CONFIGS as TRANSFORMER_TRAIN_CONFIGS,
    EncoderBlock,
    TransformerEncoder,
    check_heads,
)

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
# Attention modules (drop-in for harness_models.transformer.SelfAttention)
# ---------------------------------------------------------------------------------------------

class LinearSelfAttention(nn.Module):
    """Multi-head linear attention with the elu+1 feature map. (B, L, d) -> (B, L, d)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, chunk_size: int = 64,
                 eps: float = 1e-6):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.causal, self.chunk_size, self.eps = causal, chunk_size, eps
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

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

    def __init__(self, d_model: int, n_heads: int, nb_features: int | None = None,
                 redraw_interval: int | None = 1000, seed: int = 0, layer_index: int = 0,
                 scaling: int = 0, causal: bool = False, chunk_size: int = 64):
        super().__init__(d_model, n_heads, causal=causal, chunk_size=chunk_size)
        d = self.head_dim
        # m = d ln d by default (266 for d = 64), at least d
        self.nb_features = int(nb_features) if nb_features else max(d, int(d * math.log(d)))
        self.redraw_interval, self.scaling = redraw_interval, scaling
        self.seed, self.layer_index = seed, layer_index
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

    def __init__(self, attention: str = "linear", d_model: int = 256, n_layers: int = 4,
                 n_heads: int = 4, d_ffn: int = 1024, dropout: float = 0.1,
                 positions: str = "sinusoidal", causal: bool = False, chunk_size: int = 64,
                 nb_features: int | None = None, redraw_interval: int | None = 1000,
                 feature_seed: int = 0, feature_scaling: int = 0):
        family = "performer" if attention == "performer" else "linear_transformer"
        config = dict(attention=attention, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ffn=d_ffn,
                      dropout=dropout, positions=positions, causal=causal, chunk_size=chunk_size,
                      nb_features=nb_features, redraw_interval=redraw_interval, feature_seed=feature_seed,
                      feature_scaling=feature_scaling)
        check_config(family, config, positive=("d_model", "n_layers", "n_heads", "d_ffn", "chunk_size",
                                               "nb_features"),
                     nonnegative=("redraw_interval", "feature_seed"), probability=("dropout",),
                     flags=("causal",), optional=("nb_features", "redraw_interval"),
                     choices=dict(attention=("linear", "performer"), positions=POSITIONS,
                                  feature_scaling=(0, 1)))
        check_heads(family, d_model, n_heads)
        # The Transformer's shell (positions, final LayerNorm) without its softmax blocks; this
        # encoder's own blocks follow (its config is checked above, in its own words).
        nn.Module.__init__(self)
        self.init_shell(d_model, positions)
        for i in range(n_layers):
            block = EncoderBlock(d_model, n_heads, d_ffn, "vanilla", dropout, 0.0)  # LN, FFN, dropout
            if attention == "linear":
                block.attn = LinearSelfAttention(d_model, n_heads, causal, chunk_size)
            else:
                block.attn = PerformerSelfAttention(d_model, n_heads, nb_features, redraw_interval,
                                                    feature_seed, i, feature_scaling, causal, chunk_size)
            self.layers.append(block)


# The LRA Transformer architectures per task (identical parameter counts: the attention has the same
# q/k/v/out projections; the Performer's features are a buffer). LRA's attention-weight dropout has
# no counterpart in linear attention (no attention matrix), so `attn_dropout` is dropped.
TASK_CONFIGS = {task: {k: v for k, v in cfg.items() if k != "attn_dropout"}
                for task, cfg in TRANSFORMER_TASK_CONFIGS.items()}
# The Transformer's tiny variant (same size, dropout 0), without the attention-weight dropout.
TINY = {k: v for k, v in TRANSFORMER_TINY.items() if k != "attn_dropout"}
# LRA's training settings as for the Transformer; Path-X (absent there) reuses Pathfinder's.
TRAIN_CONFIGS = dict(TRANSFORMER_TRAIN_CONFIGS)
TRAIN_CONFIGS.setdefault("pathx", dict(TRANSFORMER_TRAIN_CONFIGS["pathfinder"]))
COMMON_DEFAULTS = {k: v for k, v in TRANSFORMER_DEFAULTS.items() if k != "attn_dropout"}
COMMON_DEFAULTS.update(
    causal=False,  # encoder tasks are bidirectional; True = prefix sums (autoregressive)
    chunk_size=64,  # chunk of the causal form
)
PERFORMER_DEFAULTS = dict(
    COMMON_DEFAULTS,
    nb_features=None,  # m random features; None = d_head * ln(d_head) (266 for d_head 64)
    redraw_interval=1000,  # training forward calls between feature redraws; None/0 = never
    feature_seed=0,  # draws are a function of (seed, layer, draw index)
    feature_scaling=0,  # 0: chi-distributed row norms, 1: sqrt(d_head)
)


@register_model("linear_transformer", family="linear-attention", paper=PAPER_LINEAR,
                complexity="O(L)", defaults=COMMON_DEFAULTS, task_configs=TASK_CONFIGS,
                train_configs=TRAIN_CONFIGS, tiny=TINY)
def linear_transformer(**cfg):
    """Linear Transformer (elu+1 feature map), LRA Transformer layout"""
    return LinearAttentionEncoder(attention="linear", **cfg)


@register_model("performer", family="linear-attention", paper=PAPER_PERFORMER, complexity="O(L)",
                defaults=PERFORMER_DEFAULTS, task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS,
                tiny=TINY, published=dict(speed=5.7, memory=0.11, source="MEGA Table 2, from LRA Table 2 "
                                          "(TPU v3, JAX, batch 32)"))
def performer(**cfg):
    """Performer (FAVOR+ positive orthogonal random features), LRA Transformer layout"""
    return LinearAttentionEncoder(attention="performer", **cfg)
