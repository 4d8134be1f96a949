"""S4 and S4D: structured state-space sequence layers, as configured for Long Range Arena, and the
two S4 rows of MEGA's Table 2 (S4-v1, S4-v2) as named configurations.

Papers: S4 = Gu, Goel & Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
ICLR 2022 (arXiv 2111.00396); S4D = Gu, Gupta, Goel & Ré, "On the Parameterization and
Initialization of Diagonal State Space Models", NeurIPS 2022 (arXiv 2206.11893). LRA settings from
state-spaces/s4 `configs/experiment/lra/s4-*.yaml` (baselines.md §1.5). A re-implementation in pure
PyTorch (no pykeops, no CUDA extension).

Each of the H channels is an independent SSM x' = Ax + Bu, y = Cx + Du with state size N. Training
uses the convolution view: a length-L kernel K is built from (A, B, C, Δ) and y = K * u + D u with
an FFT. A is complex and stored as N/2 modes whose conjugates are implied.

- S4D (`mode="diag"`): diagonal A; inits `legs` (diagonal part of HiPPO-LegS's NPLR form), `lin`,
  `inv`; ZOH or bilinear discretisation; kernel K[l] = 2 Re sum_n C_n B̄_n Ā_n^l (Vandermonde).
- S4 (`mode="dplr"`): A = Λ − P P* (diagonal plus rank 1, HiPPO-LegS). The kernel's truncated
  generating function is evaluated at the roots of unity through the Woodbury identity and four
  Cauchy sums, then inverted with an inverse FFT. C is stored as C̃ = (I − Ā^L)ᵀ C for the kernel
  length l_kernel (`l_max`), so the truncation is folded into the parameter; a longer input
  doubles l_kernel (C̃ is rewritten in place under no_grad, as S4 does, so run one forward at the
  longest length before holding several graphs) and a shorter one truncates the kernel.
- Bidirectional (layer-level flag, §1.4): two kernels k0 (causal) and k1 (anti-causal),
  y[t] = sum_{s<=t} k0[t-s] u[s] + sum_{s>t} k1[s-t-1] u[s] (S4's convention: the backward kernel
  starts one step after t, so lag 0 is counted once).
  With `bidirectional=False` only k0 is built: the output at t depends on inputs up to t.
- Layer: FFT conv + D skip, GELU, dropout, then Linear H→2H and GLU (`final_act="glu"`) or
  Linear H→H alone (`final_act="linear"`). Backbone: n_layers of (norm, layer, dropout, residual),
  pre- or post-norm, batch or layer norm (S4's LRA choice is batch norm; here its statistics skip
  padded positions, so pads never change real outputs).
- Parameter sharing (`ssm_sharing`): "grouped" = n_ssm copies of (Λ, P, B) with Q = P;
  "v1" = one Λ for all channels, B and P per channel, and Q per channel untied from P
  (A = Λ − P Q*). Re Λ is stored as log(−Re Λ) (`real_param="exp"`) or raw (`"raw"`).
- SSM parameters (A, P, B, dt) carry `param._optim` = {"lr": ..., "weight_decay": 0.0}, which
  `harness.heads.param_groups` honours.
- Precision: kernels and FFT convolutions always run in float32/complex64, also under autocast.

`s4` and `s4d` are budget-matched to the LRA Transformer and do not list the three switches above
in their configs (their defaults, glu/grouped/exp, are today's layer, and the config hashes of
their stored records stay the same); `s4_v1` and `s4_v2` list them.

S4-v1 and S4-v2 (baselines-table2.md §5): MEGA's Table 2 compares "S4 models (both version 1
(Gu et al., 2022a) and version 2 (Gu et al., 2022b))".
- `s4_v1` = state-spaces/s4 tag v1 (cfb6a06, configs/experiment/s4-lra-*.yaml): causal kernel,
  Linear H→H output, v1 sharing, raw Re Λ, dropout tied over positions, exact per-task sizes.
- `s4_v2` = the V2.1 release (643a518, configs/experiment/s4-lra-*-new.yaml), the configs of the
  S4 numbers in the S4D paper: bidirectional, GLU, one SSM per channel (Image: 2), exact sizes.
Named differences from the code that produced the published rows:
- schedule: v1 used ReduceLROnPlateau (factor 0.2 on validation accuracy, per epoch, no warm-up),
  v2 a cosine decay after linear warm-up; the harness has linear warm-up then linear decay, so
  v1 runs with no warm-up and a linear decay over v1's epochs, v2 with v2's warm-up and steps;
- decoder: v1 Text and v1/v2 Pathfinder classified from the last position (`decoder: last`; with
  a causal kernel that is what made v1 work); the harness pools the mean of real positions;
- data: v1 cut IMDb at 2048 bytes (the harness's Text is 4096 unless `seq_len` is set) and
  appended an EOS token to ListOps;
- Δ: both versions stored log Δ and used exp; here Δ = softplus(·) (same log-uniform init,
  different gradients). v2 (V2.1) stored log(−Re Λ + 1e-3); here log(−Re Λ) without the offset;
- v1 C: v1 used the sampled C as C̃ directly (`length_correction: false`); here the sample is
  C and C̃ = (I − Ā^L)ᵀ C is computed from it (same kernel function, different init);
- batch norm statistics skip padded positions (S4's BatchNorm1d counts them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from harness.registry import register_model
from harness.validate import check_config, invalid
from harness_models.config import config_from_kwargs, registry_defaults
from harness_models.layers import SequenceNorm, make_dropout

PAPER_S4 = "Gu, Goel & Ré, ICLR 2022 (arXiv 2111.00396); LRA configs: state-spaces/s4"
PAPER_S4D = "Gu, Gupta, Goel & Ré, NeurIPS 2022 (arXiv 2206.11893); LRA configs: state-spaces/s4"

# Largest complex (…, N, L) block materialised at once; beyond it kernels are built in chunks that are
# recomputed in the backward pass (activation checkpointing), so memory stays bounded at long L.
MAX_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# HiPPO-LegS and its normal-plus-low-rank form (float64)
# ---------------------------------------------------------------------------------------------

def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS transition (A, B) in float64: A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k)."""
    r = torch.sqrt(2.0 * torch.arange(N, dtype=torch.float64) + 1.0)  # (N,)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(torch.arange(N, dtype=torch.float64) + 1.0)
    return A, r.clone()


def nplr_legs(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HiPPO-LegS as A = V (Λ − p p*) V*, keeping the N/2 modes with negative imaginary part.

    Returns complex128 (Λ, p, b, V) with shapes (N/2,), (N/2,), (N/2,), (N, N/2). The full system is
    recovered from the kept half and its conjugate: V_full = [V, conj V], Λ_full = [Λ, conj Λ].
    """
    return tuple(t.clone() for t in _nplr_legs_cached(N))


@functools.lru_cache(maxsize=8)
def _nplr_legs_cached(N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if N % 2:
        raise ValueError(f"d_state must be even (modes come in conjugate pairs), got {N}")
    A, B = hippo_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)  # rank-1 correction
    S = A + P[:, None] * P[None, :]  # = -1/2 I + skew-symmetric: a normal matrix
    skew = S + 0.5 * torch.eye(N, dtype=torch.float64)
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # Hermitian; eigenvalues of S: -1/2 + i w
    # Eigenvalues come in pairs ±w (the conjugate of an eigenvector is one for -w); eigh sorts them
    # ascending, so the first N/2 are the negative half.
    V = V[:, : N // 2]  # (N, N/2)
    Lambda = -0.5 + 1j * w[: N // 2].to(torch.complex128)
    p = V.conj().T @ P.to(torch.complex128)
    b = V.conj().T @ B.to(torch.complex128)
    return Lambda, p, b, V


def diag_init(init: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D initialisations: (Λ, B) as complex128 of shape (N/2,)."""
    n = torch.arange(N // 2, dtype=torch.float64)
    if init == "legs":  # diagonal part of the NPLR form, B from HiPPO
        Lambda, _, b, _ = nplr_legs(N)
        return Lambda, b
    if init == "lin":
        Lambda = -0.5 + 1j * math.pi * n
    elif init == "inv":
        Lambda = -0.5 + 1j * (N / math.pi) * (N / (2 * n + 1) - 1)
    else:
        raise ValueError(f"init must be legs, lin or inv, got {init!r}")
    return Lambda.to(torch.complex128), torch.ones(N // 2, dtype=torch.complex128)


def _conj_full(v: torch.Tensor) -> torch.Tensor:
    """(..., N/2) kept modes -> (..., N) with their conjugates appended."""
    return torch.cat([v, v.conj()], dim=-1)


def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _set_optim(param: nn.Parameter, lr: float | None) -> nn.Parameter:
    """S4's hint: no weight decay, and a learning rate of its own unless lr is None (global lr)."""
    param._optim = {"weight_decay": 0.0} if lr is None else {"lr": lr, "weight_decay": 0.0}
    return param


# ---------------------------------------------------------------------------------------------
# SSM kernels: forward(L) -> (channels, H, L) float32
# ---------------------------------------------------------------------------------------------

class _SSMKernelBase(nn.Module):
    """Shared pieces: Δ (per channel, softplus-parameterised), Re A, Im A, B, C.

    Sharing of (Λ, B) over the H channels (`ssm_sharing`):
    - `sharing="grouped"` (S4 V2 onwards): n_ssm independent copies of (Λ, B), copy h mod n_ssm
      serving channel h (n_ssm = H: one per channel);
    - `sharing="v1"` (S4 tag v1): one Λ for all channels and one B per channel (n_ssm must be 1).
    Re Λ is stored as log(−Re Λ) (`real_param="exp"`, so it stays negative) or as itself
    (`real_param="raw"`, S4 v1: unconstrained).
    """

    def __init__(self, cfg: S4Config, channels: int, Lambda: torch.Tensor, B: torch.Tensor):
        super().__init__()
        H, N = cfg.d_model, cfg.d_state
        n_ssm = H if cfg.n_ssm is None else cfg.n_ssm
        self.H, self.N, self.channels, self.n_ssm = H, N, channels, n_ssm
        self.sharing, self.real_param = cfg.ssm_sharing, cfg.real_param
        n_b = n_ssm if self.sharing == "grouped" else H  # copies of B (and P): v1 has one per channel
        log_dt = torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        self.dt = _set_optim(nn.Parameter(_inv_softplus(torch.exp(log_dt))), cfg.lr_dt)  # (H,) softplus^-1(Δ)
        Lambda = Lambda.to(torch.complex64).expand(n_ssm, -1)  # (n_ssm, N/2), shared by H/n_ssm channels
        re = torch.log(-Lambda.real) if self.real_param == "exp" else Lambda.real
        self.A_real = _set_optim(nn.Parameter(re.clone()), cfg.lr_A)  # (n_ssm, N/2): log(-Re A) or Re A
        self.A_imag = _set_optim(nn.Parameter(Lambda.imag.clone()), cfg.lr_A)
        B = B.to(torch.complex64).expand(n_b, -1)
        self.B = _set_optim(nn.Parameter(torch.view_as_real(B).clone()), cfg.lr_B)  # (n_b, N/2, 2)
        C = torch.randn(channels, H, N // 2, dtype=torch.complex64)  # complex normal, variance 1
        self.C = nn.Parameter(torch.view_as_real(C).clone())  # (channels, H, N/2, 2)

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat(self.H // t.shape[0], 1)  # (copies, N/2) -> (H, N/2); copies = 1, n_ssm or H

    def ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Current (Δ (H,), Λ (H, N/2), B (H, N/2), C (channels, H, N/2)) in float32/complex64."""
        dt = F.softplus(self.dt.float())
        re = -torch.exp(self.A_real.float()) if self.real_param == "exp" else self.A_real.float()
        Lambda = self._per_channel(torch.complex(re, self.A_imag.float()))
        B = self._per_channel(torch.view_as_complex(self.B.float().contiguous()))
        C = torch.view_as_complex(self.C.float().contiguous())
        return dt, Lambda, B, C


def _vandermonde_block(coef: torch.Tensor, log_base: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """2 Re sum_n coef[c,h,n] exp(log_base[h,n] * l) for l in [start, stop): (C, H, stop-start)."""
    pos = torch.arange(start, stop, device=coef.device, dtype=torch.float32)
    powers = torch.exp(log_base[..., None] * pos)  # (H, N/2, l) complex
    return 2 * torch.einsum("chn,hnl->chl", coef, powers).real


class DiagKernel(_SSMKernelBase):
    """S4D kernel: diagonal A, ZOH or bilinear discretisation, Vandermonde evaluation."""

    def __init__(self, cfg: S4Config, channels: int = 1):
        Lambda, B = diag_init(cfg.init, cfg.d_state)
        B = B.real + 1j * B.imag.clamp(-2.0, 2.0)  # S4's optional stabilising clip of Im B
        super().__init__(cfg, channels, Lambda, B)
        self.disc = cfg.disc

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log Ā (H, N/2), B̄ (H, N/2), C (channels, H, N/2)) for the current parameters."""
        dt, Lambda, B, C = self.ssm()
        dtA = dt[:, None] * Lambda  # (H, N/2)
        if self.disc == "zoh":
            log_Abar = dtA
            Bbar = (torch.exp(dtA) - 1) / Lambda * B
        else:
            log_Abar = torch.log((1 + dtA / 2) / (1 - dtA / 2))
            Bbar = dt[:, None] * B / (1 - dtA / 2)
        return log_Abar, Bbar, C

    def forward(self, L: int) -> torch.Tensor:
        log_Abar, Bbar, C = self.discrete()
        coef = C * Bbar  # (channels, H, N/2)
        step = max(1, MAX_BLOCK_ELEMENTS // max(1, self.H * self.N // 2))  # positions per block
        if step >= L:
            return _vandermonde_block(coef, log_Abar, 0, L)
        blocks = []
        for start in range(0, L, step):  # chunked over L; recomputed in backward to bound memory
            stop = min(L, start + step)
            if torch.is_grad_enabled() and coef.requires_grad:
                blocks.append(checkpoint(_vandermonde_block, coef, log_Abar, start, stop, use_reentrant=False))
            else:
                blocks.append(_vandermonde_block(coef, log_Abar, start, stop))
        return torch.cat(blocks, dim=-1)


def _woodbury_block(omega: torch.Tensor, dt: torch.Tensor, lam: torch.Tensor, b: torch.Tensor,
                    p: torch.Tensor, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Truncated generating function K̂(ω) of a bilinear DPLR SSM at frequencies ω: (C, H, F).

    K̂(ω) = c̃ᵀ (I − Āω)⁻¹ B̄ = Δ c̃ᵀ [a I − b A]⁻¹ B with a = 1 − ω, b = Δ(1 + ω)/2 and A = Λ − p q*
    (q = p unless the v1 sharing unties them). Woodbury on the rank-1 term turns it into Cauchy sums
    r(u, v) = sum_n u_n v_n / (a − b λ_n) (= b⁻¹ sum_n u_n v_n / (z − λ_n) at z = a/b, the usual
    Cauchy form; written with a and b it has no pole at ω = −1). Inputs are full-mode (conjugates
    appended): lam, b, p, q (H, N), c (C, H, N).
    """
    a = 1 - omega  # (F,)
    bw = dt[:, None] * (1 + omega) / 2  # (H, F)
    inv = 1.0 / (a[None, None, :] - bw[:, None, :] * lam[:, :, None])  # (H, N, F) Cauchy matrix
    r_cb = torch.einsum("chn,hnf->chf", c * b, inv)
    r_cp = torch.einsum("chn,hnf->chf", c * p, inv)
    r_qb = torch.einsum("hn,hnf->hf", q.conj() * b, inv)
    r_qp = torch.einsum("hn,hnf->hf", q.conj() * p, inv)
    return dt[:, None] * (r_cb - bw * r_cp * r_qb / (1 + bw * r_qp))


class DPLRKernel(_SSMKernelBase):
    """S4 kernel: A = Λ − P Q* (HiPPO-LegS NPLR, rank 1), bilinear discretisation, C stored as C̃.

    `sharing="grouped"`: Q = P, both in the n_ssm copies. `sharing="v1"` (S4 tag v1): one Λ for all
    channels, P and B per channel, and Q a parameter of its own per channel (initialised to P, then
    trained apart from it); like v1, which kept q beside C, Q has no optimiser hint (global lr and
    weight decay), and P takes B's learning rate (v1 stacked P with B).
    """

    def __init__(self, cfg: S4Config, channels: int = 1):
        Lambda, p, b, _ = nplr_legs(cfg.d_state)  # init is legs (S4Config checks it)
        b = b.real + 1j * b.imag.clamp(-2.0, 2.0)
        super().__init__(cfg, channels, Lambda, b)
        P = p.to(torch.complex64).expand(self.B.shape[0], -1)  # P has B's layout: n_ssm copies, or H (v1)
        self.P = _set_optim(nn.Parameter(torch.view_as_real(P).clone()),
                            cfg.lr_A if self.sharing == "grouped" else cfg.lr_B)  # (n_ssm or H, N/2, 2)
        if self.sharing == "v1":
            Q = p.to(torch.complex64).expand(self.H, -1)
            self.Q = nn.Parameter(torch.view_as_real(Q).clone())  # (H, N/2, 2), untied from P
        else:
            self.register_parameter("Q", None)  # tied: Q = P
        with torch.no_grad():  # the sampled C becomes C̃ for length l_max
            self.C.copy_(torch.view_as_real(self.ctilde_from_c(torch.view_as_complex(self.C), cfg.l_max)))
        self.l_kernel = int(cfg.l_max)  # the length C̃ refers to (a Python int: no device sync per call)

    def get_extra_state(self) -> dict:  # l_kernel travels with C̃ in the state dict
        return {"l_kernel": self.l_kernel}

    def set_extra_state(self, state: dict) -> None:
        self.l_kernel = int(state["l_kernel"])

    def full_modes(self) -> tuple[torch.Tensor, ...]:
        """(Δ (H,), Λ, B, P, Q (H, N), C̃ (channels, H, N)): every vector with its conjugate half appended."""
        dt, Lambda, B, C = self.ssm()
        P = self._per_channel(torch.view_as_complex(self.P.float().contiguous()))
        Q = P if self.Q is None else torch.view_as_complex(self.Q.float().contiguous())  # (H, N/2)
        return dt, _conj_full(Lambda), _conj_full(B), _conj_full(P), _conj_full(Q), _conj_full(C)

    @torch.no_grad()
    def dense_power(self, L: int) -> torch.Tensor:
        """Ā^L of the full N-dimensional system, (H, N, N) complex128 (setup and doubling only)."""
        dt, lam, _, p, q, _ = (t.to(torch.complex128) for t in self.full_modes())
        N = lam.shape[-1]
        eye = torch.eye(N, dtype=torch.complex128, device=lam.device)
        h = dt[:, None] / 2  # (H, 1)
        A = torch.diag_embed(lam) - p[:, :, None] * q.conj()[:, None, :]  # (H, N, N) = Λ − p q*
        # Bilinear Ā = (I − hA)⁻¹ (I + hA); I − hA = D + h p q* with D diagonal, inverted by Woodbury.
        d_inv = 1.0 / (1 - h * lam)  # (H, N)
        u = d_inv * p  # D⁻¹ p
        left_inv = torch.diag_embed(d_inv) - (h / (1 + h * (q.conj() * u).sum(-1, keepdim=True)))[..., None] \
            * u[:, :, None] * (q.conj() * d_inv)[:, None, :]
        Abar = left_inv @ (eye + h[..., None] * A)
        result, base, k = None, Abar, L
        while k:  # binary exponentiation: about 2 log2(L) dense products
            if k & 1:
                result = base if result is None else result @ base
            k >>= 1
            if k:
                base = base @ base
        return result

    @torch.no_grad()
    def ctilde_from_c(self, C: torch.Tensor, L: int) -> torch.Tensor:
        """C (channels, H, N/2) -> C̃ = (I − Ā^L)ᵀ C for kernel length L."""
        power = self.dense_power(L)  # (H, N, N)
        c = _conj_full(C.to(torch.complex128))
        c_tilde = c - torch.einsum("chn,hnm->chm", c, power)
        return c_tilde[..., : self.N // 2].to(torch.complex64)

    @torch.no_grad()
    def double_length(self) -> None:
        """C̃ for 2L from C̃ for L: (I − Ā^{2L}) = (I − Ā^L)(I + Ā^L), so C̃₂ᵀ = C̃ᵀ (I + Ā^L)."""
        L = self.l_kernel
        power = self.dense_power(L)
        c = _conj_full(torch.view_as_complex(self.C.float().contiguous()).to(torch.complex128))
        c2 = c + torch.einsum("chn,hnm->chm", c, power)
        self.C.copy_(torch.view_as_real(c2[..., : self.N // 2].to(torch.complex64)))
        self.l_kernel = 2 * L

    def forward(self, L: int) -> torch.Tensor:
        while self.l_kernel < L:  # a longer input than C̃ was set up for (S4: double the length)
            self.double_length()
        Lk = self.l_kernel
        dt, lam, b, p, q, c = self.full_modes()
        k = torch.arange(Lk // 2 + 1, device=lam.device, dtype=torch.float32)
        omega = torch.polar(torch.ones_like(k), -2 * math.pi * k / Lk)  # rfft frequencies
        step = max(1, MAX_BLOCK_ELEMENTS // max(1, self.H * self.N))  # frequencies per block
        if step >= omega.shape[0]:
            khat = _woodbury_block(omega, dt, lam, b, p, q, c)
        else:  # chunked over frequencies; recomputed in backward to bound memory
            blocks = []
            for start in range(0, omega.shape[0], step):
                w = omega[start:start + step]
                if torch.is_grad_enabled() and c.requires_grad:
                    blocks.append(checkpoint(_woodbury_block, w, dt, lam, b, p, q, c, use_reentrant=False))
                else:
                    blocks.append(_woodbury_block(w, dt, lam, b, p, q, c))
            khat = torch.cat(blocks, dim=-1)
        return torch.fft.irfft(khat, n=Lk)[..., :L]  # (channels, H, L); truncation is exact


# ---------------------------------------------------------------------------------------------
# FFT convolution
# ---------------------------------------------------------------------------------------------

def fft_conv(u: torch.Tensor, k: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """u (B, H, L), k (channels, H, L) -> (B, H, L).

    Causal: y[t] = sum_{s<=t} k0[t-s] u[s]. Bidirectional (channels = 2) adds the anti-causal
    sum_{s>t} k1[s-t-1] u[s]: the two-sided kernel [k0, flip(k1)] of length 2L, one FFT of size 2L.
    """
    L = u.shape[-1]
    if bidirectional:
        kernel = F.pad(k[0], (0, L)) + F.pad(k[1].flip(-1), (L, 0))  # (H, 2L)
    else:
        kernel = k[0]
    n = 2 * L  # linear (not circular) convolution for the first L outputs
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(kernel, n=n), n=n)
    return y[..., :L]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

S4_NORMS = {"batch": "masked_batchnorm", "layer": "layernorm"}  # S4's names -> harness_models.layers kinds


@dataclass
class S4Config:
    """Architecture of an S4 / S4D backbone. Defaults: the S4 LRA layer (baselines.md §1.5)."""

    d_model: int = 256  # channels H
    n_layers: int = 6  # S4 LRA depth
    d_state: int = 64  # N (N/2 complex modes are stored)
    init: str = "legs"  # HiPPO-LegS (S4D: its diagonal part) | lin | inv (S4D only)
    disc: str = "zoh"  # S4D discretisation: zoh | bilinear (the DPLR kernel is bilinear by construction)
    bidirectional: bool = True  # layer-level two-sided kernel, as in the LRA configs
    n_ssm: int | None = 1  # independent (A, B, P) copies shared over channels; None = one per channel
    norm: str = "batch"  # batch (masked BatchNorm, S4's LRA choice) | layer
    prenorm: bool = True  # norm before each layer (and a final norm) | after the residual
    dropout: float = 0.0  # after the GELU inside the layer and on each residual branch
    tie_dropout: bool = False  # one dropout mask per channel over all positions
    dt_min: float = 1e-3  # Δ ~ log-uniform [dt_min, dt_max]
    dt_max: float = 1e-1
    l_max: int = 1024  # kernel length C̃ is set up for (grows by doubling when exceeded)
    lr_A: float | None = 1e-3  # SSM learning rates; None = the global learning rate (always no weight decay)
    lr_B: float | None = 1e-3
    lr_dt: float | None = 1e-3
    mode: str = "dplr"  # dplr (S4: diagonal plus low rank, Cauchy kernel) | diag (S4D: Vandermonde kernel)
    final_act: str = "glu"  # glu: Linear H→2H and GLU (V2 onwards) | linear: Linear H→H (S4 v1)
    ssm_sharing: str = "grouped"  # grouped: n_ssm copies of (Λ, B, P), Q = P | v1: one Λ, B/P/Q per channel
    real_param: str = "exp"  # Re Λ stored as log(−Re Λ) (exp) | as itself (raw, S4 v1)

    def __post_init__(self):
        family = "s4d" if self.mode == "diag" else "s4"
        check_config(family, dataclasses.asdict(self),
                     positive=("d_model", "n_layers", "d_state", "n_ssm", "l_max"),
                     positive_number=("dt_min", "dt_max", "lr_A", "lr_B", "lr_dt"), probability=("dropout",),
                     flags=("bidirectional", "prenorm", "tie_dropout"),
                     optional=("n_ssm", "lr_A", "lr_B", "lr_dt"),  # None: one SSM per channel / global lr
                     choices=dict(mode=("dplr", "diag"), init=("legs", "lin", "inv"), disc=("zoh", "bilinear"),
                                  norm=tuple(S4_NORMS), final_act=("glu", "linear"),
                                  ssm_sharing=("grouped", "v1"), real_param=("exp", "raw")))
        if self.d_state % 2:
            raise invalid(family, "d_state", self.d_state, "an even integer (modes come in conjugate pairs)")
        if self.n_ssm is not None and self.d_model % self.n_ssm:
            raise invalid(family, "n_ssm", self.n_ssm, f"None or a divisor of d_model={self.d_model}")
        if self.dt_min > self.dt_max:
            raise invalid(family, "dt_min", self.dt_min, f"at most dt_max={self.dt_max}")
        if self.mode == "dplr" and self.init != "legs":
            raise invalid(family, "init", self.init, "legs with mode='dplr' (use mode='diag' for lin/inv)")
        if self.ssm_sharing == "v1" and self.mode != "dplr":
            raise invalid(family, "ssm_sharing", self.ssm_sharing,
                          "grouped with mode='diag' (v1 sharing is S4's DPLR)")
        if self.ssm_sharing == "v1" and self.n_ssm != 1:
            raise invalid(family, "n_ssm", self.n_ssm, "1 with ssm_sharing='v1' (one Λ for all channels; "
                                                       "B, P and Q are per channel)")


# ---------------------------------------------------------------------------------------------
# Layer and backbone
# ---------------------------------------------------------------------------------------------

class S4Layer(nn.Module):
    """(B, L, H) -> (B, L, H): SSM convolution + D skip, GELU, dropout, then the output map:
    Linear H→2H and GLU (`final_act="glu"`, S4 V2 onwards) or Linear H→H alone (`"linear"`, S4 v1)."""

    def __init__(self, cfg: S4Config):
        super().__init__()
        channels = 2 if cfg.bidirectional else 1
        self.kernel = DPLRKernel(cfg, channels) if cfg.mode == "dplr" else DiagKernel(cfg, channels)
        self.bidirectional = cfg.bidirectional
        self.final_act = cfg.final_act
        self.D = nn.Parameter(torch.randn(cfg.d_model))  # skip term
        self.dropout = make_dropout(cfg.dropout, cfg.tie_dropout)
        self.output_linear = nn.Linear(cfg.d_model, 2 * cfg.d_model if cfg.final_act == "glu" else cfg.d_model)

    def forward(self, u: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        L = u.shape[1]
        with torch.autocast(device_type=u.device.type, enabled=False):  # kernel and FFT in fp32
            uf = u.float()
            if padding_mask is not None:  # pads must not reach real positions through the conv
                uf = uf.masked_fill(padding_mask[..., None], 0.0)
            k = self.kernel(L)  # (channels, H, L)
            y = fft_conv(uf.transpose(1, 2), k, self.bidirectional).transpose(1, 2)  # (B, L, H)
            y = y + uf * self.D.float()
        y = self.output_linear(self.dropout(F.gelu(y)))  # (B, L, 2H) for GLU, else (B, L, H)
        return F.glu(y, dim=-1) if self.final_act == "glu" else y


class S4Backbone(nn.Module):
    """(B, L, d) + padding mask (True = pad) -> (B, L, d): n_layers of (norm, S4 layer, dropout, residual)."""

    def __init__(self, cfg: S4Config):
        super().__init__()
        self.prenorm = cfg.prenorm
        self.layers = nn.ModuleList(S4Layer(cfg) for _ in range(cfg.n_layers))
        self.norms = nn.ModuleList(SequenceNorm(S4_NORMS[cfg.norm], cfg.d_model) for _ in range(cfg.n_layers))
        self.drops = nn.ModuleList(make_dropout(cfg.dropout, cfg.tie_dropout) for _ in range(cfg.n_layers))
        # S4: a final norm with prenorm only
        self.final_norm = SequenceNorm(S4_NORMS[cfg.norm], cfg.d_model) if cfg.prenorm else None

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer, norm, drop in zip(self.layers, self.norms, self.drops):
            z = norm(x, padding_mask) if self.prenorm else x
            x = x + drop(layer(z, padding_mask))
            if not self.prenorm:
                x = norm(x, padding_mask)
        if self.final_norm is not None:
            x = self.final_norm(x, padding_mask)
        return x


# ---------------------------------------------------------------------------------------------
# Configurations and registration
# ---------------------------------------------------------------------------------------------

# The S4 LRA ("V3") configs of baselines.md §1.5, for reference and as overrides
# (`MODELS.get("s4").build(task, overrides=PAPER_TASK_CONFIGS[task])`). Their backbones are
# 0.8M-3.6M parameters, which is far from the LRA Transformer budgets (8.4M ListOps, 3.2M Text,
# 0.79M Retrieval, under 10k for Image/Pathfinder/Path-X), so they are not the defaults.
PAPER_TASK_CONFIGS = {
    "listops": dict(d_model=256, n_layers=6, d_state=4, prenorm=False, dropout=0.0, n_ssm=1,
                    dt_min=1e-3, lr_dt=None, l_max=2048),
    "text": dict(d_model=256, n_layers=6, d_state=4, prenorm=True, dropout=0.0, n_ssm=1,
                 dt_min=1e-3, lr_dt=None, l_max=4096),
    "retrieval": dict(d_model=256, n_layers=6, d_state=4, prenorm=True, dropout=0.0, n_ssm=1,
                      dt_min=1e-3, lr_dt=None, l_max=4096),
    "image": dict(d_model=512, n_layers=6, d_state=64, prenorm=False, dropout=0.1, tie_dropout=True,
                  n_ssm=1, dt_min=1e-3, lr_dt=1e-3, l_max=1024),
    "pathfinder": dict(d_model=256, n_layers=6, d_state=64, prenorm=True, dropout=0.0, n_ssm=None,
                       dt_min=1e-3, lr_dt=1e-3, l_max=1024),
    "pathx": dict(d_model=256, n_layers=6, d_state=64, prenorm=True, dropout=0.0, n_ssm=None,
                  dt_min=1e-4, lr_dt=1e-3, l_max=16384),
}

# Defaults per task: the paper's layer settings (d_state, pre/post-norm, dropout, dt range, SSM
# learning rates, batch norm, bidirectional) at the LRA Transformer's width and parameter budget
# (models/transformer.py TASK_CONFIGS, backbone within 10%). Deviations from the S4 configs:
# - d_model is the Transformer's (so the harness's embedding and head have the same size) and the
#   depth is set by the budget: 16 layers (ListOps, d 512), 23 (Text, d 256), 23 (Retrieval, d 128)
#   instead of 6 layers at d 256;
# - Image/Pathfinder/Path-X: d 32 and 1-2 layers instead of 6 layers at d 512/256; Pathfinder and
#   Path-X use n_ssm=1 (one shared A, B, P) instead of one per channel, to fit the <10k budget.
TASK_CONFIGS = {
    "listops": dict(PAPER_TASK_CONFIGS["listops"], d_model=512, n_layers=16),
    "text": dict(PAPER_TASK_CONFIGS["text"], d_model=256, n_layers=23),
    "retrieval": dict(PAPER_TASK_CONFIGS["retrieval"], d_model=128, n_layers=23),
    "image": dict(PAPER_TASK_CONFIGS["image"], d_model=32, n_layers=2, d_state=32),
    "pathfinder": dict(PAPER_TASK_CONFIGS["pathfinder"], d_model=32, n_layers=1, n_ssm=1),
    "pathx": dict(PAPER_TASK_CONFIGS["pathx"], d_model=32, n_layers=1, n_ssm=1),
}

# The S4 LRA optimisation (§1.5): AdamW, weight decay 0.05, cosine schedule with ~10% warmup;
# total steps = epochs x train examples / batch (ListOps 40 x 96k/32, Text 32 x 25k/16,
# Retrieval 20 x 147,086/64, Image 200 x 45k/50, Pathfinder 200 x 160k/64, Path-X 50 x 160k/16).
TRAIN_CONFIGS = {
    "listops": dict(lr=0.01, weight_decay=0.05, batch_size=32, warmup_steps=12000, total_steps=120000),
    "text": dict(lr=0.01, weight_decay=0.05, batch_size=16, warmup_steps=5000, total_steps=50000),
    "retrieval": dict(lr=0.01, weight_decay=0.05, batch_size=64, warmup_steps=4600, total_steps=45960),
    "image": dict(lr=0.01, weight_decay=0.05, batch_size=50, warmup_steps=18000, total_steps=180000),
    "pathfinder": dict(lr=0.004, weight_decay=0.05, batch_size=64, warmup_steps=50000, total_steps=500000),
    "pathx": dict(lr=0.001, weight_decay=0.05, batch_size=16, warmup_steps=50000, total_steps=500000),
}

# `s4` and `s4d` leave the S4-v1/v2 switches out of their registered configs (see the module docstring).
VERSION_SWITCHES = ("final_act", "ssm_sharing", "real_param")
# Tiny (parameter-matched to the other families' tiny variants, dropout 0: see models/transformer.py
# TINY): at d 32 a layer is about 6K parameters even with the Image config's N = 64, so the budget
# is met with depth (4 layers), as the per-task configs above do.
TINY = dict(d_model=32, n_layers=4, d_state=64, l_max=256, dropout=0.0, tie_dropout=False)


def build_s4(**kwargs) -> S4Backbone:
    """The factory of every S4 registration: the config dataclass from the registry's kwargs."""
    return S4Backbone(config_from_kwargs(S4Config, "s4", kwargs))


@register_model("s4", family="ssm", paper=PAPER_S4, complexity="O(L log L)",
                defaults=registry_defaults(S4Config(mode="dplr"), exclude=VERSION_SWITCHES), task_configs=TASK_CONFIGS,
                train_configs=TRAIN_CONFIGS, tiny=TINY)
def s4(**cfg):
    """S4 (DPLR, HiPPO-LegS), bidirectional, LRA layout; pure-PyTorch Cauchy kernel"""
    return build_s4(**cfg)


@register_model("s4d", family="ssm", paper=PAPER_S4D, complexity="O(L log L)",
                defaults=registry_defaults(S4Config(mode="diag"), exclude=VERSION_SWITCHES), task_configs=TASK_CONFIGS,
                train_configs=TRAIN_CONFIGS, tiny=TINY)
def s4d(**cfg):
    """S4D (diagonal, LegS init, ZOH), bidirectional, LRA layout; Vandermonde kernel"""
    return build_s4(**cfg)


# ---------------------------------------------------------------------------------------------
# S4-v1 and S4-v2: the two S4 rows of MEGA Table 2 (baselines-table2.md §5)
# ---------------------------------------------------------------------------------------------
# Exact per-task settings of the code behind each row, not budget-matched: MEGA compares against
# these published models as they were. Keys a task does not set come from the V1/V2 defaults.

# S4-v1: state-spaces/s4 tag v1 (cfb6a06), configs/experiment/s4-lra-*.yaml with configs/model/s4.yaml
# and configs/model/layer/s4.yaml. Every v1 layer is causal, maps its output with Linear(H→H) and no
# activation after it (`postact: null`), shares one Λ over all channels with B, P per channel and Q
# untied (`trainable: {A: 1, B: 2}`), stores Re Λ raw, and trains A, B, dt at 1e-3 without weight
# decay. Its dropouts are Dropout2d on (B, H, L) tensors: one mask per channel over all positions.
V1_DEFAULTS = registry_defaults(S4Config(
    mode="dplr",
    d_model=128,
    n_layers=6,
    bidirectional=False,  # one-sided (causal) kernel: v1 had no two-sided option
    final_act="linear",  # Linear H→H, no GLU
    ssm_sharing="v1",  # one Λ for all channels; B, P, Q per channel; Q untied from P
    real_param="raw",  # Re Λ unconstrained
    n_ssm=1,  # one Λ (required by ssm_sharing="v1")
    tie_dropout=True,  # Dropout2d over (B, H, L)
    lr_A=1e-3, lr_B=1e-3, lr_dt=1e-3,  # layer config `lr: {dt: 0.001, A: =dt, B: =dt}`
))
V1_TASK_CONFIGS = {
    "listops": dict(d_model=128, n_layers=6, prenorm=False, dropout=0.0, l_max=2048),
    "text": dict(d_model=128, n_layers=4, prenorm=True, dropout=0.0, l_max=2048),  # IMDb cut at 2048 bytes
    "retrieval": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.0, l_max=4000),
    "image": dict(d_model=512, n_layers=6, prenorm=False, dropout=0.2, l_max=1024),
    "pathfinder": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.1, l_max=1024),
    "pathx": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.0, l_max=16384),
}
# v1 trained with AdamW under ReduceLROnPlateau (factor 0.2 on validation accuracy, per epoch, task
# patience 5/10/20/10/10/40) and no warm-up. A plateau schedule cannot be expressed in these keys
# (the harness warms up linearly, then decays linearly to 0 at total_steps); the closest is no
# warm-up and a linear decay over v1's whole run: total steps = epochs x ceil(train examples /
# batch), i.e. ListOps 50 x 96k/50, Text 40 x 25k/50, Retrieval 25 x ceil(147,086/64),
# Image 100 x 45k/50, Pathfinder 200 x 160k/100, Path-X 100 x 160k/32.
V1_TRAIN_CONFIGS = {task: dict(lr=lr, weight_decay=wd, batch_size=batch, warmup_steps=0, total_steps=steps)
                    for task, (lr, wd, batch, steps) in {  # lr, weight decay, batch, total steps
                        "listops": (0.01, 0.01, 50, 96000), "text": (0.01, 0.0, 50, 20000),
                        "retrieval": (0.002, 0.0, 64, 57475), "image": (0.004, 0.01, 50, 90000),
                        "pathfinder": (0.004, 0.0, 100, 320000), "pathx": (0.0005, 0.0, 32, 500000)}.items()}

# S4-v2: state-spaces/s4 643a518 ("[V2.1] ... new LRA configs"), configs/experiment/s4-lra-*-new.yaml,
# the configs behind the S4(-LegS) numbers of the S4D paper that MEGA cites. Every v2 layer is
# bidirectional with GLU output, N = 64, HiPPO-LegS, and n_ssm = H except Image (2).
V2_DEFAULTS = registry_defaults(S4Config(
    mode="dplr",
    d_model=256,
    n_layers=6,
    bidirectional=True,  # two-sided kernel (`bidirectional: true`)
    final_act="glu",  # Linear H→2H, GLU (`postact: glu`)
    ssm_sharing="grouped",  # n_ssm copies of (Λ, P, B), Q = P
    real_param="exp",  # Re Λ = −exp(·)
    n_ssm=None,  # one SSM per channel (`n_ssm: ${..d_model}` or 256 = H)
    tie_dropout=True,  # Dropout2d over (B, H, L), as in v1
))
V2_TASK_CONFIGS = {
    "listops": dict(d_model=128, n_layers=8, prenorm=False, dropout=0.0, n_ssm=None, lr_dt=0.01, l_max=2048),
    "text": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.0, n_ssm=None, lr_dt=0.01, l_max=4096),
    "retrieval": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.0, n_ssm=None,
                      lr_dt=None, l_max=4000),  # lr_dt: ${optimizer.lr}, the global rate
    "image": dict(d_model=512, n_layers=6, prenorm=False, norm="layer", dropout=0.1, n_ssm=2,
                  lr_dt=1e-3, l_max=1024),  # V2.1 inherits `norm: layer`; A, B, dt all at 1e-3
    "pathfinder": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.0, n_ssm=None, lr_dt=1e-3, l_max=1024),
    "pathx": dict(d_model=256, n_layers=6, prenorm=True, dropout=0.0, n_ssm=None, lr_A=5e-4, lr_B=5e-4,
                  lr_dt=5e-4, dt_min=1e-4, dt_max=1e-2, l_max=16384),  # V2.1's dt range; V3 widened dt_max to 0.1
}
# v2 trained with AdamW under a cosine schedule with linear warm-up, per step, for the steps the
# configs give (`num_training_steps`, `num_warmup_steps`, default warm-up 1000). The harness decays
# linearly instead of by a cosine after the same warm-up; steps and warm-up are v2's.
V2_TRAIN_CONFIGS = {task: dict(lr=lr, weight_decay=wd, batch_size=batch, warmup_steps=warmup, total_steps=steps)
                    for task, (lr, wd, batch, warmup, steps) in {  # lr, weight decay, batch, warm-up, steps
                        "listops": (0.01, 0.05, 50, 1000, 80000), "text": (0.01, 0.05, 16, 1000, 50000),
                        "retrieval": (0.01, 0.05, 64, 2500, 50000), "image": (0.01, 0.05, 50, 1000, 200000),
                        "pathfinder": (0.004, 0.03, 64, 2500, 500000),
                        "pathx": (0.0005, 0.05, 16, 10000, 500000)}.items()}

# Tiny variants keep each version's layer (direction, output map, sharing) and are parameter-matched
# to the other tiny variants (dropout 0, untied, like TINY). At d 32 a v1 layer is about 9.4K
# parameters with N = 64 (B, P, Q and C per channel) and a v2 layer 12.5K (one SSM per channel, GLU),
# against 6.5K for s4's, so the depth is smaller and N fine-tunes the count to within 1% of the
# Transformer's tiny: v1 has 3 layers with N = 56 (N = 64 would be 12% above it), v2 2 layers with
# N = 66. v2's tiny keeps n_ssm = H on every task (Image's n_ssm = 2 would take a third off it).
TINY_V1 = dict(d_model=32, n_layers=3, d_state=56, l_max=256, dropout=0.0, tie_dropout=False)
TINY_V2 = dict(d_model=32, n_layers=2, d_state=66, n_ssm=None, l_max=256, dropout=0.0, tie_dropout=False)


@register_model("s4_v1", family="ssm", complexity="O(L log L)", defaults=V1_DEFAULTS,
                task_configs=V1_TASK_CONFIGS, train_configs=V1_TRAIN_CONFIGS, tiny=TINY_V1,
                paper="S4-v1 of MEGA Table 2: Gu, Goel & Ré, ICLR 2022 (arXiv 2111.00396); "
                      "configs: state-spaces/s4 tag v1 (cfb6a06), configs/experiment/s4-lra-*.yaml")
def s4_v1(**cfg):
    """S4-v1 (ICLR 2022 code): causal DPLR kernel, one Λ for all channels, Linear output; exact LRA configs"""
    return build_s4(**cfg)


@register_model("s4_v2", family="ssm", complexity="O(L log L)", defaults=V2_DEFAULTS,
                task_configs=V2_TASK_CONFIGS, train_configs=V2_TRAIN_CONFIGS, tiny=TINY_V2,
                paper="S4-v2 of MEGA Table 2: Gu, Gupta, Goel & Ré, NeurIPS 2022 (arXiv 2206.11893); "
                      "configs: state-spaces/s4 643a518 (V2.1), configs/experiment/s4-lra-*-new.yaml",
                published=dict(speed=4.8, memory=0.14, source="MEGA Table 2, S4-v2‡ (MEGA authors' GPU runs)"))
def s4_v2(**cfg):
    """S4-v2 (V2.1 code): bidirectional DPLR kernel, one SSM per channel, GLU output; exact LRA configs"""
    return build_s4(**cfg)
