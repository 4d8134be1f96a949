"""BigBird (ITC block-sparse): the blocked computation against dense attention under the
equivalent mask written from the pattern's rules, the random-block table (legal, distinct,
deterministic, fixed between train and eval), padding, fallback, precision and registration."""

from __future__ import annotations


import pytest
import torch

import harness_models.bigbird as bb
from harness.errors import UserError
from harness.heads import count_parameters
from harness.registry import MODELS
from tests.checks import (LRA_TASKS, assert_bf16_close_to_fp32, assert_cuda_matches_cpu, assert_every_parameter_gets_a_gradient,
                          assert_padding_invariant, forbid_host_reads, pad_mask)



def itc_mask(n_blocks: int, block: int, table: torch.Tensor, window: int, global_blocks: int) -> torch.Tensor:
    """(H, L, L) True = attend, from the rules: global query rows see everything, every row sees
    the global key blocks, row i sees blocks within window // 2 of i and its random blocks."""
    H = table.shape[0]
    ge, half = global_blocks // 2, window // 2
    glob = set(range(ge)) | set(range(n_blocks - ge, n_blocks))
    m = torch.zeros(H, n_blocks, n_blocks, dtype=torch.bool)
    for h in range(H):
        for i in range(n_blocks):
            for j in range(n_blocks):
                m[h, i, j] = i in glob or j in glob or abs(i - j) <= half
        for row, i in enumerate(range(ge, n_blocks - ge)):
            m[h, i, table[h, row]] = True
    return m.repeat_interleave(block, 1).repeat_interleave(block, 2)


def dense_reference(q, k, v, allowed, key_pad):
    """Materialised softmax over the allowed, unpadded keys (float64; every row has a key)."""
    allowed = allowed[None] & ~key_pad[:, None, None, :] if key_pad is not None else allowed[None]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (B, H, L, L)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def qkv(B, H, L, dh, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, L, dh, generator=g, dtype=torch.float64) for _ in range(3))


# ---- the reference identity: block-sparse == dense under the ITC mask -----------------------------

@pytest.mark.parametrize("window,global_blocks,rand,n_blocks", [(3, 2, 2, 9), (5, 4, 1, 12), (3, 0, 2, 9)])
@pytest.mark.parametrize("padded", [False, True])
def test_block_sparse_equals_dense_attention_under_the_itc_mask(window, global_blocks, rand, n_blocks, padded):
    b, H = 4, 2
    att = bb.BigBirdSelfAttention(bb.BigBirdConfig(d_model=8, n_heads=H, block_size=b, num_rand_blocks=rand,
                                                   window_blocks=window, global_blocks=global_blocks,
                                                   rand_last_idx=None), layer_index=1)
    L = n_blocks * b - (3 if padded else 0)  # a partial last block when padded
    q, k, v = qkv(2, H, L, 5)
    key_pad = pad_mask([L, L - 9], L) if padded else None
    out = att.attend(q, k, v, key_pad)
    Lp = n_blocks * b
    allowed = itc_mask(n_blocks, b, att.rand_table(n_blocks), window, global_blocks)[:, :L, :L]
    ref = dense_reference(q, k, v, allowed, key_pad)
    real = torch.ones(2, L, dtype=torch.bool) if key_pad is None else ~key_pad
    torch.testing.assert_close(out.transpose(1, 2)[real], ref.transpose(1, 2)[real], rtol=1e-12, atol=1e-12)
    assert bb.uses_sparse_path(Lp // b, window, global_blocks, rand)
    # The pattern is really sparse here: full attention gives another result.
    full = dense_reference(q, k, v, torch.ones(H, L, L, dtype=torch.bool), key_pad)
    assert (full - ref).abs().max() > 1e-3


def test_global_rows_are_full_attention_over_the_real_keys():
    b, H, nb, L = 4, 2, 10, 38
    att = bb.BigBirdSelfAttention(bb.BigBirdConfig(d_model=8, n_heads=H, block_size=b, num_rand_blocks=2))
    q, k, v = qkv(2, H, L, 5, seed=1)
    key_pad = pad_mask([L, 29], L)
    out = att.attend(q, k, v, key_pad)
    full = dense_reference(q, k, v, torch.ones(H, L, L, dtype=torch.bool), key_pad)
    torch.testing.assert_close(out[:, :, :b], full[:, :, :b])  # block 0
    last = slice((nb - 1) * b, L)  # block nb - 1 (partially padding)
    torch.testing.assert_close(out[0, :, last], full[0, :, last])


# ---- the random-block table -----------------------------------------------------------------------

@pytest.mark.parametrize("n_blocks,window,global_blocks,rand,last_idx", [
    (9, 3, 2, 2, None), (16, 3, 2, 3, 1024), (30, 3, 2, 3, 40), (20, 5, 4, 2, 64), (11, 3, 2, 3, None)])
def test_random_blocks_are_legal_and_no_key_block_repeats(n_blocks, window, global_blocks, rand, last_idx):
    b, H = 4, 3
    table = bb.random_block_table(n_blocks, H, rand, window, global_blocks, b, last_idx, seed=0, layer_index=2)
    ge, half = global_blocks // 2, window // 2
    M = n_blocks - global_blocks
    assert table.shape == (H, M, rand)
    rows = torch.arange(ge, n_blocks - ge)[None, :, None]
    assert (table >= ge).all() and (table < n_blocks - ge).all()  # never a global block
    assert ((table - rows).abs() > half).all()  # never inside the row's window
    if last_idx is not None:
        assert ((table + 1) * b <= last_idx).all()  # only from the first last_idx tokens (LRA)
    idx, valid = bb.key_block_layout(n_blocks, window, global_blocks, table)
    for h in range(H):
        for row in range(M):
            blocks = idx[h, row][valid[row]].tolist()
            assert len(blocks) == len(set(blocks)), (h, row, blocks)  # no key block counted twice


def test_random_table_is_a_function_of_seed_layer_and_head():
    args = dict(n_blocks=20, n_heads=4, num_rand_blocks=3, window_blocks=3, global_blocks=2, block_size=4,
                rand_last_idx=None)
    a = bb.random_block_table(**args, seed=0, layer_index=1)
    torch.testing.assert_close(a, bb.random_block_table(**args, seed=0, layer_index=1))
    assert not torch.equal(a, bb.random_block_table(**args, seed=0, layer_index=2))
    assert not torch.equal(a, bb.random_block_table(**args, seed=5, layer_index=1))
    assert not torch.equal(a[0], a[1])  # one table per head


def test_training_and_evaluation_use_the_same_pattern():
    """Unlike HF PyTorch's all-zero eval table: with dropout 0, train and eval compute the same."""
    torch.manual_seed(0)
    model = sparse_model(num_rand_blocks=2)
    x = torch.randn(2, 44, 16)
    mask = pad_mask([44, 30], 44)
    y_train = model.train()(x, mask)
    y_eval = model.eval()(x, mask)
    torch.testing.assert_close(y_train, y_eval, rtol=0, atol=0)
    assert "_layouts" not in str(list(model.state_dict()))  # derived: not part of the weights


# ---- padding, fallback, precision -----------------------------------------------------------------

def sparse_model(**kw):
    cfg = dict(d_model=16, n_layers=2, n_heads=2, d_ffn=32, dropout=0.0, block_size=4, num_rand_blocks=1)
    return bb.BigBirdEncoder(bb.BigBirdConfig(**{**cfg, **kw}))


def test_pad_content_does_not_reach_real_positions():
    """Sparse path (9 blocks of 4): other pad content and more pads inside the same blocks leave real
    outputs unchanged; real positions sit in windows, random and global blocks with pads."""
    torch.manual_seed(0)
    model = sparse_model().eval()
    with torch.no_grad():
        assert_padding_invariant(model, 16, L=34, real=21, extra=2, scale=1e3, rtol=1e-5, atol=1e-5)


def test_a_fully_padded_example_stays_finite():
    torch.manual_seed(0)
    model = sparse_model()
    x = torch.randn(2, 36, 16, requires_grad=True)
    y = model(x, pad_mask([36, 0], 36))
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_short_inputs_fall_back_to_full_attention():
    att = bb.BigBirdSelfAttention(bb.BigBirdConfig(d_model=8, n_heads=2, block_size=4, num_rand_blocks=3))  # sparse from 11 blocks on
    q, k, v = qkv(2, 2, 40, 5, seed=3)  # 10 blocks
    key_pad = pad_mask([40, 33], 40)
    assert not bb.uses_sparse_path(10, 3, 2, 3) and bb.uses_sparse_path(11, 3, 2, 3)
    full = dense_reference(q, k, v, torch.ones(2, 40, 40, dtype=torch.bool), key_pad)
    torch.testing.assert_close(att.attend(q, k, v, key_pad)[~key_pad[:, None].expand(-1, 2, -1)],
                               full[~key_pad[:, None].expand(-1, 2, -1)])


def test_padded_length_rounds_to_blocks_and_lra_adds_a_block():
    assert bb.padded_length(1001, 64) == 1024 and bb.padded_length(1024, 64) == 1024
    assert bb.padded_length(1024, 64, lra_extra_block=True) == 1088  # LRA Pathfinder: 17 blocks
    assert bb.padded_length(1001, 64, lra_extra_block=True) == 1024
    att = bb.BigBirdSelfAttention(bb.BigBirdConfig(d_model=8, n_heads=2, block_size=4, num_rand_blocks=1,
                                                   lra_extra_block=True))
    q, k, v = qkv(1, 2, 36, 4)
    out = att.attend(q, k, v, None)  # 10 blocks, the last one pure padding: masked as keys
    allowed = itc_mask(10, 4, att.rand_table(10), 3, 2)[:, :36, :36]
    torch.testing.assert_close(out, dense_reference(q, k, v, allowed, None))


def test_every_parameter_gets_a_gradient_on_the_sparse_path():
    torch.manual_seed(0)
    model = sparse_model(qkv_dim=8)
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 48, 16), pad_mask([48, 37], 48))


def test_bf16_autocast_stays_close_to_fp32_on_the_sparse_path():
    torch.manual_seed(0)
    with torch.no_grad():
        assert_bf16_close_to_fp32(sparse_model().eval(), 16)  # L = 32: 8 blocks of 4, sparse at r = 1


def test_attention_core_runs_in_float32_under_autocast(monkeypatch):
    seen = []
    original = bb.block_sparse_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return original(q, *args, **kwargs)

    monkeypatch.setattr(bb, "block_sparse_attention", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sparse_model().eval()(torch.randn(1, 32, 16), None)
    assert seen and set(seen) == {torch.float32}


def test_a_training_step_reads_no_tensor_value_on_the_host(monkeypatch):
    """No `.item()`/`bool()`/... in the model (first call included): on a GPU each would wait for
    every queued kernel (the harness's timed iterations must not; tests/harness/test_runners.py)."""
    model = sparse_model(qkv_dim=8)
    x, mask = torch.randn(2, 48, 16), pad_mask([48, 30], 48)
    forbid_host_reads(monkeypatch, (bb.__file__,))
    model(x, mask).sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    assert_cuda_matches_cpu(sparse_model().eval(), torch.randn(2, 44, 16), pad_mask([44, 29], 44))


# ---- configuration and registration ---------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("block_size", 0), ("window_blocks", 2), ("global_blocks", 1),
                                       ("num_rand_blocks", -1), ("rand_last_idx", 100), ("qkv_dim", 9),
                                       ("lra_extra_block", "yes"), ("n_heads", 3), ("positions", "learned")])
def test_bad_config_is_one_clear_line(key, value):
    with pytest.raises(UserError) as err:
        bb.BigBirdConfig(**{"d_model": 16, "n_heads": 2, "block_size": 16, key: value})
    message = str(err.value)
    assert message.startswith("bigbird config:") and key in message and "\n" not in message


def test_registration_and_configs():
    entry = MODELS.get("bigbird")
    assert entry.family == "attention" and "Zaheer" in entry.paper and entry.complexity == "O(L)"
    assert set(LRA_TASKS) <= set(entry.task_configs) and set(LRA_TASKS) <= set(entry.train_configs)
    for task in LRA_TASKS:
        assert set(entry.train_config(task)) == {"lr", "weight_decay", "batch_size", "warmup_steps", "total_steps"}
    tiny = MODELS.get("bigbird_tiny")
    assert tiny.tiny_of == "bigbird" and tiny.config("image")["dropout"] == 0.0
    assert entry.config("text")["block_size"] == 64 and entry.config("text")["num_rand_blocks"] == 3


def test_lra_image_config_parameter_count():
    """LRA's BigBird Image model: emb 128, qkv 64, mlp 128, 1 layer, 1 head, biasless projections."""
    model = MODELS.get("bigbird").build("image", overrides=bb.PAPER_TASK_CONFIGS["image"])
    d, qkv_dim, f = 128, 64, 128
    expected = 4 * d * qkv_dim + (d * f + f + f * d + d) + 2 * 2 * d + 2 * d  # attention, FFN, 2 LNs, final LN
    assert count_parameters(model) == expected
    assert model.layers[0].attn.head_dim == 64
