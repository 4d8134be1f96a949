"""Linformer: the reference identities of the spec (baselines-table2 §2.7), the fixed length
(`max_positions`), the sharing modes' parameter counts, the pooling projection, LRA mode, and the
backbone contract."""

from __future__ import annotations

import pytest
import torch

import harness_models.linformer as lf
from harness.errors import UserError
from harness.registry import MODELS, TASKS
from tests.checks import (LRA_TASKS, assert_bf16_close_to_fp32, assert_every_parameter_gets_a_gradient,
                          assert_padding_invariant, pad_mask)



HEADS_16_2 = lf.LinformerConfig(d_model=16, n_heads=2)  # attention width 16 in 2 heads


def _encoder(**overrides):
    cfg = dict(d_model=16, n_layers=2, n_heads=2, d_ffn=32, dropout=0.0, max_positions=24, k=6)
    cfg.update(overrides)
    return lf.LinformerEncoder(lf.LinformerConfig(**cfg))


def _attention(L: int, sharing: str, seed: int = 0) -> lf.LinformerSelfAttention:
    torch.manual_seed(seed)
    proj = lf.LengthProjection(L, L, 2, sharing, "learned")
    return lf.LinformerSelfAttention(HEADS_16_2, proj).double()


def _full_attention(attn: lf.LinformerSelfAttention, x: torch.Tensor, mask=None) -> torch.Tensor:
    """Softmax attention with the module's q/k/v/out maps, written out: (B, L, d) -> (B, L, d)."""
    B, L, _ = x.shape
    H, dh = attn.n_heads, attn.head_dim
    q, k, v = ((x @ m.weight.T).view(B, L, H, dh).transpose(1, 2) for m in (attn.q, attn.k, attn.v))
    s = q @ k.transpose(-1, -2) / dh ** 0.5
    if mask is not None:
        s = s.masked_fill(mask[:, None, None, :], float("-inf"))
    o = torch.softmax(s, -1) @ v
    return o.transpose(1, 2).reshape(B, L, -1) @ attn.out.weight.T


# ---- reference identities -------------------------------------------------------------------------

@pytest.mark.parametrize("sharing", lf.SHARINGS)
def test_k_equal_L_with_identity_projections_is_full_attention(sharing):
    attn = _attention(12, sharing)
    with torch.no_grad():
        for kernel in (attn.projection.E, attn.projection.F):
            if kernel is not None:
                kernel.copy_(torch.eye(12).expand_as(kernel))
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x, None), _full_attention(attn, x), rtol=1e-12, atol=1e-12)


def test_random_projection_is_not_full_attention():
    """The identity above is not vacuous: the learned (xavier) kernel gives another function."""
    attn = _attention(12, "kv+headwise")
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    assert (attn(x, None) - _full_attention(attn, x)).abs().max() > 1e-3


@pytest.mark.parametrize("sharing", lf.SHARINGS)
def test_zeroing_pad_rows_equals_slicing_the_kernel(sharing):
    """Real outputs with a padding mask (any pad content) equal the outputs of the unpadded
    sequence, which uses the kernel's first `real` rows."""
    torch.manual_seed(0)
    attn = lf.LinformerSelfAttention(HEADS_16_2, lf.LengthProjection(20, 5, 2, sharing, "learned")).double()
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    x[:, 13:] = 1e6
    padded = attn(x, pad_mask([13], 20))
    torch.testing.assert_close(padded[:, :13], attn(x[:, :13], None), rtol=1e-12, atol=1e-12)


def test_padding_invariance_of_the_encoder():
    torch.manual_seed(0)
    with torch.no_grad():
        assert_padding_invariant(_encoder(max_positions=32).eval(), 16, L=20, real=13, extra=7, scale=7.0)


def test_lra_mode_lets_pads_into_the_projection():
    """mode="lra" keeps LRA's unmasked projection: the same padding changes real outputs."""
    torch.manual_seed(0)
    model = _encoder(mode="lra").eval()
    x = torch.randn(1, 20, 16)
    mask = pad_mask([13], 20)
    x2 = x.clone()
    x2[mask] = 5.0
    with torch.no_grad():
        assert (model(x2, mask)[~mask] - model(x, mask)[~mask]).abs().max() > 1e-3
        standard = _encoder().eval()
        torch.testing.assert_close(standard(x2, mask)[~mask], standard(x, mask)[~mask])


def test_pool_projection_averages_windows():
    kernel = lf.pooling_kernel(12, 4)  # windows of 3 positions
    x = torch.randn(12, 5)
    torch.testing.assert_close(kernel.T @ x, x.view(4, 3, 5).mean(1))
    uneven = lf.pooling_kernel(10, 4)  # 10 positions into 4 slots: sizes 3, 2, 3, 2
    torch.testing.assert_close(uneven.sum(0), torch.ones(4))
    assert (uneven > 0).sum(0).tolist() == [3, 2, 3, 2]


def test_with_pooling_equal_keys_give_every_query_the_mean_of_the_projected_values():
    """Pooling slots are averages, so equal keys give equal projected keys, uniform weights, and
    every query the mean of the k projected values."""
    torch.manual_seed(0)
    attn = lf.LinformerSelfAttention(HEADS_16_2, lf.LengthProjection(12, 4, 2, "kv+headwise", "pool")).double()
    with torch.no_grad():
        attn.k.weight.zero_()  # every key is 0: equal keys
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    v = (x @ attn.v.weight.T).view(1, 4, 3, 16).mean(1)  # (1, k, d): the pooled values
    expected = v.mean(1) @ attn.out.weight.T  # heads are column blocks, so the mean passes through
    # 1e-6: the pooling kernel's 1/3 is stored in float32
    torch.testing.assert_close(attn(x, None), expected[:, None].expand(1, 12, 16), rtol=1e-6, atol=1e-6)


# ---- fixed length, sharing, shapes -----------------------------------------------------------------

def test_longer_input_is_one_clear_error_and_shorter_input_works():
    model = _encoder(max_positions=16)
    assert model(torch.randn(1, 9, 16), None).shape == (1, 9, 16)
    with pytest.raises(UserError, match=r"input length 17 exceeds max_positions=16"):
        model(torch.randn(1, 17, 16), None)


@pytest.mark.parametrize("sharing,per_row", [("none", 2 * 2 * 2 * 6), ("headwise", 2 * 2 * 6),
                                             ("kv+headwise", 2 * 6), ("layerwise", 6)])
def test_parameters_grow_linearly_with_max_positions(sharing, per_row):
    """Per extra position: 2 layers x (K and V) x heads x k, less what the mode shares."""
    count = lambda n: sum(p.numel() for p in _encoder(sharing=sharing, max_positions=n).parameters())
    assert count(40) - count(24) == 16 * per_row


def test_pool_projection_has_no_parameters_and_any_length():
    count = lambda n: sum(p.numel() for p in _encoder(projection="pool", max_positions=n).parameters())
    assert count(16384) == count(24)
    assert "E" not in "".join(_encoder(projection="pool").state_dict())  # rebuilt, not stored


def test_scores_have_k_columns_whatever_the_length(monkeypatch):
    attn = _attention(30, "kv+headwise")
    attn.projection = lf.LengthProjection(30, 7, 2, "kv+headwise", "learned").double()
    seen, softmax = [], torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda s, dim: seen.append(tuple(s.shape)) or softmax(s, dim=dim))
    for L in (9, 30):
        attn(torch.randn(1, L, 16, dtype=torch.float64), None)
    assert seen == [(1, 2, 9, 7), (1, 2, 30, 7)]


# ---- backbone contract, config checks, registration -------------------------------------------------

@pytest.mark.parametrize("overrides", [dict(), dict(sharing="none"), dict(sharing="layerwise", qkv_dim=8),
                                       dict(projection="pool", mode="lra")])
def test_every_parameter_gets_a_gradient(overrides):
    torch.manual_seed(0)
    model = _encoder(**overrides)
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 16), pad_mask([24, 17], 24))


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    with torch.no_grad():
        assert_bf16_close_to_fp32(_encoder(max_positions=32).eval(), 16)


@pytest.mark.parametrize("key,value", [("k", 0), ("sharing", "kv"), ("projection", "conv"), ("mode", "fair"),
                                       ("max_positions", 1.5), ("qkv_dim", 10)])
def test_bad_config_is_one_clear_error(key, value):
    with pytest.raises(UserError, match=f"linformer config: {key}="):
        _encoder(n_heads=4, **{key: value})


def test_registration_and_task_lengths():
    entry = MODELS.get("linformer")
    assert entry.family == "attention" and entry.complexity == "O(L k)"
    assert set(LRA_TASKS) <= set(entry.task_configs) and set(LRA_TASKS) <= set(entry.train_configs)
    assert MODELS.get("linformer_tiny").config("pathx")["projection"] == "pool"
    for task in LRA_TASKS:  # the kernel covers the task's inputs at paper scale
        assert entry.config(task)["max_positions"] >= TASKS.get(task).cls.spec.seq_len, task
        assert entry.config(task)["k"] == 16
    for task in ("listops", "text", "retrieval"):  # LRA ran the base (Transformer) architectures
        arch = {k: v for k, v in MODELS.get("transformer").config(task).items() if k != "attn_dropout"}
        assert {k: entry.config(task)[k] for k in arch} == arch
    MODELS.get("linformer").build("pathfinder")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_bf16_is_finite():
    torch.manual_seed(0)
    model = _encoder(max_positions=64).eval()
    x, mask = torch.randn(2, 40, 16), pad_mask([40, 29], 40)
    with torch.no_grad():
        ref = model(x, mask)
        torch.testing.assert_close(model.cuda()(x.cuda(), mask.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x.cuda(), mask.cuda()).float().cpu()
    assert torch.isfinite(low).all() and ((low - ref)[~mask].norm() / ref[~mask].norm()) < 0.05
