"""A task defined in a plugin file gets `data generate` and `data check` with no harness change: the
commands dispatch over the task registry, and the task's options are reachable with --task-option."""

import json
import subprocess
import sys

from harness.cli import main
from harness.registry import TASKS

PLUGIN = '''
"""Parity of bit strings, written as one `bits.txt` (a line per example) with a manifest."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.files import sha256_file
from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskOptions, TaskSpec
from harness_tasks.datafiles import (Problems, expected_count, output_folder, read_manifest, verify_checksums,
                                     write_manifest)


@dataclass(frozen=True)
class ParityOptions(TaskOptions):
    width: int = 8  # bits per example


@register_task("plugin_parity")
class Parity(Task):
    spec = TaskSpec(seq_len=8, input_kind="tokens", vocab_size=3, num_classes=2,
                    splits=dict(train=8, val=2, test=2))
    Options = ParityOptions
    generatable = True

    def sizes(self, scale):
        return dict(train=8, val=2, test=2, seq_len=self.options.width)

    def build(self, split):
        lines = (Path(self.data_dir) / "parity" / "bits.txt").read_text().split()
        x = torch.tensor([[int(c) + 1 for c in line] for line in lines])
        return TaskData(inputs=x, lengths=torch.full((len(x),), x.shape[1]), labels=(x - 1).sum(1) % 2,
                        provenance=Provenance("regenerated", "parity"))

    def check(self, data_dir):
        problems = Problems()
        folder = Path(data_dir) / "parity"
        manifest = read_manifest(folder, problems)
        if problems.readable(folder / "bits.txt"):
            lines = (folder / "bits.txt").read_text().split()
            want, where = expected_count(manifest, "examples", 12)
            if len(lines) != want:
                problems.add(f"{folder / 'bits.txt'}: {len(lines)} examples, {where} has {want}", minor=True)
            for i, line in enumerate(lines, start=1):
                if len(line) != self.options.width or set(line) - set("01"):
                    problems.add(f"{folder / 'bits.txt'}:{i}: expected {self.options.width} bits", "width")
        verify_checksums(folder, manifest, problems)
        return problems.result()

    def generate(self, out_dir, n=None, seed=0, workers=1, progress=None):
        folder = Path(out_dir) / "parity"
        n = 12 if n is None else n
        bits = np.random.default_rng(seed).integers(0, 2, (n, self.options.width))
        with output_folder(folder):
            (folder / "bits.txt").write_text("".join("".join(map(str, row)) + "\\n" for row in bits))
            if progress is not None:
                progress(n)
        manifest = dict(seed=seed, counts=dict(examples=n), files={"bits.txt": sha256_file(folder / "bits.txt")},
                        seconds=0.0, path=str(folder / "manifest.json"))
        write_manifest(folder, manifest)
        return manifest
'''


def test_a_plugin_task_is_generated_checked_and_read(workdir, capsys):
    (workdir / "parity_task.py").write_text(PLUGIN)
    include = ["--include", "parity_task.py"]
    assert main(["data", "generate", "--task", "plugin_parity", "--out", "gen", "--n", "5", "--seed", "3",
                 "--task-option", "plugin_parity.width=6"] + include) == 0
    assert "plugin_parity: generated examples=5 with seed 3" in capsys.readouterr().out
    lines = (workdir / "gen" / "parity" / "bits.txt").read_text().split()
    assert len(lines) == 5 and {len(line) for line in lines} == {6}  # the option reached the generator
    manifest = json.loads((workdir / "gen" / "parity" / "manifest.json").read_text())
    assert manifest["counts"] == {"examples": 5} and manifest["seed"] == 3
    task = TASKS.get("plugin_parity").cls(data_dir=workdir / "gen", options={"width": "6"})
    data = task.build("train")
    assert data.inputs.shape == (5, 6) and data.labels.tolist() == [line.count("1") % 2 for line in lines]

    check = ["data", "check", "--task", "plugin_parity", "--data-dir", "gen"] + include
    assert main(check + ["--task-option", "plugin_parity.width=6"]) == 0
    assert "plugin_parity: OK" in capsys.readouterr().out
    assert main(check) == 1  # the default width (8) does not match the data
    out, err = capsys.readouterr()
    assert "bits.txt:1: expected 8 bits" in out and err.startswith("error: data check --task plugin_parity")

    with open(workdir / "gen" / "parity" / "bits.txt", "a") as f:
        f.write("010101\n")
    assert main(check + ["--task-option", "plugin_parity.width=6"]) == 1
    out = capsys.readouterr().out
    assert "6 examples, manifest.json has 5" in out and "sha256 differs" in out

    assert main(check + ["--task-option", "plugin_parity.depth=2"]) == 2  # the task's options are typed
    assert "task plugin_parity has no option 'depth'" in capsys.readouterr().err
    assert main(check + ["--task-option", "other_task.width=6"]) == 2  # options of another task
    assert "names task other_task" in capsys.readouterr().err


def test_python_m_harness_checks_what_the_plugin_generated(workdir):
    # another name: the registry of this test process still holds the previous test's plugin
    (workdir / "parity_task.py").write_text(PLUGIN.replace("plugin_parity", "plugin_parity_b"))
    assert main(["data", "generate", "--task", "plugin_parity_b", "--out", "gen", "--include", "parity_task.py"]) == 0
    done = subprocess.run([sys.executable, "-m", "harness", "data", "check", "--task", "plugin_parity_b",
                           "--data-dir", "gen", "--include", "parity_task.py"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "plugin_parity_b: OK, data in gen looks complete" in done.stdout
