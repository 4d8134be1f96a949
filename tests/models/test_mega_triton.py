"""The Triton EMA scan (models/mega_triton.py) against MEGA's literal recurrence.

On the CPU the kernels run in Triton's interpreter. TRITON_INTERPRET=1 only works when it is set
before triton's first import in a process (triton's standard library is built for one mode at
import), and other tests (torch.compile) may import triton first, so the interpreted runs happen in
one child process: this file run as a script (`python tests/models/test_mega_triton.py FOLDER`). The parent
builds the modules and inputs, the child computes the Triton outputs and gradients, and the parent
compares them with `MultiHeadEMA.forward_recurrence` (the explicit loop over time, fp32) and its
autograd gradients, never with the code under test.

Shapes are tiny (the interpreter is slow) but run every branch: several chunks with a partial last
one, more channels than one channel block, truncation shorter and longer than L, both directions,
padding, bf16 input. Without triton these tests skip; without CUDA the GPU comparison skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import harness_models.mega_triton as mt
from harness_models.ema import ema_kernel
from harness_models.mega import MultiHeadEMA, make_config

PARAMS = ("delta", "alpha", "beta", "gamma", "omega")


def ema_config(d: int, h: int, bidirectional: bool, truncation: int | None):
    """A MEGA config whose EMA has d channels of h dimensions."""
    return make_config(d_model=d, h_dim=h, bidirectional=bidirectional, truncation=truncation)


# name -> (bidirectional, B, L, d, h, truncation, chunk, channel_block, padded). L = 13 with chunks of
# 4 is three full chunks and a partial one; d = 5 with blocks of 4 is two channel blocks (the second
# mostly masked); h = 3 pads the modes to 4; truncation 5 < L runs the dropped-tap terms, 30 > L not.
CASES = {
    "bi-truncated": (True, 2, 13, 5, 3, 5, 4, 4, False),
    "bi-full": (True, 1, 13, 5, 3, None, 4, 4, False),
    "uni-truncated": (False, 2, 13, 5, 3, 5, 4, 4, False),
    "uni-one-partial-chunk": (False, 2, 9, 3, 2, 30, 16, 4, False),
    "bi-padded": (True, 2, 11, 4, 2, 6, 4, 4, True),
}


def _make(name: str):
    """The module, input, output gradient and padding mask of a case (seeded: the same in every run)."""
    bidirectional, B, L, d, h, truncation, *_, padded = CASES[name]
    torch.manual_seed(sorted(CASES).index(name))
    ema = MultiHeadEMA(ema_config(d, h, bidirectional, truncation))
    x, grad = torch.randn(B, L, d), torch.randn(B, L, d)
    pad = None
    if padded:
        pad = torch.zeros(B, L, dtype=torch.bool)
        pad[-1, L - 4:] = True
        x[-1, L - 4:] = 1e3  # pad content that must not leak into real positions
    return ema, x, grad, pad


def _triton(ema, x, grad, pad, chunk, channel_block):
    """X' = silu(EMA(x) + omega x) with the EMA from the Triton scan, and the gradients of <X', grad>."""
    x = x.detach().requires_grad_()
    y = mt.multi_head_ema_conv(ema, x, pad, chunk=chunk, channel_block=channel_block)  # (B, L, d) fp32
    out = F.silu(y + x.float() * ema.omega.float())
    grads = torch.autograd.grad(out, [x] + [getattr(ema, n) for n in PARAMS], grad)
    return dict(y_dtype=str(y.dtype), out=out.detach(), grads=[g.detach() for g in grads])


def _child(folder: Path) -> None:
    """Run every case through the interpreter and save the results (an error is saved as its traceback)."""
    assert mt._interpreted(), "the child must start with TRITON_INTERPRET=1"
    results = {}
    for name, (*_, chunk, channel_block, _padded) in CASES.items():
        try:
            results[name] = _triton(*_make(name), chunk, channel_block)
        except Exception:
            results[name] = dict(error=traceback.format_exc())
    try:  # a bf16 input is widened on load: the same numbers as its fp32 copy
        ema, x, _, _ = _make("bi-truncated")
        w, q = (t.detach() for t in mt.ema_coefficients(ema.delta, ema.alpha, ema.beta, ema.gamma, ema.scale))
        xb = x.bfloat16()
        results["bf16"] = dict(y16=mt.ema_scan(xb, w, q, 5, True, chunk=4, channel_block=4),
                               y32=mt.ema_scan(xb.float(), w, q, 5, True, chunk=4, channel_block=4))
    except Exception:
        results["bf16"] = dict(error=traceback.format_exc())
    torch.save(results, folder / "results.pt")


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Results of the child process that runs the kernels in Triton's interpreter."""
    pytest.importorskip("triton")
    folder = tmp_path_factory.mktemp("triton-interpret")
    env = dict(os.environ, TRITON_INTERPRET="1")  # the interpreter is chosen when triton is imported
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(folder)], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"the interpreter child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return torch.load(folder / "results.pt")


def _reference(ema: MultiHeadEMA, x, grad, pad):
    """X' by the recurrence (an explicit loop over time, fp32), and the gradients of <X', grad>."""
    x = x.detach().requires_grad_()
    out = ema.forward_recurrence(x, pad)
    grads = torch.autograd.grad(out, [x] + [getattr(ema, n) for n in PARAMS], grad)
    return out.detach().double(), [g.double() for g in grads]


def _assert_matches_reference(got: dict, ema, x, grad, pad, tol: float):
    """Outputs and x-gradients at real positions (pads hold 1e3 and their outputs are unspecified),
    parameter gradients in full; each within tol of its largest reference value."""
    assert "error" not in got, got.get("error")
    assert got["y_dtype"] == "torch.float32"
    want, want_grads = _reference(ema, x, grad, pad)
    real = slice(None) if pad is None else ~pad
    torch.testing.assert_close(got["out"].double()[real], want[real], rtol=tol, atol=tol)
    got_grads, want_grads = list(got["grads"]), list(want_grads)
    got_grads[0], want_grads[0] = got_grads[0][real], want_grads[0][real]
    for name, g, w in zip(("x",) + PARAMS, got_grads, want_grads):
        scale = w.abs().max().item()
        err = (g.double() - w).abs().max().item()
        assert err <= tol * scale, f"grad of {name}: max error {err:.3g} vs max |grad| {scale:.3g}"


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_backward_match_the_recurrence(interpreted, name):
    _assert_matches_reference(interpreted[name], *_make(name), tol=1e-5)


def test_bf16_input_is_widened_not_rounded_again(interpreted):
    got = interpreted["bf16"]
    assert "error" not in got, got.get("error")
    assert got["y16"].dtype == torch.float32
    torch.testing.assert_close(got["y16"], got["y32"], rtol=0, atol=0)


def test_coefficients_give_the_mega_kernel():
    """sum_n weight q^t (the scan's kernel) is harness_models.ema.ema_kernel, so both paths compute one function."""
    torch.manual_seed(2)
    ema = MultiHeadEMA(ema_config(6, 4, True, None))
    weight, q = mt.ema_coefficients(ema.delta, ema.alpha, ema.beta, ema.gamma, ema.scale)
    t = torch.arange(20, dtype=torch.float64)
    kernel = (weight.double()[..., None] * q.double()[..., None] ** t).sum(1)  # (D, 20)
    torch.testing.assert_close(kernel.float(), ema_kernel(ema.delta, ema.alpha, ema.beta, ema.gamma, ema.scale, 20),
                               rtol=1e-5, atol=1e-6)


def test_unavailable_reason_and_bad_arguments(monkeypatch):
    reason = mt.triton_ema_unavailable_reason()
    if mt.triton is None:
        assert "triton" in reason
    elif not torch.cuda.is_available():
        assert "CUDA" in reason
    else:
        assert reason is None
    monkeypatch.setattr(mt, "triton", None)
    assert "pip install triton" in mt.triton_ema_unavailable_reason()
    monkeypatch.undo()

    weight, q = torch.rand(8, 2), torch.rand(8, 2)
    with pytest.raises(ValueError, match=r"\(4, h\)"):  # unidirectional needs d rows, not 2d
        mt.ema_scan(torch.randn(1, 5, 4), weight, q, 3, False)
    with pytest.raises(ValueError, match="powers of two"):
        mt.ema_scan(torch.randn(1, 5, 4), weight, q, 3, True, chunk=6)
    with pytest.raises(ValueError, match="kernel_length"):
        mt.ema_scan(torch.randn(1, 5, 4), weight, q, 0, True)
    if mt.triton is not None and not mt._interpreted():  # CPU tensors need the interpreter: a clear error
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            mt.ema_scan(torch.randn(1, 5, 4), weight, q, 3, True)


def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter is laxer than the compiler, so every kernel variant is also compiled for sm_90
    (Triton front end, LLVM, and the ptxas bundled with triton; no GPU or driver needed)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if mt._interpreted():
        pytest.skip("this process runs Triton's interpreter (TRITON_INTERPRET=1)")
    blocks = dict(CB=16, HB=16)
    variants = [
        (mt._ema_chunk_end_states, dict(FLIP=0, WITH_V=False, T=64, **blocks), "*bf16"),
        (mt._ema_chunk_end_states, dict(FLIP=1, WITH_V=True, T=64, **blocks), "*fp32"),
        (mt._ema_chunk_carry, dict(WITH_V=True, **blocks), "*fp32"),
        (mt._ema_chunk_apply, dict(FLIP=0, GRAD=False, ATOMIC=True, T=64, **blocks), "*bf16"),
        (mt._ema_chunk_apply, dict(FLIP=1, GRAD=False, ATOMIC=False, T=64, **blocks), "*fp32"),
        (mt._ema_chunk_apply, dict(FLIP=0, GRAD=True, ATOMIC=False, T=64, **blocks), "*fp32"),
    ]
    for kernel, constexprs, x_type in variants:
        signature = {name: "constexpr" if name in constexprs else x_type if name == "x_ptr"
                     else "*fp32" if name.endswith("_ptr") else "i32" for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32), options=dict(num_warps=2, enable_fp_fusion=True))
        assert compiled.asm.get("cubin"), f"{kernel.__name__} {constexprs}: no cubin"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bidirectional", [True, False])
def test_cuda_matches_the_recurrence_at_a_real_shape(bidirectional):
    """Compiled kernels, LRA Text widths (d 128, h 16), truncation 256 < L = 1000 (not a multiple of 64)."""
    pytest.importorskip("triton")
    if mt.triton_ema_unavailable_reason() is not None:
        pytest.skip(mt.triton_ema_unavailable_reason())
    torch.manual_seed(3)
    ema = MultiHeadEMA(ema_config(128, 16, bidirectional, 256)).cuda()
    x, grad = torch.randn(3, 1000, 128, device="cuda"), torch.randn(3, 1000, 128, device="cuda")
    got = _triton(ema, x, grad, None, mt.CHUNK, mt.CHANNEL_BLOCK)
    _assert_matches_reference(got, ema, x, grad, None, tol=1e-4)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))


def test_mega_with_ema_kernel_triton_falls_back_loudly_off_cuda(caplog):
    """`--set ema_kernel=triton` where the fused kernel cannot run (here: a CPU tensor) warns once with
    the reason and computes exactly the FFT path."""
    from harness.registry import MODELS

    torch.manual_seed(0)
    fft = MODELS.get("mega_tiny").build("text").eval()
    torch.manual_seed(0)
    fused = MODELS.get("mega_tiny").build("text", {"ema_kernel": "triton"}).eval()
    x = torch.randn(2, 24, MODELS.get("mega_tiny").config()["d_model"])
    with torch.no_grad():
        same = torch.equal(fused(x, None), fft(x, None))
    assert same and "ema_kernel=triton" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mega_with_the_triton_ema_matches_the_fft_path_on_cuda():
    """The whole model, forward and backward, with the fused EMA against the FFT EMA (bf16 autocast)."""
    from harness.registry import MODELS

    outs, grads = [], []
    for kernel in ("fft", "triton"):
        torch.manual_seed(0)
        model = MODELS.get("mega_chunk").build("text", {"ema_kernel": kernel}).cuda()
        x = torch.randn(2, 1024, MODELS.get("mega_chunk").config("text")["d_model"], device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(x, None)
        y.float().square().mean().backward()
        outs.append(y.float())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (outs[0] - outs[1]).norm() / outs[0].norm() < 2e-2
    assert (grads[0] - grads[1]).norm() / grads[0].norm() < 5e-2
