"""Luna: the encoder against its equations written out with a standard attention reference, the
one-slot and permutation identities, padding invariance, dynamic projection (= truncating P),
linear score shapes, precision, configuration and registration."""

from __future__ import annotations


import pytest
import torch

import harness_models.luna as luna
from harness.errors import UserError
from harness.heads import count_parameters
from harness.registry import MODELS
from harness_models.transformer import sinusoidal_positions
from tests.checks import (LRA_TASKS, assert_bf16_close_to_fp32, assert_cuda_matches_cpu, assert_every_parameter_gets_a_gradient,
                          assert_padding_invariant, forbid_host_reads, pad_mask)



def encoder(**kw):
    cfg = dict(d_model=16, n_layers=2, n_heads=2, d_ffn=24, projection_length=6, dropout=0.0,
               attn_dropout=0.0, act_dropout=0.0)
    return luna.LunaEncoder(luna.LunaConfig(**{**cfg, **kw}))


def mha(q_in, kv_in, wq, wk, wv, heads, key_ok):
    """Reference multi-head attention, materialised softmax (key_ok True = attend), no output
    projection."""
    B, Lq, d = q_in.shape
    split = lambda t: t.view(B, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(wq(q_in)), split(wk(kv_in)), split(wv(kv_in))  # (B, H, N, dh)
    scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
    scores = scores.masked_fill(~key_ok[:, None, None, :], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, Lq, d)


def written_out(model: luna.LunaEncoder, x, pad):
    """§4.3/§4.7: embedding norms, then per layer pack, unpack, post-LN updates of X and P, FFN on X."""
    B, L, d = x.shape
    if model.positions == "sinusoidal":
        x = x + sinusoidal_positions(L, d, x.device, x.dtype)
    x = model.norm_x_in(x) * (~pad)[..., None]
    n = (~pad).sum(1)  # real lengths
    n_slots = min(model.projected.shape[0], L)
    p = model.norm_p_in(model.projected[:n_slots]).expand(B, -1, -1)
    slot_ok = torch.arange(n_slots)[None, :] < n[:, None]  # dynamic projection
    for layer in model.layers:
        a = layer.attn
        pk, pv, k, v = (a.pc, a.pc, a.c, a.c) if a.tie_kv else (a.pk, a.pv, a.k, a.v)
        y_p = mha(p, x, a.pq, pk, pv, a.n_heads, ~pad)  # pack: P attends to the real tokens
        y_x = a.out(mha(x, y_p, a.q, k, v, a.n_heads, slot_ok))  # unpack: X attends to Y_P
        x = layer.norm_x(x + y_x)
        if layer.norm_p is not None:
            p = layer.norm_p(p + y_p)
        x = layer.norm_ffn(x + layer.ffn(x))
    return x * (~pad)[..., None]


# ---- the written-out equations and the paper's identities ----------------------------------------

@pytest.mark.parametrize("tie_kv", [False, True])
@pytest.mark.parametrize("positions", ["sinusoidal", "none"])
def test_encoder_equals_pack_unpack_written_out(tie_kv, positions):
    torch.manual_seed(0)
    model = encoder(tie_kv=tie_kv, positions=positions).double().eval()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    pad = pad_mask([10, 7, 3], 10)  # 3 real tokens < 6 slots: the slot mask is active
    with torch.no_grad():
        torch.testing.assert_close(model(x, pad), written_out(model, x, pad), rtol=1e-10, atol=1e-10)


def test_one_slot_makes_the_unpack_the_same_at_every_position():
    torch.manual_seed(0)
    attn = luna.LunaAttention(luna.LunaConfig(d_model=16, n_heads=2, attn_dropout=0.0)).double()
    x, p = torch.randn(2, 9, 16, dtype=torch.float64), torch.randn(2, 1, 16, dtype=torch.float64)
    y_x, y_p = attn(x, p, pad_mask([9, 5], 9), None)
    expected = attn.out(attn.v(y_p))  # a single key: softmax = 1, so W_o W_v Y_P everywhere
    torch.testing.assert_close(y_x, expected.expand_as(y_x), rtol=1e-12, atol=1e-12)


def test_permuting_tokens_permutes_outputs_and_leaves_the_packed_context():
    torch.manual_seed(0)
    attn = luna.LunaAttention(luna.LunaConfig(d_model=16, n_heads=4, attn_dropout=0.0)).double()
    x, p = torch.randn(2, 12, 16, dtype=torch.float64), torch.randn(2, 5, 16, dtype=torch.float64)
    perm = torch.randperm(12)
    y_x, y_p = attn(x, p, None, None)
    y_x2, y_p2 = attn(x[:, perm], p, None, None)
    torch.testing.assert_close(y_p2, y_p)
    torch.testing.assert_close(y_x2, y_x[:, perm])
    model = encoder(positions="none").double().eval()  # the whole encoder, positions off
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, perm], None), model(x, None)[:, perm])


@pytest.mark.parametrize("slots,dynamic", [(6, True), (256, True), (6, False)])
def test_real_positions_ignore_pad_content_and_amount(slots, dynamic):
    torch.manual_seed(0)
    model = encoder(projection_length=slots, dynamic_projection=dynamic).eval()
    with torch.no_grad():
        assert_padding_invariant(model, 16, L=20, real=4, extra=7, scale=1e3, rtol=1e-5, atol=1e-5)


def test_dynamic_projection_equals_truncating_p_to_the_length():
    """The official code cuts P to the batch's longest length; masking slots >= n_b is the same."""
    torch.manual_seed(0)
    model = encoder(projection_length=12).double().eval()
    short = encoder(projection_length=5).double().eval()
    state = model.state_dict()
    state["projected"] = state["projected"][:5]
    short.load_state_dict(state)
    every_slot = encoder(projection_length=12, dynamic_projection=False).double().eval()
    every_slot.load_state_dict(model.state_dict())
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    mask = pad_mask([9, 5], 9)
    with torch.no_grad():
        y = model(x, mask)[1, :5]
        torch.testing.assert_close(y, short(x[1:, :5], None)[0])
        assert (y - every_slot(x, mask)[1, :5]).abs().max() > 1e-3  # the slot mask does something


def test_attention_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = encoder(attn_dropout=0.5)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        assert not torch.equal(model.train()(x, None), model(x, None))
        torch.testing.assert_close(model.eval()(x, None), model(x, None), rtol=0, atol=0)


def test_a_fully_padded_example_stays_finite():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 16, requires_grad=True)
    y = encoder()(x, pad_mask([10, 0], 10))
    assert torch.isfinite(y).all() and (y[1] == 0).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_scores_are_l_by_n_never_n_by_n(monkeypatch):
    """Cost O(n l): every softmax is over l slots or has l query rows, whatever the length."""
    shapes = []
    original = luna.masked_attention

    def spy(q, k, v, mask, dropout):
        shapes.append((q.shape[2], k.shape[2]))
        return original(q, k, v, mask, dropout)

    monkeypatch.setattr(luna, "masked_attention", spy)
    with torch.no_grad():
        encoder(projection_length=4)(torch.randn(1, 64, 16), None)
    assert shapes == [(4, 64), (64, 4)] * 2


# ---- gradients, precision, device -----------------------------------------------------------------

@pytest.mark.parametrize("tie_kv", [False, True])
def test_every_parameter_gets_a_gradient(tie_kv):
    torch.manual_seed(0)
    model = encoder(tie_kv=tie_kv)  # 6 slots, real lengths >= 6: every slot of P is used
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 12, 16), pad_mask([12, 8], 12))
    assert model.layers[-1].norm_p is None  # the last P update is never read: no dead parameters


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(0)
    with torch.no_grad():
        assert_bf16_close_to_fp32(encoder(projection_length=8).eval(), 16)


def test_softmaxes_run_in_float32_under_autocast(monkeypatch):
    seen = []
    original = luna.masked_attention

    def spy(q, k, v, mask, dropout):
        seen.append((q.dtype, k.dtype, v.dtype))
        return original(q, k, v, mask, dropout)

    monkeypatch.setattr(luna, "masked_attention", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoder()(torch.randn(1, 16, 16), None)
    assert seen and {dt for dts in seen for dt in dts} == {torch.float32}


def test_a_training_step_reads_no_tensor_value_on_the_host(monkeypatch):
    """No `.item()`/`bool()`/... in the model (first call included): on a GPU each would wait for
    every queued kernel (the harness's timed iterations must not; tests/harness/test_runners.py)."""
    model = encoder()
    x, mask = torch.randn(2, 48, 16), pad_mask([48, 30], 48)
    forbid_host_reads(monkeypatch, (luna.__file__,))
    model(x, mask).sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    assert_cuda_matches_cpu(encoder().eval(), torch.randn(2, 20, 16), pad_mask([20, 4], 20))


# ---- configuration and registration ---------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("projection_length", 0), ("tie_kv", "no"), ("act_dropout", 1.0),
                                       ("positions", "learned"), ("n_heads", 3), ("dynamic_projection", 1)])
def test_bad_config_is_one_clear_line(key, value):
    with pytest.raises(UserError) as err:
        luna.LunaConfig(**{"d_model": 16, "n_heads": 2, key: value})
    message = str(err.value)
    assert message.startswith("luna config:") and key in message and "\n" not in message


def test_tied_kv_has_two_maps_fewer_per_layer_and_bert_init():
    d = 16
    untied, tied = encoder(), encoder(tie_kv=True)
    assert count_parameters(untied) - count_parameters(tied) == 2 * 2 * (d * d + d)  # 2 layers
    model = encoder(d_model=64, n_heads=4, d_ffn=256, bert_init=True)
    weights = torch.cat([m.weight.flatten() for m in model.layers.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert all((m.bias == 0).all() for m in model.layers.modules() if isinstance(m, torch.nn.Linear))


def test_registration_and_configs():
    entry = MODELS.get("luna")
    assert entry.family == "attention" and "Ma et al." in entry.paper and entry.complexity.startswith("O(")
    assert set(LRA_TASKS) <= set(entry.task_configs) and set(LRA_TASKS) <= set(entry.train_configs)
    for task in LRA_TASKS:
        assert set(entry.train_config(task)) == {"lr", "weight_decay", "batch_size", "warmup_steps", "total_steps"}
        assert entry.config(task)["projection_length"] == 256  # Luna-256 on every task
        assert not entry.config(task)["tie_kv"]
    tiny = MODELS.get("luna_tiny")
    assert tiny.tiny_of == "luna" and tiny.config("text")["dropout"] == 0.0
    assert tiny.config("text")["projection_length"] == 256


def test_paper_config_parameter_count():
    """The paper's Image model (d 64, 1 layer, FFN 128, l 256, untied): 7 maps, FFN, LNs and P."""
    model = MODELS.get("luna").build("image", overrides=luna.PAPER_TASK_CONFIGS["image"])
    d, f, l = 64, 128, 256
    layer = 7 * (d * d + d) + (d * f + f + f * d + d) + 2 * 2 * d  # last layer: no P LayerNorm
    assert count_parameters(model) == l * d + 2 * 2 * d + layer  # P, embedding LayerNorms, layer
