"""Mamba: selective state-space model (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", 2023, arXiv 2312.00752), as a (bidirectional) encoder backbone.

Block (the paper's Fig. 3; residual `x + mixer(RMSNorm(x))`, final RMSNorm):
in_proj d -> 2·d_inner (x, z); depthwise causal conv1d on x; SiLU; x_proj -> (Δ_low, B, C);
Δ = softplus(dt_proj(Δ_low) + bias); selective SSM h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,
y_t = C_t h_t + D x_t with A = -exp(A_log) (S4D-real init A_n = -(n+1)); y · SiLU(z); out_proj.

The scan runs on mamba-ssm's CUDA `selective_scan_fn` when that package imports and the input is on
CUDA (`scan="auto"`); everywhere else on our pure-PyTorch chunked scan (`selective_scan_chunked`); the
scans and their sequential reference live in `harness_models.scan`.
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

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.s4 import TRAIN_CONFIGS as S4_TRAIN_CONFIGS
from harness_models.scan import SCANS, scan_backend, selective_scan

PAPER = "Gu & Dao, 2023 (arXiv 2312.00752)"

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class MambaConfig:
    """Architecture (and scan settings) of a Mamba backbone. Defaults: Mamba's own block."""

    d_model: int = 256  # model width d
    n_layers: int = 4  # residual blocks
    d_state: int = 16  # N
    d_conv: int = 4  # depthwise causal conv width
    expand: float = 2  # d_inner = int(expand * d_model)
    dt_rank: int | str = "auto"  # rank of the Δ projection; auto = ceil(d_model / 16)
    dt_min: float = 1e-3  # Δ at init ~ log-uniform [dt_min, dt_max]
    dt_max: float = 1e-1
    bidirectional: bool = False  # causal by default; the LRA task configs turn it on
    dropout: float = 0.0  # on each residual branch (Mamba itself uses none)
    scan: str = "auto"  # auto | torch | sequential | mamba_ssm (runtime setting)
    chunk_size: int | None = None  # chunk of the PyTorch scan; None = about sqrt(L) (runtime setting)
    recompute_scan: bool = True  # PyTorch scan: recompute it in backward, memory O(B L E) not O(B L E N)
    dt_init_floor: float = 1e-4  # Δ at init is at least this (Mamba's floor)
    norm_eps: float = 1e-5  # eps of the RMSNorms

    def __post_init__(self):
        check_config("mamba", dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "d_state", "d_conv", "chunk_size"),
                     positive_number=("expand", "dt_min", "dt_max", "norm_eps"), probability=("dropout",),
                     flags=("bidirectional", "recompute_scan"), optional=("chunk_size",),  # None: about sqrt(L)
                     choices=dict(scan=SCANS))
        if int(self.expand * self.d_model) < 1:
            raise invalid("mamba", "expand", self.expand,
                          f"at least 1/d_model (d_inner = int(expand * {self.d_model}))")
        rank = self.dt_rank
        if rank != "auto" and not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
            raise invalid("mamba", "dt_rank", rank, "'auto' or a positive integer")
        if self.dt_min > self.dt_max:
            raise invalid("mamba", "dt_min", self.dt_min, f"at most dt_max={self.dt_max}")

    @property
    def d_inner(self) -> int:
        return int(self.expand * self.d_model)

    @property
    def rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


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

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        d_inner, d_state, dt_rank = cfg.d_inner, cfg.d_state, cfg.rank
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        log_dt = torch.rand(d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        dt = torch.exp(log_dt).clamp_min(cfg.dt_init_floor)
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

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.bidirectional = cfg.bidirectional
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=False)
        self.directions = nn.ModuleList(SelectiveSSM(cfg) for _ in range(2 if cfg.bidirectional else 1))
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)

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

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.scan, self.chunk_size = cfg.scan, cfg.chunk_size
        self.recompute_scan = cfg.recompute_scan  # PyTorch scan: recompute in backward instead of storing
        self.last_scan: str | None = None  # the backend the latest forward used
        self.norms = nn.ModuleList(nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) for _ in range(cfg.n_layers))
        self.mixers = nn.ModuleList(MambaMixer(cfg) for _ in range(cfg.n_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        for mixer in self.mixers:  # GPT-2 style: shrink the residual branch's last projection
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(cfg.n_layers)

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
TRAIN_CONFIGS = {task: dict(cfg, lr=1e-3) for task, cfg in S4_TRAIN_CONFIGS.items()}
# Registered keys: every field but the two constants of Mamba's block (left out, so the config hashes of
# stored records stay the same).
DEFAULTS = registry_defaults(MambaConfig(), exclude=("dt_init_floor", "norm_eps"))
# Tiny (parameter-matched to the other families' tiny variants, dropout 0: see models/transformer.py
# TINY): Mamba's own d_state 16 and expand 2.
TINY = dict(d_model=32, n_layers=2, d_state=16, expand=2, dropout=0.0)


@register_model("mamba", family="ssm", paper=PAPER, complexity="O(L)", defaults=DEFAULTS,
                task_configs=TASK_CONFIGS, train_configs=TRAIN_CONFIGS, tiny=TINY,
                runtime=("scan", "chunk_size", "recompute_scan"))  # how the scan runs, not what it computes
def mamba(**cfg):
    """Mamba (selective SSM), bidirectional for LRA; mamba-ssm CUDA scan when present, else PyTorch"""
    return MambaBackbone(config_from_kwargs(MambaConfig, "mamba", cfg))
