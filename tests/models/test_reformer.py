"""Reformer (LSH attention): the reference identities of the spec (baselines-table2 §1.10), LRA mode
against a hand-rolled recomputation of LRA's steps, rotation determinism, the masks, reversible
layers against plain autograd, chunked FFN, and the backbone contract on the LSH path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import harness_models.reformer as rf
from harness.errors import UserError
from harness.registry import MODELS
from tests.checks import LRA_TASKS, assert_every_parameter_gets_a_gradient, pad_mask



def _qkv(B=2, H=2, L=8, dh=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, dh, generator=g, dtype=torch.float64),
            torch.randn(B, H, L, dh, generator=g, dtype=torch.float64))


def _dense_reference(qk, v, counts=None):
    """softmax over keys of q.k̂/sqrt(d) with the self logit set to -1e5, each key j weighted by
    counts[..., i, j] (how often query i saw it; None = once)."""
    dh = qk.shape[-1]
    s = qk @ (qk / qk.norm(dim=-1, keepdim=True)).transpose(-1, -2) / dh ** 0.5
    L = s.shape[-1]
    s = s.masked_fill(torch.eye(L, dtype=torch.bool), rf.SELF_VALUE)
    w = torch.exp(s - s.amax(-1, keepdim=True))
    if counts is not None:
        w = w * counts
    return (w / w.sum(-1, keepdim=True)) @ v


def _encoder(**overrides):
    cfg = dict(d_model=16, n_layers=2, n_heads=2, d_ffn=32, dropout=0.0, bucket_size=4)
    cfg.update(overrides)
    return rf.ReformerEncoder(rf.ReformerConfig(**cfg))


# ---- reference identities -------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [4, 8])  # two chunks, or one (look-back repeats every key once more)
def test_one_bucket_equals_full_shared_qk_attention_with_self_mask(chunk):
    qk, v = _qkv(L=8)
    buckets = torch.zeros(2, 2, 1, 8, dtype=torch.long)
    out = rf.lsh_attention(qk, v, buckets, n_ids=1, chunk=chunk)
    torch.testing.assert_close(out, _dense_reference(qk, v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rf.dense_shared_qk_attention(qk, v), _dense_reference(qk, v), rtol=1e-12, atol=1e-12)


def test_three_chunks_are_windowed_not_full():
    """With >= 3 chunks a query sees only its chunk and the previous one, so the result must differ."""
    qk, v = _qkv(L=12)
    out = rf.lsh_attention(qk, v, torch.zeros(2, 2, 1, 12, dtype=torch.long), n_ids=1, chunk=4)
    assert (out - _dense_reference(qk, v)).abs().max() > 1e-3


def test_module_lsh_path_with_one_bucket_equals_its_dense_path():
    """The module's hashing, padding to 2c and unsorting: forcing one bucket on a length-8 input with
    bucket_size 4 (two chunks) gives the dense fallback's output."""
    torch.manual_seed(0)
    attn = rf.LSHSelfAttention(rf.ReformerConfig(d_model=16, n_heads=2, bucket_size=4)).double().eval()
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    attn.hash = lambda qk, nb, draw: torch.zeros(qk.shape[0], qk.shape[1], 1, qk.shape[2], dtype=torch.long)
    lsh = attn(x, None)
    attn.bucket_size = 8  # L <= bucket: dense path
    torch.testing.assert_close(lsh, attn(x, None), rtol=1e-12, atol=1e-12)


def test_identical_rounds_equal_one_round():
    qk, v = _qkv(L=16, seed=1)
    one = torch.randint(0, 4, (2, 2, 1, 16), generator=torch.Generator().manual_seed(2))
    out1 = rf.lsh_attention(qk, v, one, n_ids=4, chunk=4)
    out3 = rf.lsh_attention(qk, v, one.expand(-1, -1, 3, -1), n_ids=4, chunk=4)
    torch.testing.assert_close(out3, out1, rtol=1e-12, atol=1e-12)


def _window_counts(buckets: torch.Tensor, n_ids: int, chunk: int) -> torch.Tensor:
    """m[b, h, i, j]: how many times query i sees key j over all rounds, by explicit loops over the
    sorted (round, bucket, position) stream, its chunks and the one-chunk look-back with wrap."""
    B, H, R, L = buckets.shape
    m = torch.zeros(B, H, L, L, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            items = sorted((r * n_ids + int(buckets[b, h, r, p]), p) for r in range(R) for p in range(L))
            n_chunks = len(items) // chunk
            chunks = [[p for _, p in items[c * chunk:(c + 1) * chunk]] for c in range(n_chunks)]
            for c in range(n_chunks):
                window = chunks[c] + chunks[(c - 1) % n_chunks]
                for i in chunks[c]:
                    for j in window:
                        m[b, h, i, j] += 1
    return m


@pytest.mark.parametrize("allow_duplicates", [True, False])
def test_rounds_combine_to_one_softmax_over_the_union(allow_duplicates):
    """Random buckets in 2 rounds: the logsumexp combination equals one softmax over every key seen,
    counted as often as seen (or once each with allow_duplicate_attention=False)."""
    qk, v = _qkv(L=16, seed=3)
    buckets = torch.randint(0, 4, (2, 2, 2, 16), generator=torch.Generator().manual_seed(4))
    m = _window_counts(buckets, 4, 4)
    assert m.max() > 1, "the draw should repeat some keys across rounds"
    out = rf.lsh_attention(qk, v, buckets, n_ids=4, chunk=4, allow_duplicate_attention=allow_duplicates)
    ref = _dense_reference(qk, v, m if allow_duplicates else (m > 0).double())
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_attend_within_bucket_equals_block_diagonal_attention():
    """Buckets of 4 consecutive positions, one chunk each: with attend_across_buckets=False the
    look-back chunk (another bucket) is masked and each query attends inside its bucket."""
    qk, v = _qkv(L=16, seed=5)
    buckets = (torch.arange(16) // 4).expand(2, 2, 1, 16)
    out = rf.lsh_attention(qk, v, buckets, n_ids=4, chunk=4, attend_across_buckets=False)
    block = torch.block_diag(*[torch.ones(4, 4)] * 4).double()
    torch.testing.assert_close(out, _dense_reference(qk, v, block), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_hashes", [1, 2])
def test_pad_content_does_not_change_real_positions(n_hashes):
    """Pad bucket + key masking: pad values (even 1e6) leave real outputs unchanged, LSH path."""
    torch.manual_seed(0)
    model = _encoder(n_hashes=n_hashes).eval()
    x = torch.randn(2, 24, 16)
    mask = pad_mask([24, 15], 24)
    x2 = x.clone()
    x2[mask] = 1e6 * torch.randn(int(mask.sum()), 16)
    with torch.no_grad():
        y1, y2 = model(x, mask), model(x2, mask)
    torch.testing.assert_close(y2[~mask], y1[~mask], rtol=1e-5, atol=1e-5)


def test_lsh_path_ignores_pads_while_padding_mask_none_does_not():
    """The check above is not vacuous: without the mask, the same pad content changes real outputs."""
    torch.manual_seed(0)
    model = _encoder().eval()
    x = torch.randn(1, 24, 16)
    x2 = x.clone()
    x2[:, 15:] = 1e3
    with torch.no_grad():
        assert (model(x2, None)[:, :15] - model(x, None)[:, :15]).abs().max() > 1e-3


def test_causal_mask_blocks_future_keys_on_the_lsh_path():
    """d out_t / d x_j = 0 for j > t: future keys get weight exactly 0 (their hash may still move
    chunk boundaries, which is why this checks gradients, not outputs under perturbation)."""
    torch.manual_seed(0)
    attn = rf.LSHSelfAttention(rf.ReformerConfig(d_model=16, n_heads=2, bucket_size=4, n_hashes=2, causal=True)).double().eval()
    x = torch.randn(1, 16, 16, dtype=torch.float64, requires_grad=True)
    t = 6
    attn(x, None)[0, t].sum().backward()
    assert x.grad[0, t + 1:].abs().max() == 0
    assert x.grad[0, :t].abs().max() > 0


# ---- rotations ---------------------------------------------------------------------------------

def test_rotations_are_a_function_of_seed_layer_and_draw():
    a = rf.hash_rotations(2, 4, 2, 8, seed=1, layer=3, draw=5)
    assert a.shape == (2, 4, 2, 4)
    torch.testing.assert_close(a, rf.hash_rotations(2, 4, 2, 8, seed=1, layer=3, draw=5), rtol=0, atol=0)
    for other in (dict(seed=2, layer=3, draw=5), dict(seed=1, layer=4, draw=5), dict(seed=1, layer=3, draw=6)):
        assert not torch.equal(a, rf.hash_rotations(2, 4, 2, 8, **other))


def test_training_draws_fresh_rotations_and_eval_is_fixed():
    torch.manual_seed(0)
    model = _encoder()
    x = torch.randn(1, 32, 16)
    first = copy.deepcopy(model)
    with torch.no_grad():
        y_a, y_b = model(x), model(x)  # training mode: draws 1 and 2
        assert not torch.equal(y_a, y_b)
        torch.testing.assert_close(first(x), y_a, rtol=0, atol=0)  # a fresh copy repeats draw 1
        model.eval()
        draws = [blk.attn.draws for blk in model.layers]
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        assert [blk.attn.draws for blk in model.layers] == draws == [2, 2]  # eval draws nothing new
    restored = _encoder()
    restored.load_state_dict(model.state_dict())  # the draw counter travels with the weights
    assert [blk.attn.draws for blk in restored.layers] == [2, 2]


# ---- mode="lra" --------------------------------------------------------------------------------

def _lra_reference(attn: rf.LSHSelfAttention, x: np.ndarray) -> np.ndarray:
    """LRA reformer_attention.py's steps in numpy: zero rows up to a multiple of 10 (always adding),
    one rotation for every head, buckets = argmax[xR, -xR] + round offsets, sort by bucket*L + pos,
    chunks of L_pad/10 with one chunk of look-back (wrapping), logits * sqrt(d_h), no masks,
    logsumexp, unsort, combine rounds; heads concatenated, no output projection."""
    B, L, d = x.shape
    H, dh, R, nb = attn.n_heads, attn.head_dim, attn.n_hashes, attn.n_buckets
    Lp = L + nb - L % nb
    rot = attn.rotations(nb, 0, "cpu")[0].double().numpy()  # (dh, R, nb/2)
    wqk, wv = attn.qk.weight.detach().double().numpy(), attn.v.weight.detach().double().numpy()
    out = np.zeros((B, L, d))
    for b in range(B):
        xp = np.concatenate([x[b], np.zeros((Lp - L, d))])
        for h in range(H):
            qk = (xp @ wqk.T)[:, h * dh:(h + 1) * dh]
            v = (xp @ wv.T)[:, h * dh:(h + 1) * dh]
            keys = []
            for r in range(R):
                proj = qk @ rot[:, r, :]
                bucket = np.argmax(np.concatenate([proj, -proj], axis=1), axis=1) + r * nb
                keys.append(bucket * Lp + np.arange(Lp))
            order = np.argsort(np.concatenate(keys))
            pos = order % Lp
            c = Lp // nb
            n_chunks = R * nb
            o_sorted, lse_sorted = np.zeros((R * Lp, dh)), np.zeros(R * Lp)
            for ch in range(n_chunks):
                qi = pos[ch * c:(ch + 1) * c]
                prev = (ch - 1) % n_chunks
                ki = np.concatenate([qi, pos[prev * c:(prev + 1) * c]])
                s = qk[qi] @ qk[ki].T * dh ** 0.5
                mx = s.max(1, keepdims=True)
                lse = (mx + np.log(np.exp(s - mx).sum(1, keepdims=True)))[:, 0]
                o_sorted[ch * c:(ch + 1) * c] = np.exp(s - lse[:, None]) @ v[ki]
                lse_sorted[ch * c:(ch + 1) * c] = lse
            o_r, lse_r = np.zeros((R * Lp, dh)), np.zeros(R * Lp)
            o_r[order], lse_r[order] = o_sorted, lse_sorted
            o_r, lse_r = o_r.reshape(R, Lp, dh), lse_r.reshape(R, Lp)
            w = np.exp(lse_r - lse_r.max(0))
            w = w / w.sum(0)
            out[b, :, h * dh:(h + 1) * dh] = (o_r * w[..., None]).sum(0)[:L]
    return out


@pytest.mark.parametrize("L,n_hashes", [(23, 1), (30, 2)])  # 30: a full 10 rows are appended
def test_lra_mode_matches_a_recomputation_of_lra_steps(L, n_hashes):
    torch.manual_seed(0)
    attn = rf.LSHSelfAttention(rf.ReformerConfig(d_model=16, n_heads=2, mode="lra", n_hashes=n_hashes)).double()
    assert attn.out is None
    x = torch.randn(2, L, 16, dtype=torch.float64)
    ref = _lra_reference(attn, x.numpy())
    torch.testing.assert_close(attn(x, None), torch.from_numpy(ref), rtol=1e-9, atol=1e-9)
    attn.train()  # LRA keys every call with the same PRNG key: training does not redraw
    torch.testing.assert_close(attn(x, None), torch.from_numpy(ref), rtol=1e-9, atol=1e-9)


def test_lra_mode_rejects_mask_options():
    with pytest.raises(UserError, match="reformer config: causal=True is invalid"):
        _encoder(mode="lra", causal=True)


# ---- reversible layers, chunked FFN --------------------------------------------------------------

def test_reversible_backward_equals_plain_autograd():
    """Dropout, two hash rounds and fresh training rotations: the recomputing backward replays the
    same buckets and dropout masks, so its gradients equal autograd through the same forward."""
    torch.manual_seed(0)
    model = _encoder(reversible=True, n_hashes=2, dropout=0.2, attn_dropout=0.1).double().train()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 24, 16, dtype=torch.float64, requires_grad=True)
    mask = pad_mask([24, 19], 24)
    x_ref = x.detach().clone().requires_grad_(True)

    torch.manual_seed(1)
    y = model(x, mask)
    torch.manual_seed(1)
    y_ref = twin.final_norm(rf.reversible_layers(twin.layers, x_ref + rf.sinusoidal_positions(24, 16, "cpu",
                                                                                               torch.float64),
                                                 mask, memory_saving=False))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-8, atol=1e-8)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-8, msg=name)


def test_reversible_gets_gradients_for_an_input_without_grad():
    torch.manual_seed(0)
    model = _encoder(reversible=True)
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 16), pad_mask([24, 17], 24))


def test_chunked_ffn_is_the_same_function():
    torch.manual_seed(0)
    plain = _encoder().eval()
    chunked = _encoder(ff_chunk_size=5).eval()
    chunked.load_state_dict(plain.state_dict())  # same parameter names
    x = torch.randn(2, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x, None), plain(x, None), rtol=1e-6, atol=1e-6)


# ---- backbone contract on the LSH path, config checks, registration ------------------------------------

@pytest.mark.parametrize("overrides", [dict(), dict(n_hashes=2, allow_duplicate_attention=False),
                                       dict(mode="lra"), dict(reversible=True, ff_chunk_size=8)])
def test_every_parameter_gets_a_gradient_on_the_lsh_path(overrides):
    torch.manual_seed(0)
    model = _encoder(**overrides)
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, 16), pad_mask([24, 17], 24))


def test_bf16_autocast_stays_close_to_fp32_on_the_lsh_path():
    torch.manual_seed(0)
    model = _encoder(bucket_size=8, n_hashes=2).eval()
    x = torch.randn(2, 64, 16)
    with torch.no_grad():
        ref = model(x, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, None).float()
    assert torch.isfinite(low).all()
    assert ((low - ref).norm() / ref.norm()) < 0.05


@pytest.mark.parametrize("key,value", [("n_buckets", 7), ("n_hashes", 0), ("bucket_size", 2.0),
                                       ("mode", "textbook"), ("reversible", "yes"), ("ff_chunk_size", -1)])
def test_bad_config_is_one_clear_error(key, value):
    with pytest.raises(UserError, match=f"reformer config: {key}="):
        _encoder(**{key: value})


def test_registration():
    entry = MODELS.get("reformer")
    assert entry.family == "attention" and entry.complexity == "O(L log L)"
    assert set(LRA_TASKS) <= set(entry.task_configs) and set(LRA_TASKS) <= set(entry.train_configs)
    assert MODELS.get("reformer_tiny").tiny_of == "reformer"
    for task in ("listops", "text", "retrieval"):  # LRA ran the base (Transformer) architectures
        arch = {k: v for k, v in MODELS.get("transformer").config(task).items() if k != "attn_dropout"}
        assert {k: entry.config(task)[k] for k in arch} == arch
    for task in LRA_TASKS:
        MODELS.get("reformer").build(task)


# ---- CUDA (skipped without a GPU) --------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_reversible_replays_cuda_dropout():
    torch.manual_seed(0)
    model = _encoder(n_hashes=2).eval()
    x, mask = torch.randn(2, 40, 16), pad_mask([40, 29], 40)
    with torch.no_grad():  # rotations are drawn on the CPU: the same buckets on both devices
        ref = model(x, mask)
        torch.testing.assert_close(model.cuda()(x.cuda(), mask.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)
    rev = _encoder(reversible=True, n_hashes=2, dropout=0.2, attn_dropout=0.1).double().cuda().train()
    twin = copy.deepcopy(rev)
    xd = torch.randn(2, 40, 16, dtype=torch.float64, device="cuda")
    torch.manual_seed(1)
    y = rev(xd, mask.cuda())
    torch.manual_seed(1)
    y_ref = twin.final_norm(rf.reversible_layers(
        twin.layers, xd + rf.sinusoidal_positions(40, 16, "cuda", torch.float64), mask.cuda(), memory_saving=False))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    y.sum().backward()
    y_ref.sum().backward()
    for (name, p), q in zip(rev.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-7, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = _encoder(reversible=True).cuda()(torch.randn(2, 64, 16, device="cuda"), None)
    low.float().sum().backward()
    assert torch.isfinite(low).all()
