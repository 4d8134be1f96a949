"""Environment capture for manifests and report banners: software versions, GPU (via NVML), CPU,
memory, host, and the git revision of the harness. Every probe fails soft (None + no crash)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

OPTIONAL_PACKAGES = ("triton", "xformers", "mamba-ssm", "causal-conv1d", "numpy", "pandas", "plotly",
                     "nvidia-ml-py", "kaleido")
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(root: Path = REPO_ROOT) -> dict:
    """{'sha': ..., 'dirty': bool} of the harness checkout. A copy without .git (e.g. a tree shipped
    to a GPU machine) can state it through HARNESS_GIT_SHA (and HARNESS_GIT_DIRTY=1); else None."""
    if os.environ.get("HARNESS_GIT_SHA"):
        return {"sha": os.environ["HARNESS_GIT_SHA"], "dirty": os.environ.get("HARNESS_GIT_DIRTY") == "1",
                "source": "HARNESS_GIT_SHA"}
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def nvml_gpus() -> list[dict]:
    """GPU name, memory and driver through NVML (nvidia-ml-py); [] without a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound on machines without a driver
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                "driver": driver.decode() if isinstance(driver, bytes) else driver,
            })
        return gpus
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def nvml_used_bytes(device_index: int = 0) -> int | None:
    """Device-wide memory in use (NVML v1 'used': context, workspaces, other processes)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def capture() -> dict:
    """Everything a stored number needs to be interpreted later."""
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "packages": {name: package_version(name) for name in OPTIONAL_PACKAGES},
        "gpus": nvml_gpus(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": total_ram_bytes(),
        "hostname": socket.gethostname(),
        "harness_version": package_version("lsm-harness"),
        "git": git_state(),
    }


def hardware(device: str) -> dict:
    """The `Hardware` fields of a cell run here on `device` (cheap: no NVML, no git)."""
    from harness.version import __version__

    software = dict(visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), python=platform.python_version(),
                    torch=torch.__version__, cuda=torch.version.cuda, harness=__version__)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return {"device_name": torch.cuda.get_device_name(0), "host": socket.gethostname(),
                "device_count": torch.cuda.device_count(), **software}
    return {"device_name": cpu_model(), "host": socket.gethostname(), "device_count": None, **software}


def resolve_device(device: str) -> str:
    from harness.errors import UserError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu or auto",
                        exit_code=1)
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    from harness.errors import UserError

    if dtype == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if dtype == "fp16" and device == "cpu":
        raise UserError("--dtype fp16: float16 autocast is not supported for training on the CPU; "
                        "use --dtype fp32 or bf16", exit_code=2)
    if dtype == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bf16: this GPU does not support bfloat16; use --dtype fp16 or fp32",
                        exit_code=2)
    return dtype
