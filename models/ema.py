"""MEGA's multi-dimensional damped EMA as kernels: the fast FFT convolution (a custom op with a
hand-written gradient) beside its literal reference, the recurrence over time, and the recurrent
forms used for decoding. The layer that owns the parameters is `harness_models.mega.MultiHeadEMA`.

Per channel c and EMA dimension n (h of them), with p = sigmoid(delta), q = 1 - p * sigmoid(alpha):
    s_t = q s_{t-1} + p beta x_t,    y_t = scale * sum_n gamma_n s_t,n
which is the convolution y = k * x with k[t] = scale * sum_n gamma_n p_n beta_n q_n^t (spec §2).
A bidirectional EMA has 2d kernel rows: [0:d] causal, [d:2d] anti-causal; x_t enters both.

Paper: Ma et al., "Mega: Moving Average Equipped Gated Attention", ICLR 2023 (arXiv 2209.10655).
"""

from __future__ import annotations

import math

import torch


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


def ema_fft_length(L: int, K: int) -> int:
    """n >= L + K - 1: neither the causal nor the anti-causal part wraps around onto [0, L)."""
    return fft_length(L + K - 1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32 and lower precisions, fp64 for fp64 inputs (gradcheck, fp64 models)."""
    return torch.promote_types(x.dtype, torch.float32)


def _damping(delta, alpha, beta):
    """(p sigmoid(alpha), p beta) as (D, h) fp32 tensors, p = sigmoid(delta): q = 1 - the first."""
    p = torch.sigmoid(delta.float()).squeeze(-1)  # (D, h)
    return p * torch.sigmoid(alpha.float()).squeeze(-1), p * beta.float().squeeze(-1)


def _kernel_terms(delta, alpha, beta, gamma, scale: float):
    """(log q, weight) as (D, h) fp32 tensors, weight = scale gamma p beta; log q is
    log1p(-p sigmoid(alpha)), without cancellation when q is close to 1."""
    damp, p_beta = _damping(delta, alpha, beta)
    return torch.log1p(-damp), p_beta * gamma.float() * scale


def ema_kernel(delta, alpha, beta, gamma, scale: float, length: int) -> torch.Tensor:
    """k[c, t] = scale * sum_n gamma[c,n] p[c,n] beta[c,n] q[c,n]^t, t < length; always fp32.

    Written t = a B + b with B about sqrt(length): q^t = q^(aB) q^b, so the sum over n is one batched
    matrix product of (D, A, h) powers q^(aB) (weighted) by (D, h, B) powers q^b. Only D h (A + B)
    exponentials are taken and the (D, h, length) table of powers that the literal form
    (`ema_kernel_reference`) builds, with its autograd copies, never exists: the kernel's cost was
    the largest elementwise item of a CPU training step at the Text configuration. The time index is
    fp32 whatever the parameter dtype (spec pitfall 3).
    delta/alpha/beta: (D, h, 1), gamma: (D, h) -> (D, length).
    """
    log_q, weight = _kernel_terms(delta, alpha, beta, gamma, scale)
    block = max(1, math.isqrt(length))  # B
    n_blocks = -(-length // block)  # A
    steps = torch.arange(block, device=log_q.device, dtype=torch.float32)  # b
    starts = torch.arange(n_blocks, device=log_q.device, dtype=torch.float32) * block  # a B
    outer = torch.exp(log_q.unsqueeze(-1) * starts) * weight.unsqueeze(-1)  # (D, h, A): w q^(aB)
    inner = torch.exp(log_q.unsqueeze(-1) * steps)  # (D, h, B): q^b
    kernel = torch.bmm(outer.transpose(1, 2), inner)  # (D, A, B): contraction over h
    return kernel.reshape(kernel.shape[0], -1)[:, :length]


def ema_kernel_reference(delta, alpha, beta, gamma, scale: float, length: int) -> torch.Tensor:
    """The literal form of `ema_kernel`: the (D, h, length) table q^t, weighted and summed over n
    (the official code's construction). Computed in the parameters' precision, fp32 at least."""
    dtype = compute_dtype(delta)
    p = torch.sigmoid(delta.to(dtype))  # (D, h, 1)
    q = 1 - p * torch.sigmoid(alpha.to(dtype))  # (D, h, 1)
    t = torch.arange(length, device=delta.device, dtype=dtype)
    powers = q ** t  # (D, h, K)
    return scale * ((p * beta.to(dtype)).squeeze(-1) * gamma.to(dtype)).unsqueeze(-1).mul(powers).sum(1)


def ema_coefficients(delta, alpha, beta, gamma):
    """(p*beta, q, gamma) as (D, h) fp32 tensors, for the recurrent forms."""
    damp, p_beta = _damping(delta, alpha, beta)
    return p_beta, 1.0 - damp, gamma.float()


# ------------------------------------------------------------------------------------------------
# Fast form: the convolution by one real FFT, as an opaque custom op with a hand-written gradient.
# torch.compile cannot lower complex tensors (spec §11: KeyError 'complex64'), so hiding the FFTs
# lets it compile and fuse everything else in the block. Saving the input rather than its spectrum
# also halves the memory kept for backward under bf16 autocast.
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


@torch.library.custom_op("harness_mega::ema_conv", mutates_args=())
def ema_conv(x: torch.Tensor, kernel: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """Circular convolution of length n = ema_fft_length(L, K) whose [..., :L] is the EMA:
    y[t] = sum_s k_fwd[s] x[t-s] (+ sum_s k_bwd[s] x[t+s]), x zero outside [0, L).

    x (B, d, L) time-last (the FFT runs along contiguous memory), any float dtype; kernel (D, K)
    -> (B, d, n) in at least fp32. Returning all n lets the caller's slice fuse into what follows.
    """
    n = ema_fft_length(x.shape[-1], kernel.shape[-1])
    dtype = compute_dtype(x)
    spectrum = torch.fft.rfft(x.to(dtype), n=n) * _spectrum(kernel.to(dtype), bidirectional, n)
    return torch.fft.irfft(spectrum, n=n)


@ema_conv.register_fake
def _(x, kernel, bidirectional):
    n = ema_fft_length(x.shape[-1], kernel.shape[-1])
    return x.new_empty((*x.shape[:-1], n), dtype=compute_dtype(x))


@torch.library.custom_op("harness_mega::ema_conv_backward", mutates_args=())
def ema_conv_backward(grad_y: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor,
                      bidirectional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoints of `ema_conv` (grad_y (B, d, n)): grad_x = correlation of grad_y with the kernel;
    grad_k[t] = sum_{b,s} grad_y[s] x[s-t] (forward rows), sum_{b,s} grad_y[s] x[s+t] (backward rows)."""
    L, K = x.shape[-1], kernel.shape[-1]
    n = ema_fft_length(L, K)
    dtype = compute_dtype(x)
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


def ema_fft(x: torch.Tensor, kernel: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """EMA(x) by `ema_conv`: x (B, L, d) (pads already zeroed), kernel (D, K) -> (B, L, d) view in
    at least fp32."""
    L = x.shape[1]
    y = ema_conv(x.transpose(1, 2).contiguous(), kernel, bidirectional)  # (B, d, n)
    return y[..., :L].transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# Reference form: the recurrence over time, written out (for tests and impl="reference")
# ------------------------------------------------------------------------------------------------
def _scan(x, pb, q, gamma, scale: float, K: int) -> torch.Tensor:
    """s_t = q s_{t-1} + pb x_t - pb q^K x_{t-K} (the last term keeps only K taps). (B, L, d)."""
    B, L, d = x.shape
    state = x.new_zeros(B, d, q.shape[-1])  # (B, d, h)
    drop = pb * q.pow(K)  # weight of the tap that leaves the window
    ys = []
    for t in range(L):
        state = q * state + pb * x[:, t, :, None]
        if t >= K:
            state = state - drop * x[:, t - K, :, None]
        ys.append(scale * (state * gamma).sum(-1))  # (B, d)
    return torch.stack(ys, dim=1)


def ema_recurrence(x, pb, q, gamma, scale: float, K: int, bidirectional: bool) -> torch.Tensor:
    """The same function as `ema_fft` (kernel truncated to K taps) as a loop over time, in x's
    dtype: x (B, L, d) with pads zeroed; pb, q, gamma (D, h) from `ema_coefficients`."""
    d = x.shape[-1]
    pb, q, gamma = (t.to(x.dtype) for t in (pb, q, gamma))
    y = _scan(x, pb[:d], q[:d], gamma[:d], scale, K)
    if bidirectional:  # the backward EMA is the same recurrence run from the end
        y = y + _scan(x.flip(1), pb[d:], q[d:], gamma[d:], scale, K).flip(1)
    return y


# ------------------------------------------------------------------------------------------------
# Recurrent forms for decoding (unidirectional, untruncated, as the official decoder)
# ------------------------------------------------------------------------------------------------
def ema_step(x: torch.Tensor, state: torch.Tensor | None, pb, q, gamma, scale: float):
    """One token: x (B, d) fp32, state (B, d, h) or None -> (EMA_t (B, d), new state (B, d, h))."""
    new = pb * x.unsqueeze(-1)  # (B, d, h)
    if state is not None:
        new = new + q * state
    return scale * (new * gamma).sum(-1), new


def ema_block(x: torch.Tensor, state: torch.Tensor | None, kernel: torch.Tensor, pb, q, gamma,
              scale: float):
    """A block of L tokens after `state`: x (B, L, d) fp32, kernel (d, L) untruncated
    -> (EMA (B, L, d), new state (B, d, h))."""
    L = x.shape[1]
    y = ema_fft(x, kernel, False)
    t = torch.arange(L + 1, device=x.device, dtype=torch.float32)
    powers = torch.exp(torch.log(q).unsqueeze(-1) * t)  # (d, h, L+1): q^0 .. q^L
    # new state = sum_t pb q^(L-1-t) x_t + q^L state
    new = pb * torch.einsum("btd,dnt->bdn", x, powers[..., :L].flip(-1))
    if state is not None:
        # the carried state decays into every output: scale * sum_n gamma q^(t+1) state
        y = y + scale * torch.einsum("dn,dnt,bdn->btd", gamma, powers[..., 1:], state)
        new = new + powers[..., L] * state
    return y, new
