"""Shared fixtures: a private results/cache folder per test and a deterministic CPU setup."""

import os
import sys
from pathlib import Path

import pytest
import torch



@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working directory holding results/ and .cache/ for CLI runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One data cache for the whole session, so generated smoke data is built once."""
    return tmp_path_factory.mktemp("data-cache")
