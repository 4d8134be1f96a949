"""Mamba: chunked selective scan against the sequential loop, bidirectional padding, scan backends
(mamba-ssm agreement on CUDA when present), and the backbone contract."""

from __future__ import annotations

import pytest
import torch

import harness_models.mamba as mm
import harness_models.scan as sc
from harness.errors import UserError
from harness.registry import MODELS
from tests.checks import (LRA_TASKS, assert_bf16_close_to_fp32, assert_every_parameter_gets_a_gradient,
                          assert_padding_invariant, pad_mask)



def _scan_inputs(B=2, L=50, E=6, N=4, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, L, E, generator=g, dtype=dtype)
    delta = torch.rand(B, L, E, generator=g, dtype=dtype) * 1.5  # includes fast-decaying steps
    A = -torch.exp(torch.randn(E, N, generator=g, dtype=dtype))
    Bm, Cm = torch.randn(B, L, N, generator=g, dtype=dtype), torch.randn(B, L, N, generator=g, dtype=dtype)
    D = torch.randn(E, generator=g, dtype=dtype)
    return [t.to(device) for t in (u, delta, A, Bm, Cm, D)]


def _explicit_loop(u, delta, A, Bm, Cm, D):
    """The recurrence written out element by element (independent of harness_models.mamba)."""
    B, L, E = u.shape
    N = A.shape[1]
    y = torch.zeros_like(u)
    for b in range(B):
        for e in range(E):
            h = torch.zeros(N, dtype=u.dtype)
            for t in range(L):
                h = torch.exp(delta[b, t, e] * A[e]) * h + delta[b, t, e] * u[b, t, e] * Bm[b, t]
                y[b, t, e] = (Cm[b, t] * h).sum() + D[e] * u[b, t, e]
    return y


def test_sequential_reference_equals_explicit_loop():
    args = _scan_inputs(B=1, L=12, E=3, N=2)
    torch.testing.assert_close(sc.selective_scan_sequential(*args), _explicit_loop(*args))


@pytest.mark.parametrize("L,chunk", [(50, 16), (64, 64), (37, 5), (9, 64), (50, None)])
def test_chunked_scan_equals_sequential_loop_with_gradients(L, chunk):
    u, delta, A, Bm, Cm, D = _scan_inputs(L=L)
    leaves = [t.requires_grad_() for t in (u, delta, A, Bm, Cm)]
    ref = sc.selective_scan_sequential(u, delta, A, Bm, Cm, D)
    out = sc.selective_scan_chunked(u, delta, A, Bm, Cm, D, chunk=chunk)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    g_out = torch.autograd.grad((out * w).sum(), leaves)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b)


def test_chunked_scan_is_stable_for_very_fast_decays():
    u, delta, A, Bm, Cm, D = _scan_inputs(L=40, dtype=torch.float32)
    delta = delta * 200  # log-decays down to about -1000 per step
    ref = sc.selective_scan_sequential(u, delta, A, Bm, Cm, D)
    out = sc.selective_scan_chunked(u, delta, A, Bm, Cm, D, chunk=16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


def test_causal_depthwise_conv_equals_padded_conv1d():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 11, 6)
    ref = conv(x.transpose(1, 2))[..., :11].transpose(1, 2)
    torch.testing.assert_close(mm.causal_depthwise_conv(x, conv.weight, conv.bias), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_causal_depthwise_conv_cuda_path_matches_cpu_path():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 11, 6)
    cpu = mm.causal_depthwise_conv(x, conv.weight, conv.bias)
    gpu = mm.causal_depthwise_conv(x.cuda(), conv.weight.cuda(), conv.bias.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_auto_chunk_is_near_sqrt_length():
    assert sc.auto_chunk(4096) == 64 and sc.auto_chunk(16384) == 128 and sc.auto_chunk(10) == 16


# ---- backends --------------------------------------------------------------------------------------

def test_cpu_uses_the_pytorch_scan_and_scan_options_agree():
    torch.manual_seed(0)
    model = MODELS.get("mamba_tiny").build(overrides=dict(bidirectional=True)).eval()
    assert sc.scan_backend("cpu") == "torch-chunked"
    x = torch.randn(2, 30, 32)
    y = model(x, None)
    assert model.last_scan == "torch-chunked"
    model.scan = "sequential"
    torch.testing.assert_close(model(x, None), y, rtol=1e-4, atol=1e-5)
    assert model.last_scan == "torch-sequential"
    model.scan = "mamba_ssm"
    with pytest.raises(UserError):
        model(x, None)
    with pytest.raises(UserError):
        MODELS.get("mamba_tiny").build(overrides=dict(scan="fast"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or sc.mamba_ssm_scan() is None,
                    reason="needs CUDA and an importable mamba-ssm with its extension")
def test_mamba_ssm_scan_agrees_with_pytorch_scan():
    u, delta_raw, A, Bm, Cm, D = _scan_inputs(B=2, L=300, E=16, N=8, dtype=torch.float32, device="cuda")
    delta_raw = delta_raw - 2.0
    bias = torch.linspace(-3, 0, 16, device="cuda")
    ours = sc.selective_scan(u, delta_raw, A, Bm, Cm, D, bias, "torch-chunked")
    theirs = sc.selective_scan(u, delta_raw, A, Bm, Cm, D, bias, "mamba_ssm")
    torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-4)
    model = MODELS.get("mamba_tiny").build(overrides=dict(bidirectional=True)).cuda().eval()
    x = torch.randn(2, 64, 32, device="cuda")
    y_cuda = model(x, None)
    assert model.last_scan == "mamba_ssm"
    model.scan = "torch"
    torch.testing.assert_close(y_cuda, model(x, None), rtol=1e-3, atol=1e-4)


# ---- backbone contract -----------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_backward_every_parameter_gets_a_gradient(bidirectional):
    torch.manual_seed(0)
    model = MODELS.get("mamba_tiny").build(overrides=dict(bidirectional=bidirectional)).train()
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 32), pad_mask([24, 15], 24))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_invariance(bidirectional):
    torch.manual_seed(0)
    model = MODELS.get("mamba_tiny").build(overrides=dict(bidirectional=bidirectional))
    x, _, y1 = assert_padding_invariant(model, 32, atol=1e-5)
    # the backward direction starts at the last real position: same as the unpadded sequence alone
    torch.testing.assert_close(y1[1, :13], model(x[1:, :13], None)[0], rtol=1e-4, atol=1e-5)


def test_bidirectional_output_depends_on_later_positions():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 32)
    x2 = x.clone()
    x2[:, 12:] += 1.0
    for bidirectional, looks_ahead in ((False, False), (True, True)):
        model = MODELS.get("mamba_tiny").build(overrides=dict(bidirectional=bidirectional)).eval()
        changed = not torch.allclose(model(x2, None)[:, :12], model(x, None)[:, :12])
        assert changed == looks_ahead


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    assert_bf16_close_to_fp32(MODELS.get("mamba_tiny").build(overrides=dict(bidirectional=True)).eval(), 32)


def test_registration_metadata_and_optim_hints():
    entry = MODELS.get("mamba")
    assert entry.family == "ssm" and entry.complexity == "O(L)" and "Gu" in entry.paper
    assert entry.requires == () and entry.availability() == (True, "")
    assert "d_model" in entry.defaults and set(LRA_TASKS) <= set(entry.task_configs)
    assert all(entry.task_configs[t]["bidirectional"] for t in LRA_TASKS)
    for task in LRA_TASKS:
        cfg = entry.train_config(task)
        assert set(cfg) - {"betas"} == {"lr", "weight_decay", "batch_size", "warmup_steps", "total_steps"}
    tiny = MODELS.get("mamba_tiny")
    assert tiny.tiny_of == "mamba" and tiny.config()["d_model"] == 32
    model = tiny.build("text")
    ssm = model.mixers[0].directions[1]
    assert ssm.A_log._optim == {"weight_decay": 0.0} and ssm.D._optim == {"weight_decay": 0.0}
    torch.testing.assert_close(-torch.exp(ssm.A_log[0]), -torch.arange(1.0, 17.0))  # S4D-real init
