"""Linear Transformer and Performer: attention cores against direct forms, FAVOR+ against softmax,
feature redraw and determinism, and the backbone contract."""

from __future__ import annotations

import math

import pytest
import torch

import harness_models.linear_attention as la
from harness.registry import MODELS
from tests.checks import (assert_bf16_close_to_fp32, assert_every_parameter_gets_a_gradient,
                          assert_padding_invariant, pad_mask)

NAMES = ("linear_transformer", "performer")


def _features(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return la.elu_feature_map(torch.randn(*shape, generator=g, dtype=torch.float64))


# ---- attention cores -----------------------------------------------------------------------------

@pytest.mark.parametrize("L,chunk", [(50, 16), (64, 64), (7, 64), (33, 1)])
def test_causal_chunkwise_equals_naive_prefix_sums(L, chunk):
    phi_q, phi_k = _features(2, 3, L, 5, seed=0), _features(2, 3, L, 5, seed=1)
    v = torch.randn(2, 3, L, 4, dtype=torch.float64)
    out = la.causal_linear_attention(phi_q, phi_k, v, chunk=chunk)
    torch.testing.assert_close(out, la.causal_linear_attention_naive(phi_q, phi_k, v))


def test_naive_prefix_form_is_causal_attention():
    phi_q, phi_k = _features(1, 2, 12, 5, seed=2), _features(1, 2, 12, 5, seed=3)
    v = torch.randn(1, 2, 12, 4, dtype=torch.float64)
    sim = (phi_q @ phi_k.transpose(-1, -2)).tril()  # (B, H, L, L), keys j <= i
    ref = (sim @ v) / (sim.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(la.causal_linear_attention_naive(phi_q, phi_k, v), ref)


def test_non_causal_equals_direct_quadratic_form():
    phi_q, phi_k = _features(2, 3, 20, 6, seed=4), _features(2, 3, 20, 6, seed=5)
    v = torch.randn(2, 3, 20, 4, dtype=torch.float64)
    ref = torch.zeros_like(v)
    for i in range(20):
        w = torch.stack([(phi_q[:, :, i] * phi_k[:, :, j]).sum(-1) for j in range(20)], dim=-1)  # (B, H, L)
        ref[:, :, i] = (w[..., None] * v).sum(2) / (w.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(la.linear_attention(phi_q, phi_k, v), ref)


# ---- FAVOR+ --------------------------------------------------------------------------------------

def test_orthogonal_features_are_orthogonal_within_blocks():
    W = la.orthogonal_random_features(40, 16, torch.Generator().manual_seed(0), scaling=1)
    assert W.shape == (40, 16)
    block = W[:16] / math.sqrt(16)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)


def test_performer_estimate_approaches_softmax_as_features_grow():
    torch.manual_seed(0)
    B, H, L, d = 2, 2, 40, 16
    q, k = 0.5 * torch.randn(B, H, L, d), 0.5 * torch.randn(B, H, L, d)
    v = torch.randn(B, H, L, d)
    exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    errors = []
    for m in (8, 32, 128, 512):
        errs = []
        for seed in range(6):
            W = la.orthogonal_random_features(m, d, torch.Generator().manual_seed(seed))
            approx = la.favor_attention(q, k, v, W)
            errs.append(((approx - exact).norm() / exact.norm()).item())
        errors.append(sum(errs) / len(errs))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.15, errors


def test_favor_key_stabiliser_ignores_pads():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 10, 8) for _ in range(3))
    mask = torch.arange(10)[None] >= 6
    W = la.orthogonal_random_features(32, 8, torch.Generator().manual_seed(0))
    out = la.favor_attention(q, k, v, W, mask)
    k2 = k.clone()
    k2[..., 6:, :] = 20.0  # huge pad keys would dominate an unmasked global max
    torch.testing.assert_close(la.favor_attention(q, k2, v, W, mask), out)


def _performer_layer(seed=0, layer_index=0, **kw):
    return la.PerformerSelfAttention(la.PerformerConfig(d_model=16, n_heads=2, feature_seed=seed, **kw), layer_index)


def test_feature_redraw_in_training_only():
    torch.manual_seed(0)
    layer = _performer_layer(redraw_interval=2, seed=3)
    x = torch.randn(2, 9, 16)
    first = layer.projection.clone()
    layer.eval()
    for _ in range(5):
        layer(x, None)
    assert torch.equal(layer.projection, first) and int(layer.draws) == 0
    layer.train()
    layer(x, None)
    layer(x, None)
    assert torch.equal(layer.projection, first)  # two calls: interval not yet reached
    layer(x, None)
    assert not torch.equal(layer.projection, first) and int(layer.draws) == 1
    second = layer.projection.clone()
    layer.eval()
    out1 = layer(x, None)
    out2 = layer(x, None)
    assert torch.equal(layer.projection, second) and torch.equal(out1, out2)
    restored = _performer_layer(redraw_interval=2, seed=3)  # the redraw state travels in the state dict
    restored.load_state_dict(layer.state_dict())
    assert (restored.draws, restored.calls_since_redraw) == (1, 1)
    restored.train()
    layer.train()
    for _ in range(2):
        layer(x, None)
        restored(x, None)
    assert layer.draws == 2 and torch.equal(restored.projection, layer.projection)


def test_features_are_deterministic_under_a_seed():
    a, b, c = _performer_layer(seed=7), _performer_layer(seed=7), _performer_layer(seed=8)
    assert torch.equal(a.projection, b.projection) and not torch.equal(a.projection, c.projection)
    for layer in (a, b):
        layer.redraw()
        layer.redraw()
    assert torch.equal(a.projection, b.projection)
    other_layer = _performer_layer(seed=7, layer_index=1)
    assert not torch.equal(other_layer.projection, _performer_layer(seed=7).projection)

    def build(feature_seed):
        torch.manual_seed(0)  # same weights; only the feature seed varies
        return MODELS.get("performer_tiny").build(overrides=dict(feature_seed=feature_seed)).eval()

    x = torch.randn(2, 12, 32)
    torch.testing.assert_close(build(1)(x, None), build(1)(x, None), rtol=0, atol=0)
    assert not torch.allclose(build(1)(x, None), build(2)(x, None))


# ---- backbone contract -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_backward_every_parameter_gets_a_gradient(name, causal):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build(overrides=dict(causal=causal, chunk_size=8))
    model.train()
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 32), pad_mask([24, 15], 24))


@pytest.mark.parametrize("name", NAMES)
def test_causal_option_does_not_look_ahead(name):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build(overrides=dict(causal=True, chunk_size=4)).eval()
    x = torch.randn(1, 16, 32)
    x2 = x.clone()
    x2[:, 10:] = torch.randn(1, 6, 32)
    torch.testing.assert_close(model(x2, None)[:, :10], model(x, None)[:, :10])
    assert not torch.allclose(model(x2, None)[:, 10:], model(x, None)[:, 10:])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_padding_invariance(name, train):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build(overrides=dict(dropout=0.0))
    model.train(train)
    x, mask, _ = assert_padding_invariant(model, 32)
    model.eval()
    torch.testing.assert_close(model(x, mask)[1, :13], model(x[1:, :13], None)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_close_to_fp32(name):
    torch.manual_seed(0)
    assert_bf16_close_to_fp32(MODELS.get(f"{name}_tiny").build().eval(), 32)
