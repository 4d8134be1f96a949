"""Backbone-contract assertions shared by the per-family tests and test_model_contract."""

import sys
import textwrap

import torch

from harness.registry import TASKS


# The six LRA tasks in LRA's order, from the task registry (TaskSpec.lra and .order).
LRA_TASKS = tuple(sorted((n for n in TASKS.names() if TASKS.get(n).spec.lra), key=lambda n: TASKS.get(n).spec.order))


def pad_mask(lengths, L: int) -> torch.Tensor:
    """(B, L) right-padding mask, True = pad, for sequences of the given real lengths."""
    return torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]


def assert_every_parameter_gets_a_gradient(model, x, mask, nonzero: bool = True) -> None:
    """Forward keeps the shape and is finite; every parameter gets a finite (and, with `nonzero`,
    non-zero) gradient."""
    y = model(x, mask)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.pow(2).mean().backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if nonzero:
            assert p.grad.abs().sum() > 0, name


def assert_padding_invariant(model, d: int, L: int = 20, real: int = 13, extra: int = 7,
                             scale: float = 5.0, rtol: float = 1e-4, atol: float = 1e-4):
    """Real positions do not change with other pad content or with more padding.
    Returns (x, mask, y) of the first call for further checks."""
    x = torch.randn(2, L, d)
    mask = pad_mask([L, real], L)
    y1 = model(x, mask)
    x2 = x.clone()
    x2[mask] = scale * torch.randn(int(mask.sum()), d)  # other pad content
    x2 = torch.cat([x2, scale * torch.randn(2, extra, d)], dim=1)  # and more padding
    y2 = model(x2, pad_mask([L, real], L + extra))
    torch.testing.assert_close(y2[:, :L][~mask], y1[~mask], rtol=rtol, atol=atol)
    return x, mask, y1


def assert_bf16_close_to_fp32(model, d: int, rel_tol: float = 0.05) -> None:
    """Under CPU bf16 autocast the output stays within `rel_tol` (relative norm) of fp32."""
    x = torch.randn(2, 32, d)
    y = model(x, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = model(x, None)
    rel = ((yb.float() - y).norm() / y.norm()).item()
    assert rel < rel_tol, rel


def forbid_host_reads(monkeypatch, roots: tuple) -> None:
    """Make reads of tensor values on the host (`bool`, `int`, `float`, `.item()`, `.tolist()`,
    `.numpy()`) by code in files under `roots` fail: on a GPU each one waits for every queued kernel.
    Reads from inside torch (AdamW reads its CPU step counters) stay allowed."""
    for name in ("__bool__", "__int__", "__float__", "item", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(roots):
                raise AssertionError(f"host read of a tensor (Tensor.{_name}) at "
                                     f"{frame.f_code.co_filename}:{frame.f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def assert_cuda_matches_cpu(model, x, mask, tol: float = 1e-4) -> None:
    """An eval-mode model gives the same output on CUDA as on the CPU (fp32)."""
    with torch.no_grad():
        ref = model(x, mask)
        got = model.cuda()(x.cuda(), mask.cuda()).cpu()
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def model_plugin(name: str, forward: str, imports: str = "") -> str:
    """The text of a plugin file registering model `name` (d_model 8): a Linear backbone whose forward
    first runs the statements `forward` (they see x and padding_mask), then returns lin(x)."""
    body = textwrap.indent(textwrap.dedent(forward).strip("\n"), " " * 8)
    return f"""{textwrap.dedent(imports).strip()}
from torch import nn

from harness.registry import register_model


class Backbone(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, x, padding_mask=None):
{body}
        return self.lin(x)


@register_model({name!r}, family="other", paper="test", complexity="O(L)", defaults=dict(d_model=8))
def factory(d_model):
    return Backbone(d_model)
"""
