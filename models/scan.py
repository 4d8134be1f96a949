"""Selective scans of Mamba (Gu & Dao, 2023, arXiv 2312.00752), each beside its reference:
mamba-ssm's fused CUDA kernel when it imports (`mamba_ssm_scan`), our pure-PyTorch chunked scan
(`selective_scan_chunked`) everywhere else, and the sequential loop that defines them
(`selective_scan_sequential`). `scan_backend` says which one runs; `selective_scan` dispatches.

h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t,  y_t = C_t·h_t + D u_t   (per channel e, state size N)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from harness.errors import UserError

SCANS = ("auto", "torch", "sequential", "mamba_ssm")  # the `scan` setting: auto picks mamba_ssm on CUDA
_UNPROBED = object()
_mamba_ssm_fn = _UNPROBED


def mamba_ssm_scan():
    """mamba-ssm's `selective_scan_fn` when it imports and CUDA is available, else None. Never raises.

    `import mamba_ssm` fails without its compiled extension (baselines.md §3.3), and a broken build
    can fail with other errors, so everything is caught. The result is cached.
    """
    global _mamba_ssm_fn
    if _mamba_ssm_fn is _UNPROBED:
        fn = None
        if torch.cuda.is_available():
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fn
            except Exception:
                fn = None
        _mamba_ssm_fn = fn
    return _mamba_ssm_fn


def scan_backend(device: torch.device | str, scan: str = "auto") -> str:
    """Which selective scan runs on `device`: "mamba_ssm", "torch-chunked" or "torch-sequential"."""
    device = torch.device(device)
    if scan == "sequential":
        return "torch-sequential"
    if scan in ("auto", "mamba_ssm") and device.type == "cuda" and mamba_ssm_scan() is not None:
        return "mamba_ssm"
    if scan == "mamba_ssm":
        raise UserError("scan='mamba_ssm' needs the mamba-ssm package with its CUDA extension and a CUDA "
                        "input; install it (pip install mamba-ssm --no-build-isolation) or use scan='auto'",
                        exit_code=1)
    return "torch-chunked"


# ---------------------------------------------------------------------------------------------
# Selective scans (pure PyTorch, float32). u, delta: (B, L, E); A: (E, N); Bm, Cm: (B, L, N);
# D: (E,) -> y: (B, L, E), with h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t and y_t = C_t·h_t + D u_t.
# ---------------------------------------------------------------------------------------------

def selective_scan_sequential(u, delta, A, Bm, Cm, D):
    """Reference: one step per position."""
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (B, E, N)
    ys = []
    for d_t, u_t, b_t, c_t in zip(delta.unbind(1), u.unbind(1), Bm.unbind(1), Cm.unbind(1)):
        h = torch.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * b_t[:, None, :]
        ys.append((h * c_t[:, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + u * D


def auto_chunk(L: int) -> int:
    """Chunk length near sqrt(L) (a power of two in [16, 256]): balances the two loops below."""
    return int(min(256, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(L)))))))


def selective_scan_chunked(u, delta, A, Bm, Cm, D, chunk: int | None = None):
    """Two-level scan: L/T chunks of T positions, exact and stable (only decays <= 1 are multiplied).

    1. All chunks at once, a loop over the T positions scans each chunk from a zero state.
    2. A loop over the L/T chunks carries the state across chunk boundaries.
    3. The carried state reaches position t of a chunk through the cumulative log-decay
       exp(sum_{s<=t} Δ_s A) (<= 1); its output C_t·(decay_t ⊙ state) adds to the local outputs.
    T + L/T Python steps instead of L; memory O(B·L·E·N) as for any unfused scan.
    """
    Bsz, L, E = u.shape
    N = A.shape[1]
    T = chunk or auto_chunk(L)
    pad = (-L) % T
    if pad:  # Δ = 0 and zero input past the end: the state is carried unchanged, outputs dropped
        u, delta, Bm, Cm = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta, Bm, Cm))
    n_chunks = (L + pad) // T
    log_a = (delta[..., None] * A).view(Bsz, n_chunks, T, E, N)  # log-decays, <= 0
    bx = ((delta * u)[..., None] * Bm[:, :, None, :]).view(Bsz, n_chunks, T, E, N)  # Δ u B
    Cc = Cm.view(Bsz, n_chunks, T, N)
    # unbind (not repeated indexing): its backward is one stack, not a full-size zeros tensor per step
    a_steps = torch.exp(log_a).movedim(2, 0).contiguous().unbind(0)  # T x (B, n_chunks, E, N)
    bx_steps = bx.movedim(2, 0).contiguous().unbind(0)
    c_steps = Cc.movedim(2, 0).contiguous().unbind(0)  # T x (B, n_chunks, N)
    h = u.new_zeros(Bsz, n_chunks, E, N)
    y_local = []
    for a_t, bx_t, c_t in zip(a_steps, bx_steps, c_steps):  # 1. within every chunk, from a zero state
        h = a_t * h + bx_t
        y_local.append((h * c_t[:, :, None, :]).sum(-1))  # C_t·h_t: (B, n_chunks, E)
    y_local = torch.stack(y_local, dim=2)  # (B, n_chunks, T, E)
    decay = torch.exp(torch.cumsum(log_a, dim=2))  # (B, n_chunks, T, E, N): decay since chunk start
    chunk_decay = decay[:, :, -1].unbind(1)  # n_chunks x (B, E, N)
    chunk_end = h.unbind(1)  # the local state at each chunk's last position, n_chunks x (B, E, N)
    carry = u.new_zeros(Bsz, E, N)
    entering = []
    for decay_c, end_c in zip(chunk_decay, chunk_end):  # 2. across chunks
        entering.append(carry)  # the state entering chunk c
        carry = decay_c * carry + end_c
    entering = torch.stack(entering, dim=1)  # (B, n_chunks, E, N)
    y_carry = torch.einsum("bctdn,bctn->bctd", decay * entering[:, :, None], Cc)  # 3.
    y = (y_local + y_carry).reshape(Bsz, n_chunks * T, E)[:, :L]
    return y + u[:, :L] * D


def selective_scan(u, delta_raw, A, Bm, Cm, D, delta_bias, backend: str, chunk: int | None = None,
                   recompute: bool = False):
    """Dispatch. delta_raw is Δ before `softplus(· + delta_bias)`; returns (B, L, E) in u's dtype.

    `recompute` (PyTorch scans, when gradients are needed): store only the scan's inputs and redo
    it in the backward pass. The unfused scan otherwise keeps several fp32 (B, L, E, N) tensors per
    direction and layer (3.4 GB each at B=25, L=4096, E=512, N=16), which exhausts an 80 GB GPU.
    """
    if backend == "mamba_ssm":
        fn = mamba_ssm_scan()
        dtype = u.dtype
        y = fn(u.transpose(1, 2).contiguous(), delta_raw.to(dtype).transpose(1, 2).contiguous(),
               A.float().contiguous(), Bm.to(dtype).transpose(1, 2).contiguous(),
               Cm.to(dtype).transpose(1, 2).contiguous(), D.float(), z=None,
               delta_bias=delta_bias.float(), delta_softplus=True)  # (B, E, L)
        return y.transpose(1, 2)
    with torch.autocast(device_type=u.device.type, enabled=False):  # the scan state stays fp32
        uf = u.float()
        delta = F.softplus(delta_raw.float() + delta_bias.float())
        args = (uf, delta, A.float(), Bm.float(), Cm.float(), D.float())
        if backend == "torch-sequential":
            y = selective_scan_sequential(*args)
        elif recompute and torch.is_grad_enabled() and any(t.requires_grad for t in args):
            y = torch.utils.checkpoint.checkpoint(selective_scan_chunked, *args, chunk=chunk, use_reentrant=False)
        else:
            y = selective_scan_chunked(*args, chunk=chunk)
    return y.to(u.dtype)
