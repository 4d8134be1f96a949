"""Task options (`--task-option TASK.KEY=VALUE`): typed and checked by the task, reachable from the
command line, recorded on every record, part of the cell identity only when changed; the head
options (pair interaction, head dropout) belong to the task."""

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass

import pytest
import torch

from harness.cli import main
from harness.config import RunConfig
from harness.errors import UserError
from harness.heads import build_classifier, count_parameters
from harness.plan import make_plan
from harness.records import Record, row_label
from harness.registry import TASKS
from harness.store import cell_key, load_records
from harness.task import Task, TaskData, TaskOptions, TaskSpec, make_options
from harness.train import cell_identity, train_cell


@dataclass(frozen=True)
class DemoOptions(TaskOptions):
    seq_len: int = 64  # an int
    rate: float = 0.5  # a float
    shuffle: bool = False  # a bool
    profile: str = "default"  # text
    limit: int | None = None  # optional
    mode: typing.Literal["a", "b"] = "a"  # a choice


class Demo(Task):
    name = "demo"
    spec = TaskSpec(seq_len=64, input_kind="tokens", vocab_size=8, num_classes=2)
    Options = DemoOptions

    def sizes(self, scale):
        return {"train": 4, "val": 2, "test": 2, "seq_len": self.options.seq_len}

    def build(self, split):
        n, length = self.sizes(self.scale)[split], self.options.seq_len
        return TaskData(inputs=torch.ones(n, length, dtype=torch.long), lengths=torch.full((n,), length),
                        labels=torch.zeros(n, dtype=torch.long), provenance=dict(kind="stand-in", source="demo"))


# -- coercion ---------------------------------------------------------------------------------------

def test_text_from_the_command_line_becomes_each_field_type():
    opts = Demo(options={"seq_len": "1_000", "rate": "0.25", "shuffle": "true", "profile": "s4",
                         "limit": "none", "mode": "b", "head_dropout": "0.1"}).options
    assert (opts.seq_len, opts.rate, opts.shuffle, opts.profile, opts.limit, opts.mode, opts.head_dropout) == \
        (1000, 0.25, True, "s4", None, "b", 0.1)
    assert isinstance(opts.rate, float) and isinstance(opts.head_dropout, float)
    assert Demo(options={"limit": "7", "rate": 2, "shuffle": "no"}).options.changed() == \
        {"limit": 7, "rate": 2.0}  # shuffle=no is the default: not a change


def test_python_values_and_instances_are_accepted():
    given = DemoOptions(seq_len=32)
    assert Demo(options=given).options is given
    assert Demo(options={"seq_len": 32}).options == given
    assert Demo().options == DemoOptions() and Demo().options.changed() == {}


@pytest.mark.parametrize("options, fragment", [
    ({"seqlen": "10"}, "--task-option demo.seqlen=10: task demo has no option 'seqlen' (its options: "),
    ({"seq_len": "ten"}, "--task-option demo.seq_len=ten: expected an integer"),
    ({"seq_len": True}, "expected an integer"),  # a bool is not a length
    ({"rate": "fast"}, "--task-option demo.rate=fast: expected a number"),
    ({"shuffle": "maybe"}, "expected true or false"),
    ({"limit": "x"}, "expected an integer or none"),
    ({"mode": "c"}, "expected one of a, b"),
    ({"profile": 3}, "expected text"),
    ({"interaction": "nli"}, "has one document per example"),
    ({"interaction": "dot"}, "expected one of concat, nli"),
    ({"head_dropout": "1.5"}, "expected a probability in [0, 1)"),
])
def test_a_bad_option_is_one_line_naming_the_flag(options, fragment):
    with pytest.raises(UserError) as err:
        Demo(options=options)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert err.value.exit_code == 2


def test_the_options_of_another_family_are_refused():
    with pytest.raises(UserError, match="must be a dict or a DemoOptions"):
        make_options(DemoOptions, TaskOptions(), "demo")


# -- identity ---------------------------------------------------------------------------------------

def reference_cache_key(task, split, options):
    """The data cache key as harness/task.py defined it before options were typed."""
    ident = dict(task=task.name, version=task.spec.version, split=split, scale=task.scale, seed=task.seed,
                 sizes=task.sizes(task.scale), options=options, data_dir=None)
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", ["listops", "mqar", "selective_copy", "induction_heads"])  # base cache_key
def test_a_default_task_keeps_its_data_cache_key(name):
    task = TASKS.get(name).cls(scale="smoke", seed=3)
    assert task.cache_key("train") == reference_cache_key(task, "train", {})


def test_data_options_enter_the_cache_key_and_head_options_do_not(tmp_path):
    changed = Demo(options={"seq_len": "32"}, cache_dir=tmp_path)
    assert changed.cache_key("val") == reference_cache_key(changed, "val", {"seq_len": 32})
    assert changed.cache_key("val") != Demo(cache_dir=tmp_path).cache_key("val")
    head = Demo(options={"head_dropout": "0.2"}, cache_dir=tmp_path)
    assert head.cache_key("val") == Demo(cache_dir=tmp_path).cache_key("val")  # same data, not rebuilt
    assert changed.load("val").inputs.shape == (2, 32)


# -- the head belongs to the task -------------------------------------------------------------------

def test_head_dropout_defaults_to_the_models_and_follows_the_task_option():
    model, _, config, _ = build_classifier("transformer_tiny", "listops")
    assert model.head.dropout.p == config["dropout"]
    model, _, config, _ = build_classifier("transformer_tiny", "listops", task_options={"head_dropout": 0.3})
    assert model.head.dropout.p == 0.3 and model.embed_dropout.p == config["dropout"]


def test_the_nli_interaction_trains_a_step_on_retrieval_smoke_data(data_cache):
    task = TASKS.get("retrieval").cls(scale="smoke", options={"interaction": "nli"})
    model, _, config, _ = build_classifier("transformer_tiny", "retrieval", task_options=task.options)
    assert model.interaction == "nli" and model.head.fc.in_features == 4 * config["d_model"]
    concat, *_ = build_classifier("transformer_tiny", "retrieval")
    assert concat.head.fc.in_features == 2 * config["d_model"]  # the default stays MEGA's concat
    run = RunConfig(steps=1, task_option=["retrieval.interaction=nli"], cache_dir=str(data_cache)).validate()
    record = train_cell("transformer_tiny", "retrieval", 0, run, device="cpu", dtype="fp32")
    assert record["status"] == "ok", record["error"]
    assert record["metrics"]["steps"] == 1 and record["task_options"] == {"interaction": "nli"}
    assert record["n_params"] == count_parameters(model)  # the nli head was the one trained


# -- the command line -------------------------------------------------------------------------------

def test_config_reads_task_options():
    config = RunConfig(task_option=["text.seq_len=1000", " retrieval.interaction = nli "]).validate()
    assert config.task_options("text") == {"seq_len": "1000"}
    assert config.task_options("retrieval") == {"interaction": "nli"}
    assert config.task_options("image") == {}


def test_a_comma_list_is_a_sweep_and_a_quoted_value_is_one_text():
    config = RunConfig(task_option=["text.seq_len=1000,4096", "text.profile=default"]).validate()
    assert [v.task_option for v in config.variants()] == [["text.seq_len=1000", "text.profile=default"],
                                                          ["text.seq_len=4096", "text.profile=default"]]
    assert [v.task_options("text") for v in config.variants()] == [
        {"seq_len": "1000", "profile": "default"}, {"seq_len": "4096", "profile": "default"}]
    with pytest.raises(UserError, match="several values"):  # only a variant of the sweep has its value
        config.task_options("text")
    quoted = RunConfig(task_option=['image.fashion_mnist_dir="a,b"']).validate()
    assert quoted.variants() == [quoted] and quoted.task_options("image") == {"fashion_mnist_dir": "a,b"}


def test_a_sweep_plans_each_value_once_and_the_untouched_cells_once():
    config = RunConfig(models="transformer", tasks="listops,mqar", seeds="0", skip_bench=True,
                       task_option=["mqar.num_kv=4,6"]).validate()
    plan = make_plan(config, "run", {}, "cpu", "fp32")
    kinds = [(u.kind, u.job["task"]) for u in plan.units]
    assert kinds.count(("reference", "listops")) == 1 and kinds.count(("accuracy", "listops")) == 1
    assert kinds.count(("reference", "mqar")) == 2 and kinds.count(("accuracy", "mqar")) == 2
    keys = [k for u in plan.units for k in u.keys]
    assert len(keys) == len(set(keys))
    labels = [u.label for u in plan.units if u.kind == "accuracy"]
    assert labels == ["transformer_tiny on listops (seed 0)", "transformer_tiny [mqar.num_kv=4] on mqar (seed 0)",
                      "transformer_tiny [mqar.num_kv=6] on mqar (seed 0)"]


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--tasks", "listops", "--task-option", "seq_len=1"], "expected TASK.KEY=VALUE"),
    (["run", "--tasks", "listops", "--task-option", "listops.depth"], "expected TASK.KEY=VALUE"),
    (["run", "--tasks", "listops", "--task-option", "listops.head_dropout="], "an empty value"),
    (["run", "--tasks", "listops", "--task-option", "listops.head_dropout=0.1,"], "an empty value"),
    (["run", "--tasks", "listops", "--task-option", "listops.head_dropout=0.1,x"], "listops.head_dropout=x: expected"),
    (["run", "--tasks", "listops", "--task-option", "listops.head_dropout=0.1",
      "--task-option", "listops.head_dropout=0.2"], "given twice"),
    (["run", "--tasks", "listops", "--task-option", "lisptops.head_dropout=0.1"], "did you mean 'listops'"),
    (["run", "--tasks", "listops", "--skip-bench", "--task-option", "text.head_dropout=0.1"],
     "task text is not in this run (--tasks listops); add it to --tasks"),
    (["run", "--tasks", "listops", "--task-option", "listops.nope=1"], "task listops has no option 'nope'"),
    (["run", "--tasks", "listops", "--task-option", "listops.head_dropout=lots"], "expected a number or none"),
    (["run", "--tasks", "listops", "--task-option", "listops.interaction=nli"], "has one document"),
    (["bench", "--models", "transformer", "--task-option", "listops.head_dropout=0.1"],
     "task listops is not in this run (no accuracy tasks, speed sweep on --bench-task text); give --bench-task"),
    (["bench", "--models", "transformer", "--task-option", "text.seq_len=100"],
     "the speed sweep times random inputs, so only the head options (interaction, head_dropout) apply"),
    (["run", "--tasks", "listops", "--task-option", "text.seq_len=100"], "add text to --tasks"),
    (["run", "--tasks", "text", "--task-option", "text.seq_len=ten"],
     "expected an integer or none; give an integer, or none for the default"),
])
def test_bad_task_options_end_in_one_line_and_exit_2(workdir, capsys, argv, fragment):
    assert main([*argv, "--models", "transformer", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (workdir / "results").exists() or not any((workdir / "results").iterdir())  # no run created


def test_a_default_cell_keeps_its_key_and_a_changed_option_keys_its_own():
    config = RunConfig(steps=2).validate()
    default = cell_identity("transformer_tiny", "listops", 0, config, device="cpu", dtype="fp32")
    base = default["base"]
    assert base["task_options"] == {}
    assert default["key"] == cell_key(  # the formula of before, without task options
        kind="accuracy", model="transformer_tiny", model_config_hash=base["model_config_hash"],
        runtime=base["runtime_config"], task="listops", task_version=base["task_version"], scale="smoke", seed=0,
        dtype="fp32", device="cpu", train=base["train"], data_dir=None, data_seed=0)
    changed = cell_identity("transformer_tiny", "listops", 0, dataclasses.replace(
        config, task_option=["listops.head_dropout=0.25"]), device="cpu", dtype="fp32")
    assert changed["key"] != default["key"] and changed["base"]["task_options"] == {"head_dropout": 0.25}


def test_options_are_recorded_and_label_the_row(workdir, data_cache):
    argv = ["run", "--models", "transformer", "--tasks", "listops", "--seeds", "0", "--steps", "2",
            "--skip-bench", "--no-report", "--no-reference-rows", "--isolation", "inprocess", "--quiet",
            "--cache-dir", str(data_cache), "--task-option", "listops.head_dropout=0.25"]
    assert main(argv) == 0
    lines = [json.loads(line) for path in (workdir / "results").glob("*/records.jsonl")
             for line in path.read_text().splitlines()]
    assert [r["task_options"] for r in lines] == [{"head_dropout": 0.25}] and lines[0]["status"] == "ok"
    frame = load_records(workdir / "results")
    assert list(frame["label"]) == ["transformer_tiny [listops.head_dropout=0.25]"]


# -- records ----------------------------------------------------------------------------------------

def test_an_old_record_reads_with_no_task_options():
    line = dict(schema_version=2, kind="accuracy", model="mega", status="ok", task="text",
                variant={"chunk_size": 64})
    record = Record.from_dict(line)
    assert record.task_options == {} and record.label == "mega [chunk_size=64]"
    with_options = Record.from_dict({**line, "task_options": {"seq_len": 1000}})
    assert with_options.label == "mega [chunk_size=64, text.seq_len=1000]"
    assert row_label("mega", {}, {"interaction": "nli"}, "retrieval") == "mega [retrieval.interaction=nli]"


def test_bench_measures_the_tasks_head(workdir):
    fast = ["--models", "transformer", "--bench-task", "retrieval", "--lengths", "32", "--batch-size", "1",
            "--iters", "2", "--warmup", "1", "--isolation", "inprocess", "--quiet"]
    assert main(["bench", *fast]) == 0
    assert main(["bench", *fast, "--task-option", "retrieval.interaction=nli"]) == 0
    lines = [json.loads(line) for path in sorted((workdir / "results").glob("*/records.jsonl"))
             for line in path.read_text().splitlines()]
    assert [r["task_options"] for r in lines] == [{}, {"interaction": "nli"}]
    assert all(r["status"] == "ok" for r in lines) and lines[1]["n_params"] > lines[0]["n_params"]
    assert lines[0]["cell_key"] != lines[1]["cell_key"]
    assert sorted(load_records(workdir / "results")["label"]) == ["transformer", "transformer [retrieval.interaction=nli]"]


def test_reference_rows_are_fitted_on_the_options_data(workdir):
    assert main(["run", "--models", "transformer", "--tasks", "mqar", "--seeds", "0", "--steps", "2",
                 "--skip-bench", "--no-report", "--quiet", "--task-option", "mqar.num_kv=4"]) == 0
    frame = load_records(workdir / "results")
    refs = frame[frame["model"].str.startswith("ref:")]
    assert len(refs) == 2 and set(refs["task_options.num_kv"]) == {4}  # recorded with the data they saw
