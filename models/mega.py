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

Two implementations of the same function, chosen by the `impl` config key:
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
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import UserError
from harness.registry import register_model

PAPER = "Ma et al., Mega: Moving Average Equipped Gated Attention, ICLR 2023 (arXiv 2209.10655)"
ATTENTIONS = ("softmax", "laplace", "relu2")
NORMS = ("layernorm", "scalenorm", "rmsnorm", "batchnorm", "syncbatchnorm")
REL_POS = ("simple", "rotary")
IMPLS = ("fast", "reference")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SOFTMAX_KERNELS = ("auto", "sdpa", "matmul", "flex")
EMA_KERNELS = ("fft", "triton")
MATERIALIZE_MAX_LENGTH = 256  # softmax_kernel=auto: materialise attention up to this length
FLEX_MIN_DIM = 16  # FlexAttention needs query/key and value widths of at least 16
# FlexAttention tiles for value width 256 (the defaults exceed shared memory): the fastest of four
# settings tried on an H100 at L=4096, batch 25 (fwd+bwd 6.5 ms, against 8.3-14.6 ms).
FLEX_KERNEL_OPTIONS = {"BLOCK_M": 128, "BLOCK_N": 32, "num_stages": 2, "num_warps": 8,
                       "BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64}


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
        def bad(key, expected):
            raise UserError(f"mega config: {key}={getattr(self, key)!r} is invalid; expected {expected}")

        for key in ("d_model", "n_layers", "z_dim", "v_dim", "h_dim", "max_positions"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "a positive integer")
        if not isinstance(self.d_ffn, int) or self.d_ffn < 0:
            bad("d_ffn", "a non-negative integer (0 disables the NFFN)")
        if self.attention not in ATTENTIONS:
            bad("attention", " | ".join(ATTENTIONS))
        if self.rel_pos not in REL_POS:
            bad("rel_pos", " | ".join(REL_POS))
        if self.rel_pos == "rotary" and self.z_dim % 2:
            bad("z_dim", "an even number with rel_pos='rotary' (RoPE rotates pairs)")
        if self.norm not in NORMS:
            bad("norm", " | ".join(NORMS))
        if self.impl not in IMPLS:
            bad("impl", " | ".join(IMPLS))
        if self.compile_mode not in COMPILE_MODES:
            bad("compile_mode", " | ".join(COMPILE_MODES))
        if self.softmax_kernel not in SOFTMAX_KERNELS:
            bad("softmax_kernel", " | ".join(SOFTMAX_KERNELS))
        if self.ema_kernel not in EMA_KERNELS:
            bad("ema_kernel", " | ".join(EMA_KERNELS))
        if self.softmax_kernel == "flex" and not self.compile:
            bad("softmax_kernel", "sdpa | matmul | auto without compile=True (FlexAttention is generated by "
                "torch.compile; set compile=true)")
        if self.softmax_kernel == "flex" and min(self.z_dim, self.v_dim) < FLEX_MIN_DIM:
            bad("softmax_kernel", f"sdpa | matmul | auto with z_dim or v_dim < {FLEX_MIN_DIM} (FlexAttention's "
                "minimum head width)")
        if not isinstance(self.chunk_size, int) or not (self.chunk_size == -1 or self.chunk_size > 0):
            bad("chunk_size", "-1 (full attention) or a positive chunk length")
        if self.truncation is not None and (not isinstance(self.truncation, int) or self.truncation < 1):
            bad("truncation", "None or a positive integer (0 disables the official uni-EMA and "
                "crashes its bidirectional one)")
        if self.causal and self.bidirectional:
            bad("causal", "False with bidirectional=True (a causal model needs a unidirectional EMA: "
                "set bidirectional=False)")
        for key in ("dropout", "hidden_dropout", "attention_dropout"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                bad(key, "a probability in [0, 1)")


def make_config(**kwargs) -> MegaConfig:
    """MegaConfig from factory kwargs; an unknown key is a one-line UserError, not a TypeError."""
    known = {f.name for f in dataclasses.fields(MegaConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UserError(f"mega config: unknown key(s) {', '.join(unknown)}; "
                        f"known keys: {', '.join(sorted(known))}")
    return MegaConfig(**kwargs)


# ------------------------------------------------------------------------------------------------
# Small building blocks: FFT length, dropout, norms
# ------------------------------------------------------------------------------------------------
def fft_length(n: int) -> int:
    """Smallest even 2^a 3^b 5^c >= n (fast for cuFFT and pocketfft)."""
    best = 2 ** max(1, math.ceil(math.log2(max(n, 2))))
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            m = f35 * 2  # at least one factor 2 keeps the length even
            while m < n:
                m *= 2
            best = min(best, m)
            f35 *= 3
        f5 *= 5
    return best


class FeatureDropout(nn.Module):
    """Channel-wise dropout: one keep/drop decision per (batch, channel), shared over time."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, c), or (B, c) when decoding
        if not self.training or self.p == 0.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (B, 1, c)
        keep = torch.empty(shape, device=x.device, dtype=x.dtype)
        keep.bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


def make_dropout(p: float, feature: bool) -> nn.Module:
    return FeatureDropout(p) if feature else nn.Dropout(p)


class ScaleNorm(nn.Module):
    """g * x / sqrt(mean(x^2) + eps) with one scalar g."""

    def __init__(self, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.scalar = nn.Parameter(torch.ones(1)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.scalar is None else x * self.scalar


class RMSNorm(nn.Module):
    """g * x / sqrt(mean(x^2) + eps) with a vector g (really normalises; HF's returns x * g)."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight


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


class SequenceNorm(nn.Module):
    """The four norm types of the official `SequenceNorm` (eps 1e-5), applied to (B, L, d)."""

    def __init__(self, kind: str, dim: int, affine: bool = True):
        super().__init__()
        self.kind = "batchnorm" if kind == "syncbatchnorm" else kind  # one device: the same thing
        if self.kind == "layernorm":
            self.norm = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=affine)
        elif self.kind == "scalenorm":
            self.norm = ScaleNorm(eps=1e-5, affine=affine)
        elif self.kind == "rmsnorm":
            self.norm = RMSNorm(dim, eps=1e-5, affine=affine)
        else:
            self.norm = SequenceBatchNorm(dim, eps=1e-5, affine=affine)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "batchnorm":
            return self.norm(x, padding_mask)
        return self.norm(x)


# ------------------------------------------------------------------------------------------------
# Element-wise pieces of the fast path (with `compile=True`, torch.compile fuses them)
# ------------------------------------------------------------------------------------------------
def ema_kernel(delta, alpha, beta, gamma, scale: float, length: int) -> torch.Tensor:
    """k[c, t] = scale * sum_n gamma[c,n] p[c,n] beta[c,n] q[c,n]^t, t < length; always fp32.

    p = sigmoid(delta), q = 1 - p * sigmoid(alpha). The time index is fp32 whatever the parameter
    dtype (pitfall 3). delta/alpha/beta: (D, h, 1), gamma: (D, h) -> (D, length).
    """
    p = torch.sigmoid(delta.float())  # (D, h, 1)
    log_q = torch.log1p(-p * torch.sigmoid(alpha.float()))  # (D, h, 1), log q without cancellation
    weight = (p * beta.float()).squeeze(-1) * gamma.float() * scale  # (D, h)
    t = torch.arange(length, device=delta.device, dtype=torch.float32)
    vander = torch.exp(log_q * t)  # (D, h, K)
    return torch.bmm(weight.unsqueeze(1), vander).squeeze(1)  # (D, K): contraction over h


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


# ------------------------------------------------------------------------------------------------
# EMA convolution by FFT as an opaque custom op with a hand-written gradient. torch.compile cannot
# lower complex tensors (spec §11: KeyError 'complex64'), so hiding the FFTs lets it compile and fuse
# everything else in the block. Saving the input rather than its spectrum also halves the memory
# kept for backward under bf16 autocast.
# ------------------------------------------------------------------------------------------------
def _spectrum(kernel: torch.Tensor, bidirectional: bool, n: int) -> torch.Tensor:
    """(D, K) kernel -> (d, n/2+1) transfer function of the (bi)directional convolution."""
    spec = torch.fft.rfft(kernel, n=n)  # (D, n/2+1)
    if bidirectional:
        # The backward kernel acts at negative lags (a correlation): its spectrum is the conjugate.
        # Lag 0 is in both terms, so x_t is counted by both directions (as official). (Lazy conj
        # views gave wrong results under AOT tracing of this op on torch 2.13: conjugate physically.)
        d = kernel.shape[0] // 2
        spec = spec[:d] + spec[d:].conj_physical()
    return spec


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for gradcheck


def ema_fft_length(L: int, K: int) -> int:
    """n >= L + K - 1: neither the causal nor the anti-causal part wraps around onto [0, L)."""
    return fft_length(L + K - 1)


@torch.library.custom_op("harness_mega::ema_conv", mutates_args=())
def ema_conv(x: torch.Tensor, kernel: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """Circular convolution of length n = ema_fft_length(L, K) whose [..., :L] is the EMA:
    y[t] = sum_s k_fwd[s] x[t-s] (+ sum_s k_bwd[s] x[t+s]), x zero outside [0, L).

    x (B, d, L) time-last (the FFT runs along contiguous memory), any float dtype; kernel (D, K)
    -> (B, d, n) in at least fp32. Returning all n lets the caller's slice fuse into what follows.
    """
    n = ema_fft_length(x.shape[-1], kernel.shape[-1])
    dtype = _compute_dtype(x)
    spectrum = torch.fft.rfft(x.to(dtype), n=n) * _spectrum(kernel.to(dtype), bidirectional, n)
    return torch.fft.irfft(spectrum, n=n)


@ema_conv.register_fake
def _(x, kernel, bidirectional):
    n = ema_fft_length(x.shape[-1], kernel.shape[-1])
    return x.new_empty((*x.shape[:-1], n), dtype=_compute_dtype(x))


@torch.library.custom_op("harness_mega::ema_conv_backward", mutates_args=())
def ema_conv_backward(grad_y: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor,
                      bidirectional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoints of `ema_conv` (grad_y (B, d, n)): grad_x = correlation of grad_y with the kernel;
    grad_k[t] = sum_{b,s} grad_y[s] x[s-t] (forward rows), sum_{b,s} grad_y[s] x[s+t] (backward rows)."""
    L, K = x.shape[-1], kernel.shape[-1]
    n = ema_fft_length(L, K)
    dtype = _compute_dtype(x)
    gy = torch.fft.rfft(grad_y.to(dtype), n=n)  # (B, d, n/2+1)
    spec = _spectrum(kernel.to(dtype), bidirectional, n)
    grad_x = torch.fft.irfft(gy * spec.conj_physical(), n=n)[..., :L]
    cross = (gy * torch.fft.rfft(x.to(dtype), n=n).conj_physical()).sum(0)  # (d, n/2+1)
    r = torch.fft.irfft(cross, n=n)  # r[t] = sum grad_y[s] x[s-t], circular; (d, n)
    grad_k = r[:, :K]  # lags 0..K-1
    if bidirectional:  # lag -t sits at n - t
        grad_k = torch.cat([grad_k, torch.cat([r[:, :1], r[:, n - K + 1:].flip(-1)], dim=-1)])
    return grad_x.to(x.dtype).contiguous(), grad_k.to(kernel.dtype).contiguous()


@ema_conv_backward.register_fake
def _(grad_y, x, kernel, bidirectional):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(kernel)


def _ema_conv_setup(ctx, inputs, output):
    x, kernel, bidirectional = inputs
    ctx.save_for_backward(x, kernel)
    ctx.bidirectional = bidirectional


def _ema_conv_grad(ctx, grad_y):
    x, kernel = ctx.saved_tensors
    grad_x, grad_k = ema_conv_backward(grad_y, x, kernel, ctx.bidirectional)
    return grad_x, grad_k, None


ema_conv.register_autograd(_ema_conv_grad, setup_context=_ema_conv_setup)


# ------------------------------------------------------------------------------------------------
# Multi-dimensional damped EMA (spec §2)
# ------------------------------------------------------------------------------------------------
_TRITON_FALLBACK_WARNED = set()


def _triton_ema_runs(x: torch.Tensor) -> bool:
    """Whether the fused Triton EMA can run on `x`; when not, say why once (the FFT path runs)."""
    from harness_models.mega_triton import triton_ema_unavailable_reason

    reason = triton_ema_unavailable_reason() or (None if x.is_cuda else "the input is not on a CUDA device")
    if reason is not None and reason not in _TRITON_FALLBACK_WARNED:
        _TRITON_FALLBACK_WARNED.add(reason)
        warnings.warn(f"mega ema_kernel=triton: {reason}; using the FFT EMA instead", stacklevel=3)
    return reason is None


class MultiHeadEMA(nn.Module):
    """Per channel c, h damped EMAs: h_t = p*beta*x_t + q*h_{t-1}, y_t = scale * sum_n gamma_n h_t,n.

    Official parameter names and shapes (D = 2d if bidirectional, else d): `delta` (D, h, 1) gives
    p = sigmoid(delta) (the paper's alpha), `alpha` (D, h, 1) gives the damping sigmoid(alpha) (the
    paper's delta), q = 1 - p*sigmoid(alpha); `beta` (D, h, 1), `gamma` (D, h), `omega` (d,).
    Bidirectional: rows [0:d] form a causal kernel, rows [d:2d] an anti-causal one; x_t enters both.
    """

    def __init__(self, d: int, h: int, bidirectional: bool, truncation: int | None, impl: str = "fast",
                 ema_kernel: str = "fft"):
        super().__init__()
        self.d, self.h = d, h
        self.bidirectional = bidirectional
        self.truncation = truncation
        self.impl = impl
        self.ema_kernel = ema_kernel
        rows = 2 * d if bidirectional else d
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
        p = torch.sigmoid(self.delta.float()).squeeze(-1)
        q = 1.0 - p * torch.sigmoid(self.alpha.float()).squeeze(-1)
        return p * self.beta.float().squeeze(-1), q, self.gamma.float()

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) -> X' = silu(EMA(x masked) + omega * x), (B, L, d) in x's dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):  # EMA and FFT stay fp32
            if self.impl == "reference":
                out = self.forward_recurrence(x, padding_mask)
            elif self.ema_kernel == "triton" and _triton_ema_runs(x):
                from harness_models.mega_triton import multi_head_ema_conv

                out = F.silu(multi_head_ema_conv(self, x, padding_mask) + x.float() * self.omega.float())
            else:
                out = self.forward_fft(x, padding_mask)
        return out.to(x.dtype)

    def conv_fft(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """EMA(x) without omega residual/activation, by one real FFT along time: (B, L, d) fp32."""
        L = x.shape[1]
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # pads contribute nothing
        y = ema_conv(x.transpose(1, 2).contiguous(), self.kernel(self.kernel_length(L)), self.bidirectional)
        return y[..., :L].transpose(1, 2)  # (B, d, n) -> (B, L, d) view

    def forward_fft(self, x, padding_mask=None) -> torch.Tensor:
        y = self.conv_fft(x, padding_mask)
        return F.silu(y + x.float() * self.omega.float())  # the omega residual uses the un-masked x

    def forward_recurrence(self, x, padding_mask=None) -> torch.Tensor:
        """The literal recurrence over time (reference path), truncation included."""
        B, L, d = x.shape
        K = self.kernel_length(L)
        xf = x.float()
        xin = xf if padding_mask is None else xf.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        pb, q, gamma = self.coefficients()
        y = self._scan(xin, pb[:d], q[:d], gamma[:d], K)
        if self.bidirectional:  # the backward EMA is the same recurrence run from the end
            y = y + self._scan(xin.flip(1), pb[d:], q[d:], gamma[d:], K).flip(1)
        return F.silu(y + xf * self.omega.float())

    def _scan(self, x, pb, q, gamma, K: int) -> torch.Tensor:
        """s_t = q s_{t-1} + pb x_t - pb q^K x_{t-K} (the last term keeps only K taps)."""
        B, L, d = x.shape
        state = x.new_zeros(B, d, self.h)
        drop = pb * q.pow(K)  # weight of the tap that leaves the window
        ys = []
        for t in range(L):
            state = q * state + pb * x[:, t, :, None]
            if t >= K:
                state = state - drop * x[:, t - K, :, None]
            ys.append(self.scale * (state * gamma).sum(-1))  # (B, d)
        return torch.stack(ys, dim=1)

    # -- recurrent forms (unidirectional only; untruncated recurrence, as the official decoder) --
    def step(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """One token: x (B, d), state (B, d, h) or None -> (X'_t (B, d), new state (B, d, h))."""
        if self.bidirectional:
            raise ValueError("a bidirectional EMA has no recurrent form (it looks ahead)")
        with torch.autocast(device_type=x.device.type, enabled=False):
            pb, q, gamma = self.coefficients()
            xf = x.float()
            new = pb * xf.unsqueeze(-1)  # (B, d, h)
            if state is not None:
                new = new + q * state
            y = self.scale * (new * gamma).sum(-1)
            out = F.silu(y + xf * self.omega.float())
        return out.to(x.dtype), new

    def block(self, x: torch.Tensor, state: torch.Tensor | None = None):
        """A block of L tokens after `state`: (B, L, d) -> (X' (B, L, d), new state (B, d, h))."""
        if self.bidirectional:
            raise ValueError("a bidirectional EMA has no recurrent form (it looks ahead)")
        with torch.autocast(device_type=x.device.type, enabled=False):
            B, L, d = x.shape
            xf = x.float()
            # full-length kernel: the recurrent forms do not truncate
            y = ema_conv(xf.transpose(1, 2).contiguous(), self.kernel(L), False)[..., :L].transpose(1, 2)
            pb, q, gamma = self.coefficients()
            t = torch.arange(L + 1, device=x.device, dtype=torch.float32)
            powers = torch.exp(torch.log(q).unsqueeze(-1) * t)  # (d, h, L+1): q^0 .. q^L
            # new state = sum_t pb q^(L-1-t) x_t + q^L state
            new = pb * torch.einsum("btd,dnt->bdn", xf, powers[..., :L].flip(-1))
            if state is not None:
                # the carried state decays into every output: scale * sum_n gamma q^(t+1) state
                y = y + self.scale * torch.einsum("dn,dnt,bdn->btd", gamma, powers[..., 1:], state)
                new = new + powers[..., L] * state
            out = F.silu(y + xf * self.omega.float())
        return out.to(x.dtype), new


# ------------------------------------------------------------------------------------------------
# Relative position bias (spec §3): b[i, j] for a chunk of length Lc
# ------------------------------------------------------------------------------------------------
def toeplitz(values: torch.Tensor, n: int) -> torch.Tensor:
    """values (2n-1,) indexed by offset j - i + n - 1 -> (n, n) matrix with [i, j] = values[n-1+j-i]."""
    return values.unfold(0, n, 1).flip(0)  # window r = values[r:r+n]; row i is window n-1-i


class SimpleRelativePositionalBias(nn.Module):
    """A learned vector w of length 2M-1 with b[i, j] = w[M-1 + j - i] (official `simple`)."""

    def __init__(self, max_positions: int):
        super().__init__()
        self.max_positions = max_positions
        self.rel_pos_bias = nn.Parameter(torch.empty(2 * max_positions - 1))
        nn.init.normal_(self.rel_pos_bias, 0.0, 0.02)

    def _check(self, n: int) -> None:
        if n > self.max_positions:
            raise UserError(
                f"mega: attention length {n} exceeds max_positions={self.max_positions} of the simple "
                f"relative-position bias; pass max_positions >= {n} (or use chunk_size / rel_pos=rotary)")

    def offsets(self, n: int) -> torch.Tensor:
        """(2n-1,) v with b[i, j] = v[n-1 + j-i] for a length-n attention."""
        self._check(n)
        M = self.max_positions
        return self.rel_pos_bias[M - n: M + n - 1]

    def forward(self, n: int) -> torch.Tensor:  # (n, n)
        return toeplitz(self.offsets(n), n)

    def reference(self, n: int) -> torch.Tensor:
        """The same matrix by explicit index arithmetic (reference path)."""
        self._check(n)
        i = torch.arange(n, device=self.rel_pos_bias.device)
        return self.rel_pos_bias[self.max_positions - 1 + i[None, :] - i[:, None]]

    def row(self, i: int) -> torch.Tensor:
        """b[i, 0..i]: the bias of query i against keys 0..i (decoding)."""
        self._check(i + 1)
        start = self.max_positions - 1 - i
        return self.rel_pos_bias[start: start + i + 1]


class RotaryRelativePositionalBias(nn.Module):
    """b[i, j] = RoPE(a)_i . RoPE(b)_j for learned a, b in R^{1 x z} (official `rotary`).

    RoPE: base 10000, half-split layout [x1 cos - x2 sin, x2 cos + x1 sin]; angle of position m and
    pair k is m * 10000^(-k/(z/2)). The product depends on i - j only:
    b[i, j] = sum_k c_k cos(theta_k (i-j)) + s_k sin(theta_k (i-j)), c = a1 b1 + a2 b2,
    s = a1 b2 - a2 b1, which the fast path evaluates on 2n-1 offsets instead of n^2 pairs.
    """

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.alpha = nn.Parameter(torch.empty(1, z_dim))
        self.beta = nn.Parameter(torch.empty(1, z_dim))
        nn.init.normal_(self.alpha, 0.0, 0.02)
        nn.init.normal_(self.beta, 0.0, 0.02)

    def _freqs(self) -> torch.Tensor:
        half = self.z_dim // 2
        k = torch.arange(half, device=self.alpha.device, dtype=torch.float32)
        return torch.exp(k * (-math.log(10000.0) / half))  # (z/2,)

    def _of_offsets(self, offsets: torch.Tensor) -> torch.Tensor:
        """bias as a function of o = j - i, for each entry of `offsets` (float)."""
        a1, a2 = self.alpha.float()[0].chunk(2)
        b1, b2 = self.beta.float()[0].chunk(2)
        angle = (-offsets)[:, None] * self._freqs()[None, :]  # theta_k * (i - j)
        return torch.cos(angle) @ (a1 * b1 + a2 * b2) + torch.sin(angle) @ (a1 * b2 - a2 * b1)

    def offsets(self, n: int) -> torch.Tensor:
        """(2n-1,) v with b[i, j] = v[n-1 + j-i] for a length-n attention."""
        return self._of_offsets(torch.arange(-(n - 1), n, device=self.alpha.device, dtype=torch.float32))

    def forward(self, n: int) -> torch.Tensor:  # (n, n)
        return toeplitz(self.offsets(n), n)

    def reference(self, n: int) -> torch.Tensor:
        """Rotate a and b at every position, then take all pairwise dot products."""
        angle = torch.arange(n, device=self.alpha.device, dtype=torch.float32)[:, None] * self._freqs()
        sin, cos = torch.sin(angle), torch.cos(angle)  # (n, z/2)

        def rope(v):  # (1, z) broadcast over positions -> (n, z)
            v1, v2 = v.float().chunk(2, dim=-1)
            return torch.cat([v1 * cos - v2 * sin, v2 * cos + v1 * sin], dim=-1)

        return rope(self.alpha) @ rope(self.beta).t()

    def row(self, i: int) -> torch.Tensor:
        offsets = torch.arange(-i, 1, device=self.alpha.device, dtype=torch.float32)  # j - i, j <= i
        return self._of_offsets(offsets)


# ------------------------------------------------------------------------------------------------
# Attention functions (spec §3)
# ------------------------------------------------------------------------------------------------
def laplace(x: torch.Tensor) -> torch.Tensor:
    """0.5 * (1 + erf((x - mu) / (sigma sqrt 2))), mu = sqrt(1/2), sigma = sqrt(1/(4 pi))."""
    mu, sigma = math.sqrt(0.5), math.sqrt(0.25 / math.pi)
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


ELEMENTWISE = {"laplace": laplace, "relu2": relu2}


def hidden_pad_rows(key_pad: torch.Tensor, causal: bool) -> torch.Tensor:
    """Which (row, key) pairs the padding mask removes: (N, 1 or n, n) bool.

    A row that would see no real key keeps its padded keys (NaN guard): without a causal mask that
    is a chunk whose keys are all pad (the official rule); with one, a row whose visible keys are.
    """
    n = key_pad.shape[-1]
    if not causal:
        return (key_pad & ~key_pad.all(-1, keepdim=True)).unsqueeze(1)  # (N, 1, n)
    lower = torch.ones(n, n, dtype=torch.bool, device=key_pad.device).tril()
    sees_real = (lower & ~key_pad.unsqueeze(1)).any(-1, keepdim=True)  # (N, n, 1)
    return key_pad.unsqueeze(1) & sees_real  # (N, n, n)


def softmax_weights(scores, bias, key_pad, causal: bool) -> torch.Tensor:
    """softmax(QK^T z^-1/2 + b) in fp32 with -inf masks (materialised path). scores: (N, n, n) fp32."""
    n_keys = scores.shape[-1]
    logits = scores + bias
    if causal:
        upper = torch.ones(n_keys, n_keys, dtype=torch.bool, device=scores.device).triu(1)
        logits = logits.masked_fill(upper, float("-inf"))
    if key_pad is not None:
        logits = logits.masked_fill(hidden_pad_rows(key_pad, causal), float("-inf"))
    return torch.softmax(logits, dim=-1)


def elementwise_weights(scores, bias, key_pad, causal: bool, fn) -> torch.Tensor:
    """A = f(QK^T / n + b) times multiplicative masks; no row normalisation.

    n = non-pad keys in the chunk (clamped >= 1), or the chunk length without a padding mask; with a
    causal mask, the row count of that mask (row i -> i + 1). scores: (N, n, n) fp32.
    """
    n_keys = scores.shape[-1]
    if causal:
        count = torch.arange(1, n_keys + 1, device=scores.device, dtype=scores.dtype)[:, None]
    elif key_pad is not None:
        count = (~key_pad).sum(-1).clamp(min=1).to(scores.dtype)[:, None, None]  # (N, 1, 1)
    else:
        count = float(n_keys)
    weights = fn(scores / count + bias)
    if key_pad is not None:
        weights = weights * (~key_pad).unsqueeze(1).to(weights.dtype)
    if causal:
        weights = weights * torch.ones(n_keys, n_keys, device=scores.device, dtype=weights.dtype).tril()
    return weights


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
        self.norm = SequenceNorm(cfg.norm, d, cfg.norm_affine)
        self.move = MultiHeadEMA(d, cfg.h_dim, cfg.bidirectional, cfg.truncation, cfg.impl, cfg.ema_kernel)
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

    # -- attention, fast: chunks folded into the batch; softmax by SDPA, FlexAttention or matmul ---
    def attend(self, q, k, v, padding_mask):
        """q, k (B, L, z), v (B, L, v) with L a multiple of the chunk length -> (B, L, v)."""
        B, L, _ = q.shape
        n = self.chunk_length(L)
        N = B * (L // n)
        q, k = q.to(v.dtype).reshape(N, n, self.z), k.to(v.dtype).reshape(N, n, self.z)
        vv = v.reshape(N, n, self.v)
        key_pad = None if padding_mask is None else padding_mask.reshape(N, n)
        kernel = self.softmax_kernel(n, q.is_cuda) if self.attention == "softmax" else None
        if kernel == "flex":  # the bias enters inside the kernel, never as an (n, n) matrix
            return self.attend_flex(q, k, vv, key_pad, n).reshape(B, L, self.v)
        bias = self.rel_pos_bias(n)  # (n, n) fp32, shared by every chunk
        if kernel == "sdpa":
            p = self.attention_dropout.p if self.training else 0.0
            bias = bias.to(v.dtype)  # cast before any batch-sized mask is built
            if self.causal:
                upper = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
                bias = bias.masked_fill(upper, float("-inf"))
            if key_pad is None:
                mask = bias[None, None]  # (1, 1, n, n), broadcast over chunks
            else:  # (N, 1, n, n): padded keys at -inf, except in rows that see no real key
                mask = torch.where(hidden_pad_rows(key_pad, self.causal), float("-inf"), bias)[:, None]
            o = F.scaled_dot_product_attention(q[:, None], k[:, None], vv[:, None], attn_mask=mask,
                                               dropout_p=p, scale=self.z ** -0.5)  # (N, 1, n, v)
            return o.reshape(B, L, self.v)
        scores = torch.bmm(q, k.transpose(1, 2)).float()  # (N, n, n)
        if self.attention == "softmax":
            weights = softmax_weights(scores * self.z ** -0.5, bias, key_pad, self.causal)
        else:
            weights = elementwise_weights(scores, bias, key_pad, self.causal, ELEMENTWISE[self.attention])
        o = torch.bmm(self.attention_dropout(weights).to(v.dtype), vv)  # (N, n, v)
        return o.reshape(B, L, self.v)

    def softmax_kernel(self, n: int, cuda: bool) -> str:
        """Which kernel computes a length-n softmax attention (all give the same function)."""
        kernel = self.cfg.softmax_kernel
        if kernel == "flex" and not cuda:
            # The CPU build of compiled FlexAttention reads the score modification out of bounds in
            # a length's last partial tile (wrong results, or NaN, at L=24 and 40); CUDA's bounds it.
            raise UserError("mega config: softmax_kernel='flex' runs on a CUDA device only; on the CPU "
                            "use softmax_kernel=auto, sdpa or matmul")
        if kernel == "flex" and self.training and self.attention_dropout.p > 0:
            return "sdpa"  # FlexAttention has no dropout on the weights
        if kernel != "auto":
            return kernel
        if n <= MATERIALIZE_MAX_LENGTH:
            return "matmul"
        flex_ok = (self.cfg.compile and cuda and min(self.z, self.v) >= FLEX_MIN_DIM
                   and not (self.training and self.attention_dropout.p > 0))
        return "flex" if flex_ok else "sdpa"

    def attend_flex(self, q, k, v, key_pad, n: int):
        """FlexAttention with the bias as a score modification read from a (2n-1,) offset table;
        its gradient reaches the table. q, k (N, n, z), v (N, n, v) -> (N, n, v)."""
        from torch.nn.attention.flex_attention import flex_attention

        table = self.rel_pos_bias.offsets(n)
        causal = self.causal
        if key_pad is not None:  # rows that see no real key keep their padded keys (NaN guard)
            sees_real = (~key_pad).cumsum(-1) > 0 if causal else ~key_pad.all(-1)  # (N, n) | (N,)

        def score_mod(score, b, h, qi, ki):
            score = score + table[ki - qi + (n - 1)]
            if causal:
                score = torch.where(ki <= qi, score, float("-inf"))
            if key_pad is not None:
                row_ok = sees_real[b, qi] if causal else sees_real[b]
                score = torch.where(key_pad[b, ki] & row_ok, float("-inf"), score)
            return score

        # Value width 256 needs smaller tiles than the defaults to fit in shared memory.
        options = FLEX_KERNEL_OPTIONS if q.is_cuda and self.v > 128 else None
        o = flex_attention(q[:, None], k[:, None], v[:, None], score_mod=score_mod, scale=self.z ** -0.5,
                           kernel_options=options)
        return o[:, 0]

    # -- attention, reference: chunk by chunk, explicit bias, softmax written out -----------------
    def attend_reference(self, q, k, v, padding_mask):
        B, L, _ = q.shape
        n = self.chunk_length(L)
        bias = self.rel_pos_bias.reference(n)  # (n, n)
        lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        outs = []
        for start in range(0, L, n):
            qc, kc, vc = (t[:, start:start + n].float() for t in (q, k, v))
            pad = None if padding_mask is None else padding_mask[:, start:start + n]
            if self.attention == "softmax":
                scores = (qc * self.z ** -0.5) @ kc.transpose(1, 2) + bias  # (B, n, n)
                if self.causal:
                    scores = scores.masked_fill(~lower, float("-inf"))
                if pad is not None:
                    visible = ~pad[:, None, :] & (lower if self.causal else True)
                    sees_real = visible.any(-1, keepdim=True)  # all-pad chunk / row: leave unmasked
                    scores = scores.masked_fill(pad[:, None, :] & sees_real, float("-inf"))
                weights = torch.softmax(scores, dim=-1)
            else:
                if self.causal:
                    count = lower.sum(-1, keepdim=True).float()  # row sums of the 0/1 causal mask
                elif pad is not None:
                    count = (~pad).sum(-1).clamp(min=1).float()[:, None, None]
                else:
                    count = float(n)
                weights = ELEMENTWISE[self.attention](qc @ kc.transpose(1, 2) / count + bias)
                if pad is not None:
                    weights = weights * (~pad[:, None, :]).float()
                if self.causal:
                    weights = weights * lower.float()
            outs.append(self.attention_dropout(weights) @ vc)  # (B, n, v)
        return torch.cat(outs, dim=1).to(v.dtype)

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
        self.norm = SequenceNorm(cfg.norm, cfg.d_model, cfg.norm_affine)
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
        self.final_norm = SequenceNorm(cfg.norm, cfg.d_model, affine=True) if cfg.prenorm else None
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
_NO_EXTRA_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0)
TASK_CONFIGS = {
    "listops": dict(n_layers=6, d_model=80, d_ffn=160, z_dim=64, v_dim=160, h_dim=16,
                    attention="softmax", norm="layernorm", prenorm=False, truncation=1024,
                    max_positions=2002, dropout=0.1, **_NO_EXTRA_DROPOUT),
    "text": dict(n_layers=4, d_model=128, d_ffn=256, z_dim=64, v_dim=256, h_dim=16,
                 attention="softmax", norm="scalenorm", prenorm=False, truncation=1024,
                 max_positions=4002, dropout=0.1, **_NO_EXTRA_DROPOUT),
    "retrieval": dict(n_layers=6, d_model=128, d_ffn=256, z_dim=64, v_dim=256, h_dim=16,
                      attention="softmax", norm="scalenorm", prenorm=False, truncation=1024,
                      max_positions=4002, dropout=0.1, **_NO_EXTRA_DROPOUT),
    "image": dict(n_layers=8, d_model=160, d_ffn=320, z_dim=96, v_dim=320, h_dim=16,
                  attention="laplace", norm="batchnorm", prenorm=True, truncation=1024,
                  max_positions=1024, dropout=0.0, **_NO_EXTRA_DROPOUT),
    "pathfinder": dict(n_layers=6, d_model=128, d_ffn=256, z_dim=64, v_dim=256, h_dim=16,
                       attention="laplace", norm="batchnorm", prenorm=True, truncation=1024,
                       max_positions=1024, dropout=0.0, **_NO_EXTRA_DROPOUT),
    # Path-X trained with SyncBatchNorm on 8 GPUs: batchnorm on one device.
    "pathx": dict(n_layers=4, d_model=64, d_ffn=128, z_dim=32, v_dim=128, h_dim=16,
                  attention="laplace", norm="batchnorm", prenorm=True, truncation=4096,
                  max_positions=16384, dropout=0.0, **_NO_EXTRA_DROPOUT),
}
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
                defaults=dataclasses.asdict(MegaConfig(chunk_size=-1)),
                task_configs={t: dict(c, chunk_size=-1) for t, c in TASK_CONFIGS.items()},
                train_configs=TRAIN_CONFIGS, tiny=TINY, runtime=RUNTIME_KEYS,
                published=dict(speed=2.9, memory=0.31, source="MEGA Table 2 (MEGA authors' GPU runs)"))
def mega(**kwargs) -> MegaEncoder:
    """MEGA: bidirectional damped EMA + single-head gated attention over the whole sequence"""
    return build_mega(**kwargs)


@register_model("mega_chunk", family="hybrid", paper=PAPER, complexity="O(L C)",
                defaults=dataclasses.asdict(MegaConfig(chunk_size=128)),
                task_configs={t: dict(c, chunk_size=CHUNK_SIZES[t]) for t, c in TASK_CONFIGS.items()},
                train_configs=TRAIN_CONFIGS, tiny=dict(TINY, chunk_size=16, rel_pos="simple"),  # bias sized by C
                runtime=RUNTIME_KEYS,
                published=dict(speed=5.5, memory=0.13, source="MEGA Table 2 (MEGA authors' GPU runs)"))
def mega_chunk(**kwargs) -> MegaEncoder:
    """MEGA-chunk: EMA over the whole sequence, gated attention inside chunks of C"""
    return build_mega(**kwargs)
