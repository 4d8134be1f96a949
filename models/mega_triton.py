"""MEGA's multi-dimensional damped EMA as a chunked scan in Triton, forward and backward.

Paper: X. Ma et al., "Mega: Moving Average Equipped Gated Attention", ICLR 2023 (arXiv 2209.10655),
section 2 (spec: shared/spec/mega.md §2, §11 items 1-2 and 6). This computes the same function as
`harness_models.mega.MultiHeadEMA.conv_fft` (the EMA before the omega residual and the SiLU) without ever
building the (D, h, K) kernel tensor or a spectrum: the h damped EMAs of each channel are run as a
recurrence over time, with the state in fp32 registers.

Function (per batch row, channel c, direction; D = 2d rows when bidirectional, else d):
    W_t[n] = q[c,n] W_{t-1}[n] + x_t - q[c,n]^K x_{t-K}      (unit-weight state of mode n)
    y_t    = sum_n weight[c,n] W_t[n]
so y is the convolution of x with k[c, l] = sum_n weight[c,n] q[c,n]^l for lags 0 <= l < K: the
subtracted term drops the tap that leaves the window, which is exactly the kernel truncation of
`MultiHeadEMA` (K = kernel_length(L)). `weight = scale * gamma * p * beta` and `q = 1 - p sigmoid(alpha)`
(see `ema_coefficients`), so `k` is `harness_models.ema.ema_kernel`. Bidirectional: rows [0:d] run forward in
time (causal) and rows [d:2d] backward in time (anti-causal); both include lag 0, as `ema_conv`.

Parallel form (a two-level scan, exact: the recurrence is linear with constant q): the time axis is
cut into chunks of T steps. Pass 1 runs each chunk from a zero state (all chunks, batch rows, channel
blocks and directions at once) and stores its end state E_j. Pass 2 sweeps the chunks once per (row,
channel block, direction), S_{j+1} = q^T S_j + E_j, overwriting E_j with the state S_j entering chunk j.
Pass 3 re-runs every chunk from its S_j and writes the outputs. 2T + L/T sequential steps instead of L,
two reads of x and one write of y: no (B, d, n) spectra, no (D, h, K) kernel, only x saved for backward.

Backward (the same passes):
- grad_x is the transposed convolution, i.e. the same scan run in the opposite time direction with the
  same (weight, q): `FLIP` swaps the direction of each row group.
- grad_weight[c,n] = sum_{b,t} g_t W_t[n] and grad_q[c,n] = weight[c,n] sum_{b,t} g_t V_t[n], with
  V = dW/dq carried by V_t = q V_{t-1} + W_{t-1} - K q^{K-1} x_{t-K} (and across a chunk of T steps:
  V_end = q^T V_start + T q^{T-1} W_start + local). Per-(batch, chunk) partial sums are reduced by torch,
  so the result is deterministic. torch autograd takes the chain rule on to delta/alpha/beta/gamma.
Bidirectional outputs are two atomic adds onto zeros per element, which is order-independent (0 + a + b
is the same in either order), so the forward is deterministic too.

Precision: fp32 state and accumulation whatever the input dtype (bf16 and fp32 inputs; fp64 inputs are
computed in fp32). With q close to 1 the rounding error of the recurrence grows like eps / (1 - q),
about 1e-4 relative at q = 0.999 (the FFT path's error grows like eps log n instead).

Runs on CUDA tensors; CPU tensors run through Triton's interpreter when TRITON_INTERPRET=1 was set before
triton was imported (for tests; slow: the interpreter cannot be switched on later in a process, because
triton's own standard library is built for one mode at import). `triton_ema_unavailable_reason()` says
why the fast path cannot run here.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a broken install failing in its own import
    triton = tl = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

CHUNK = 64  # T: time steps per chunk (sequential inside a program)
CHANNEL_BLOCK = 16  # channels per program (each holds next_pow2(h) modes)


def triton_ema_unavailable_reason() -> str | None:
    """None when the Triton EMA can run on a GPU here; otherwise one line saying why not."""
    if triton is None:
        return f"triton is not importable ({_IMPORT_ERROR}); install it with `pip install triton`"
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    return None


def ema_coefficients(delta, alpha, beta, gamma, scale: float):
    """MultiHeadEMA parameters -> (weight, q), each (D, h) fp32, differentiable.

    delta, alpha, beta: (D, h, 1); gamma: (D, h). weight = scale * gamma * p * beta, q = 1 - p * sigmoid(alpha),
    p = sigmoid(delta); then sum_n weight q^t is `harness_models.ema.ema_kernel`.
    """
    p = torch.sigmoid(delta.float()).squeeze(-1)  # (D, h)
    q = 1.0 - p * torch.sigmoid(alpha.float()).squeeze(-1)
    return scale * gamma.float() * p * beta.float().squeeze(-1), q


if triton is not None:

    @triton.jit
    def _ema_chunk_end_states(x_ptr, q_ptr, qk_ptr, dqk_ptr, ew_ptr, ev_ptr,
                              B, L, d, H, K, n_chunks, n_cblocks,
                              FLIP: tl.constexpr, WITH_V: tl.constexpr,
                              T: tl.constexpr, CB: tl.constexpr, HB: tl.constexpr):
        """Pass 1: the end state of chunk j run from a zero state (W, and V = dW/dq when WITH_V).

        x (B, L, d); q, q^K, K q^(K-1): (D, H); end states ew, ev: (ndir, B, n_chunks, d, H).
        Scalar index arithmetic is int64 (large tensors; Triton's interpreter then skips its
        per-operation overflow checks).
        """
        j = tl.program_id(0).to(tl.int64)  # chunk, counted in this direction's time order
        b = tl.program_id(1).to(tl.int64) // n_cblocks
        cblock = tl.program_id(1) % n_cblocks
        r = tl.program_id(2).to(tl.int64)  # row group: coefficient rows [r d, (r+1) d)
        rev = r ^ FLIP  # 1: this row group runs backward in time
        c = cblock * CB + tl.arange(0, CB)  # (CB,) channels
        n = tl.arange(0, HB)  # (HB,) modes
        cmask = c < d
        m2 = cmask[:, None] & (n < H)[None, :]  # (CB, HB)
        coef = (r * d + c)[:, None] * H + n[None, :]
        q = tl.load(q_ptr + coef, mask=m2, other=0.0)
        qk = tl.load(qk_ptr + coef, mask=m2, other=0.0)
        if WITH_V:
            dqk = tl.load(dqk_ptr + coef, mask=m2, other=0.0)
        step = d * (1 - 2 * rev)  # memory stride of one scan step
        back = K * step  # from step t to the tap t - K leaving the window
        t0 = j * T
        off = b * L * d + (t0 + rev * (L - 1 - 2 * t0)) * d + c  # (CB,) element offsets of step t0
        w_state = tl.zeros((CB, HB), dtype=tl.float32)
        v_state = tl.zeros((CB, HB), dtype=tl.float32)
        for i in range(T):
            # masks are combined as blocks: the interpreter mistypes block & scalar masks
            tv = c * 0 + (t0 + i)  # (CB,) the step index
            live = cmask & (tv < L)  # the last chunk may be partial
            xt = tl.load(x_ptr + off, mask=live, other=0.0).to(tl.float32)
            xd = tl.load(x_ptr + off - back, mask=live & (tv >= K), other=0.0).to(tl.float32)
            if WITH_V:  # V uses W_{t-1}: update it first
                v_state = q * v_state + w_state - dqk * xd[:, None]
            w_state = q * w_state + xt[:, None] - qk * xd[:, None]
            off += step
        out = ((r * B + b) * n_chunks + j) * d * H + c[:, None] * H + n[None, :]
        tl.store(ew_ptr + out, w_state, mask=m2)
        if WITH_V:
            tl.store(ev_ptr + out, v_state, mask=m2)

    @triton.jit
    def _ema_chunk_carry(qt_ptr, dqt_ptr, ew_ptr, ev_ptr, B, d, H, n_chunks, n_cblocks,
                         WITH_V: tl.constexpr, CB: tl.constexpr, HB: tl.constexpr):
        """Pass 2, in place: end states of chunks -> the state entering each chunk, by one sequential
        sweep over the chunks: S_{j+1} = q^T S_j + E_j, V_{j+1} = q^T V_j + T q^(T-1) S_j + E^V_j."""
        b = tl.program_id(0).to(tl.int64) // n_cblocks
        cblock = tl.program_id(0) % n_cblocks
        r = tl.program_id(1).to(tl.int64)
        c = cblock * CB + tl.arange(0, CB)
        n = tl.arange(0, HB)
        m2 = (c < d)[:, None] & (n < H)[None, :]
        coef = (r * d + c)[:, None] * H + n[None, :]
        qt = tl.load(qt_ptr + coef, mask=m2, other=0.0)
        if WITH_V:
            dqt = tl.load(dqt_ptr + coef, mask=m2, other=0.0)
        ptrs = (r * B + b) * n_chunks * d * H + c[:, None] * H + n[None, :]  # chunk 0 of this row
        w_state = tl.zeros((CB, HB), dtype=tl.float32)
        v_state = tl.zeros((CB, HB), dtype=tl.float32)
        j = n_chunks * 0  # a while loop over a runtime count: triton 3.6's interpreter cannot range() it
        while j < n_chunks:
            e = tl.load(ew_ptr + ptrs, mask=m2, other=0.0)
            tl.store(ew_ptr + ptrs, w_state, mask=m2)
            if WITH_V:
                ev = tl.load(ev_ptr + ptrs, mask=m2, other=0.0)
                tl.store(ev_ptr + ptrs, v_state, mask=m2)
                v_state = qt * v_state + dqt * w_state + ev
            w_state = qt * w_state + e
            ptrs += d * H
            j += 1

    @triton.jit
    def _ema_chunk_apply(x_ptr, g_ptr, w_ptr, q_ptr, qk_ptr, dqk_ptr, ew_ptr, ev_ptr,
                         y_ptr, ga_ptr, gq_ptr,
                         B, L, d, H, K, n_chunks, n_cblocks,
                         FLIP: tl.constexpr, GRAD: tl.constexpr, ATOMIC: tl.constexpr,
                         T: tl.constexpr, CB: tl.constexpr, HB: tl.constexpr):
        """Pass 3: enter chunk j with its carried state (from pass 2), re-run it and emit.

        GRAD False: y[pos] (+)= sum_n weight W (atomic add when two directions share y).
        GRAD True: per-(direction, batch, chunk) partial sums of g W and g V into ga, gq.
        """
        j = tl.program_id(0).to(tl.int64)
        b = tl.program_id(1).to(tl.int64) // n_cblocks
        cblock = tl.program_id(1) % n_cblocks
        r = tl.program_id(2).to(tl.int64)
        rev = r ^ FLIP
        c = cblock * CB + tl.arange(0, CB)
        n = tl.arange(0, HB)
        cmask = c < d
        m2 = cmask[:, None] & (n < H)[None, :]
        coef = (r * d + c)[:, None] * H + n[None, :]
        q = tl.load(q_ptr + coef, mask=m2, other=0.0)
        qk = tl.load(qk_ptr + coef, mask=m2, other=0.0)
        weight = tl.load(w_ptr + coef, mask=m2, other=0.0)
        states = ((r * B + b) * n_chunks + j) * d * H + c[:, None] * H + n[None, :]  # this chunk's slot
        w_state = tl.load(ew_ptr + states, mask=m2, other=0.0)  # the state entering chunk j
        v_state = tl.zeros((CB, HB), dtype=tl.float32)
        if GRAD:
            dqk = tl.load(dqk_ptr + coef, mask=m2, other=0.0)
            v_state = tl.load(ev_ptr + states, mask=m2, other=0.0)
        step = d * (1 - 2 * rev)
        back = K * step
        t0 = j * T
        off = b * L * d + (t0 + rev * (L - 1 - 2 * t0)) * d + c
        acc_w = tl.zeros((CB, HB), dtype=tl.float32)
        acc_v = tl.zeros((CB, HB), dtype=tl.float32)
        for i in range(T):
            tv = c * 0 + (t0 + i)
            live = cmask & (tv < L)  # (CB,): the last chunk may be partial
            xt = tl.load(x_ptr + off, mask=live, other=0.0).to(tl.float32)
            xd = tl.load(x_ptr + off - back, mask=live & (tv >= K), other=0.0).to(tl.float32)
            if GRAD:
                v_state = q * v_state + w_state - dqk * xd[:, None]
            w_state = q * w_state + xt[:, None] - qk * xd[:, None]
            if GRAD:
                gt = tl.load(g_ptr + off, mask=live, other=0.0).to(tl.float32)
                acc_w += gt[:, None] * w_state
                acc_v += gt[:, None] * v_state
            else:
                yt = tl.sum(weight * w_state, axis=1)  # (CB,)
                if ATOMIC:
                    tl.atomic_add(y_ptr + off, yt, mask=live, sem="relaxed")
                else:
                    tl.store(y_ptr + off, yt, mask=live)
            off += step
        if GRAD:
            tl.store(ga_ptr + states, acc_w, mask=m2)
            tl.store(gq_ptr + states, acc_v, mask=m2)


def _interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter: TRITON_INTERPRET=1 was set when triton was
    imported (triton.jit then builds interpreted functions, its standard library included)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_ema_chunk_apply, InterpretedFunction)


def _check_device(x: torch.Tensor) -> None:
    asked = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if asked and not _interpreted():
        raise RuntimeError("ema_scan: TRITON_INTERPRET=1 was set after triton was imported; Triton's "
                           "interpreter needs it set before the first `import triton` of the process")
    if not x.is_cuda and not _interpreted():
        raise RuntimeError("ema_scan: CPU tensors run only under Triton's interpreter (TRITON_INTERPRET=1 "
                           "before triton is imported); use MultiHeadEMA's FFT path on the CPU")


def _powers(q: torch.Tensor, K: int, T: int):
    """q^K, K q^(K-1), q^T, T q^(T-1) for the dropped tap and the chunk carry: (D, h) fp32 each."""
    return q.pow(K), K * q.pow(K - 1), q.pow(T), T * q.pow(T - 1)


def _scan(x, g, weight, q, K: int, ndir: int, flip: int, grad: bool, chunk: int, channel_block: int):
    """Launch the three passes. Returns y (B, L, d) fp32, or (sum g W, sum g V) as (ndir*d, h) fp32."""
    B, L, d = x.shape
    H = q.shape[1]
    T = chunk
    CB = min(channel_block, triton.next_power_of_2(d))
    HB = triton.next_power_of_2(H)
    n_chunks = triton.cdiv(L, T)
    n_cblocks = triton.cdiv(d, CB)
    qk, dqk, qt, dqt = _powers(q, K, T)
    states = (ndir, B, n_chunks, d, H)
    ew = torch.empty(states, device=x.device, dtype=torch.float32)
    ev = torch.empty(states, device=x.device, dtype=torch.float32) if grad else ew
    meta = dict(T=T, CB=CB, HB=HB, num_warps=2 if CB * HB <= 256 else 4)
    if not _interpreted():
        meta["enable_fp_fusion"] = True  # fused multiply-adds, said explicitly (triton 3.9 warns otherwise)
    _ema_chunk_end_states[(n_chunks, B * n_cblocks, ndir)](
        x, q, qk, dqk, ew, ev, B, L, d, H, K, n_chunks, n_cblocks, FLIP=flip, WITH_V=grad, **meta)
    _ema_chunk_carry[(B * n_cblocks, ndir)](
        qt, dqt, ew, ev, B, d, H, n_chunks, n_cblocks, WITH_V=grad,
        **{k: v for k, v in meta.items() if k != "T"})
    if grad:
        ga = torch.empty(states, device=x.device, dtype=torch.float32)
        gq = torch.empty(states, device=x.device, dtype=torch.float32)
        y = ga  # unused by the GRAD pass
    else:
        ga = gq = ew  # unused by the output pass
        y = (torch.zeros if ndir == 2 else torch.empty)((B, L, d), device=x.device, dtype=torch.float32)
    _ema_chunk_apply[(n_chunks, B * n_cblocks, ndir)](
        x, g if grad else x, weight, q, qk, dqk, ew, ev, y, ga, gq,
        B, L, d, H, K, n_chunks, n_cblocks, FLIP=flip, GRAD=grad, ATOMIC=ndir == 2, **meta)
    if grad:
        return ga.sum((1, 2)).reshape(ndir * d, H), gq.sum((1, 2)).reshape(ndir * d, H)
    return y


class EMAScanFunction(torch.autograd.Function):
    """y = EMA convolution of x (B, L, d) by (weight, q) (D, h); see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, q, kernel_length: int, bidirectional: bool, chunk: int, channel_block: int):
        ndir = 2 if bidirectional else 1
        x = x.contiguous()
        weight, q = weight.float().contiguous(), q.float().contiguous()
        ctx.save_for_backward(x, weight, q)
        ctx.config = (kernel_length, ndir, chunk, channel_block)
        return _scan(x, None, weight, q, kernel_length, ndir, 0, False, chunk, channel_block)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, q = ctx.saved_tensors
        K, ndir, chunk, channel_block = ctx.config
        g = grad_y.float().contiguous()
        grad_x = grad_w = grad_q = None
        if ctx.needs_input_grad[0]:  # the transposed convolution: every direction reversed
            grad_x = _scan(g, None, weight, q, K, ndir, 1, False, chunk, channel_block).to(x.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            sum_gw, sum_gv = _scan(x, g, weight, q, K, ndir, 0, True, chunk, channel_block)
            grad_w, grad_q = sum_gw, weight * sum_gv
        return grad_x, grad_w, grad_q, None, None, None, None


def ema_scan(x: torch.Tensor, weight: torch.Tensor, q: torch.Tensor, kernel_length: int, bidirectional: bool,
             chunk: int = CHUNK, channel_block: int = CHANNEL_BLOCK) -> torch.Tensor:
    """EMA convolution by a chunked Triton scan: x (B, L, d) -> (B, L, d) fp32.

    weight, q: (D, h) with D = 2d if bidirectional else d (from `ema_coefficients`); kernel_length K >= 1
    taps per direction (MultiHeadEMA.kernel_length(L)). Equals `harness_models.ema.ema_conv(x.transpose(1, 2),
    kernel, bidirectional)[..., :L].transpose(1, 2)` with kernel[c, l] = sum_n weight[c,n] q[c,n]^l,
    l < K. Differentiable in x, weight and q (first order). chunk: T, a power of two; channel_block: CB.
    """
    if x.dim() != 3:
        raise ValueError(f"ema_scan: x must be (B, L, d), got shape {tuple(x.shape)}")
    B, L, d = x.shape
    rows = 2 * d if bidirectional else d
    if weight.shape != q.shape or weight.dim() != 2 or weight.shape[0] != rows:
        raise ValueError(f"ema_scan: weight and q must both be ({rows}, h) for d={d}, "
                         f"bidirectional={bidirectional}; got {tuple(weight.shape)} and {tuple(q.shape)}")
    if not isinstance(kernel_length, int) or kernel_length < 1:
        raise ValueError(f"ema_scan: kernel_length must be a positive int, got {kernel_length!r}")
    if chunk < 1 or chunk & (chunk - 1) or channel_block < 1 or channel_block & (channel_block - 1):
        raise ValueError(f"ema_scan: chunk ({chunk}) and channel_block ({channel_block}) must be powers of two")
    if triton is None:
        raise RuntimeError(triton_ema_unavailable_reason())
    _check_device(x)
    return EMAScanFunction.apply(x, weight, q, min(kernel_length, L), bidirectional, chunk, channel_block)


def multi_head_ema_conv(ema, x: torch.Tensor, padding_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Drop-in for `MultiHeadEMA.conv_fft(x, padding_mask)`: (B, L, d) -> (B, L, d) fp32, by `ema_scan`."""
    if padding_mask is not None:
        x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # pads contribute nothing
    weight, q = ema_coefficients(ema.delta, ema.alpha, ema.beta, ema.gamma, ema.scale)
    return ema_scan(x, weight, q, ema.kernel_length(x.shape[1]), ema.bidirectional, **kwargs)
