"""Measured complexity (issue 14, item 5): the exponent p of time ∝ L^p and memory ∝ L^p fitted per
row over its ok lengths, shown with its fit range beside the registered complexity."""

import numpy as np
import pytest

from harness.report import select, tables
from harness.store import load_records
from tests.stored_runs import RUN_A, write_run


def speed(seq_len, ms, peak=1000, **extra):
    """A speed record of model `m`: `ms` median time (None: not measured), `peak` bytes."""
    timing = None if ms is None else dict(median_ms=ms, p20_ms=ms * 0.95, p80_ms=ms * 1.05)
    record = dict(kind="speed", model="m", task="text", seq_len=seq_len, batch_size=2, dtype="fp32", device="cpu",
                  mode="train_step", status="ok", timing=timing, memory=dict(peak_rss_increase_bytes=peak))
    return {**record, **extra}


@pytest.mark.parametrize("p", [1.0, 1.37, 2.0])
def test_a_known_exponent_is_recovered_from_noisy_records(tmp_path, p):
    rng = np.random.default_rng(0)
    lengths = [1024, 2048, 4096, 8192, 16384]
    records = []
    for n in lengths:
        noise = float(np.exp(rng.normal(0, 0.03)))  # 3% timing noise
        ms = 2e-4 * n ** p * noise
        records.append(speed(n, ms, peak=int(50 * n ** (p / 2)), complexity="O(L^2)"))
    write_run(tmp_path, RUN_A, records)
    table = tables.complexity_table(select.prepare(load_records(tmp_path)))
    cell = table.numbers[("m", "time p")]
    assert abs(cell["p"] - p) < 0.05 and cell["lengths"] == lengths
    assert abs(table.numbers[("m", "memory p")]["p"] - p / 2) < 0.05
    assert table.text.loc["m", "registered"] == "O(L^2)" and table.text.loc["m", "fit range"] == "1K–16K (5 lengths)"


def test_failed_lengths_are_left_out_of_the_fit_and_two_lengths_are_marked(tmp_path):
    write_run(tmp_path, RUN_A, [speed(1024, 1.0), speed(2048, 4.0), speed(4096, None, status="oom")])
    table = tables.complexity_table(select.prepare(load_records(tmp_path)))
    assert table.text.loc["m", "time p"] == "2.00†" and "(2 lengths)" in table.text.loc["m", "fit range"]
    assert tables.fit_exponent([1024], [3.0]) is None  # one length: no slope


def test_paper_ratios_stand_beside_ours_only_at_the_papers_cell(tmp_path):
    """The published Table-2 ratios (declared by the model files) get their own column at Text, 4K,
    and nowhere else; they never replace our own ratios."""
    records = [dict(speed(n, ms), model=model) for model, ms in (("mega", 30.0), ("transformer_vanilla", 60.0), ("m", 9.0))
               for n in (1024, 4096)]
    write_run(tmp_path, RUN_A, records)
    frame = select.prepare(load_records(tmp_path))
    slice_ = select.speed_slices(select.speed_cells(frame))[0]
    table = tables.efficiency_table(frame, 4096, slice_)
    assert table.text.loc["mega", "paper speed-up / memory"] == "2.9× / 0.31×"
    assert table.text.loc["mega", "speed-up vs transformer_vanilla"] == "2.0×"  # ours, from our times
    assert table.text.loc["m", "paper speed-up / memory"] == "–" and "never mixed with ours" in table.caption
    assert "paper speed-up / memory" not in tables.efficiency_table(frame, 1024, slice_).columns
