"""MEGA / MEGA-chunk (models/mega.py) against the equations of shared/spec/mega.md.

Small shapes throughout; CUDA variants skip without a GPU.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import UserError
from harness.registry import MODELS
from harness_models import ema as E
from harness_models import mega as M
from harness_models import mega_attention as A

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TOL = dict(atol=1e-4, rtol=1e-4)  # fast vs reference in fp32 (FFT vs recurrence, SDPA vs softmax)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and a busy machine makes OpenMP spin-waits costly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> M.MegaConfig:
    cfg = dict(d_model=16, n_layers=2, d_ffn=24, z_dim=8, v_dim=24, h_dim=4, max_positions=64,
               truncation=None, dropout=0.0, norm="layernorm", prenorm=True)
    cfg.update(overrides)
    return M.make_config(**cfg)


def liven(model: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-scale weights so that every term (bias, gates, Q/K offsets) visibly matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) / math.sqrt(module.in_features))
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, M.MovingAverageGatedAttention):
                module.gamma.copy_(torch.randn(module.gamma.shape, generator=g))
                module.beta.copy_(torch.randn(module.beta.shape, generator=g) * 0.5)
            elif isinstance(module, (A.SimpleRelativePositionalBias, A.RotaryRelativePositionalBias)):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def pair(cfg: M.MegaConfig, seed: int = 0):
    """A fast and a reference encoder with identical weights."""
    torch.manual_seed(seed)
    fast = liven(M.MegaEncoder(M.make_config(**dict(vars(cfg), impl="fast"))), seed)
    ref = M.MegaEncoder(M.make_config(**dict(vars(cfg), impl="reference")))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def right_pad_mask(B: int, L: int, lengths) -> torch.Tensor:
    return torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]  # (B, L) True = pad


def random_ema(d=5, h=4, bidirectional=True, truncation=None, seed=0) -> M.MultiHeadEMA:
    torch.manual_seed(seed)
    ema = M.MultiHeadEMA(M.make_config(d_model=d, h_dim=h, bidirectional=bidirectional, truncation=truncation))
    with torch.no_grad():  # spread p and q over (0, 1) rather than around the init values
        ema.delta.normal_(0, 1.5)
        ema.alpha.normal_(0, 1.5)
    return ema


# ------------------------------------------------------------------------------------------------
# EMA
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1023, 4095, 5119, 8191])
def test_fft_length_is_smallest_even_5_smooth(n):
    def smooth(m):
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        return m == 1

    expected = next(m for m in itertools.count(max(n, 2)) if m % 2 == 0 and smooth(m))
    assert E.fft_length(n) == expected


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("truncation", [None, 7])
@pytest.mark.parametrize("padded", [False, True])
def test_ema_fft_equals_recurrence(bidirectional, truncation, padded):
    ema = random_ema(bidirectional=bidirectional, truncation=truncation)
    x = torch.randn(3, 29, 5)
    mask = right_pad_mask(3, 29, [29, 20, 3]) if padded else None
    fast = ema.forward_fft(x, mask)
    ref = ema.forward_recurrence(x, mask)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    if padded:  # pads contribute nothing to real positions
        x2 = x.masked_fill(mask[..., None], 7.0)
        real = ~mask
        torch.testing.assert_close(ema.forward_fft(x2, mask)[real], fast[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("truncation", [None, 6])
def test_bidirectional_ema_is_causal_plus_anticausal_conv(truncation):
    ema = random_ema(d=4, bidirectional=True, truncation=truncation)
    B, L, d = 2, 17, 4
    x = torch.randn(B, L, d)
    K = ema.kernel_length(L)
    k = ema.kernel(K)  # (2d, K)
    kf, kb = k[:d], k[d:]
    y = torch.zeros(B, L, d)
    for t in range(L):
        for i in range(K):
            if t - i >= 0:
                y[:, t] += kf[:, i] * x[:, t - i]  # causal part, lag 0 included
            if t + i < L:
                y[:, t] += kb[:, i] * x[:, t + i]  # anti-causal part, lag 0 included again
    torch.testing.assert_close(ema.conv_fft(x), y, atol=1e-5, rtol=1e-5)
    # the kernel itself is the damped-EMA Vandermonde sum of spec §2
    p = torch.sigmoid(ema.delta).squeeze(-1)
    q = 1 - p * torch.sigmoid(ema.alpha).squeeze(-1)
    t = torch.arange(K, dtype=torch.float32)
    direct = (ema.gamma * p * ema.beta.squeeze(-1))[..., None] * q[..., None] ** t
    torch.testing.assert_close(k, direct.sum(1) * math.sqrt(1 / ema.h), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("truncation", [None, 9])
def test_fast_bidirectional_fft_equals_official_construction(truncation):
    """Official: length-(2K-1) kernel [pad(k_fwd, left K-1) + pad(flip(k_bwd), right K-1)], input
    left-padded by K-1, FFT size 2(L+K-1), output slice [2K-2, 2K-2+L)."""
    ema = random_ema(d=6, bidirectional=True, truncation=truncation, seed=3)
    B, L, d = 2, 33, 6
    x = torch.randn(B, L, d)
    K = ema.kernel_length(L)
    k = ema.kernel(K)
    kf, kb = k[:d], k[d:]
    kernel = F.pad(kf, (K - 1, 0)) + F.pad(kb.flip(-1), (0, K - 1))  # (d, 2K-1)
    xt = F.pad(x.transpose(1, 2), (K - 1, 0))  # (B, d, L+K-1)
    n = 2 * (L + K - 1)
    out = torch.fft.irfft(torch.fft.rfft(xt, n=n) * torch.fft.rfft(kernel, n=n), n=n)
    official = out[..., 2 * K - 2: 2 * K - 2 + L].transpose(1, 2)
    torch.testing.assert_close(ema.conv_fft(x), official, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional,L,K", [(True, 9, 4), (False, 9, 4), (True, 7, 7), (True, 6, 1),
                                                 (False, 5, 5)])
def test_ema_conv_op_gradient_and_registration(bidirectional, L, K):
    """The hand-written adjoints of the FFT op against finite differences (fp64), and the op's
    fake (meta) and autograd registrations against torch.library's own checks."""
    torch.manual_seed(0)
    D = 6 if bidirectional else 3
    x = torch.randn(2, 3, L, dtype=torch.float64, requires_grad=True)  # (B, d, L), time last
    kernel = torch.randn(D, K, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: E.ema_conv(a, b, bidirectional), (x, kernel))
    torch.library.opcheck(E.ema_conv, (x.float().detach().requires_grad_(), kernel.float().detach()
                                       .requires_grad_(), bidirectional))


def test_ema_conv_op_keeps_input_dtype_for_its_gradient():
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16, requires_grad=True)
    kernel = torch.randn(6, 8, requires_grad=True)
    y = E.ema_conv(x, kernel, True)
    assert y.dtype == torch.float32 and y.shape == (2, 3, E.ema_fft_length(8, 8))  # fp32 (pitfall 3)
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and kernel.grad.dtype == torch.float32


def test_ema_kernel_is_fp32_with_bf16_params():
    ema = random_ema(d=3, bidirectional=True)
    ema32 = random_ema(d=3, bidirectional=True)
    ema.to(torch.bfloat16)
    ema32.load_state_dict({k: v.float() for k, v in ema.state_dict().items()})
    k16, k32 = ema.kernel(4096), ema32.kernel(4096)
    assert k16.dtype == torch.float32
    torch.testing.assert_close(k16, k32, atol=0, rtol=0)  # no bf16 time index (spec pitfall 3)
    x = torch.randn(2, 50, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ema.conv_fft(x)
    assert y.dtype == torch.float32


def test_eval_mode_has_no_stale_kernel():
    layer = M.MovingAverageGatedAttention(tiny()).eval()
    x = torch.randn(2, 12, 16)
    before = layer(x)
    with torch.no_grad():
        layer.move.delta.add_(1.0)
    after = layer(x)
    fresh = M.MovingAverageGatedAttention(tiny()).eval()
    fresh.load_state_dict(layer.state_dict())
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh(x))


def test_ema_recurrent_forms_equal_full_causal():
    ema = random_ema(d=5, bidirectional=False, truncation=None, seed=1)
    x = torch.randn(2, 24, 5)
    full = ema.forward_fft(x)
    state, steps = None, []
    for t in range(24):
        y, state = ema.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    state, blocks = None, []
    for start in range(0, 24, 8):  # 8-token blocks carrying the state
        y, state = ema.block(x[:, start:start + 8], state)
        blocks.append(y)
    torch.testing.assert_close(torch.cat(blocks, 1), full, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Relative position bias
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 7])
def test_simple_bias_indexing(n):
    bias = A.SimpleRelativePositionalBias(7)
    w = bias.rel_pos_bias
    b = bias(n)
    for i in range(n):
        for j in range(n):
            assert b[i, j] == w[7 - 1 + j - i]
        torch.testing.assert_close(bias.row(i), b[i, : i + 1])
    torch.testing.assert_close(bias.reference(n), b)
    with pytest.raises(UserError, match="max_positions"):
        bias(8)


def test_rotary_bias_closed_form_equals_rope_products():
    bias = A.RotaryRelativePositionalBias(8)
    with torch.no_grad():
        bias.alpha.normal_()
        bias.beta.normal_()
    b = bias(40)
    torch.testing.assert_close(b, bias.reference(40), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias.row(12), b[12, :13], atol=1e-5, rtol=1e-5)
    assert torch.allclose(b.diagonal(3), b[0, 3].expand(37))  # a function of j - i


# ------------------------------------------------------------------------------------------------
# Fast path == reference path
# ------------------------------------------------------------------------------------------------
# every attention function, softmax through both kernels (SDPA, materialised)
ATTENTION_KERNELS = [("softmax", "sdpa"), ("softmax", "matmul"), ("laplace", "auto"), ("relu2", "auto")]


@pytest.mark.parametrize("attention,softmax_kernel", ATTENTION_KERNELS)
@pytest.mark.parametrize("rel_pos", ["simple", "rotary"])
@pytest.mark.parametrize("chunk_size", [-1, 8])
@pytest.mark.parametrize("padded", [False, True])
def test_fast_equals_reference(attention, softmax_kernel, rel_pos, chunk_size, padded):
    cfg = tiny(attention=attention, softmax_kernel=softmax_kernel, rel_pos=rel_pos, chunk_size=chunk_size,
               truncation=11, norm="scalenorm" if padded else "layernorm", prenorm=not padded)
    fast, ref = pair(cfg)
    L = 21  # not a multiple of the chunk: padded inside
    x = torch.randn(3, L, 16)
    mask = right_pad_mask(3, L, [21, 13, 2]) if padded else None
    real = ~mask if padded else torch.ones(3, L, dtype=torch.bool)
    out_f, out_r = fast(x, mask), ref(x, mask)
    torch.testing.assert_close(out_f[real], out_r[real], **TOL)
    (out_f[real].square().sum()).backward()
    (out_r[real].square().sum()).backward()
    for (name, pf), pr in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, atol=2e-4, rtol=2e-4, msg=name)


@pytest.mark.parametrize("attention,softmax_kernel", ATTENTION_KERNELS)
@pytest.mark.parametrize("rel_pos,chunk_size", [("simple", -1), ("rotary", 8)])
def test_reference_runs_in_float64(attention, softmax_kernel, rel_pos, chunk_size):
    """impl="reference" on a float64 model (q, k, v and the simple bias all fp64) runs, returns fp64
    and agrees with the fast path; both keep fp32 EMA kernels and biases, hence the tolerance."""
    cfg = tiny(attention=attention, softmax_kernel=softmax_kernel, rel_pos=rel_pos, chunk_size=chunk_size,
               truncation=11, norm="scalenorm", prenorm=False)
    fast, ref = (model.double() for model in pair(cfg, seed=3))
    x = torch.randn(3, 21, 16, dtype=torch.float64)
    mask = right_pad_mask(3, 21, [21, 13, 2])
    out_f, out_r = fast(x, mask), ref(x, mask)
    assert out_r.dtype == torch.float64 and torch.isfinite(out_r).all()
    torch.testing.assert_close(out_r[~mask], out_f[~mask], atol=1e-5, rtol=1e-5)
    out_r[~mask].square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in ref.parameters())


@pytest.mark.parametrize("attention,softmax_kernel", ATTENTION_KERNELS)
@pytest.mark.parametrize("chunk_size", [-1, 8])
def test_fast_equals_reference_causal(attention, softmax_kernel, chunk_size):
    cfg = tiny(attention=attention, softmax_kernel=softmax_kernel, chunk_size=chunk_size,
               bidirectional=False, causal=True,
               truncation=None)
    fast, ref = pair(cfg, seed=2)
    x = torch.randn(2, 19, 16)
    mask = right_pad_mask(2, 19, [19, 11])
    torch.testing.assert_close(fast(x, mask)[~mask], ref(x, mask)[~mask], **TOL)
    torch.testing.assert_close(fast(x), ref(x), **TOL)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("softmax_kernel", ["sdpa", "matmul"])
def test_all_pad_chunk_rule(causal, softmax_kernel):
    """Rows that see no real key are left unmasked (official: all-pad chunks), so even outputs at
    pad positions are finite and the fast path agrees with the reference everywhere."""
    cfg = tiny(chunk_size=8, causal=causal, bidirectional=not causal, softmax_kernel=softmax_kernel)
    torch.manual_seed(0)
    fast = liven(M.MovingAverageGatedAttention(cfg))
    ref = M.MovingAverageGatedAttention(M.make_config(**dict(vars(cfg), impl="reference")))
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 16, 16)
    mask = right_pad_mask(2, 16, [16, 5])  # second sequence: chunk 2 is all pad
    if causal:
        mask[0, :3] = True  # left padding: rows 0-2 of chunk 1 see only pads
    out = fast(x, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref(x, mask), **TOL)
    rows = A.hidden_pad_rows(mask.reshape(4, 8), causal)
    assert not rows[3].any()  # the all-pad chunk keeps every key
    if causal:
        assert not rows[0, :3].any() and rows[0, 3:, :3].all()


def test_chunk_at_least_length_equals_full_mega():
    for C in (20, 32):
        torch.manual_seed(C)
        full = liven(M.MegaEncoder(tiny(chunk_size=-1, max_positions=C)), C).eval()
        chunked = M.MegaEncoder(tiny(chunk_size=C)).eval()
        chunked.load_state_dict(full.state_dict())  # bias sized to C = M: same parameter
        x = torch.randn(2, 20, 16)
        mask = right_pad_mask(2, 20, [20, 9])
        torch.testing.assert_close(chunked(x, mask)[~mask], full(x, mask)[~mask])
        torch.testing.assert_close(chunked(x), full(x))


def test_batch_shorter_than_chunk_and_ragged_length():
    torch.manual_seed(0)
    model = liven(M.MegaEncoder(tiny(chunk_size=8, attention="laplace"))).eval()
    short = torch.randn(2, 5, 16)
    assert model(short).shape == (2, 5, 16)  # L < C: one chunk of length L
    assert torch.isfinite(model(short, right_pad_mask(2, 5, [5, 2]))).all()
    # L = 20 -> padded to 24 inside; equal to the caller padding to 24 with pads at the end
    x = torch.randn(2, 20, 16)
    mask = right_pad_mask(2, 20, [20, 17])
    inside = model(x, mask)
    outside = model(F.pad(x, (0, 0, 0, 4)), F.pad(mask, (0, 4), value=True))[:, :20]
    torch.testing.assert_close(inside[~mask], outside[~mask])
    # and a single layer handles the ragged length on its own
    layer = model.layers[0].mega
    torch.testing.assert_close(layer(x, mask)[~mask],
                               layer(F.pad(x, (0, 0, 0, 4)), F.pad(mask, (0, 4), value=True))[:, :20][~mask])


@pytest.mark.parametrize("norm,attention,chunk_size,train", [
    ("layernorm", "softmax", -1, False),
    ("scalenorm", "softmax", 8, True),
    ("rmsnorm", "relu2", 8, False),
    ("batchnorm", "laplace", 8, True),
    ("batchnorm", "softmax", -1, True),
])
def test_padding_invariance(norm, attention, chunk_size, train):
    torch.manual_seed(0)
    model = liven(M.MegaEncoder(tiny(norm=norm, attention=attention, chunk_size=chunk_size,
                                     prenorm=norm == "batchnorm", truncation=6)))
    model.train(train)  # dropout is 0; train mode exercises batch statistics
    x = torch.randn(3, 18, 16)
    mask = right_pad_mask(3, 18, [18, 10, 1])
    out = model(x, mask)
    other_pads = torch.where(mask[..., None], torch.randn(3, 18, 16) * 5, x)
    torch.testing.assert_close(model(other_pads, mask)[~mask], out[~mask], atol=1e-5, rtol=1e-5)
    longer = torch.cat([other_pads, torch.randn(3, 13, 16)], 1)  # 13 more pads (a new chunk too)
    longer_mask = F.pad(mask, (0, 13), value=True)
    torch.testing.assert_close(model(longer, longer_mask)[:, :18][~mask], out[~mask], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Incremental decoding
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention,rel_pos,chunk_size,prenorm", [
    ("softmax", "simple", -1, True),
    ("softmax", "rotary", 6, False),
    ("laplace", "simple", 6, True),
    ("relu2", "rotary", -1, False),
])
def test_incremental_decoding_equals_causal_forward(attention, rel_pos, chunk_size, prenorm):
    cfg = tiny(attention=attention, rel_pos=rel_pos, chunk_size=chunk_size, prenorm=prenorm,
               norm="layernorm" if prenorm else "scalenorm", bidirectional=False, causal=True)
    torch.manual_seed(0)
    model = liven(M.MegaEncoder(cfg)).eval()
    x = torch.randn(2, 17, 16)
    full = model(x)
    state, outs = None, []
    for t in range(17):
        y, state = model.step(x[:, t], state)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-5, rtol=1e-5)
    if chunk_size > 0:  # the K/V cache holds the current chunk only
        assert state[0]["k"].shape[1] == 17 % chunk_size


def test_step_refuses_bidirectional_model():
    with pytest.raises(ValueError):
        M.MegaEncoder(tiny()).step(torch.randn(1, 16))


# ------------------------------------------------------------------------------------------------
# Precision, gradients, sizes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention,chunk_size", [("softmax", -1), ("laplace", 8)])
def test_bf16_autocast_close_to_fp32(attention, chunk_size):
    torch.manual_seed(0)
    model = M.MegaEncoder(tiny(attention=attention, chunk_size=chunk_size, truncation=None)).eval()
    x = torch.randn(2, 40, 16)
    mask = right_pad_mask(2, 40, [40, 25])
    ref = model(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, mask)
    assert torch.isfinite(low).all()
    err = (low.float() - ref)[~mask].norm() / ref[~mask].norm()
    assert err < 3e-2, float(err)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_every_parameter_receives_a_gradient(impl):
    for extra in (dict(attention="laplace", rel_pos="rotary", norm="batchnorm"),
                  dict(attention="softmax", rel_pos="simple", norm="rmsnorm", prenorm=False,
                       chunk_size=8)):
        torch.manual_seed(0)
        model = liven(M.MegaEncoder(tiny(impl=impl, **extra)))
        x = torch.randn(2, 20, 16)
        model(x, right_pad_mask(2, 20, [20, 14])).pow(2).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if extra["attention"] == "laplace":  # (softmax is blind to the key offset beta[1])
                assert p.grad.abs().sum() > 0, name


def test_parameter_count_matches_official():
    cfg = M.make_config(d_model=128, z_dim=64, v_dim=256, h_dim=16, bidirectional=True,
                        rel_pos="simple", max_positions=4096, chunk_size=-1, norm="layernorm")
    layer = M.MovingAverageGatedAttention(cfg)
    assert sum(p.numel() for p in layer.parameters()) == 165_439
    assert layer.rel_pos_bias.rel_pos_bias.numel() == 8_191


def test_initialisation_follows_official():
    torch.manual_seed(0)
    layer = M.MovingAverageGatedAttention(tiny(d_model=64, h_dim=8))
    signs = torch.tensor([1.0, -1.0] * 4)
    assert torch.allclose(layer.move.beta.mean((0, 2)), signs, atol=0.02)
    assert abs(layer.move.delta.std().item() - 0.2) < 0.03
    assert abs(layer.mx_proj.weight.std().item() - 0.02) < 0.003
    assert layer.mx_proj.bias.abs().sum() == 0 and layer.beta.abs().sum() == 0


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def test_attention_functions():
    assert abs(A.laplace(torch.tensor(math.sqrt(0.5))).item() - 0.5) < 1e-6
    assert torch.equal(A.relu2(torch.tensor([-1.0, 3.0])), torch.tensor([0.0, 9.0]))
    # element attention: scores / valid keys + bias, multiplicative masks, no row normalisation
    scores = torch.randn(2, 4, 4)
    bias = torch.randn(4, 4)
    pad = torch.tensor([[False, False, True, True], [True, True, True, True]])
    w = A.elementwise_weights(scores, bias, pad, False, A.relu2)
    torch.testing.assert_close(w[0, :, :2], A.relu2(scores[0, :, :2] / 2 + bias[:, :2]))
    assert (w[:, :, 2:] == 0).all() and (w[1] == 0).all()


def test_config_mistakes_are_user_errors():
    for bad in (dict(attention="cosine"), dict(norm="groupnorm"), dict(chunk_size=0),
                dict(truncation=0), dict(causal=True), dict(impl="triton"), dict(colour="red"),
                dict(compile_mode="fast"), dict(softmax_kernel="flash"),
                dict(rel_pos="rotary", z_dim=7)):
        with pytest.raises(UserError):
            M.make_config(**bad)


# ------------------------------------------------------------------------------------------------
# Registrations (paper Table 8)
# ------------------------------------------------------------------------------------------------
TABLE8 = {  # task: depth, d, d_ffn, z, v, h, attention, norm, prenorm, chunk, truncation, max_pos, dropout
    "listops": (6, 80, 160, 64, 160, 16, "softmax", "layernorm", False, 128, 1024, 2002, 0.1),
    "text": (4, 128, 256, 64, 256, 16, "softmax", "scalenorm", False, 128, 1024, 4002, 0.1),
    "retrieval": (6, 128, 256, 64, 256, 16, "softmax", "scalenorm", False, 128, 1024, 4002, 0.1),
    "image": (8, 160, 320, 96, 320, 16, "laplace", "batchnorm", True, 128, 1024, 1024, 0.0),
    "pathfinder": (6, 128, 256, 64, 256, 16, "laplace", "batchnorm", True, 128, 1024, 1024, 0.0),
    "pathx": (4, 64, 128, 32, 128, 16, "laplace", "batchnorm", True, 4096, 4096, 16384, 0.0),
}
TRAIN8 = {  # task: lr, weight decay, batch, warmup, total
    "listops": (1e-3, 0.01, 64, 3000, 90000), "text": (4e-3, 0.01, 50, 10000, 25000),
    "retrieval": (3e-3, 0.04, 64, 10000, 91960), "image": (1e-2, 0.02, 50, 9000, 180000),
    "pathfinder": (1e-2, 0.01, 128, 50000, 250000), "pathx": (1e-2, 0.01, 128, 25000, 125000),
}
KEYS = ("n_layers", "d_model", "d_ffn", "z_dim", "v_dim", "h_dim", "attention", "norm", "prenorm",
        "chunk_size", "truncation", "max_positions", "dropout")


@pytest.mark.parametrize("name", ["mega", "mega_chunk"])
def test_registrations_follow_table8(name):
    entry = MODELS.get(name)
    assert entry.family == "hybrid" and "2209.10655" in entry.paper
    assert entry.complexity == ("O(L^2)" if name == "mega" else "O(L C)")
    assert "d_model" in entry.defaults
    for task, row in TABLE8.items():
        cfg = entry.config(task)
        expected = dict(zip(KEYS, row))
        if name == "mega":
            expected["chunk_size"] = -1
        assert {k: cfg[k] for k in KEYS} == expected, task
        assert cfg["hidden_dropout"] == 0 and cfg["attention_dropout"] == 0
        lr, wd, batch, warmup, total = TRAIN8[task]
        power = dict(warmup_power=2) if task == "pathx" else {}  # Path-X: warmup-power 2
        assert entry.train_config(task) == dict(lr=lr, weight_decay=wd, batch_size=batch,
                                                warmup_steps=warmup, total_steps=total,
                                                betas=(0.9, 0.98), **power)
    tiny_entry = MODELS.get(f"{name}_tiny")
    for task in TABLE8:
        model = tiny_entry.build(task)
        cfg = tiny_entry.config(task)
        assert cfg["d_model"] == 32 and cfg["chunk_size"] == (16 if name == "mega_chunk" else -1)
        x = torch.randn(2, 40, 32)
        out = model(x, right_pad_mask(2, 40, [40, 30]))
        assert out.shape == (2, 40, 32) and torch.isfinite(out).all()


def test_unknown_factory_key_is_user_error():
    with pytest.raises(UserError, match="unknown key"):
        MODELS.get("mega_tiny").build("text", overrides=dict(n_heads=4))


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ------------------------------------------------------------------------------------------------
@CUDA
@pytest.mark.parametrize("attention,chunk_size", [("softmax", -1), ("softmax", 16), ("laplace", 16)])
def test_cuda_matches_cpu(attention, chunk_size):
    torch.manual_seed(0)
    model = liven(M.MegaEncoder(tiny(attention=attention, chunk_size=chunk_size, truncation=32, max_positions=80)))
    x = torch.randn(3, 70, 16)
    mask = right_pad_mask(3, 70, [70, 50, 5])
    cpu = model(x, mask)
    gpu = model.cuda()(x.cuda(), mask.cuda()).cpu()
    torch.testing.assert_close(gpu[~mask], cpu[~mask], atol=2e-4, rtol=2e-4)


@CUDA
def test_cuda_bf16_autocast_and_backward():
    torch.manual_seed(0)
    model = M.MegaEncoder(tiny(chunk_size=16, truncation=None)).cuda()
    x = torch.randn(2, 64, 16, device="cuda")
    ref = model(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = model(x)
        low.float().pow(2).mean().backward()
    assert ((low.float() - ref).norm() / ref.norm()) < 3e-2
    assert all(p.grad is not None for p in model.parameters())


def compiled_matches_eager(device: str):
    """compile=True (torch.compile of the whole encoder, the FFT op opaque) computes what eager does,
    outputs and gradients, with a padding mask and a ragged chunked length."""
    torch.manual_seed(0)
    eager = liven(M.MegaEncoder(tiny(chunk_size=16))).to(device)
    compiled = M.MegaEncoder(tiny(chunk_size=16, compile=True)).to(device)
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 40, 16, device=device)
    mask = right_pad_mask(2, 40, [40, 29]).to(device)
    outs = []
    for model in (eager, compiled):
        y = model(x, mask)
        y.masked_fill(mask[..., None], 0).square().sum().backward()
        outs.append((y[~mask], [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-4, rtol=1e-4)
    for got, want in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor on CPU needs a C++ compiler")
def test_compiled_matches_eager_cpu():
    compiled_matches_eager("cpu")


@CUDA
def test_cuda_compiled_matches_eager():
    compiled_matches_eager("cuda")


def flex_matches_reference(device: str, grad: bool):
    """softmax_kernel=flex (FlexAttention under torch.compile, bias read from an offset table) equals
    the reference path: padding incl. an all-pad chunk, causal rows, both bias kinds, gradients
    (FlexAttention has no backward on CPU)."""
    cases = [dict(chunk_size=-1, rel_pos="simple", causal=False, bidirectional=True),
             dict(chunk_size=8, rel_pos="rotary", causal=True, bidirectional=False)]
    for case in cases:
        torch.manual_seed(0)
        cfg = tiny(softmax_kernel="flex", compile=True, truncation=None, z_dim=16, v_dim=32, **case)
        fast = liven(M.MegaEncoder(cfg)).to(device)
        ref = M.MegaEncoder(M.make_config(**dict(vars(cfg), impl="reference", compile=False,
                                                  softmax_kernel="auto"))).to(device)
        ref.load_state_dict(fast.state_dict())
        x = torch.randn(2, 24, 16, device=device)
        mask = right_pad_mask(2, 24, [24, 7]).to(device)
        grads = []
        for model in (fast, ref):
            with torch.set_grad_enabled(grad):
                y = model(x, mask)
            if grad:
                y[~mask].square().sum().backward()
            grads.append((y[~mask], [p.grad for p in model.parameters()] if grad else []))
        torch.testing.assert_close(grads[0][0], grads[1][0], **TOL)
        for got, want in zip(grads[0][1], grads[1][1]):
            torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("causal,rel_pos", [(False, "simple"), (True, "rotary"), (True, "simple")])
def test_flex_score_mod_matches_reference_attention(causal, rel_pos):
    """The FlexAttention score modification (bias from the offset table, causal and padding masks,
    the all-pad-row guard) against the reference attention, run by flex's eager implementation
    (on CPU FlexAttention compiles for inference only; training runs are tested on CUDA)."""
    torch.manual_seed(0)
    layer = liven(M.MovingAverageGatedAttention(tiny(causal=causal, bidirectional=not causal, rel_pos=rel_pos)))
    q, k = torch.randn(3, 12, 8), torch.randn(3, 12, 8)
    v = torch.randn(3, 12, 24)
    pad = right_pad_mask(3, 12, [12, 5, 0])  # the last row is all pad
    if causal:
        pad[0, :2] = True  # left padding: rows 0-1 see only pads
    with torch.no_grad():
        for key_pad in (None, pad):
            got = A.attend_flex(q, k, v, key_pad, layer.rel_pos_bias, causal=causal)
            torch.testing.assert_close(got, layer.attend_reference(q, k, v, key_pad), **TOL)


@CUDA
def test_cuda_flex_softmax_matches_reference():
    flex_matches_reference("cuda", grad=True)


def test_flex_needs_compile_and_width():
    with pytest.raises(UserError, match="compile=True"):
        M.make_config(softmax_kernel="flex")
    with pytest.raises(UserError, match="minimum head width"):
        M.make_config(softmax_kernel="flex", compile=True, z_dim=8)


def test_flex_refuses_the_cpu():
    """Compiled FlexAttention on the CPU gave wrong results for lengths that are not a multiple of
    its tile: asking for it there is a one-line error, not a wrong number."""
    encoder = M.MegaEncoder(tiny(softmax_kernel="flex", compile=True, z_dim=16, v_dim=32))
    with pytest.raises(UserError, match="CUDA device only"):
        encoder(torch.randn(2, 40, 16))


def test_final_norm_is_affine_whatever_norm_affine_says():
    """As the official LRA encoder (SequenceNorm(norm_type, d) after a prenorm stack)."""
    encoder = M.MegaEncoder(tiny(norm_affine=False, prenorm=True))
    assert len(list(encoder.final_norm.parameters())) > 0
    assert all(len(list(layer.mega.norm.parameters())) == 0 for layer in encoder.layers)
