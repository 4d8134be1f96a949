"""MEGA's single-head attention (spec §3-4): relative-position biases, the three attention
functions, the fast kernels (SDPA, a materialised matmul, FlexAttention) and, beside them, the
literal reference (chunk by chunk, explicitly indexed bias, the softmax written out).

Every path takes chunk-folded or chunked inputs from `harness_models.mega.MovingAverageGatedAttention`
and computes the same function; the layer picks one with `choose_softmax_kernel` (or the reference
with `impl="reference"`). Paper: Ma et al., ICLR 2023 (arXiv 2209.10655).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import UserError
from harness_models.ema import compute_dtype

MATERIALIZE_MAX_LENGTH = 256  # softmax_kernel=auto: materialise attention up to this length
FLEX_MIN_DIM = 16  # FlexAttention needs query/key and value widths of at least 16
# FlexAttention tiles for value width 256 (the defaults exceed shared memory): the fastest of four
# settings tried on an H100 at L=4096, batch 25 (fwd+bwd 6.5 ms, against 8.3-14.6 ms).
FLEX_KERNEL_OPTIONS = {"BLOCK_M": 128, "BLOCK_N": 32, "num_stages": 2, "num_warps": 8,
                       "BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 64}


# ------------------------------------------------------------------------------------------------
# Relative position bias (spec §3): b[i, j] for a chunk of length n
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
# Attention functions and masks (spec §3)
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
# Fast paths: chunks folded into the batch, q, k (N, n, z), v (N, n, v) -> (N, n, v)
# ------------------------------------------------------------------------------------------------
def choose_softmax_kernel(requested: str, n: int, *, cuda: bool, compiled: bool, weight_dropout: bool,
                          width: int) -> str:
    """Which kernel computes a length-n softmax attention (all give the same function).
    `weight_dropout`: dropout on the attention weights is active; `width`: min(z, v)."""
    if requested == "flex" and not cuda:
        # The CPU build of compiled FlexAttention reads the score modification out of bounds in
        # a length's last partial tile (wrong results, or NaN, at L=24 and 40); CUDA's bounds it.
        raise UserError("mega config: softmax_kernel='flex' runs on a CUDA device only; on the CPU "
                        "use softmax_kernel=auto, sdpa or matmul")
    if requested == "flex" and weight_dropout:
        return "sdpa"  # FlexAttention has no dropout on the weights
    if requested != "auto":
        return requested
    if n <= MATERIALIZE_MAX_LENGTH:
        return "matmul"
    flex_ok = compiled and cuda and width >= FLEX_MIN_DIM and not weight_dropout
    return "flex" if flex_ok else "sdpa"


def attend_folded(q, k, v, key_pad, bias: nn.Module, *, attention: str, kernel: str | None,
                  causal: bool, dropout: nn.Dropout) -> torch.Tensor:
    """softmax by `kernel` (sdpa | matmul | flex), or `attention` laplace/relu2 materialised."""
    n, z = q.shape[1], q.shape[-1]
    if kernel == "flex":  # the bias enters inside the kernel, never as an (n, n) matrix
        return attend_flex(q, k, v, key_pad, bias, causal=causal)
    b = bias(n)  # (n, n) fp32, shared by every chunk
    if kernel == "sdpa":
        p = dropout.p if dropout.training else 0.0
        b = b.to(v.dtype)  # cast before any batch-sized mask is built
        if causal:
            upper = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            b = b.masked_fill(upper, float("-inf"))
        if key_pad is None:
            mask = b[None, None]  # (1, 1, n, n), broadcast over chunks
        else:  # (N, 1, n, n): padded keys at -inf, except in rows that see no real key
            mask = torch.where(hidden_pad_rows(key_pad, causal), float("-inf"), b)[:, None]
        o = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask,
                                           dropout_p=p, scale=z ** -0.5)  # (N, 1, n, v)
        return o[:, 0]
    scores = torch.bmm(q, k.transpose(1, 2)).float()  # (N, n, n)
    if attention == "softmax":
        weights = softmax_weights(scores * z ** -0.5, b, key_pad, causal)
    else:
        weights = elementwise_weights(scores, b, key_pad, causal, ELEMENTWISE[attention])
    return torch.bmm(dropout(weights).to(v.dtype), v)  # (N, n, v)


def attend_flex(q, k, v, key_pad, bias: nn.Module, *, causal: bool) -> torch.Tensor:
    """FlexAttention with the bias as a score modification read from a (2n-1,) offset table;
    its gradient reaches the table."""
    from torch.nn.attention.flex_attention import flex_attention  # only with softmax_kernel=flex

    n, z = q.shape[1], q.shape[-1]
    table = bias.offsets(n)
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
    options = FLEX_KERNEL_OPTIONS if q.is_cuda and v.shape[-1] > 128 else None
    o = flex_attention(q[:, None], k[:, None], v[:, None], score_mod=score_mod, scale=z ** -0.5,
                       kernel_options=options)
    return o[:, 0]


# ------------------------------------------------------------------------------------------------
# Reference: the equations written out, chunk by chunk (impl="reference", tests)
# ------------------------------------------------------------------------------------------------
def attend_reference(q, k, v, padding_mask, bias: nn.Module, *, attention: str, causal: bool, n: int,
                     dropout: nn.Dropout) -> torch.Tensor:
    """q, k (B, L, z), v (B, L, v), L a multiple of the chunk length n -> (B, L, v), computed in
    fp32 (fp64 for fp64 inputs) with an explicitly indexed bias matrix."""
    B, L, z = q.shape
    dtype = compute_dtype(v)
    b = bias.reference(n).to(dtype)  # (n, n)
    lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    outs = []
    for start in range(0, L, n):
        qc, kc, vc = (t[:, start:start + n].to(dtype) for t in (q, k, v))
        pad = None if padding_mask is None else padding_mask[:, start:start + n]
        if attention == "softmax":
            scores = (qc * z ** -0.5) @ kc.transpose(1, 2) + b  # (B, n, n)
            if causal:
                scores = scores.masked_fill(~lower, float("-inf"))
            if pad is not None:
                visible = ~pad[:, None, :] & (lower if causal else True)
                sees_real = visible.any(-1, keepdim=True)  # all-pad chunk / row: leave unmasked
                scores = scores.masked_fill(pad[:, None, :] & sees_real, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
        else:
            if causal:
                count = lower.sum(-1, keepdim=True).to(dtype)  # row sums of the 0/1 causal mask
            elif pad is not None:
                count = (~pad).sum(-1).clamp(min=1).to(dtype)[:, None, None]
            else:
                count = float(n)
            weights = ELEMENTWISE[attention](qc @ kc.transpose(1, 2) / count + b)
            if pad is not None:
                weights = weights * (~pad[:, None, :]).to(dtype)
            if causal:
                weights = weights * lower.to(dtype)
        outs.append(dropout(weights) @ vc)  # (B, n, v)
    return torch.cat(outs, dim=1).to(v.dtype)
