"""Mamba: selective state-space model (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", 2023, arXiv 2312.00752), as a (bidirectional) encoder backbone.

Block (the paper's Fig. 3; residual `x + mixer(RMSNorm(x))`, final RMSNorm):
in_proj d -> 2·d_inner (x, z); depthwise causal conv1d on x; SiLU; x_proj -> (Δ_low, B, C);
Δ = softplus(dt_proj(Δ_low) + bias); selective SSM h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,
y_t = C_t h_t + D x_t with A = -exp(A_log) (S4D-real init A_n = -(n+1)); y · SiLU(z); out_proj.

The scan runs on mamba-ssm's CUDA `selective_scan_fn` when that package imports and the input is on
CUDA (`scan="auto"`); everywhere else on our pure-PyTorch chunked scan (`selective_scan_chunked`).
`scan_backend(device)` and the model's `last_scan` say which one ran.

Bidirectional option (`bidirectional=True`, on in the LRA task configs): one in_proj, gate and
out_proj are shared, and each direction has its own conv1d, x_proj, dt_proj, A_log and D (the
layout of Vision Mamba's bidirectional block, Zhu et al., ICML 2024). The backward direction runs
on the time-reversed sequence; the two scan outputs are **summed** (not averaged) before the
SiLU(z) gate. This keeps a layer at about the size of a causal one (6·d² + small), so depth sets
the parameter budget. Padding: the conv input and the scan input are
zeroed at pads, so a scan that meets pads first (the reversed direction of a right-padded sequence)
keeps a zero state until the first real position, and Δ, B, C computed from the zeroed input do not
depend on pad content; the conv's left zero-padding likewise sees only zeros.
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import UserError
from harness.registry import register_model
from harness.validate import check_config, invalid

PAPER = "Gu & Dao, 2023 (arXiv 2312.00752)"
SCANS = ("auto", "torch", "sequential", "mamba_ssm")

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


# ---------------------------------------------------------------------------------------------
# Mamba block and backbone
# ---------------------------------------------------------------------------------------------

def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (B, L, E), weight (E, 1, K), bias (E,) -> (B, L, E): y[t] = sum_k w[k] x[t-K+1+k] + b.

    The same function as the padded nn.Conv1d truncated to L, written as K shifted products: on CPU
    a depthwise Conv1d in bf16 falls back to a very slow kernel, this form does not.
    """
    K, L = weight.shape[-1], x.shape[1]
    if x.device.type != "cpu":
        y = F.conv1d(x.transpose(1, 2), weight, bias, padding=K - 1, groups=x.shape[2])  # (B, E, L+K-1)
        return y[..., :L].transpose(1, 2)
    xp = F.pad(x, (0, 0, K - 1, 0))  # zeros before the first position
    w = weight[:, 0, :].to(x.dtype)  # (E, K)
    y = bias.to(x.dtype) + xp[:, :L] * w[:, 0]
    for k in range(1, K):
        y = y + xp[:, k:k + L] * w[:, k]
    return y


class SelectiveSSM(nn.Module):
    """One direction: depthwise causal conv1d, SiLU, x_proj -> (Δ, B, C), dt_proj, selective scan."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, dt_min: float,
                 dt_max: float, dt_init_floor: float):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp_min(dt_init_floor)
        with torch.no_grad():  # softplus(bias) = Δ at init, log-uniform in [dt_min, dt_max]
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # S4D-real: A_n = -(n+1)
        self.A_log = nn.Parameter(torch.log(A))  # (E, N)
        self.D = nn.Parameter(torch.ones(d_inner))
        for p in (self.A_log, self.D):  # Mamba applies no weight decay to A_log and D
            p._optim = {"weight_decay": 0.0}

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, backend: str, chunk: int | None,
                recompute: bool = False):
        if keep is not None:
            x = x * keep  # the conv never sees pad content
        x = causal_depthwise_conv(x, self.conv1d.weight, self.conv1d.bias)  # (B, L, E)
        x = F.silu(x)
        if keep is not None:
            x = x * keep  # zero scan input at pads: Δ, B, C there come from zeros and the state stays put
        dt_low, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta_raw = F.linear(dt_low, self.dt_proj.weight)  # (B, L, E); bias is added inside softplus
        A = -torch.exp(self.A_log.float())  # (E, N)
        return selective_scan(x, delta_raw, A, Bm, Cm, self.D, self.dt_proj.bias, backend, chunk, recompute)


class MambaMixer(nn.Module):
    """(B, L, d) -> (B, L, d). With `bidirectional`, a second SelectiveSSM reads the reversed sequence."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, bidirectional: bool = False):
        super().__init__()
        d_inner = int(expand * d_model)
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional = bidirectional
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.directions = nn.ModuleList(
            SelectiveSSM(d_inner, d_state, d_conv, dt_rank, dt_min, dt_max, dt_init_floor)
            for _ in range(2 if bidirectional else 1)
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x, padding_mask, backend: str, chunk: int | None = None, recompute: bool = False):
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        keep = None if padding_mask is None else (~padding_mask)[..., None].to(xi.dtype)
        y = self.directions[0](xi, keep, backend, chunk, recompute)
        if self.bidirectional:
            back = self.directions[1](xi.flip(1), None if keep is None else keep.flip(1), backend, chunk, recompute)
            y = y + back.flip(1)  # the two directions are summed
        return self.out_proj(y * F.silu(z))


class MambaBackbone(nn.Module):
    """(B, L, d) + padding mask (True = pad) -> (B, L, d): residual blocks x + Mixer(RMSNorm(x))."""

    def __init__(self, d_model: int = 256, n_layers: int = 4, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2, dt_rank: int | str = "auto", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, bidirectional: bool = False, dropout: float = 0.0,
                 scan: str = "auto", chunk_size: int | None = None, norm_eps: float = 1e-5,
                 recompute_scan: bool = True):
        super().__init__()
        config = dict(d_model=d_model, n_layers=n_layers, d_state=d_state, d_conv=d_conv, expand=expand,
                      dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max, bidirectional=bidirectional, dropout=dropout,
                      scan=scan, chunk_size=chunk_size, norm_eps=norm_eps, recompute_scan=recompute_scan)
        check_config("mamba", config, positive=("d_model", "n_layers", "d_state", "d_conv", "chunk_size"),
                     positive_number=("expand", "dt_min", "dt_max", "norm_eps"), probability=("dropout",),
                     flags=("bidirectional", "recompute_scan"), optional=("chunk_size",),  # None: about sqrt(L)
                     choices=dict(scan=SCANS))
        if int(expand * d_model) < 1:
            raise invalid("mamba", "expand", expand, f"at least 1/d_model (d_inner = int(expand * {d_model}))")
        if dt_rank != "auto" and not (isinstance(dt_rank, int) and not isinstance(dt_rank, bool) and dt_rank >= 1):
            raise invalid("mamba", "dt_rank", dt_rank, "'auto' or a positive integer")
        if dt_min > dt_max:
            raise invalid("mamba", "dt_min", dt_min, f"at most dt_max={dt_max}")
        self.scan, self.chunk_size = scan, chunk_size
        self.recompute_scan = recompute_scan  # PyTorch scan: recompute in backward instead of storing
        self.last_scan: str | None = None  # the backend the latest forward used
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=norm_eps) for _ in range(n_layers))
        self.mixers = nn.ModuleList(
            MambaMixer(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max,
                       bidirectional=bidirectional)
            for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.final_norm = nn.RMSNorm(d_model, eps=norm_eps)
        for mixer in self.mixers:  # GPT-2 style: shrink the residual branch's last projection
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(n_layers)

    def runtime_info(self) -> dict:
        """Recorded with every speed cell: which scan actually ran (mamba-ssm kernel or PyTorch)."""
        return {"scan": self.last_scan}

    def scan_backend(self, device) -> str:
        return scan_backend(device, self.scan)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        backend = self.scan_backend(x.device)
        self.last_scan = backend
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + self.dropout(mixer(norm(x), padding_mask, backend, self.chunk_size, self.recompute_scan))
        return self.final_norm(x)


# ---------------------------------------------------------------------------------------------
# Configurations and registration
# ---------------------------------------------------------------------------------------------

# Per task: the LRA Transformer's d_model, bidirectional, and depth (plus expand/d_state for the
# <10k-parameter image tasks) chosen so the backbone is within 10% of the Transformer's
# (models/transformer.py TASK_CONFIGS). No Mamba LRA configuration was published by the authors.
TASK_CONFIGS = {
    "listops": dict(d_model=512, n_layers=5, bidirectional=True),
    "text": dict(d_model=256, n_layers=7, bidirectional=True),
    "retrieval": dict(d_model=128, n_layers=6, bidirectional=True),
    "image": dict(d_model=32, n_layers=1, expand=1, d_state=24, bidirectional=True),
    "pathfinder": dict(d_model=32, n_layers=1, expand=1, d_state=16, bidirectional=True),
    "pathx": dict(d_model=32, n_layers=1, expand=1, d_state=16, bidirectional=True),
}
# No published Mamba LRA recipe: S4's LRA schedule (batch size, steps, ~10% warmup, weight decay
# 0.05, see models/s4.py) with a learning rate of 1e-3.
TRAIN_CONFIGS = {
    "listops": dict(lr=1e-3, weight_decay=0.05, batch_size=32, warmup_steps=12000, total_steps=120000),
    "text": dict(lr=1e-3, weight_decay=0.05, batch_size=16, warmup_steps=5000, total_steps=50000),
    "retrieval": dict(lr=1e-3, weight_decay=0.05, batch_size=64, warmup_steps=4600, total_steps=45960),
    "image": dict(lr=1e-3, weight_decay=0.05, batch_size=50, warmup_steps=18000, total_steps=180000),
    "pathfinder": dict(lr=1e-3, weight_decay=0.05, batch_size=64, warmup_steps=50000, total_steps=500000),
    "pathx": dict(lr=1e-3, weight_decay=0.05, batch_size=16, warmup_steps=50000, total_steps=500000),
}
DEFAULTS = dict(
    d_model=256,
    n_layers=4,
    d_state=16,  # N
    d_conv=4,  # depthwise causal conv width
    expand=2,  # d_inner = expand * d_model
    dt_rank="auto",  # ceil(d_model / 16)
    dt_min=1e-3,  # Δ at init ~ log-uniform [dt_min, dt_max]
    dt_max=1e-1,
    bidirectional=False,  # causal by default; the LRA task configs turn it on
    dropout=0.0,  # on each residual branch (Mamba itself uses none)
    scan="auto",  # auto | torch | sequential | mamba_ssm
    chunk_size=None,  # chunk of the PyTorch scan; None = about sqrt(L)
    recompute_scan=True,  # PyTorch scan: recompute it in backward (memory O(B L E), not O(B L E N))
)
# Tiny (parameter-matched to the other families' tiny variants, dropout 0: see models/transformer.py
# TINY): Mamba's own d_state 16 and expand 2.
TINY = dict(d_model=32, n_layers=2, d_state=16, expand=2, dropout=0.0)


@register_model("mamba", family="ssm", paper=PAPER, complexity="O(L)", defaults=DEFAULTS,
                task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS, tiny=TINY,
                runtime=("scan", "chunk_size", "recompute_scan"))  # how the scan runs, not what it computes
def mamba(**cfg):
    """Mamba (selective SSM), bidirectional for LRA; mamba-ssm CUDA scan when present, else PyTorch"""
    return MambaBackbone(**cfg)
