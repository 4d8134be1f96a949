"""Shared layers (models/layers.py): the norm switch, both masked BatchNorms, channel dropout and the
`max_positions` length hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness_models import layers as Ly


def right_pad_mask(B: int, L: int, lengths) -> torch.Tensor:
    return torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]  # (B, L) True = pad


def test_rms_and_scale_norms():
    x = torch.randn(3, 7, 16) * 4 + 1
    rms = Ly.SequenceNorm("rmsnorm", 16)(x)
    torch.testing.assert_close(rms.pow(2).mean(-1), torch.ones(3, 7), atol=1e-3, rtol=1e-3)
    scale = Ly.SequenceNorm("scalenorm", 16)(x)
    torch.testing.assert_close(scale, rms)  # unit weights: same function
    # rmsnorm is PyTorch's RMSNorm (eps 1e-5), equal to the formula written out
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(rms, expected)
    assert sum(p.numel() for p in Ly.SequenceNorm("rmsnorm", 16, affine=False).parameters()) == 0


@pytest.mark.parametrize("kind", ["batchnorm", "masked_batchnorm"])
def test_batchnorms_use_real_positions_only(kind):
    x = torch.randn(3, 7, 16) * 4 + 1
    bn = Ly.SequenceNorm(kind, 16)
    official = nn.BatchNorm1d(16, eps=1e-5)
    torch.testing.assert_close(bn(x), official(x.transpose(1, 2)).transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.norm.running_mean, official.running_mean)
    torch.testing.assert_close(bn.norm.running_var, official.running_var)
    mask = right_pad_mask(3, 7, [7, 4, 2])
    junk = x.masked_fill(mask[..., None], 1e3)  # pad content must not matter
    masked = bn(junk, mask)  # statistics from the real positions only
    real = x[~mask]
    expected = (real - real.mean(0)) / torch.sqrt(real.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(masked[~mask], expected, atol=1e-5, rtol=1e-5)
    bn.eval()  # running statistics: per position, the mask changes nothing
    torch.testing.assert_close(bn(x, mask), bn(x))


def test_norm_switch_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="norm must be one of"):
        Ly.SequenceNorm("groupnorm", 16)
    with pytest.raises(ValueError, match="always affine"):
        Ly.SequenceNorm("masked_batchnorm", 16, affine=False)


def test_channel_dropout_is_channelwise():
    drop = Ly.make_dropout(0.5, per_channel=True).train()
    assert isinstance(drop, Ly.ChannelDropout) and isinstance(Ly.make_dropout(0.5, False), nn.Dropout)
    y = drop(torch.ones(4, 9, 32))
    assert ((y == 0) | (y == 2)).all()
    assert (y == y[:, :1]).all()  # one decision per (batch, channel), shared over time
    assert 0 < (y == 0).float().mean() < 1
    assert drop(torch.ones(5, 32)).shape == (5, 32)  # one decoding step
    assert torch.equal(drop.eval()(torch.ones(2, 3, 4)), torch.ones(2, 3, 4))


def test_widen_max_positions():
    assert Ly.widen_max_positions(dict(max_positions=1024), 4096) == {"max_positions": 4096}
    assert Ly.widen_max_positions(dict(max_positions=4096), 1024) == {}
    assert Ly.widen_max_positions(dict(d_model=8), 4096) == {}
