"""MEGA and MEGA-chunk: Moving Average Equipped Gated Attention.

Paper: X. Ma, C. Zhou, X. Kong, J. He, L. Gui, G. Neubig, J. May, L. Zettlemoyer, "Mega: Moving
Average Equipped Gated Attention", ICLR 2023 (arXiv 2209.10655). Behaviour follows the official
fairseq code (facebookresearch/mega) as described in shared/spec/mega.md; LRA settings from the
paper's Table 8. Tensors are batch-first `(B, L, d)` throughout (the official code is time-major).

One MEGA sub-layer (`MovingAverageGatedAttention`, spec §1), input x (after the norm if prenorm):
    X' = silu(EMA(x) + omega * x)                         multi-dimensional damped EMA, §2
    u, Z, r, hx = sigmoid | silu | silu | identity of one GEMM on X'
    Q = Z * gamma_q + beta_q,  K = Z * gamma_k + beta_k,  V = silu(W_v x)
    O = attention(Q, K, V) + learned relative-position bias, inside chunks of C for MEGA-chunk, §3-4
    H = silu(hx + W_h (O * r));  out = residual + u * (H - residual)
A block is that sub-layer followed by a normalized FFN (NFFN, §5); a prenorm stack ends in a norm.
This file holds the layers and the model; the EMA kernels live in `harness_models.ema`, the
attention kernels and position biases in `harness_models.mega_attention`, shared norms and dropout
in `harness_models.layers`.

Two implementations of the same function, chosen by the `impl` config key (a runtime setting):
- "fast" (default): the EMA kernel is built in fp32 and applied as one real FFT of length
  >= L + K - 1 (the backward kernel enters as the conjugate of its spectrum, an anti-causal
  correlation), inside a custom op with a hand-written gradient; softmax attention runs through
  `F.scaled_dot_product_attention` with the relative bias (and padding as -inf) as an additive
  float mask; chunks are folded into the batch dimension. `compile=True` runs the encoder through
  torch.compile, which fuses the element-wise work around the (opaque) FFT op.
- "reference": the equations written out literally (the EMA as an explicit recurrence over time,
  the attention materialised chunk by chunk with an explicitly indexed bias matrix). For tests.

Deliberate differences from the official code (each is equal to it where the official code works):
- The EMA kernel and the FFT are always fp32 (official: the time index takes the parameter dtype,
  spec pitfall 3), and nothing is cached in eval mode (pitfall 2: stale kernels after new weights).
- log(q) is computed as log1p(-p * sigmoid(alpha)) (more accurate when q is close to 1).
- A softmax query row that would see no real key ignores the padding mask. Without a causal mask
  this is exactly the official "all-pad chunk is left unmasked" rule; with one it also covers
  left padding (the official code gives NaN there).
- BatchNorm statistics in training mode use real positions only when a padding mask is given
  (official includes pads, pitfall 7); identical without padding. So real positions never depend
  on pad content.
- MEGA-chunk pads to a multiple of C inside the layer and strips the result; L <= C is one chunk
  of length L (the official LRA encoder asserts there, pitfall 6).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.ema import (compute_dtype, ema_block, ema_coefficients, ema_fft, ema_kernel,
                                ema_recurrence, ema_step)
from harness_models.layers import SequenceNorm, make_dropout, widen_max_positions
from harness_models.mega_attention import (ELEMENTWISE, FLEX_MIN_DIM, RotaryRelativePositionalBias,
                                           SimpleRelativePositionalBias, attend_folded, attend_reference,
                                           choose_softmax_kernel)

log = logging.getLogger(__name__)

PAPER = "Ma et al., Mega: Moving Average Equipped Gated Attention, ICLR 2023 (arXiv 2209.10655)"
ATTENTIONS = ("softmax", "laplace", "relu2")
NORMS = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm")
REL_POS = ("simple", "rotary")
IMPLS = ("fast", "reference")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SOFTMAX_KERNELS = ("auto", "sdpa", "matmul", "flex")
EMA_KERNELS = ("fft", "triton")


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class MegaConfig:
    """Architecture of a MEGA backbone. Defaults are the LRA Text setting (paper Table 8)."""

    d_model: int = 128  # model width d (official `embed_dim`)
    n_layers: int = 4  # number of blocks (Mega sub-layer + NFFN)
    d_ffn: int = 256  # NFFN hidden width; 0 disables the NFFN
    z_dim: int = 64  # shared query/key width z (official `zdim`)
    v_dim: int = 256  # value / gate width v (official `hdim`)
    h_dim: int = 16  # EMA expansion per channel h (official `ndim`)
    attention: str = "softmax"  # softmax | laplace | relu2
    rel_pos: str = "simple"  # relative position bias: simple (learned vector) | rotary
    max_positions: int = 4002  # simple bias covers attention lengths up to this (full attention)
    chunk_size: int = -1  # C: -1 = full attention (MEGA), > 0 = attention inside chunks (MEGA-chunk)
    truncation: int | None = 1024  # EMA kernel length cap K; None = the sequence length
    norm: str = "scalenorm"  # layernorm | scalenorm | rmsnorm | batchnorm (syncbatchnorm = batchnorm)
    norm_affine: bool = True  # learnable norm parameters
    prenorm: bool = False  # True: norm before each sub-layer and a final norm; False: after (eq. 17)
    bidirectional: bool = True  # bidirectional EMA (encoders); causal decoding needs False
    causal: bool = False  # causal attention (needs bidirectional=False); enables `step` decoding
    dropout: float = 0.1  # on the EMA output X', on H and on the NFFN output
    hidden_dropout: float = 0.0  # on V and after the NFFN activation (LRA `--act-dropout`)
    attention_dropout: float = 0.0  # on the attention weights
    feature_dropout: bool = False  # dropout/hidden_dropout drop whole channels (same mask over time)
    impl: str = "fast"  # fast | reference (literal equations, for tests)
    compile: bool = False  # torch.compile the encoder's forward (fast impl; the FFT op stays opaque)
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead adds CUDA graphs on GPU
    softmax_kernel: str = "auto"  # sdpa | matmul (materialised, fp32 softmax) | flex (FlexAttention,
    # needs compile=True and CUDA) | auto: matmul for lengths <= 256 (MEGA-chunk), else flex when compiled
    # on a GPU, else sdpa
    ema_kernel: str = "fft"  # fft (one real FFT, the official method) | triton (fused chunked scan,
    # models/mega_triton.py: CUDA with triton; elsewhere the FFT path with a warning saying why)

    def __post_init__(self):
        check_config("mega", dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "z_dim", "v_dim", "h_dim", "max_positions", "truncation"),
                     nonnegative=("d_ffn",),  # 0 disables the NFFN
                     probability=("dropout", "hidden_dropout", "attention_dropout"),
                     flags=("norm_affine", "prenorm", "bidirectional", "causal", "feature_dropout", "compile"),
                     optional=("truncation",),  # None: the sequence length (0 would disable the official EMA)
                     choices=dict(attention=ATTENTIONS, rel_pos=REL_POS, norm=NORMS, impl=IMPLS,
                                  compile_mode=COMPILE_MODES, softmax_kernel=SOFTMAX_KERNELS, ema_kernel=EMA_KERNELS))

        def bad(key, expected):
            raise invalid("mega", key, getattr(self, key), expected)

        if self.rel_pos == "rotary" and self.z_dim % 2:
            bad("z_dim", "an even number with rel_pos='rotary' (RoPE rotates pairs)")
        if self.softmax_kernel == "flex" and not self.compile:
            bad("softmax_kernel", "sdpa | matmul | auto without compile=True (FlexAttention is generated by "
                "torch.compile; set compile=true)")
        if self.softmax_kernel == "flex" and min(self.z_dim, self.v_dim) < FLEX_MIN_DIM:
            bad("softmax_kernel", f"sdpa | matmul | auto with z_dim or v_dim < {FLEX_MIN_DIM} (FlexAttention's "
                "minimum head width)")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) \
                or not (self.chunk_size == -1 or self.chunk_size > 0):
            bad("chunk_size", "-1 (full attention) or a positive chunk length")
        if self.causal and self.bidirectional:
            bad("causal", "False with bidirectional=True (a causal model needs a unidirectional EMA: "
                "set bidirectional=False)")


def make_config(**kwargs) -> MegaConfig:
    """MegaConfig from factory kwargs; an unknown key is a one-line UserError, not a TypeError."""
    return config_from_kwargs(MegaConfig, "mega", kwargs)



# ------------------------------------------------------------------------------------------------
# Gates of the sub-layer
# ------------------------------------------------------------------------------------------------
def split_gates(base: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, d: int, z: int, v: int):
    """mx_proj output (B, L, 2d+z+v) -> update gate u, Q, K (B, L, z), reset gate r, hx."""
    u, zr, hx = base.split([d, z + v, d], dim=-1)
    zz, r = F.silu(zr).split([z, v], dim=-1)
    qk = zz.unsqueeze(-2) * gamma + beta  # (B, L, 2, z): row 0 = Q, row 1 = K
    q, k = qk.unbind(-2)
    return torch.sigmoid(u), q, k, r, hx


def candidate(hx: torch.Tensor, ho: torch.Tensor) -> torch.Tensor:
    return F.silu(hx + ho)  # H with both biases (mx_proj's in hx, h_proj's in ho)


def gated_residual(residual: torch.Tensor, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(residual, u, h - residual)  # u * H + (1 - u) * residual, eq. 15


def mega_norm(cfg: MegaConfig, affine: bool | None = None) -> SequenceNorm:
    """The official `SequenceNorm` of kind cfg.norm (eps 1e-5); syncbatchnorm on one device is batchnorm."""
    kind = "batchnorm" if cfg.norm == "syncbatchnorm" else cfg.norm
    return SequenceNorm(kind, cfg.d_model, cfg.norm_affine if affine is None else affine)


# ------------------------------------------------------------------------------------------------
# Multi-dimensional damped EMA (spec §2); the kernels are in harness_models.ema
# ------------------------------------------------------------------------------------------------
_TRITON_FALLBACK_WARNED = set()


def _triton_ema_runs(x: torch.Tensor) -> bool:
    """Whether the fused Triton EMA can run on `x`; when not, say why once (the FFT path runs)."""
    # imported here: mega_triton imports triton when it is installed, which only ema_kernel=triton needs
    from harness_models.mega_triton import triton_ema_unavailable_reason

    reason = triton_ema_unavailable_reason() or (None if x.is_cuda else "the input is not on a CUDA device")
    if reason is not None and reason not in _TRITON_FALLBACK_WARNED:
        _TRITON_FALLBACK_WARNED.add(reason)
        log.warning(f"mega ema_kernel=triton: {reason}; using the FFT EMA instead")
    return reason is None


class MultiHeadEMA(nn.Module):
    """Per channel c, h damped EMAs: h_t = p*beta*x_t + q*h_{t-1}, y_t = scale * sum_n gamma_n h_t,n.

    Official parameter names and shapes (D = 2d if bidirectional, else d): `delta` (D, h, 1) gives
    p = sigmoid(delta) (the paper's alpha), `alpha` (D, h, 1) gives the damping sigmoid(alpha) (the
    paper's delta), q = 1 - p*sigmoid(alpha); `beta` (D, h, 1), `gamma` (D, h), `omega` (d,).
    Bidirectional: rows [0:d] form a causal kernel, rows [d:2d] an anti-causal one; x_t enters both.
    """

    def __init__(self, cfg: MegaConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.h_dim
        self.d, self.h = d, h
        self.bidirectional = cfg.bidirectional
        self.truncation = cfg.truncation
        self.impl = cfg.impl
        self.ema_kernel = cfg.ema_kernel
        rows = 2 * d if cfg.bidirectional else d
        self.delta = nn.Parameter(torch.empty(rows, h, 1))
        self.alpha = nn.Parameter(torch.empty(rows, h, 1))
        self.beta = nn.Parameter(torch.empty(rows, h, 1))
        self.gamma = nn.Parameter(torch.empty(rows, h))
        self.omega = nn.Parameter(torch.empty(d))
        self.scale = math.sqrt(1.0 / h)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.delta, 0.0, 0.2)
            nn.init.normal_(self.alpha, 0.0, 0.2)
            signs = torch.ones(self.h)
            signs[1::2] = -1.0  # [1, -1, 1, -1, ...] along h
            self.beta.normal_(0.0, 0.02).add_(signs.view(1, -1, 1))
            nn.init.normal_(self.gamma, 0.0, 1.0)
            nn.init.normal_(self.omega, 0.0, 1.0)

    def kernel_length(self, L: int) -> int:
        return L if self.truncation is None else min(self.truncation, L)

    def kernel(self, length: int) -> torch.Tensor:
        """(D, length) fp32 kernel; rows [0:d] forward, [d:2d] backward when bidirectional."""
        return ema_kernel(self.delta, self.alpha, self.beta, self.gamma, self.scale, length)

    def coefficients(self):
        """(p*beta, q, gamma) as (D, h) fp32 tensors, for the recurrent forms."""
        return ema_coefficients(self.delta, self.alpha, self.beta, self.gamma)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) -> X' = silu(EMA(x masked) + omega * x), (B, L, d) in x's dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):  # EMA and FFT stay fp32
            if self.impl == "reference":
                out = self.forward_recurrence(x, padding_mask)
            elif self.ema_kernel == "triton" and _triton_ema_runs(x):
                from harness_models.mega_triton import multi_head_ema_conv  # CUDA + triton only

                out = F.silu(multi_head_ema_conv(self, x, padding_mask) + x.float() * self.omega.float())
            else:
                out = self.forward_fft(x, padding_mask)
        return out.to(x.dtype)

    def conv_fft(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """EMA(x) without omega residual/activation, by one real FFT along time: (B, L, d) fp32."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # pads contribute nothing
        return ema_fft(x, self.kernel(self.kernel_length(x.shape[1])), self.bidirectional)

    def forward_fft(self, x, padding_mask=None) -> torch.Tensor:
        y = self.conv_fft(x, padding_mask)
        return F.silu(y + x.float() * self.omega.float())  # the omega residual uses the un-masked x

    def forward_recurrence(self, x, padding_mask=None) -> torch.Tensor:
        """The literal recurrence over time (reference path), truncation included; fp32, or fp64
        for fp64 inputs."""
        xf = x.to(compute_dtype(x))
        xin = xf if padding_mask is None else xf.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        y = ema_recurrence(xin, *self.coefficients(), self.scale, self.kernel_length(x.shape[1]),
                           self.bidirectional)
        return F.silu(y + xf * self.omega.to(xf.dtype))

    # -- recurrent forms (unidirectional only; untruncated recurrence, as the official decoder) --
    def _check_causal(self) -> None:
        if self.bidirectional:
            raise ValueError("a bidirectional EMA has no recurrent form (it looks ahead)")

    def step(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """One token: x (B, d), state (B, d, h) or None -> (X'_t (B, d), new state (B, d, h))."""
        self._check_causal()
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            y, new = ema_step(xf, state, *self.coefficients(), self.scale)
            out = F.silu(y + xf * self.omega.float())
        return out.to(x.dtype), new

    def block(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """A block of L tokens after `state`: (B, L, d) -> (X' (B, L, d), new state (B, d, h))."""
        self._check_causal()
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            # full-length kernel: the recurrent forms do not truncate
            y, new = ema_block(xf, state, self.kernel(x.shape[1]), *self.coefficients(), self.scale)
            out = F.silu(y + xf * self.omega.float())
        return out.to(x.dtype), new


# ------------------------------------------------------------------------------------------------
# One MEGA sub-layer (spec §1) and the NFFN (spec §5)
# ------------------------------------------------------------------------------------------------
def pad_to_chunks(x: torch.Tensor, padding_mask: torch.Tensor | None, chunk: int):
    """Right-pad (B, L, d) to a multiple of `chunk` when L > chunk; the new positions are pads."""
    B, L, _ = x.shape
    if chunk <= 0 or L <= chunk or L % chunk == 0:
        return x, padding_mask
    extra = chunk - L % chunk
    if padding_mask is None:
        padding_mask = torch.zeros(B, L, dtype=torch.bool, device=x.device)
    return F.pad(x, (0, 0, 0, extra)), F.pad(padding_mask, (0, extra), value=True)


class MovingAverageGatedAttention(nn.Module):
    """One Mega sub-layer: EMA + single-head gated attention + gated residual. (B, L, d) -> (B, L, d)."""

    def __init__(self, cfg: MegaConfig):
        super().__init__()
        d, z, v = cfg.d_model, cfg.z_dim, cfg.v_dim
        self.d, self.z, self.v = d, z, v
        self.cfg = cfg
        self.attention = cfg.attention
        self.chunk_size = cfg.chunk_size
        self.causal = cfg.causal
        self.prenorm = cfg.prenorm
        self.impl = cfg.impl
        self.norm = mega_norm(cfg)
        self.move = MultiHeadEMA(cfg)
        self.v_proj = nn.Linear(d, v)
        self.mx_proj = nn.Linear(d, d + z + v + d)  # one GEMM: update gate, Z, reset gate, H input
        self.h_proj = nn.Linear(v, d)
        self.gamma = nn.Parameter(torch.empty(2, z))  # per-dim scale of Q (row 0) and K (row 1)
        self.beta = nn.Parameter(torch.zeros(2, z))  # per-dim offset of Q and K
        max_positions = cfg.chunk_size if cfg.chunk_size > 0 else cfg.max_positions
        if cfg.rel_pos == "simple":
            self.rel_pos_bias = SimpleRelativePositionalBias(max_positions)
        else:
            self.rel_pos_bias = RotaryRelativePositionalBias(z)
        self.dropout = make_dropout(cfg.dropout, cfg.feature_dropout)
        self.hidden_dropout = make_dropout(cfg.hidden_dropout, cfg.feature_dropout)
        self.attention_dropout = nn.Dropout(cfg.attention_dropout)
        for layer in (self.v_proj, self.mx_proj, self.h_proj):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.gamma, 0.0, 0.02)

    def chunk_length(self, L: int) -> int:
        return L if self.chunk_size <= 0 or L <= self.chunk_size else self.chunk_size

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        L = x.shape[1]
        x, padding_mask = pad_to_chunks(x, padding_mask, self.chunk_size)
        residual = x
        h = self.norm(x, padding_mask) if self.prenorm else x
        value = self.hidden_dropout(F.silu(self.v_proj(h)))  # (B, L, v): from the normed input
        ema = self.dropout(self.move(h, padding_mask))  # (B, L, d)
        u, q, k, r, hx = split_gates(self.mx_proj(ema), self.gamma, self.beta, self.d, self.z, self.v)
        if self.impl == "reference":
            o = self.attend_reference(q, k, value, padding_mask)
        else:
            o = self.attend(q, k, value, padding_mask)  # (B, L, v)
        cand = candidate(hx, self.h_proj(o * r))  # reset gate on the attention output
        out = gated_residual(residual, u, self.dropout(cand))
        if not self.prenorm:
            out = self.norm(out, padding_mask)
        return out[:, :L]

    def attend(self, q, k, v, padding_mask):
        """Fast: q, k (B, L, z), v (B, L, v), L a multiple of the chunk length -> (B, L, v), with
        the chunks folded into the batch."""
        B, L, _ = q.shape
        n = self.chunk_length(L)
        N = B * (L // n)
        q, k = q.to(v.dtype).reshape(N, n, self.z), k.to(v.dtype).reshape(N, n, self.z)
        key_pad = None if padding_mask is None else padding_mask.reshape(N, n)
        kernel = self.softmax_kernel(n, q.is_cuda) if self.attention == "softmax" else None
        o = attend_folded(q, k, v.reshape(N, n, self.v), key_pad, self.rel_pos_bias, attention=self.attention,
                          kernel=kernel, causal=self.causal, dropout=self.attention_dropout)  # (N, n, v)
        return o.reshape(B, L, self.v)

    def softmax_kernel(self, n: int, cuda: bool) -> str:
        """Which kernel computes a length-n softmax attention (all give the same function)."""
        return choose_softmax_kernel(self.cfg.softmax_kernel, n, cuda=cuda, compiled=self.cfg.compile,
                                     weight_dropout=self.training and self.attention_dropout.p > 0,
                                     width=min(self.z, self.v))

    def attend_reference(self, q, k, v, padding_mask):
        """Reference: chunk by chunk, explicit bias, the softmax written out."""
        return attend_reference(q, k, v, padding_mask, self.rel_pos_bias, attention=self.attention,
                                causal=self.causal, n=self.chunk_length(q.shape[1]),
                                dropout=self.attention_dropout)

    # -- incremental decoding (causal, unidirectional) --------------------------------------------
    def step(self, x: torch.Tensor, state: dict | None = None):
        """One token x (B, d) -> (out (B, d), state). State: EMA state (B, d, h), K/V cache of the
        current chunk (dropped when a new chunk starts), position. No padding during decoding."""
        if not self.causal:
            raise ValueError("incremental decoding needs causal=True and bidirectional=False")
        state = state or {}
        pos = state.get("pos", 0)
        residual = x
        h = self.norm(x[:, None])[:, 0] if self.prenorm else x
        value = self.hidden_dropout(F.silu(self.v_proj(h)))  # (B, v)
        ema, ema_state = self.move.step(h, state.get("ema"))
        u, q, k, r, hx = split_gates(self.mx_proj(self.dropout(ema)), self.gamma, self.beta,
                                     self.d, self.z, self.v)
        keys, values = state.get("k"), state.get("v")
        if keys is None or (self.chunk_size > 0 and pos % self.chunk_size == 0):
            keys, values = k[:, None], value[:, None]  # a new chunk starts: forget the old one
        else:
            keys, values = torch.cat([keys, k[:, None]], 1), torch.cat([values, value[:, None]], 1)
        i = keys.shape[1] - 1  # query position inside the chunk
        bias = self.rel_pos_bias.row(i)  # (i+1,)
        scores = torch.einsum("bz,bjz->bj", q.float(), keys.float())
        if self.attention == "softmax":
            weights = torch.softmax(scores * self.z ** -0.5 + bias, dim=-1)
        else:
            weights = ELEMENTWISE[self.attention](scores / (i + 1) + bias)  # causal row count i+1
        o = torch.einsum("bj,bjv->bv", self.attention_dropout(weights), values.float()).to(value.dtype)
        out = gated_residual(residual, u, self.dropout(candidate(hx, self.h_proj(o * r))))
        if not self.prenorm:
            out = self.norm(out[:, None])[:, 0]
        return out, dict(ema=ema_state, k=keys, v=values, pos=pos + 1)



class NormalizedFeedForward(nn.Module):
    """NFFN: residual + dropout(fc2(hidden_dropout(silu(fc1(norm? x))))), norm before or after."""

    def __init__(self, cfg: MegaConfig):
        super().__init__()
        self.prenorm = cfg.prenorm
        self.norm = mega_norm(cfg)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ffn)
        self.fc2 = nn.Linear(cfg.d_ffn, cfg.d_model)
        self.hidden_dropout = make_dropout(cfg.hidden_dropout, cfg.feature_dropout)
        self.dropout = make_dropout(cfg.dropout, cfg.feature_dropout)
        for layer in (self.fc1, self.fc2):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        if self.prenorm:
            x = self.norm(x, padding_mask)
        x = self.fc2(self.hidden_dropout(F.silu(self.fc1(x))))
        x = self.dropout(x) + residual
        return x if self.prenorm else self.norm(x, padding_mask)


class MegaBlock(nn.Module):
    """Mega sub-layer then NFFN (official `MegaSentenceEncoderLayer`)."""

    def __init__(self, cfg: MegaConfig):
        super().__init__()
        self.mega = MovingAverageGatedAttention(cfg)
        self.nffn = NormalizedFeedForward(cfg) if cfg.d_ffn > 0 else None

    def forward(self, x, padding_mask=None):
        x = self.mega(x, padding_mask)
        return x if self.nffn is None else self.nffn(x, padding_mask)

    def step(self, x, state=None):
        x, state = self.mega.step(x, state)
        return (x if self.nffn is None else self.nffn(x[:, None])[:, 0]), state


# ------------------------------------------------------------------------------------------------
# Backbone
# ------------------------------------------------------------------------------------------------
class MegaEncoder(nn.Module):
    """N Mega blocks (+ final norm if prenorm). forward((B, L, d), (B, L) True = pad) -> (B, L, d).

    MEGA-chunk inputs are padded once here to a multiple of C and stripped at the end (each layer
    would do it too). Outputs at pad positions are unspecified; real ones never depend on pads.
    With causal=True (and bidirectional=False), `step` decodes token by token.
    """

    def __init__(self, cfg: MegaConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(MegaBlock(cfg) for _ in range(cfg.n_layers))
        # The official LRA encoder's final norm is affine whatever norm_affine says (only its LM
        # decoder has a flag for it).
        self.final_norm = mega_norm(cfg, affine=True) if cfg.prenorm else None
        if cfg.compile and cfg.impl == "fast":
            self.compile(mode=cfg.compile_mode)  # in place: parameter names and `step` are unchanged

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        L = x.shape[1]
        x, padding_mask = pad_to_chunks(x, padding_mask, self.cfg.chunk_size)
        for layer in self.layers:
            x = layer(x, padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        return x[:, :L]

    def step(self, x: torch.Tensor, state: list | None = None):
        """One token x (B, d) -> (y (B, d), per-layer states). Use in eval mode (dropout and
        BatchNorm then act per position, as in the full forward)."""
        state = state or [None] * len(self.layers)
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new_state.append(s)
        if self.final_norm is not None:
            x = self.final_norm(x[:, None])[:, 0]
        return x, new_state


# ------------------------------------------------------------------------------------------------
# Registrations: per-task settings of paper Table 8 / README.lra.md (spec §7)
# ------------------------------------------------------------------------------------------------
TABLE8_KEYS = ("n_layers", "d_model", "d_ffn", "z_dim", "v_dim", "h_dim", "attention", "norm", "prenorm",
               "truncation", "max_positions", "dropout")
TABLE8 = {  # one row per task, in TABLE8_KEYS order
    "listops": (6, 80, 160, 64, 160, 16, "softmax", "layernorm", False, 1024, 2002, 0.1),
    "text": (4, 128, 256, 64, 256, 16, "softmax", "scalenorm", False, 1024, 4002, 0.1),
    "retrieval": (6, 128, 256, 64, 256, 16, "softmax", "scalenorm", False, 1024, 4002, 0.1),
    "image": (8, 160, 320, 96, 320, 16, "laplace", "batchnorm", True, 1024, 1024, 0.0),
    "pathfinder": (6, 128, 256, 64, 256, 16, "laplace", "batchnorm", True, 1024, 1024, 0.0),
    # Path-X trained with SyncBatchNorm on 8 GPUs: batchnorm on one device.
    "pathx": (4, 64, 128, 32, 128, 16, "laplace", "batchnorm", True, 4096, 16384, 0.0),
}
TASK_CONFIGS = {task: dict(zip(TABLE8_KEYS, row), hidden_dropout=0.0, attention_dropout=0.0)
                for task, row in TABLE8.items()}
CHUNK_SIZES = {"listops": 128, "text": 128, "retrieval": 128, "image": 128, "pathfinder": 128,
               "pathx": 4096}
_BETAS = (0.9, 0.98)
TRAIN_CONFIGS = {  # effective batch = per-GPU x update-freq x GPUs; warmup from 1e-7, linear decay
    "listops": dict(lr=1e-3, weight_decay=0.01, batch_size=64, warmup_steps=3000, total_steps=90000,
                    betas=_BETAS),
    "text": dict(lr=4e-3, weight_decay=0.01, batch_size=50, warmup_steps=10000, total_steps=25000,
                 betas=_BETAS),
    "retrieval": dict(lr=3e-3, weight_decay=0.04, batch_size=64, warmup_steps=10000,
                      total_steps=91960, betas=_BETAS),
    "image": dict(lr=1e-2, weight_decay=0.02, batch_size=50, warmup_steps=9000, total_steps=180000,
                  betas=_BETAS),
    "pathfinder": dict(lr=1e-2, weight_decay=0.01, batch_size=128, warmup_steps=50000,
                       total_steps=250000, betas=_BETAS),
    "pathx": dict(lr=1e-2, weight_decay=0.01, batch_size=128, warmup_steps=25000, warmup_power=2,
                  total_steps=125000, betas=_BETAS),
}
# Tiny (parameter-matched to the other families' tiny variants, dropout 0: see models/transformer.py
# TINY). Rotary relative positions instead of LRA's `simple` bias: the simple bias has 2 M - 1
# parameters per layer with M = the task's max_positions (2K on Image, 8K on Text, 33K on Path-X:
# much of a 30K model, and different per task), so mega_tiny uses rotary (2 z per layer) on every
# task; mega_chunk_tiny keeps LRA's simple bias, sized by its chunk C = 16 (2 C - 1 per layer), so
# both stay within the budget. A named deviation of the tiny variant only: full-size MEGA is LRA's.
# d_ffn = 1.5 d (LRA: 2 d) to fit the budget.
TINY = dict(d_model=32, n_layers=2, d_ffn=48, z_dim=16, v_dim=64, h_dim=4, rel_pos="rotary",
            dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0, feature_dropout=False)


# How the encoder is executed, not what it computes: recorded apart from the architecture.
RUNTIME_KEYS = ("impl", "compile", "compile_mode", "softmax_kernel", "ema_kernel")


def build_mega(**kwargs) -> MegaEncoder:
    return MegaEncoder(make_config(**kwargs))


@register_model("mega", family="hybrid", paper=PAPER, complexity="O(L^2)",
                defaults=registry_defaults(MegaConfig(chunk_size=-1)),
                task_configs={t: dict(c, chunk_size=-1) for t, c in TASK_CONFIGS.items()},
                train_configs=TRAIN_CONFIGS, tiny=TINY, runtime=RUNTIME_KEYS, fit_length=widen_max_positions,
                published=dict(speed=2.9, memory=0.31, source="MEGA Table 2 (MEGA authors' GPU runs)"))
def mega(**kwargs) -> MegaEncoder:
    """MEGA: bidirectional damped EMA + single-head gated attention over the whole sequence"""
    return build_mega(**kwargs)


@register_model("mega_chunk", family="hybrid", paper=PAPER, complexity="O(L C)",
                defaults=registry_defaults(MegaConfig(chunk_size=128)),
                task_configs={t: dict(c, chunk_size=CHUNK_SIZES[t]) for t, c in TASK_CONFIGS.items()},
                train_configs=TRAIN_CONFIGS, tiny=dict(TINY, chunk_size=16, rel_pos="simple"),  # bias sized by C
                runtime=RUNTIME_KEYS, fit_length=widen_max_positions,
                published=dict(speed=5.5, memory=0.13, source="MEGA Table 2 (MEGA authors' GPU runs)"))
def mega_chunk(**kwargs) -> MegaEncoder:
    """MEGA-chunk: EMA over the whole sequence, gated attention inside chunks of C"""
    return build_mega(**kwargs)
