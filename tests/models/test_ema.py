"""The EMA kernel's blocked construction (q^t = q^(aB) q^b, a batched matrix product) equals the
literal table of powers, in value and in every gradient, at lengths that are and are not squares."""

import pytest
import torch

from harness_models.ema import ema_kernel, ema_kernel_reference


def _parameters(D: int, h: int, dtype=torch.float64):
    torch.manual_seed(0)
    shapes = dict(delta=(D, h, 1), alpha=(D, h, 1), beta=(D, h, 1), gamma=(D, h))
    return {k: torch.randn(*s, dtype=dtype, requires_grad=True) for k, s in shapes.items()}


@pytest.mark.parametrize("length", [1, 2, 7, 64, 1000, 1024, 4099])
def test_blocked_kernel_equals_the_table_of_powers(length):
    ref_params = _parameters(6, 16)
    ours_params = {k: v.detach().float().requires_grad_() for k, v in ref_params.items()}
    ref = ema_kernel_reference(*ref_params.values(), 0.25, length)  # fp64
    got = ema_kernel(*ours_params.values(), 0.25, length)
    assert got.shape == ref.shape == (6, length) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    weights = torch.randn(6, length, dtype=torch.float64)
    (ref * weights).sum().backward()
    (got * weights.float()).sum().backward()
    for name, param in ours_params.items():
        expected = ref_params[name].grad
        torch.testing.assert_close(param.grad.double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item(),
                                   msg=lambda m, name=name: f"d kernel / d {name}: {m}")


def test_the_reference_is_the_recurrence():
    # Guards the reference itself: an impulse through s_t = q s_{t-1} + p beta x_t, y = scale sum gamma s.
    params = {k: v.detach() for k, v in _parameters(3, 4).items()}
    p = torch.sigmoid(params["delta"]).squeeze(-1)
    q = 1 - p * torch.sigmoid(params["alpha"]).squeeze(-1)
    state, out = p * params["beta"].squeeze(-1), []
    for _ in range(9):
        out.append(0.5 * (params["gamma"] * state).sum(-1))
        state = q * state
    torch.testing.assert_close(ema_kernel_reference(*params.values(), 0.5, 9), torch.stack(out, -1))
