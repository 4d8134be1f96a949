"""S4 / S4D: kernels against explicit recurrences, HiPPO-LegS NPLR, bidirectional convolution,
optimiser hints, and the backbone contract (gradients, padding, bf16, registration, budgets)."""

from __future__ import annotations

import math

import pytest
import torch

import models.s4 as s4
from harness.heads import param_groups
from harness.registry import MODELS
from tests.checks import (assert_bf16_close_to_fp32, assert_every_parameter_gets_a_gradient,
                          assert_padding_invariant, pad_mask)

NAMES = ("s4", "s4d")


# ---- helpers: read the kernels' parameters with our own formulas -------------------------------

def _params(kernel):
    """(Δ (H,), Λ (H, N/2), B (H, N/2), C (channels, H, N/2)) as complex128, from the raw parameters."""
    H, n_ssm = kernel.H, kernel.n_ssm
    dt = torch.nn.functional.softplus(kernel.dt.detach().double())
    lam = (-torch.exp(kernel.A_real.detach().double()) + 1j * kernel.A_imag.detach().double()).repeat(H // n_ssm, 1)
    B = torch.view_as_complex(kernel.B.detach().double().contiguous()).repeat(H // n_ssm, 1)
    C = torch.view_as_complex(kernel.C.detach().double().contiguous())
    return dt.to(torch.complex128), lam, B, C


def _impulse_response(Abar, Bbar, C, L):
    """y_l = C x_l with x_l = Ā x_{l-1} + B̄ u_l, u = δ: dense Ā (H, N, N), B̄ (H, N), C (c, H, N)."""
    x, out = Bbar.clone(), []
    for _ in range(L):
        out.append(torch.einsum("chn,hn->ch", C, x))
        x = torch.einsum("hnm,hm->hn", Abar, x)
    return torch.stack(out, dim=-1)


# ---- S4D ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["legs", "lin", "inv"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_kernel_equals_recurrence(init, disc):
    torch.manual_seed(0)
    kernel = s4.DiagKernel(H=3, N=8, channels=2, init=init, disc=disc, n_ssm=1)
    L = 40
    K = kernel(L).double()
    dt, lam, B, C = _params(kernel)
    dtA = dt[:, None] * lam
    if disc == "zoh":
        Abar, Bbar = torch.exp(dtA), (torch.exp(dtA) - 1) / lam * B
    else:
        Abar, Bbar = (1 + dtA / 2) / (1 - dtA / 2), dt[:, None] * B / (1 - dtA / 2)
    x, ref = Bbar.clone(), []
    for _ in range(L):  # diagonal recurrence; the conjugate half doubles the real part
        ref.append(2 * torch.einsum("chn,hn->ch", C, x).real)
        x = Abar * x
    ref = torch.stack(ref, dim=-1)
    assert K.shape == (2, 3, L)
    torch.testing.assert_close(K, ref, rtol=1e-4, atol=1e-5)


def test_s4d_inits_follow_the_formulas():
    N = 8
    n = torch.arange(N // 2, dtype=torch.float64)
    lam, B = s4.diag_init("lin", N)
    torch.testing.assert_close(lam, (-0.5 + 1j * math.pi * n).to(torch.complex128))
    lam, _ = s4.diag_init("inv", N)
    torch.testing.assert_close(lam.imag, (N / math.pi) * (N / (2 * n + 1) - 1))
    lam_legs, _ = s4.diag_init("legs", N)
    assert torch.allclose(lam_legs.real, torch.full((N // 2,), -0.5, dtype=torch.float64))
    assert (lam_legs.imag < 0).all()


def test_long_kernels_are_chunked_without_changing_values_or_gradients(monkeypatch):
    torch.manual_seed(0)
    for kernel in (s4.DiagKernel(H=4, N=8, channels=2), s4.DPLRKernel(H=4, N=8, channels=2, l_max=128)):
        full = kernel(128)
        (g_full,) = torch.autograd.grad(full.pow(2).sum(), kernel.C)
        monkeypatch.setattr(s4, "MAX_BLOCK_ELEMENTS", 64)  # forces many checkpointed blocks
        chunked = kernel(128)
        (g_chunked,) = torch.autograd.grad(chunked.pow(2).sum(), kernel.C)
        monkeypatch.undo()
        torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_chunked, g_full, rtol=1e-4, atol=1e-5)


# ---- S4 (DPLR) -----------------------------------------------------------------------------------

def _dense_bilinear(kernel):
    """Dense full-mode Ā, B̄ of A = Λ − P P* (bilinear), from the raw parameters."""
    dt, lam, B, _ = _params(kernel)
    P = torch.view_as_complex(kernel.P.detach().double().contiguous()).repeat(kernel.H // kernel.n_ssm, 1)
    full = lambda v: torch.cat([v, v.conj()], dim=-1)  # noqa: E731
    lam, B, P = full(lam), full(B), full(P)
    N = lam.shape[-1]
    A = torch.diag_embed(lam) - P[:, :, None] * P.conj()[:, None, :]
    eye = torch.eye(N, dtype=torch.complex128)
    h = dt[:, None, None] / 2
    Abar = torch.linalg.solve(eye - h * A, eye + h * A)
    Bbar = torch.linalg.solve(eye - h * A, (dt[:, None] * B)[..., None])[..., 0]
    return Abar, Bbar, full


def test_dplr_kernel_equals_dense_ssm_recurrence():
    torch.manual_seed(0)
    L = 24
    kernel = s4.DPLRKernel(H=3, N=8, channels=2, l_max=L, n_ssm=1)
    with torch.no_grad():  # give Λ, P, B generic values (not just the HiPPO init)
        kernel.A_imag.add_(0.3 * torch.randn_like(kernel.A_imag))
        kernel.P.mul_(1 + 0.2 * torch.randn_like(kernel.P))
        kernel.B.add_(0.2 * torch.randn_like(kernel.B))
        kernel.dt.add_(torch.randn_like(kernel.dt))
    Abar, Bbar, full = _dense_bilinear(kernel)
    C = torch.randn(2, 3, 4, dtype=torch.complex128)  # the "true" output matrix
    with torch.no_grad():
        kernel.C.copy_(torch.view_as_real(kernel.ctilde_from_c(C.to(torch.complex64), L)))
    ref = _impulse_response(Abar, Bbar, full(C), L)
    assert ref.imag.abs().max() < 1e-10  # conjugate pairs make the full system real
    torch.testing.assert_close(kernel(L).double(), ref.real, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kernel(L // 2).double(), ref.real[..., : L // 2], rtol=1e-4, atol=1e-5)

    # A longer input doubles l_kernel: C̃ is rewritten for 2L and the kernel stays that of the same C.
    long = kernel(2 * L + 5).double()
    assert int(kernel.l_kernel) == 4 * L
    ref_long = _impulse_response(Abar, Bbar, full(C), 2 * L + 5)
    torch.testing.assert_close(long, ref_long.real, rtol=1e-4, atol=1e-5)


def test_state_dict_keeps_the_doubled_kernel_length():
    torch.manual_seed(0)
    model = MODELS.get("s4_tiny").build(overrides=dict(l_max=16)).eval()
    x = torch.randn(1, 40, 32)
    y = model(x, None)  # 40 > 16: C̃ is rewritten for 64
    assert model.layers[0].kernel.l_kernel == 64
    fresh = MODELS.get("s4_tiny").build(overrides=dict(l_max=16)).eval()
    fresh.load_state_dict(model.state_dict())
    assert fresh.layers[0].kernel.l_kernel == 64
    torch.testing.assert_close(fresh(x, None), y)


def test_hippo_legs_and_its_nplr_reconstruction():
    N = 16
    A_ref = torch.zeros(N, N, dtype=torch.float64)
    for n in range(N):
        for k in range(N):
            if n > k:
                A_ref[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                A_ref[n, k] = -(n + 1)
    A, B = s4.hippo_legs(N)
    torch.testing.assert_close(A, A_ref)
    torch.testing.assert_close(B, torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1))

    lam, p, b, V = s4.nplr_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    Vf = torch.cat([V, V.conj()], dim=1)
    lam_f = torch.cat([lam, lam.conj()])
    torch.testing.assert_close(Vf.conj().T @ Vf, torch.eye(N, dtype=torch.complex128), atol=1e-10, rtol=0)
    recon = Vf @ torch.diag(lam_f) @ Vf.conj().T - (P[:, None] * P[None, :]).to(torch.complex128)
    assert (recon - A_ref).abs().max() < 1e-9
    assert torch.allclose(lam.real, torch.full_like(lam.real, -0.5)) and (lam.imag < 0).all()
    torch.testing.assert_close(p, V.conj().T @ P.to(torch.complex128))
    torch.testing.assert_close(b, V.conj().T @ B.to(torch.complex128))


# ---- bidirectional convolution -------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
def test_fft_conv_matches_direct_sums(bidirectional):
    torch.manual_seed(0)
    B, H, L = 2, 3, 17
    u = torch.randn(B, H, L, dtype=torch.float64)
    k = torch.randn(2 if bidirectional else 1, H, L, dtype=torch.float64)
    ref = torch.zeros(B, H, L, dtype=torch.float64)
    for t in range(L):
        for s in range(L):
            if s <= t:
                ref[..., t] += k[0, :, t - s] * u[..., s]  # causal, lag 0 included
            elif bidirectional:
                ref[..., t] += k[1, :, s - t - 1] * u[..., s]  # anti-causal, from t+1 on
    torch.testing.assert_close(s4.fft_conv(u, k, bidirectional), ref)


# ---- optimiser hints -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_ssm_parameters_carry_optim_hints(name):
    for task, dt_lr in (("listops", None), ("pathfinder", 1e-3)):
        model = MODELS.get(f"{name}_tiny").build(task)
        kernel = model.layers[0].kernel
        hinted = ["A_real", "A_imag", "B", "dt"] + (["P"] if name == "s4" else [])
        for pname in hinted:
            hint = getattr(getattr(kernel, pname), "_optim", None)
            want_lr = dt_lr if pname == "dt" else 1e-3
            expected = {"weight_decay": 0.0} if want_lr is None else {"lr": want_lr, "weight_decay": 0.0}
            assert hint == expected, (task, pname, hint)
        assert not hasattr(kernel.C, "_optim") and not hasattr(model.layers[0].D, "_optim")
        groups = param_groups(model, lr=0.01, weight_decay=0.05)
        ssm_group = [g for g in groups if g["lr"] == 1e-3]
        assert len(ssm_group) == 1 and ssm_group[0]["weight_decay"] == 0.0
        assert any(g["lr"] == 0.01 and g["weight_decay"] == 0.05 for g in groups)


# ---- backbone contract -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", [None, "listops"])  # prenorm/layer defaults; postnorm ListOps layout
def test_forward_backward_every_parameter_gets_a_gradient(name, task):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build(task)
    model.train()
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 32), pad_mask([24, 15], 24))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_padding_invariance(name, train):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build(overrides=dict(dropout=0.0, norm="batch"))
    model.train(train)
    x, mask, _ = assert_padding_invariant(model, 32)
    # the unpadded sequence alone gives the same outputs as its padded version
    model.eval()
    y_alone = model(x[1:, :13], None)
    torch.testing.assert_close(model(x, mask)[1, :13], y_alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_close_to_fp32_and_kernel_stays_fp32(name):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build().eval()
    seen = []
    hook = model.layers[0].kernel.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert_bf16_close_to_fp32(model, 32)
    hook.remove()
    assert seen == [torch.float32, torch.float32]  # the fp32 reference call, then the bf16 one
