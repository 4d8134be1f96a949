"""S4 / S4D: kernels against explicit recurrences, HiPPO-LegS NPLR, bidirectional convolution,
optimiser hints, and the backbone contract (gradients, padding, bf16, registration, budgets); the
S4-v1 / S4-v2 switches (causal kernel, v1 sharing with untied Q, final_act, raw Re Λ) and their
registered configs."""

from __future__ import annotations

import math

import pytest
import torch

import harness_models.s4 as s4
from harness.errors import UserError
from harness.heads import param_groups
from harness.records import config_hash
from harness.registry import MODELS
from tests.checks import (LRA_TASKS, assert_bf16_close_to_fp32, assert_every_parameter_gets_a_gradient,
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
    kernel = s4.DiagKernel(s4.S4Config(mode="diag", d_model=3, d_state=8, init=init, disc=disc, n_ssm=1), channels=2)
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
    for kernel in (s4.DiagKernel(s4.S4Config(mode="diag", d_model=4, d_state=8), channels=2),
                   s4.DPLRKernel(s4.S4Config(d_model=4, d_state=8, l_max=128), channels=2)):
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
    kernel = s4.DPLRKernel(s4.S4Config(d_model=3, d_state=8, l_max=L, n_ssm=1), channels=2)
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


# ---- S4-v1 / S4-v2 switches: causal kernel, v1 sharing, final_act, raw Re Λ ------------------------

def test_causal_kernel_output_at_t_ignores_later_inputs():
    torch.manual_seed(0)
    L, t = 24, 9
    x = torch.randn(2, L, 32)
    later = x.clone()
    later[:, t + 1:] = 5 * torch.randn(2, L - t - 1, 32)  # change every input after t
    causal = MODELS.get("s4_v1_tiny").build().eval()  # eval: batch norm uses running statistics
    assert all(not layer.bidirectional and layer.kernel(L).shape[0] == 1 for layer in causal.layers)
    y, y_later = causal(x, None), causal(later, None)
    torch.testing.assert_close(y_later[:, : t + 1], y[:, : t + 1])
    assert (y_later[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-2  # the later positions do see them
    # the same change reaches back in time through a two-sided (v2) kernel
    two_sided = MODELS.get("s4_v2_tiny").build().eval()
    assert (two_sided(later, None)[:, : t + 1] - two_sided(x, None)[:, : t + 1]).abs().max() > 1e-2


def test_v1_sharing_layout_and_one_lambda_for_all_channels():
    torch.manual_seed(0)
    H, N, L = 4, 8, 32
    kernel = s4.DPLRKernel(s4.S4Config(d_model=H, d_state=N, l_max=L, ssm_sharing="v1", real_param="raw"))
    assert kernel.A_real.shape == kernel.A_imag.shape == (1, N // 2)  # one Λ
    assert kernel.B.shape == kernel.P.shape == kernel.Q.shape == (H, N // 2, 2)  # per channel
    torch.testing.assert_close(kernel.Q, kernel.P)  # Q starts as P (HiPPO-LegS), as a separate tensor
    assert kernel.Q.data_ptr() != kernel.P.data_ptr()
    # Λ's gradient is the sum of every channel's contribution, and each channel contributes
    K = kernel(L)  # (1, H, L)
    per_channel = [torch.autograd.grad(K[0, h].pow(2).sum(), kernel.A_imag, retain_graph=True)[0]
                   for h in range(H)]
    assert all(g.abs().sum() > 0 for g in per_channel)
    (total,) = torch.autograd.grad(K.pow(2).sum(), kernel.A_imag, retain_graph=True)
    torch.testing.assert_close(total, sum(per_channel))
    # Q is trained: it gets a gradient of its own, different from P's
    g_p, g_q = torch.autograd.grad(K.pow(2).sum(), (kernel.P, kernel.Q))
    assert g_q.abs().sum() > 0 and not torch.allclose(g_p, g_q)


def test_v1_kernel_with_untied_q_equals_dense_ssm_recurrence():
    torch.manual_seed(0)
    H, N, L = 3, 8, 24
    kernel = s4.DPLRKernel(s4.S4Config(d_model=H, d_state=N, l_max=L, ssm_sharing="v1", real_param="raw"))
    with torch.no_grad():  # generic values, Q clearly different from P
        kernel.A_imag.add_(0.3 * torch.randn_like(kernel.A_imag))
        kernel.P.mul_(1 + 0.2 * torch.randn_like(kernel.P))
        kernel.Q.add_(0.3 * torch.randn_like(kernel.Q))
        kernel.B.add_(0.2 * torch.randn_like(kernel.B))
        kernel.dt.add_(torch.randn_like(kernel.dt))
    # dense full-mode A = Λ − P Q* from the raw parameters (Re Λ stored as is)
    full = lambda v: torch.cat([v, v.conj()], dim=-1)  # noqa: E731
    cplx = lambda t: torch.view_as_complex(t.detach().double().contiguous())  # noqa: E731
    lam = (kernel.A_real.detach().double() + 1j * kernel.A_imag.detach().double()).repeat(H, 1)
    lam, B, P, Q = full(lam), full(cplx(kernel.B)), full(cplx(kernel.P)), full(cplx(kernel.Q))
    dt = torch.nn.functional.softplus(kernel.dt.detach().double()).to(torch.complex128)
    A = torch.diag_embed(lam) - P[:, :, None] * Q.conj()[:, None, :]
    eye = torch.eye(N, dtype=torch.complex128)
    h = dt[:, None, None] / 2
    Abar = torch.linalg.solve(eye - h * A, eye + h * A)
    Bbar = torch.linalg.solve(eye - h * A, (dt[:, None] * B)[..., None])[..., 0]
    C = torch.randn(1, H, N // 2, dtype=torch.complex128)
    with torch.no_grad():
        kernel.C.copy_(torch.view_as_real(kernel.ctilde_from_c(C.to(torch.complex64), L)))
    ref = _impulse_response(Abar, Bbar, full(C), L)
    assert ref.imag.abs().max() < 1e-10
    torch.testing.assert_close(kernel(L).double(), ref.real, rtol=1e-4, atol=1e-5)
    # the doubling of l_kernel also uses the untied Q
    torch.testing.assert_close(kernel(L + 3).double(), _impulse_response(Abar, Bbar, full(C), L + 3).real,
                               rtol=1e-4, atol=1e-5)


def _expected_parameters(H, n_layers, N, n_ssm, bidirectional, final_act, sharing, prenorm):
    """Parameter count from the layout: reals per complex mode vector of length N/2 is N."""
    n_ssm = H if n_ssm is None else n_ssm
    if sharing == "v1":
        ssm = N + 4 * H * N  # Λ (re, im) once; B, P, Q, C per channel
    else:
        ssm = 3 * n_ssm * N + (2 if bidirectional else 1) * H * N  # (Λ, B, P) per copy; C per channel
    out = 2 * H if final_act == "glu" else H
    layer = ssm + H + H + H * out + out + 2 * H  # + dt, D, output linear, norm
    return n_layers * layer + (2 * H if prenorm else 0)


@pytest.mark.parametrize("switches", [
    dict(bidirectional=False, final_act="linear", ssm_sharing="v1", n_ssm=1, real_param="raw"),
    dict(bidirectional=True, final_act="glu", ssm_sharing="grouped", n_ssm=None, real_param="exp"),
    dict(bidirectional=True, final_act="linear", ssm_sharing="grouped", n_ssm=2, real_param="exp"),
])
def test_parameter_counts_follow_the_layout(switches):
    cfg = dict(d_model=16, n_layers=2, d_state=8, prenorm=True, l_max=16, **switches)
    model = s4.S4Backbone(s4.S4Config(**cfg))
    expected = _expected_parameters(16, 2, 8, switches["n_ssm"], switches["bidirectional"],
                                    switches["final_act"], switches["ssm_sharing"], True)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_s4_v1_text_parameter_count():
    cfg = MODELS.get("s4_v1").config("text")
    expected = _expected_parameters(cfg["d_model"], cfg["n_layers"], cfg["d_state"], cfg["n_ssm"],
                                    cfg["bidirectional"], cfg["final_act"], cfg["ssm_sharing"], cfg["prenorm"])
    assert expected == 199_680  # 4 layers at H 128, N 64
    assert sum(p.numel() for p in MODELS.get("s4_v1").build("text").parameters()) == expected


@pytest.mark.parametrize("final_act", ["glu", "linear"])
def test_final_act_is_glu_or_a_plain_linear_map(final_act):
    torch.manual_seed(0)
    H, L = 8, 20
    layer = s4.S4Layer(s4.S4Config(d_model=H, d_state=8, bidirectional=False, l_max=L, final_act=final_act)).eval()
    assert layer.output_linear.weight.shape == ((2 * H if final_act == "glu" else H), H)
    u = torch.randn(2, L, H)
    with torch.no_grad():
        y = s4.fft_conv(u.transpose(1, 2), layer.kernel(L), False).transpose(1, 2) + u * layer.D
        z = layer.output_linear(torch.nn.functional.gelu(y))
        want = torch.nn.functional.glu(z, dim=-1) if final_act == "glu" else z
        torch.testing.assert_close(layer(u), want, rtol=1e-4, atol=1e-5)


def test_raw_real_part_is_the_same_kernel_at_init():
    H, N, L = 4, 8, 32
    torch.manual_seed(0)
    exp = s4.DPLRKernel(s4.S4Config(d_model=H, d_state=N, l_max=L, real_param="exp"))
    torch.manual_seed(0)
    raw = s4.DPLRKernel(s4.S4Config(d_model=H, d_state=N, l_max=L, real_param="raw"))
    torch.testing.assert_close(raw.A_real, -torch.exp(exp.A_real))  # Re Λ stored as itself
    torch.testing.assert_close(raw(L), exp(L))
    with torch.no_grad():  # raw Re Λ is unconstrained: a positive value is kept as given
        raw.A_real.fill_(0.25)
    assert (raw.ssm()[1].real == 0.25).all()


def test_v1_optimiser_hints():
    kernel = MODELS.get("s4_v1_tiny").build("pathfinder").layers[0].kernel
    for pname in ("A_real", "A_imag", "B", "P", "dt"):  # v1: A, B (with P), dt at 1e-3, no decay
        assert getattr(kernel, pname)._optim == {"lr": 1e-3, "weight_decay": 0.0}, pname
    assert not hasattr(kernel.Q, "_optim") and not hasattr(kernel.C, "_optim")  # v1 kept Q beside C


@pytest.mark.parametrize("bad, match", [
    (dict(final_act="relu"), "final_act='relu'"),
    (dict(ssm_sharing="v2"), "ssm_sharing='v2'"),
    (dict(real_param="softplus"), "real_param='softplus'"),
    (dict(ssm_sharing="v1", n_ssm=2), "n_ssm=2"),
    (dict(ssm_sharing="v1", mode="diag"), "ssm_sharing='v1'"),
])
def test_bad_switch_values_are_one_line_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        MODELS.get("s4_v1_tiny").build(overrides=bad)


# ---- S4-v1 / S4-v2 registrations ---------------------------------------------------------------------

def test_s4_v1_resolves_to_the_tag_v1_configs():
    entry = MODELS.get("s4_v1")
    for task in LRA_TASKS:
        cfg = entry.config(task)
        assert (cfg["mode"], cfg["bidirectional"], cfg["final_act"], cfg["ssm_sharing"], cfg["real_param"]) \
            == ("dplr", False, "linear", "v1", "raw"), task
        assert (cfg["d_state"], cfg["norm"], cfg["dt_min"], cfg["dt_max"]) == (64, "batch", 1e-3, 1e-1), task
    text, image, pathfinder = entry.config("text"), entry.config("image"), entry.config("pathfinder")
    assert (text["d_model"], text["n_layers"], text["prenorm"], text["dropout"]) == (128, 4, True, 0.0)
    assert (image["d_model"], image["n_layers"], image["prenorm"], image["dropout"], image["tie_dropout"]) \
        == (512, 6, False, 0.2, True)
    assert (pathfinder["d_model"], pathfinder["n_layers"], pathfinder["dropout"]) == (256, 6, 0.1)
    assert entry.train_config("retrieval") == dict(lr=0.002, weight_decay=0.0, batch_size=64, warmup_steps=0,
                                                   total_steps=25 * math.ceil(147_086 / 64))
    assert entry.train_config("listops") == dict(lr=0.01, weight_decay=0.01, batch_size=50, warmup_steps=0,
                                                 total_steps=50 * 96_000 // 50)


def test_s4_v2_resolves_to_the_v2_1_configs():
    entry = MODELS.get("s4_v2")
    listops, image, pathx = entry.config("listops"), entry.config("image"), entry.config("pathx")
    for cfg in (listops, image, pathx):
        assert (cfg["bidirectional"], cfg["final_act"], cfg["ssm_sharing"], cfg["d_state"]) \
            == (True, "glu", "grouped", 64)
    assert (listops["d_model"], listops["n_layers"], listops["prenorm"], listops["n_ssm"], listops["lr_dt"]) \
        == (128, 8, False, None, 0.01)
    assert (image["d_model"], image["n_ssm"], image["norm"], image["dropout"], image["prenorm"]) \
        == (512, 2, "layer", 0.1, False)
    assert (pathx["dt_min"], pathx["dt_max"], pathx["lr_A"], pathx["lr_B"], pathx["lr_dt"]) \
        == (1e-4, 1e-2, 5e-4, 5e-4, 5e-4)
    assert entry.train_config("pathfinder") == dict(lr=0.004, weight_decay=0.03, batch_size=64, warmup_steps=2500,
                                                    total_steps=500_000)
    assert entry.train_config("text") == dict(lr=0.01, weight_decay=0.05, batch_size=16, warmup_steps=1000,
                                              total_steps=50_000)


def test_s4_and_s4d_configs_are_unchanged():
    """The new switches are not in `s4`/`s4d` configs: their layer is today's, and the config hashes of
    their stored records (results/reference, 2026-11-22, Text) still match."""
    assert MODELS.get("s4").config() == dict(
        d_model=256, n_layers=6, d_state=64, init="legs", disc="zoh", bidirectional=True, n_ssm=1,
        norm="batch", prenorm=True, dropout=0.0, tie_dropout=False, dt_min=1e-3, dt_max=1e-1, l_max=1024,
        lr_A=1e-3, lr_B=1e-3, lr_dt=1e-3, mode="dplr")
    assert config_hash(MODELS.get("s4").config("text")) == "aa3cf1ba903c"
    assert config_hash(MODELS.get("s4d").config("text")) == "81f094472b95"
    layer = MODELS.get("s4_tiny").build().layers[0]
    assert (layer.final_act, layer.kernel.sharing, layer.kernel.real_param, layer.kernel.Q) \
        == ("glu", "grouped", "exp", None)


@pytest.mark.parametrize("name", ["s4_v1", "s4_v2"])
@pytest.mark.parametrize("task", ["text", "image"])
def test_v1_v2_tiny_train_with_padding(name, task):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build(task).train()
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 32), pad_mask([24, 15], 24))
    assert_padding_invariant(model, 32)  # train mode: masked batch statistics
