"""Micro-benchmarks of the sequence-mixing kernels, each checked against a simple reference first.

Kernels (forward, and forward + backward through torch.autograd.grad so no .grad accumulates):
- MEGA EMA convolution, FFT path: `MultiHeadEMA.conv_fft` (fp32 kernel build + `ema_conv`), LRA Text
  widths (d 128, h 16, truncation 1024, bidirectional). Reference: the damped-EMA recurrence over
  time in float64 (truncation as a dropped tap), written here, with its autograd gradients.
- MEGA EMA convolution, Triton scan (`harness_models.mega_triton`), CUDA only, same shapes and reference.
- MEGA-chunk softmax attention: `MovingAverageGatedAttention.attend` (chunks of 128 folded into the
  batch; `matmul` = materialised fp32 softmax, `sdpa` = F.scaled_dot_product_attention), z 64, v 256,
  simple relative bias. Reference: `attend_reference` (chunk by chunk, explicitly indexed bias).
- S4 convolution kernels: `DPLRKernel` (S4, Cauchy/Woodbury + irfft) and `DiagKernel` (S4D,
  Vandermonde), N 64, two channels. Reference: the impulse response of the discretised state-space
  system, iterated step by step in complex128 (dense A for S4) on the first 8 channels.
- Mamba selective scan, PyTorch chunked version: `selective_scan_chunked`, E 512, N 16. Reference:
  `selective_scan_sequential` (one step per position) in float64.

Batch sizes keep the token count per call fixed on CUDA (e.g. EMA: 65536 tokens, batch 64 at L=1024,
4 at L=16384); on the CPU they are small. A wrong kernel fails its check and is never timed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import harness_models.s4 as s4
from harness_models.scan import selective_scan_chunked, selective_scan_sequential
from harness_models.ema import ema_kernel, ema_kernel_reference
from harness_models.mega import MegaConfig, MovingAverageGatedAttention, MultiHeadEMA

try:  # absent in revisions before it was added: a base revision in a comparison still runs the rest
    import harness_models.mega_triton as mega_triton
except ImportError:
    mega_triton = None

LENGTHS = {"cpu": (256, 1024), "cuda": (1024, 4096, 16384)}
MODES = ("fwd", "fwd+bwd")
EMA_PARAMS = ("delta", "alpha", "beta", "gamma")


def pytest_generate_tests(metafunc):
    """Sequence lengths depend on the device chosen on the command line."""
    if "L" in metafunc.fixturenames:
        metafunc.parametrize("L", LENGTHS[metafunc.config._bench_device])


def batch_for(device: torch.device, L: int, cuda_tokens: int, cpu_batch: int) -> int:
    return max(1, cuda_tokens // L) if device.type == "cuda" else cpu_batch


def assert_close(got, want, what: str, tol: float) -> None:
    """Max absolute error within tol * max |want| (one scale per tensor)."""
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = g.detach().double(), w.detach().double()
        assert g.shape == w.shape, f"{what}[{i}]: shape {tuple(g.shape)} != {tuple(w.shape)}"
        scale = w.abs().max().item()
        err = (g - w).abs().max().item()
        assert err <= tol * max(scale, 1e-12), f"{what}[{i}]: max error {err:.3g} vs max |ref| {scale:.3g}"


def run_mode(fn, inputs, mode: str, grad_out):
    """fn() for 'fwd'; fn() then torch.autograd.grad w.r.t. inputs for 'fwd+bwd'. Returns (out, grads)."""
    if mode == "fwd":
        with torch.no_grad():
            return fn(), None
    out = fn()
    return out, torch.autograd.grad(out, inputs, grad_out)


# ------------------------------------------------------------------------------------------------
# MEGA EMA convolution (FFT path and Triton scan), one float64 reference per (device, L)
# ------------------------------------------------------------------------------------------------
_EMA_CASES: dict = {}


def ema_case(device: torch.device, L: int):
    """(module, x, grad_out, reference output, reference grads of x and EMA_PARAMS), cached per (device, L)."""
    key = (device.type, L)
    if key not in _EMA_CASES:
        torch.manual_seed(0)
        ema = MultiHeadEMA(MegaConfig(d_model=128, h_dim=16, bidirectional=True, truncation=1024)).to(device)
        B = batch_for(device, L, cuda_tokens=65536, cpu_batch=2)
        x, g = torch.randn(B, L, 128, device=device), torch.randn(B, L, 128, device=device)
        x64 = x.double().requires_grad_()
        params = [getattr(ema, n) for n in EMA_PARAMS]
        ref = ema_recurrence_float64(ema, x64, ema.kernel_length(L))
        ref_grads = torch.autograd.grad(ref, [x64] + params, g.double())
        _EMA_CASES[key] = (ema, x, g, ref.detach(), ref_grads)
    return _EMA_CASES[key]


def ema_recurrence_float64(ema: MultiHeadEMA, x: torch.Tensor, K: int) -> torch.Tensor:
    """The EMA as its recurrence in float64, x (B, L, d) -> (B, L, d): per direction and mode,
    s_t = q s_{t-1} + x_t - q^K x_{t-K} (the window of K taps), y_t = sum_n w s_t; w = scale gamma p beta."""
    p = torch.sigmoid(ema.delta.double()).squeeze(-1)  # (2d, h)
    q = 1.0 - p * torch.sigmoid(ema.alpha.double()).squeeze(-1)
    w = ema.scale * ema.gamma.double() * p * ema.beta.double().squeeze(-1)
    d, L = ema.d, x.shape[1]

    def scan(xs, q, w):  # xs (B, L, d) in scan order; q, w (d, h)
        state = xs.new_zeros(xs.shape[0], d, q.shape[1])
        q_k = q.pow(K)  # weight of the tap leaving the window
        ys = []
        for t in range(L):
            state = q * state + xs[:, t, :, None]
            if t >= K:
                state = state - q_k * xs[:, t - K, :, None]
            ys.append((state * w).sum(-1))
        return torch.stack(ys, dim=1)

    return scan(x, q[:d], w[:d]) + scan(x.flip(1), q[d:], w[d:]).flip(1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["blocked", "table"])
def test_mega_ema_kernel(timed, device, L, form, mode):
    """The EMA kernel's construction at the Text configuration (2d = 256 rows, h = 16, K = min(L,
    1024)): the blocked product the model uses against the literal table of powers it replaced."""
    torch.manual_seed(0)
    ema = MultiHeadEMA(MegaConfig(d_model=128, h_dim=16, bidirectional=True, truncation=1024)).to(device)
    K = ema.kernel_length(L)
    params = [getattr(ema, n) for n in EMA_PARAMS]
    build = ema_kernel if form == "blocked" else ema_kernel_reference
    g = torch.randn(2 * 128, K, device=device)
    out, _ = run_mode(lambda: build(*params, ema.scale, K), params, mode, g)
    assert_close([out], [ema_kernel_reference(*(p.double() for p in params), ema.scale, K)], f"EMA kernel ({form})", 1e-5)
    timed(lambda: run_mode(lambda: build(*params, ema.scale, K), params, mode, g))


@pytest.mark.parametrize("mode", MODES)
def test_mega_ema_fft(timed, device, L, mode):
    ema, x, g, ref, ref_grads = ema_case(device, L)
    x = x.clone().requires_grad_(mode != "fwd")
    inputs = [x] + [getattr(ema, n) for n in EMA_PARAMS]
    out, grads = run_mode(lambda: ema.conv_fft(x), inputs, mode, g)
    assert_close([out], [ref], "EMA conv (FFT)", 1e-4)
    if grads is not None:
        assert_close(grads, ref_grads, "EMA conv (FFT) grads", 1e-4)
    timed(lambda: run_mode(lambda: ema.conv_fft(x), inputs, mode, g))


@pytest.mark.parametrize("mode", MODES)
def test_mega_ema_triton(timed, device, L, mode):
    if device.type != "cuda":
        pytest.skip("the Triton EMA is timed on CUDA only (the CPU interpreter is a test tool)")
    reason = ("harness_models.mega_triton is not in this revision" if mega_triton is None
              else mega_triton.triton_ema_unavailable_reason())
    if reason is not None:
        pytest.skip(reason)
    ema, x, g, ref, ref_grads = ema_case(device, L)
    x = x.clone().requires_grad_(mode != "fwd")
    inputs = [x] + [getattr(ema, n) for n in EMA_PARAMS]

    def call():
        return mega_triton.multi_head_ema_conv(ema, x)

    out, grads = run_mode(call, inputs, mode, g)
    assert_close([out], [ref], "EMA conv (Triton)", 1e-4)
    if grads is not None:
        assert_close(grads, ref_grads, "EMA conv (Triton) grads", 1e-4)
    timed(lambda: run_mode(call, inputs, mode, g))


# ------------------------------------------------------------------------------------------------
# MEGA-chunk softmax attention
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", ["matmul", "sdpa"])
def test_mega_chunk_attention(timed, device, L, kernel, mode):
    torch.manual_seed(0)
    cfg = MegaConfig(d_model=128, z_dim=64, v_dim=256, chunk_size=128, softmax_kernel=kernel, dropout=0.0)
    layer = MovingAverageGatedAttention(cfg).to(device)
    with torch.no_grad():  # a bias that matters (its init is N(0, 0.02))
        layer.rel_pos_bias.rel_pos_bias.normal_(0.0, 1.0)
    B = batch_for(device, L, cuda_tokens=65536, cpu_batch=2)
    q, k = (torch.randn(B, L, 64, device=device, requires_grad=mode != "fwd") for _ in range(2))
    v = torch.randn(B, L, 256, device=device, requires_grad=mode != "fwd")
    g = torch.randn(B, L, 256, device=device)
    inputs = [q, k, v, layer.rel_pos_bias.rel_pos_bias]
    out, grads = run_mode(lambda: layer.attend(q, k, v, None), inputs, mode, g)
    ref, ref_grads = run_mode(lambda: layer.attend_reference(q, k, v, None), inputs, mode, g)
    assert_close([out], [ref], f"chunked attention ({kernel})", 1e-4)
    if grads is not None:
        assert_close(grads, ref_grads, f"chunked attention ({kernel}) grads", 1e-4)
    timed(lambda: run_mode(lambda: layer.attend(q, k, v, None), inputs, mode, g))


# ------------------------------------------------------------------------------------------------
# S4 / S4D convolution kernels
# ------------------------------------------------------------------------------------------------
CHECKED_CHANNELS = 8  # the reference iterates the state-space system of these channels only


def s4_impulse_reference(kernel, L: int) -> torch.Tensor:
    """(channels, CHECKED_CHANNELS, L) impulse response y_l = C x_l, x_l = Ā x_{l-1} (x_0 = B̄), in complex128.

    Built from the module's continuous parameters with our own discretisation: DiagKernel as stored
    (ZOH); DPLRKernel with dense A = Λ - P Q* (Q = P when tied), bilinear Ā, and the true C recovered from the stored C̃ by
    solving C̃ᵀ = Cᵀ (I - Ā^{L_k}) for the length L_k that C̃ refers to.
    """
    n = CHECKED_CHANNELS
    if isinstance(kernel, s4.DiagKernel):
        dt, lam, b, c = (t.detach().to(torch.complex128) for t in kernel.ssm())
        dt, lam, b, c = dt[:n], lam[:n], b[:n], c[:, :n]
        dta = dt[:, None] * lam
        abar, state = torch.exp(dta), (torch.exp(dta) - 1) / lam * b  # ZOH
        out = []
        for _ in range(L):  # the conjugate half doubles the real part
            out.append(2 * torch.einsum("chn,hn->ch", c, state).real)
            state = abar * state
        return torch.stack(out, dim=-1)
    modes = [t.detach().to(torch.complex128) for t in kernel.full_modes()]
    if len(modes) == 5:  # (dt, Λ, B, P, C̃): A = Λ - P P*
        modes.insert(4, modes[3])
    dt, lam, b, p, q, c_tilde = modes  # A = Λ - P Q*
    dt, lam, b, p, q, c_tilde = dt[:n], lam[:n], b[:n], p[:n], q[:n], c_tilde[:, :n]
    N = lam.shape[-1]
    eye = torch.eye(N, dtype=torch.complex128, device=lam.device)
    A = torch.diag_embed(lam) - p[:, :, None] * q.conj()[:, None, :]  # (n, N, N)
    half = (dt / 2)[:, None, None]
    abar = torch.linalg.solve(eye - half * A, eye + half * A)
    state = torch.linalg.solve(eye - half * A, (dt[:, None] * b)[..., None])[..., 0]  # B̄ (n, N)
    power = torch.linalg.matrix_power(abar, kernel.l_kernel)
    c = torch.linalg.solve((eye - power).transpose(-1, -2), c_tilde.permute(1, 2, 0)).permute(2, 0, 1)
    out = []
    for _ in range(L):
        out.append(torch.einsum("chn,hn->ch", c, state).real)
        state = torch.einsum("hnm,hm->hn", abar, state)
    return torch.stack(out, dim=-1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["s4_dplr", "s4d_diag"])
def test_s4_kernel(timed, device, L, kind, mode):
    torch.manual_seed(0)
    H = 256 if device.type == "cuda" else 64
    if kind == "s4_dplr":
        kernel = s4.DPLRKernel(s4.S4Config(d_model=H, d_state=64, l_max=L), channels=2).to(device)
    else:
        kernel = s4.DiagKernel(s4.S4Config(mode="diag", d_model=H, d_state=64), channels=2).to(device)
    params = list(kernel.parameters())
    g = torch.randn(2, H, L, device=device)
    out, _ = run_mode(lambda: kernel(L), params, mode, g)
    ref = s4_impulse_reference(kernel, L)
    assert_close([out[:, :CHECKED_CHANNELS]], [ref], f"{kind} kernel", 1e-4)
    timed(lambda: run_mode(lambda: kernel(L), params, mode, g))


# ------------------------------------------------------------------------------------------------
# Mamba selective scan (PyTorch, chunked)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_mamba_selective_scan(timed, device, L, mode):
    torch.manual_seed(0)
    B, E, N = batch_for(device, L, cuda_tokens=16384, cpu_batch=1), 512, 16
    grad = mode != "fwd"
    u = torch.randn(B, L, E, device=device, requires_grad=grad)
    delta = F.softplus(torch.randn(B, L, E, device=device) - 3.0).requires_grad_(grad)  # ~ dt in [1e-3, 0.1]
    A = (-torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(E, 1)).requires_grad_(grad)
    Bm, Cm = (torch.randn(B, L, N, device=device, requires_grad=grad) for _ in range(2))
    D = torch.ones(E, device=device, requires_grad=grad)
    inputs = [u, delta, A, Bm, Cm, D]
    g = torch.randn(B, L, E, device=device)
    out, grads = run_mode(lambda: selective_scan_chunked(*inputs), inputs, mode, g)
    ref64 = [t.detach().double().requires_grad_(grad) for t in inputs]
    ref, ref_grads = run_mode(lambda: selective_scan_sequential(*ref64), ref64, mode, g.double())
    assert_close([out], [ref], "selective scan", 1e-4)
    if grads is not None:
        assert_close(grads, ref_grads, "selective scan grads", 1e-4)
    timed(lambda: run_mode(lambda: selective_scan_chunked(*inputs), inputs, mode, g))
