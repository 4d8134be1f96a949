"""Pathfinder / Path-X: the generator (lra.md §5), the release reader (§2) and the seeded splits."""

import json

import numpy as np
import pytest
from PIL import Image

from harness.errors import UserError
from harness_tasks.pathfinder import (PathX, Pathfinder, generate_batch, generate_dataset, lra_params, marker,
                              parse_metadata, render)


@pytest.fixture(scope="module")
def batch32(tmp_path_factory):
    """One generated batch of 24 images at 32 px (text metadata), shared by several tests."""
    out = tmp_path_factory.mktemp("pf32")
    params = lra_params(32, "hard")
    summary = generate_batch((str(out), 0, 24, 123, params, "text"))
    return out, params, summary


def test_lra_parameters_per_resolution():
    p32, p128 = lra_params(32, "hard"), lra_params(128, "curv_contour_length_14")
    assert (p32.window, p32.padding, p32.paddle_length, p32.paddle_thickness, p32.seed_distance) == (32, 1, 2, 0.5, 7)
    assert (p32.distractor_length, p32.num_distractor_snakes) == (4, 5)  # 20 // (14 // 3)
    assert (p128.margins, p128.marker_radius, p128.num_distractor_snakes, p128.snake_contrasts) == ((2, 3), 3, 8, (0.9,))
    assert lra_params(32, "easy").num_distractor_snakes == 10  # recomputed per difficulty: 20 // 2
    assert lra_params(32, "hard", distractors="baseline").num_distractor_snakes == 10  # upstream wrapper
    with pytest.raises(UserError):
        lra_params(48, "hard")


def test_generated_batch_layout_labels_and_metadata(batch32):
    out, params, summary = batch32
    rows = parse_metadata(out / "metadata" / "0.npy")
    assert len(rows) == 24 == summary["n"]
    labels = [int(r[3]) for r in rows]
    assert 6 <= sum(labels) <= 18, "labels should be roughly balanced over a batch"
    for i, row in enumerate(rows):
        assert len(row) == 11
        assert row[:3] == ["imgs/0", f"sample_{i}.png", str(i)]
        assert row[4:] == ["1.0", "14", "4", "2", "0.5", "1", "1"]  # continuity ... n_paddle_contrasts
        with Image.open(out / row[0] / row[1]) as im:
            assert im.mode == "L" and im.size == (32, 32)
            pixels = np.asarray(im)
        assert pixels.max() == 255  # scipy imsave byte-scaling: brightest pixel is 255
        assert 0.05 < (pixels > 0).mean() < 0.9


def test_render_places_both_markers_and_labels_by_snake():
    rng = np.random.default_rng(5)
    params = lra_params(32, "hard")
    seen = set()
    for _ in range(8):
        sample = render(rng, params)
        assert sample.pixels.shape == (32, 32) and sample.pixels.dtype == np.uint8
        origin, terminal = sample.markers
        assert origin != terminal
        for y, x in (origin, terminal):  # a marker disk is drawn at full intensity at each tip
            assert sample.pixels[y, x] >= 128
        assert sample.label == int(sample.snakes[0] == sample.snakes[1])
        seen.add(sample.label)
    assert seen == {0, 1}
    disk = marker(32, (16, 16), 1.5, 2)
    assert disk[16, 16] > 200 and disk[0, 0] == 0 and disk.shape == (32, 32)


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    params = lra_params(32, "hard")
    one = generate_dataset(tmp_path / "one", 6, seed=3, params=params, workers=1, batch_size=3)
    two = generate_dataset(tmp_path / "two", 6, seed=3, params=params, workers=2, batch_size=3)
    other = generate_dataset(tmp_path / "other", 6, seed=4, params=params, workers=1, batch_size=3)
    assert one["files"] == two["files"]
    assert one["files"] != other["files"]
    assert one["counts"]["images"] == 6 and one["counts"]["batches"] == 2
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["params"]["contour_length"] == 14


def test_pathx_generator_renders_128px():
    sample = render(np.random.default_rng(3), lra_params(128, "hard"))  # seed 3 renders in well under 1 s
    assert sample.pixels.shape == (128, 128) and sample.pixels.max() == 255
    assert sample.margin in (2, 3)


# -- reader ----------------------------------------------------------------------------------------
def write_release(root, n_batches=2, per_batch=10, npy_batches=(1,)):
    """A tiny pathfinder32/curv_contour_length_14 tree; metadata as text, or .npy for `npy_batches`."""
    folder = root / "pathfinder32" / "curv_contour_length_14"
    rng = np.random.default_rng(0)
    for b in range(n_batches):
        (folder / "imgs" / str(b)).mkdir(parents=True)
        rows = []
        for i in range(per_batch):
            pixels = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
            pixels[0, 0] = b * per_batch + i  # identifies the image
            Image.fromarray(pixels).save(folder / "imgs" / str(b) / f"sample_{i}.png")
            rows.append([f"imgs/{b}", f"sample_{i}.png", str(i), str(i % 2), "1.0", "14", "4", "2", "0.5", "1", "1"])
        (folder / "metadata").mkdir(exist_ok=True)
        if b in npy_batches:
            with open(folder / "metadata" / f"{b}.npy", "wb") as f:
                np.save(f, np.array(rows))
        else:
            (folder / "metadata" / f"{b}.npy").write_text("".join(" ".join(r) + "\n" for r in rows))
    return folder


def test_reader_accepts_text_and_binary_metadata_and_skips_empty_files(tmp_path, caplog):
    folder = write_release(tmp_path)
    (folder / "imgs" / "0" / "sample_3.png").write_bytes(b"")  # a zero-byte image is skipped
    task = Pathfinder(scale="paper", seed=0, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    parts = {s: task.build(s) for s in ("train", "val", "test")}
    assert "skipped 1 empty" in caplog.text
    ids = [int(v) for d in parts.values() for v in d.inputs[:, 0]]
    assert sorted(ids) == [i for i in range(20) if i != 3]  # every usable image exactly once
    assert [len(parts[s]) for s in ("train", "val", "test")] == [15, 1, 3]  # 80/10/10 of 19
    for data in parts.values():
        assert data.inputs.shape[1] == 1024 and data.inputs.dtype.is_floating_point is False
        assert (data.labels == data.inputs[:, 0].long() % 2).all()  # label = metadata field 3
    assert parts["train"].provenance.kind == "official"
    split_files = list((tmp_path / "cache" / "pathfinder" / "splits").glob("*.json"))
    record = json.loads(split_files[0].read_text())
    assert record["counts"] == {"train": 15, "val": 1, "test": 3} and set(record["sha256"]) == {"train", "val", "test"}


def test_blacklisted_empty_sample_172_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "pathfinder32" / "curv_baseline"
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rows = []
    for i in (170, 171, 172, 173, 174):
        path = folder / "imgs" / "0" / f"sample_{i}.png"
        if i == 172:
            path.write_bytes(b"")
        else:
            Image.fromarray(np.full((32, 32), i, dtype=np.uint8)).save(path)
        rows.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.0 6 2 2 0.5 1 1\n")
    (folder / "metadata" / "0.npy").write_text("".join(rows))
    task = Pathfinder(scale="paper", data_dir=tmp_path, cache_dir=tmp_path / "c", options={"difficulty": "easy"})
    data = task.build("train")
    assert "sample_172.png" in caplog.text
    assert 172 not in data.inputs[:, 0].tolist()


def test_corrupt_png_names_the_file(tmp_path):
    folder = write_release(tmp_path, n_batches=1, per_batch=5, npy_batches=())
    (folder / "imgs" / "0" / "sample_2.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    task = Pathfinder(scale="paper", seed=0, data_dir=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="sample_2.png.*corrupt"):
        for split in ("train", "val", "test"):
            task.build(split)


def test_bad_metadata_line_is_a_clear_error(tmp_path):
    folder = write_release(tmp_path, n_batches=1, per_batch=4, npy_batches=())
    with open(folder / "metadata" / "0.npy", "a") as f:
        f.write("imgs/0 sample_9.png 9\n")
    task = Pathfinder(scale="paper", data_dir=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="row 5 has 3 fields, expected 11"):
        task.build("train")


def test_split_is_seeded(tmp_path):
    write_release(tmp_path, n_batches=2, per_batch=10)

    def train_ids(split_seed):
        task = Pathfinder(scale="paper", seed=0, data_dir=tmp_path, cache_dir=tmp_path / f"c{split_seed}",
                          options={"split_seed": split_seed})
        return task.build("train").inputs[:, 0].tolist()

    assert train_ids(1) == train_ids(1)
    assert train_ids(1) != train_ids(2)


def test_regenerated_stand_in_provenance_and_pooling(tmp_path):
    task = Pathfinder(scale="smoke", seed=0, cache_dir=tmp_path, options={"n": 10, "workers": 1})
    data = task.load("train")
    assert data.inputs.shape == (8, 256)  # 80% of 10 images, pooled 2x2 to 16x16 at smoke
    assert (data.provenance.kind, data.provenance.parameters["seed"], data.provenance.parameters["images"]) == ("regenerated", 0, 10)
    assert "pool=2" in data.provenance.subset
    assert Pathfinder.spec.real_mean == 0.5 and Pathfinder.spec.real_std == 0.5
    assert PathX.spec.seq_len == 16384


def test_paper_scale_without_data_asks_for_it(tmp_path):
    with pytest.raises(UserError, match="data generate --task pathx"):
        PathX(scale="paper", cache_dir=tmp_path).build("train")


@pytest.mark.parametrize("damage", ['{"seed": 3, "params": [1]}',
                                    '{"seed": 3, "params": {}, "counts": {"images": "many"}}'])
def test_damaged_generated_manifest_is_a_one_line_error(tmp_path, damage):
    folder = tmp_path / "pathfinder32" / "curv_contour_length_14"
    generate_dataset(folder, 2, seed=3, params=lra_params(32, "hard"), workers=1, batch_size=2)
    (folder / "manifest.json").write_text(damage)
    with pytest.raises(UserError, match="unreadable manifest"):
        Pathfinder(data_dir=tmp_path).provenance
