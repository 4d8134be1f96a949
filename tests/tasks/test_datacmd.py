"""`data check` and `data generate`: problems are listed clearly, generated data carries a manifest."""

import argparse
import hashlib
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from harness import datacmd
from harness.errors import UserError
from harness_tasks.pathfinder import Pathfinder


def parse(argv):
    parser = argparse.ArgumentParser(prog="harness")
    datacmd.add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_generate_listops_writes_manifest_and_checksums(tmp_path):
    manifest = datacmd.generate("listops", tmp_path, n=60, seed=5)
    folder = tmp_path / "listops-1000"
    assert manifest["counts"] == {"train": 58, "val": 1, "test": 1} and manifest["seed"] == 5
    on_disk = json.loads((folder / "manifest.json").read_text())
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        assert on_disk["files"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert datacmd.check("listops", tmp_path) == []
    with open(folder / "basic_val.tsv", "a") as f:
        f.write("( [MAX 1 2 ] )\t7\n")  # changes the count and the checksum
    problems = datacmd.check("listops", tmp_path)
    assert any("basic_val.tsv: 2 examples, manifest.json has 1" in p for p in problems)
    assert any("sha256 differs" in p for p in problems)
    with pytest.raises(UserError, match="already holds data"):
        datacmd.generate("listops", tmp_path, n=60, seed=5)


def test_generate_pathfinder_then_check_then_damage(tmp_path):
    manifest = datacmd.generate("pathfinder", tmp_path, n=4, seed=1, workers=1, options={"metadata_format": "npy"})
    root = tmp_path / "pathfinder32" / "curv_contour_length_14"
    assert manifest["counts"]["images"] == 4 and (root / "manifest.json").is_file()
    assert (root / "metadata" / "0.npy").read_bytes().startswith(b"\x93NUMPY")
    assert set(manifest["files"]) >= {"metadata/0.npy", "imgs/0/sample_0.png"}
    assert datacmd.check("pathfinder", tmp_path) == []
    data = Pathfinder(scale="paper", data_dir=tmp_path, cache_dir=tmp_path / "cache").build("train")
    made = data.provenance
    assert len(data) == 3 and (made.kind, made.parameters["seed"], made.parameters["images"]) == ("regenerated", 1, 4)
    first = sorted(root.glob("imgs/*/sample_0.png"))[0]
    first.write_bytes(b"")
    second = sorted(root.glob("imgs/*/*.png"))[-1]
    second.unlink()
    third = root / "imgs" / "1" / "sample_0.png"
    third.write_bytes(third.read_bytes()[:40])  # truncated: PNG signature, broken chunks
    problems = datacmd.check("pathfinder", tmp_path)
    assert any(f"{first}: empty image file" in p for p in problems)
    assert any(f"{third}: corrupt PNG" in p for p in problems)
    assert any(f"{second}: listed in" in p and "missing" in p for p in problems)


def test_check_reports_missing_and_empty_files(tmp_path):
    tsv = tmp_path / "tsv_data"
    tsv.mkdir()
    (tsv / "new_aan_pairs.train.tsv").write_text("1\ta\tb\tx\ty\n")
    (tsv / "new_aan_pairs.eval.tsv").write_text("")
    problems = datacmd.check("retrieval", tmp_path)
    assert any(p.endswith("new_aan_pairs.eval.tsv: empty file") for p in problems)
    assert any(p.endswith("new_aan_pairs.test.tsv: missing") for p in problems)
    assert any("new_aan_pairs.train.tsv: 1 pairs, the LRA release has 147086" in p for p in problems)

    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    (tmp_path / "aclImdb" / "test").mkdir()
    (tmp_path / "aclImdb" / "train" / "pos" / "0_9.txt").write_text("")
    problems = datacmd.check("text", tmp_path)
    assert any("0_9.txt: empty review file" in p for p in problems)
    assert any("train/neg: missing folder" in p for p in problems)

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    with open(cifar / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    problems = datacmd.check("image", tmp_path)
    assert any("data_batch_1: 3 images, a CIFAR-10 batch has 10000" in p for p in problems)
    assert any(p.endswith("test_batch: missing") for p in problems)
    assert any("no pathfinder128/curv_contour_length_14/metadata/" in p for p in datacmd.check("pathx", tmp_path))


def test_check_skips_the_known_blacklisted_image(tmp_path):
    root = tmp_path / "pathfinder32" / "curv_baseline"
    (root / "imgs" / "0").mkdir(parents=True)
    (root / "metadata").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "imgs" / "0" / "sample_171.png")
    (root / "imgs" / "0" / "sample_172.png").write_bytes(b"")
    (root / "metadata" / "0.npy").write_text("imgs/0 sample_171.png 171 0 1.0 6 2 2 0.5 1 1\n"
                                             "imgs/0 sample_172.png 172 1 1.0 6 2 2 0.5 1 1\n")
    problems = datacmd.check("pathfinder", tmp_path, options={"difficulty": "easy"})
    assert problems == ["{}: metadata lists 2 images, the official release has 200000".format(root)]


def test_cli_commands_and_exit_codes(tmp_path, capsys):
    args = parse(["data", "check", "--task", "listops", "--data-dir", str(tmp_path / "nowhere")])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data-dir") and "no such directory" in err and "\n" not in err

    args = parse(["data", "generate", "--task", "listops", "--out", str(tmp_path / "d"), "--n", "20", "--seed", "2"])
    assert args.func(args) == 0
    assert "manifest" in capsys.readouterr().out
    args = parse(["data", "check", "--task", "listops", "--data-dir", str(tmp_path / "d")])
    assert args.func(args) == 0
    (tmp_path / "d" / "listops-1000" / "basic_test.tsv").write_text("")
    assert args.func(args) == 1
    out = capsys.readouterr()
    assert "basic_test.tsv: empty file" in out.out and out.err.startswith("error: data check --task listops")

    args = parse(["data", "generate", "--task", "pathfinder", "--out", str(tmp_path / "e"), "--n", "0"])
    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("error: --n 0")
    args = parse(["data", "generate", "--task", "text", "--out", str(tmp_path / "f")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "expected one of listops, pathfinder, pathx" in err and "needs real data" in err
    args = parse(["data", "check", "--task", "mqar", "--data-dir", str(tmp_path)])
    assert args.func(args) == 2 and "reads no data files" in capsys.readouterr().err
    args = parse(["data", "check", "--task", "listops", "--task-option", "listops.difficulty=easy",
                  "--data-dir", str(tmp_path / "d")])
    assert args.func(args) == 2 and "task listops has no option 'difficulty'" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_task_options_pick_the_folder_and_the_metadata_format(tmp_path, capsys):
    args = parse(["data", "generate", "--task", "pathfinder", "--out", str(tmp_path), "--n", "2", "--workers", "1",
                  "--task-option", "pathfinder.difficulty=easy", "--task-option", "pathfinder.metadata_format=npy"])
    assert args.func(args) == 0
    root = tmp_path / "pathfinder32" / "curv_baseline"
    assert (root / "metadata" / "0.npy").read_bytes().startswith(b"\x93NUMPY")
    assert json.loads((root / "manifest.json").read_text())["params"]["contour_length"] == 6
    capsys.readouterr()
    args = parse(["data", "check", "--task", "pathfinder", "--data-dir", str(tmp_path),
                  "--task-option", "pathfinder.difficulty=easy"])
    assert args.func(args) == 0, capsys.readouterr()
    args = parse(["data", "check", "--task", "pathfinder", "--data-dir", str(tmp_path)])  # default: hard
    assert args.func(args) == 1 and "no pathfinder32/curv_contour_length_14/metadata/" in capsys.readouterr().err
    args = parse(["data", "check", "--task", "pathfinder", "--data-dir", str(tmp_path),
                  "--task-option", "listops.n=3"])
    assert args.func(args) == 2 and "names task listops" in capsys.readouterr().err
