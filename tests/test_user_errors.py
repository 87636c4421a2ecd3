"""User errors, through the real `star` entry point (in-process): one table of bad inputs (the command line,
the config, data files, model paths, SLURM settings, sweeps), each with the exact message the user sees.

Every row exits 2 before any model is loaded, prints its message (and nothing else) on stderr, shows no
traceback and writes no iteration. `{tmp}` in a row stands for the test's own directory (the working
directory of the run), `{data}` for tests/data and `{repo}` for the repository. Each run sees a PATH of
its own: an empty one (no SLURM here, whatever the machine has), or a fake sbatch/srun that refuses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from star import cli

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
FAST = ["~experiment", "model=tiny", "debug=fast", "logger=none", "n_iterations=0"]
GROUPS = ("cli", "config", "data", "model", "slurm", "sweep")

# The task's train file replaced by {tmp}/train.jsonl (dev and test: the good files in tests/data).
CQA = ["task=cqa", "task.data_files.train={tmp}/train.jsonl", "task.data_files.dev={data}/cqa/dev.jsonl",
       "task.data_files.test={data}/cqa/test.jsonl"]
GSM8K = ["task=gsm8k", "task.data_files.train={tmp}/train.jsonl", "task.data_files.dev={data}/gsm8k/dev.jsonl",
         "task.data_files.test={data}/gsm8k/test.jsonl"]
HF = ["model=hf", "model.name_or_path={tmp}/model"]
DDP2 = ["trainer=cpu_ddp", "trainer.num_nodes=2"]
SHARDS = ["generator.shards=2"]
SLURM_SWEEP = ["hydra/launcher=slurm", "seed=0,1"]
BAD_ROWS = "(task.data_files.train): 1 bad row (rows count from 1 in file order); fix or drop them:\n  row"
MODEL_FIX = "point model.name_or_path=... at a saved HF checkpoint directory or a hub id"


@dataclass(frozen=True)
class Case:
    id: str                                   # the test id: <group>-<what is wrong>
    group: str                                # one of GROUPS
    overrides: list[str]                      # after FAST on the command line
    message: str                              # stderr, exactly ("star: error: ..." and what precedes it)
    flags: tuple[str, ...] = ()               # before FAST: -m, -cd DIR, -cn NAME
    setup: Callable[[Path], None] | None = None   # writes the row's files under {tmp}
    fake_slurm: bool = False                  # PATH holds an sbatch that refuses every job (and an srun)


# ----------------------------------------------------------------------------- files the rows write

def python_without_vllm(tmp: Path) -> None:
    """{tmp}/venv/python: this test's interpreter (no vllm in the trainer's environment)."""
    (tmp / "venv").mkdir()
    (tmp / "venv" / "python").symlink_to(sys.executable)


def rows(task: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / task / "train.jsonl").read_text().splitlines()]


def train_file(task: str, edit: Callable[[list[dict]], object]) -> Callable[[Path], None]:
    """{tmp}/train.jsonl: the task's test train rows, edited."""
    def write(tmp: Path) -> None:
        data = rows(task)
        edit(data)
        (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    return write


def train_text(text: str) -> Callable[[Path], None]:
    """{tmp}/train.jsonl with this text ({good} is the first good cqa row)."""
    def write(tmp: Path) -> None:
        (tmp / "train.jsonl").write_text(text.format(good=json.dumps(rows("cqa")[0])))
    return write


def model_dir(*names: str) -> Callable[[Path], None]:
    """{tmp}/model holding these (empty) files; config.json is a real GPT-J-tiny-sized one."""
    def write(tmp: Path) -> None:
        (tmp / "model").mkdir()
        for name in names:
            text = json.dumps({"model_type": "gptj", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 104})
            (tmp / "model" / name).write_text(text if name == "config.json" else "{}")
    return write


def a_file(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text("not a directory\n")


def put(row: dict, key: str, value) -> None:
    row[key] = value


# ----------------------------------------------------------------------------- the table

CASES = [
    # --- the command line: override syntax, flags, the run directory
    Case("cli-override-without-equals", "cli", ["seed"],
         "star: error: cannot parse the override 'seed' (missing EQUAL at '<EOF>'); write KEY=VALUE, and quote a value "
         "with special characters: KEY='VALUE' (https://hydra.cc/docs/1.2/advanced/override_grammar/basic)"),
    Case("cli-override-without-key", "cli", ["=3"],
         "star: error: the override '=3' has no key; write KEY=VALUE, e.g. seed=3"),
    Case("cli-unclosed-list", "cli", ["task.digits=[1,2"],
         "star: error: cannot parse the override 'task.digits=[1,2' (no viable alternative at input '[1,2'); write "
         "KEY=VALUE, and quote a value with special characters: KEY='VALUE' "
         "(https://hydra.cc/docs/1.2/advanced/override_grammar/basic)"),
    Case("cli-unquoted-home-path", "cli", ["model=hf", "model.name_or_path=~/models/x"],
         "star: error: cannot parse the override 'model.name_or_path=~/models/x' (unexpected character '~' at "
         "position 20); write KEY=VALUE, and quote a value with special characters: KEY='VALUE' "
         "(https://hydra.cc/docs/1.2/advanced/override_grammar/basic)"),
    Case("cli-delete-task", "cli", ["~task"],
         "star: error: ~task removes the task, and every run needs one; choose one with task=NAME (arithmetic, "
         "arithmetic_cpu, cqa, gsm8k, reasoning_gym)"),
    Case("cli-delete-model", "cli", ["~model"],
         "star: error: ~model removes the model, and every run needs one; choose one with model=NAME (gptj_6b, "
         "gptj_tiny, hf, smollm2_135m, tiny)"),
    Case("cli-append-existing-key", "cli", ["+seed=1"],
         "star: error: Could not append to config. An item is already at 'seed'.\n"
         "Either remove + prefix: 'seed=1'\n"
         "Or add a second + to add or override 'seed': '++seed=1'"),
    Case("cli-sweep-value-without-multirun", "cli", ["task=arithmetic,cqa"],
         "star: error: Ambiguous value for argument 'task=arithmetic,cqa'\n"
         "1. To use it as a list, use key=[value1,value2]\n"
         "2. To use it as string, quote the value: key=\\'value1,value2\\'\n"
         "3. To sweep over it, add --multirun to your command line"),
    Case("cli-config-name-missing", "cli", [], flags=("-cn", "nosuch"),
         message="star: error: -cn nosuch: there is no nosuch.yaml in conf/; choose one of: config (-cn NAME)"),
    Case("cli-config-dir-missing", "cli", [], flags=("-cd", "{tmp}/nosuch"),
         message="star: error: Additional config directory '{tmp}/nosuch' not found; -cd (--config-dir) takes a "
                 "directory of config files, e.g. -cd sweeps"),
    Case("cli-run-dir-under-a-file", "cli", ["hydra.run.dir={tmp}/notes.txt/run"], setup=a_file("notes.txt"),
         message="star: error: cannot create the run directory {tmp}/notes.txt/run: {tmp}/notes.txt is not a "
                 "writable directory; choose another hydra.run.dir"),

    # --- the config: options, keys, types, ranges, combinations
    Case("config-unknown-task", "config", ["task=nosuch"],
         "star: error: unknown task option 'nosuch'; choose one of: arithmetic, arithmetic_cpu, cqa, gsm8k, "
         "reasoning_gym (task=NAME)"),
    Case("config-empty-task", "config", ["task="],
         "star: error: unknown task option ''; choose one of: arithmetic, arithmetic_cpu, cqa, gsm8k, reasoning_gym "
         "(task=NAME)"),
    Case("config-unknown-model", "config", ["model=nosuch"],
         "star: error: unknown model option 'nosuch'; choose one of: gptj_6b, gptj_tiny, hf, smollm2_135m, tiny "
         "(model=NAME)"),
    Case("config-unknown-method", "config", ["method=nosuch"],
         "star: error: unknown method option 'nosuch'; choose one of: direct_finetune, fewshot_cot, fewshot_direct, "
         "star (method=NAME)"),
    Case("config-unknown-trainer", "config", ["trainer=nosuch"],
         "star: error: unknown trainer option 'nosuch'; choose one of: cpu, cpu_ddp, ddp, fsdp, gpu (trainer=NAME)"),
    Case("config-key-typo", "config", ["task.digitz=3"],
         "star: error: task.digitz is not a key of task=arithmetic (its keys: name, train_size, dev_size, test_size, "
         "sample_per_iteration, max_new_tokens, digits, ood_digits, ood_size, ood_max_new_tokens); check the spelling"),
    Case("config-unknown-root-key", "config", ["n_iteration=3"],
         "star: error: n_iteration is not a key of the config (its keys: seed, n_iterations, plateau_patience, "
         "plateau_min_delta, print_table, task, model, method, rationalization, sampling, schedule, trainer, "
         "generator, logger, checkpoint); check the spelling"),
    Case("config-key-of-another-model", "config", ["model.name_or_path=/x"],
         "star: error: model.name_or_path is not read by model=tiny/gptj_tiny; model=hf reads it: add model=hf, "
         "or drop model.name_or_path"),
    Case("config-key-of-another-task", "config", ["task=cqa", "task.digits=[1,2]"],
         "star: error: task.digits is not read by task=cqa; task=arithmetic reads it: add task=arithmetic, or drop "
         "task.digits"),
    Case("config-appended-key-of-another-task", "config", ["task=cqa", "+task.digits=[1,2]"],
         "star: error: task.digits is not read by task=cqa; task=arithmetic reads it: add task=arithmetic, or drop "
         "task.digits"),
    Case("config-unknown-data-split", "config", ["task=cqa", "task.data_files.validation=x.jsonl"],
         "star: error: task.data_files.validation is not a key of task.data_files (its keys: train, dev, test); "
         "check the spelling"),
    Case("config-int-not-a-number", "config", ["n_iterations=abc"],
         "star: error: n_iterations: Value 'abc' of type 'str' could not be converted to Integer; n_iterations "
         "takes int, e.g. n_iterations=3"),
    Case("config-int-not-null", "config", ["n_iterations=null"],
         "star: error: n_iterations: field 'n_iterations' is not Optional; n_iterations takes int, e.g. "
         "n_iterations=3"),
    Case("config-float-not-a-number", "config", ["sampling.temperature=hot"],
         "star: error: sampling.temperature: Value 'hot' of type 'str' could not be converted to Float; "
         "sampling.temperature takes float, e.g. sampling.temperature=0.0"),
    Case("config-bool-not-a-bool", "config", ["print_table=maybe"],
         "star: error: print_table: Value 'maybe' is not a valid bool (type str); print_table takes bool, e.g. "
         "print_table=true"),
    Case("config-list-not-a-list", "config", ["task.digits=3"],
         "star: error: task.digits: Invalid value assigned: int is not a ListConfig, list or tuple; task.digits "
         "takes list[int], e.g. task.digits=[1,2,3,4,5]"),
    Case("config-negative-iterations", "config", ["n_iterations=-1"],
         "star: error: n_iterations must be >= 0 (0 runs only the few-shot baseline), got -1"),
    Case("config-zero-digits", "config", ["task.digits=[0]"],
         "star: error: task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got [0]"),
    Case("config-no-digits", "config", ["task.digits=[]"],
         "star: error: task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got []"),
    Case("config-zero-train-size", "config", ["task.train_size=0"],
         "star: error: task.train_size must be > 0, got 0"),
    Case("config-negative-dev-size", "config", ["task.dev_size=-3"],
         "star: error: task.dev_size must be > 0, got -3"),
    Case("config-more-problems-than-exist", "config", ["task.digits=[1]", "task.train_size=500"],
         "star: error: task.train_size=500 cannot be met without reusing a problem: with digits [1] there are 53 "
         "problems (few-shot exemplars left out); dev and test each hold at most a third of each digit count's "
         "problems and train the rest: train at most 37, dev at most 17, test at most 17 with these sizes; lower "
         "task.train_size/dev_size/test_size or add digit counts to task.digits"),
    Case("config-zero-sample-per-iteration", "config", ["task.sample_per_iteration=0"],
         "star: error: task.sample_per_iteration must be in 1..task.train_size (16) or null, got 0"),
    Case("config-zero-new-tokens", "config", ["task.max_new_tokens=0"],
         "star: error: task.max_new_tokens must be > 0, got 0"),
    Case("config-zero-ood-digits", "config", ["task.ood_digits=[0]"],
         "star: error: task.ood_digits must list digit counts >= 1, e.g. task.ood_digits=[4]; got [0]"),
    Case("config-ood-digits-trained-on", "config", ["task.ood_digits=[2,3]", "task.max_new_tokens=38"],
         "star: error: task.ood_digits must be digit counts not trained on, e.g. task.digits=[1,2,3] "
         "task.ood_digits=[4]; got [2, 3], which shares [2] with task.digits"),
    Case("config-zero-ood-size", "config", ["task.ood_size=0"],
         "star: error: task.ood_size must be > 0, or null for task.test_size, got 0"),
    Case("config-ood-digits-beyond-their-budget", "config", ["task.ood_digits=[4]", "task.ood_max_new_tokens=30"],
         "star: error: task.ood_max_new_tokens=30 cuts the ood split's 4-digit completions short: they take up to 48 "
         "tokens (10 x digits + 8); raise it to 48, or null (the default) for exactly that"),
    Case("config-samples-with-greedy", "config", ["sampling.num_samples=4"],
         "star: error: sampling.num_samples=4 needs sampling.temperature > 0: greedy decoding writes the same "
         "completion 4 times; add sampling=temperature (0.7) or sampling.temperature=0.7"),
    Case("config-vllm-with-a-model-in-memory", "config", ["generator=vllm"],
         "star: error: generator=vllm loads each model from its directory, but model=tiny is built in memory; use "
         "a saved model (model=hf or model=smollm2_135m), or generator=hf"),
    Case("config-vllm-unknown-engine-lifetime", "config", ["generator=vllm", "model=smollm2_135m",
                                                           "generator.engine_lifetime=batch"],
         "star: error: generator.engine_lifetime must be model (one engine per model) or pass (one engine per pass), "
         "got 'batch'"),
    Case("config-vllm-memory-fraction-above-one", "config", ["generator=vllm", "model=smollm2_135m",
                                                             "generator.gpu_memory_utilization=1.5"],
         "star: error: generator.gpu_memory_utilization must be in (0, 1] or null, got 1.5"),
    Case("config-vllm-key-of-the-hf-engine", "config", ["generator=vllm", "model=smollm2_135m",
                                                        "generator.reuse_prefix=false"],
         "star: error: generator.reuse_prefix is not read by generator=vllm; generator=hf reads it: add generator=hf, "
         "or drop generator.reuse_prefix"),
    Case("config-zero-samples", "config", ["sampling=temperature", "sampling.num_samples=0"],
         "star: error: sampling.num_samples must be >= 1 (completions per question and pass), got 0"),
    Case("config-zero-kept-per-question", "config", ["method.max_kept_per_question=0"],
         "star: error: method.max_kept_per_question must be >= 1 (distinct correct completions kept per question), "
         "got 0"),
    Case("config-more-ood-problems-than-exist", "config", ["task.digits=[2]", "task.ood_digits=[1]", "task.ood_size=60"],
         "star: error: task.ood_size=60 cannot be met without reusing a problem: with ood_digits [1] there are 53 "
         "problems (few-shot exemplars left out); lower task.ood_size to 53 or less, or add digit counts to "
         "task.ood_digits"),
    Case("config-negative-temperature", "config", ["sampling.temperature=-0.5"],
         "star: error: sampling.temperature must be >= 0 (0 = greedy), got -0.5"),
    Case("config-zero-top-p", "config", ["sampling.top_p=0"],
         "star: error: sampling.top_p must be in (0, 1], got 0.0"),
    Case("config-p-rationalization-above-1", "config", ["rationalization.p_rationalization=2"],
         "star: error: rationalization.p_rationalization must be in [0, 1], got 2.0"),
    Case("config-negative-min-rationale-lines", "config", ["method.min_rationale_lines=-1"],
         "star: error: method.min_rationale_lines must be >= 0 (0 keeps every correct completion), got -1"),
    Case("config-unknown-schedule-mode", "config", ["schedule.mode=cosine"],
         "star: error: schedule.mode must be one of exponential, linear, epoch, got 'cosine'"),
    Case("config-zero-base-steps", "config", ["schedule.base_steps=0"],
         "star: error: schedule.base_steps must be > 0, got 0"),
    Case("config-zero-lr", "config", ["trainer.lr=0"],
         "star: error: trainer.lr must be > 0, got 0.0"),
    Case("config-zero-batch-size", "config", ["trainer.batch_size=0"],
         "star: error: trainer.batch_size must be > 0, got 0"),
    Case("config-unknown-optimizer", "config", ["trainer.optimizer=sgd"],
         "star: error: trainer.optimizer must be one of adam, adamw, got 'sgd'"),
    Case("config-unknown-precision", "config", ["trainer.precision=fp16"],
         "star: error: trainer.precision must be one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, "
         "32, 16, bf16, 64, got 'fp16'"),
    Case("config-unknown-accelerator", "config", ["trainer.accelerator=tpu"],
         "star: error: trainer.accelerator must be one of auto, cpu, gpu, cuda, mps (trainer=cpu, trainer=gpu), "
         "got 'tpu'"),
    Case("config-devices-not-a-count", "config", ["trainer.devices=abc"],
         "star: error: trainer.devices must be a count (1, 2; -1: every device), a list of device ids like [0,1], "
         "or auto, got abc"),
    Case("config-zero-generator-batch", "config", ["generator.batch_size=0"],
         "star: error: generator.batch_size must be > 0, got 0"),
    Case("config-unknown-logger-mode", "config", ["logger.mode=cloud"],
         "star: error: logger.mode must be one of offline, online, disabled, got 'cloud'"),
    Case("config-zero-plateau-patience", "config", ["plateau_patience=0"],
         "star: error: plateau_patience must be >= 1 or null, got 0"),
    Case("config-unknown-checkpoint-keep", "config", ["checkpoint.keep=some"],
         "star: error: checkpoint.keep must be one of last_and_best, all, got 'some'"),
    Case("config-dev-callback-with-fsdp", "config", ["trainer=fsdp", "trainer.eval_every_n_steps=10"],
         "star: error: trainer.eval_every_n_steps is not supported with trainer.strategy=fsdp (each rank holds a "
         "shard of the weights, and gathering the whole model to generate every few steps would cost what FSDP "
         "saves); set trainer.eval_every_n_steps=null, or use trainer=ddp"),
    Case("config-lora-with-fsdp", "config", ["model.lora.enabled=true", "trainer=fsdp"],
         "star: error: model.lora.enabled=true is not supported with trainer.strategy=fsdp; use LoRA on one GPU "
         "(trainer=gpu) or DDP (trainer=ddp), or full fine-tuning with FSDP (model.lora.enabled=false)"),
    Case("config-gold-rationales-the-task-lacks", "config",
         ["method=direct_finetune", "method.direct=false", *CQA], setup=train_file("cqa", lambda d: None),
         message="star: error: method.data=gold with rationales needs gold rationales, and task cqa has none; set "
                 "method.direct=true (method=direct_finetune) to train on the answers only"),
    Case("config-unknown-gsm8k-source", "config", ["task=gsm8k", "task.source=nosuch"],
         "star: error: unknown gsm8k source 'nosuch'; set task.source to one of: hub_or_files, gsm_symbolic"),
    Case("config-files-with-generated-source", "config",
         ["task=gsm8k", "task.source=gsm_symbolic", "task.data_files.train={data}/gsm8k/train.jsonl"],
         "star: error: task.data_files are read only with task.source=hub_or_files, not gsm_symbolic; unset "
         "task.data_files or set task.source=hub_or_files"),

    # --- data files (cqa, gsm8k): unreadable files, malformed rows
    Case("data-cqa-not-json", "data", CQA, setup=train_text('{{"id": "q1", "question": "Where?"\n{good}\n'),
         message="star: error: cqa train file {tmp}/train.jsonl (task.data_files.train) could not be read as jsonl: "
                 "line 1 is not valid JSON (Expecting ',' delimiter): '{\"id\": \"q1\", \"question\": \"Where?\"'; "
                 "fix it: one JSON object per line (.jsonl), or one array of objects (.json)"),
    Case("data-cqa-line-not-an-object", "data", CQA, setup=train_text('{good}\n"just a string"\n'),
         message="star: error: cqa train file {tmp}/train.jsonl (task.data_files.train) could not be read as jsonl: "
                 "line 2 is not a JSON object (one object per line): '\"just a string\"'; fix it: one JSON object "
                 "per line (.jsonl), or one array of objects (.json)"),
    Case("data-cqa-empty-file", "data", CQA, setup=train_text(""),
         message="star: error: cqa train file {tmp}/train.jsonl (task.data_files.train) is empty; give it at least "
                 "one question"),
    Case("data-cqa-blank-lines-only", "data", CQA, setup=train_text("\n\n"),
         message="star: error: cqa train file {tmp}/train.jsonl (task.data_files.train) is empty (blank lines "
                 "only); give it at least one question"),
    Case("data-cqa-missing-file", "data", CQA,
         "star: error: cqa train file {tmp}/train.jsonl (task.data_files.train): no such file (relative paths start "
         "at the directory star runs in: {tmp}); pass an existing file"),
    Case("data-cqa-directory", "data", [*CQA, "task.data_files.train={tmp}"],
         "star: error: cqa train file {tmp} (task.data_files.train) is a directory; pass one file (.json, .jsonl, "
         ".parquet)"),
    Case("data-cqa-csv", "data", [*CQA, "task.data_files.train={tmp}/train.csv"],
         "star: error: cqa train file {tmp}/train.csv (task.data_files.train): unsupported file type '.csv'; use "
         "one of .json, .jsonl, .parquet"),
    Case("data-cqa-row-without-answer", "data", CQA, setup=train_file("cqa", lambda d: d[0].pop("answerKey")),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 1 (id 'cqa-train-000'): missing "
                 "answerKey"),
    Case("data-cqa-no-answer-field", "data", CQA,
         setup=train_file("cqa", lambda d: [r.pop("answerKey") for r in d]),
         message="star: error: cqa train file {tmp}/train.jsonl (task.data_files.train): missing field answerKey "
                 "(found: id, question, question_concept, choices). Each row must have the hub's fields, e.g. "
                 '{"id": "q1", "question": "Where is milk kept cold?", "question_concept": "milk", "choices": '
                 '{"label": ["A", "B", "C", "D", "E"], "text": ["oven", "fridge", "desk", "car", "bag"]}, '
                 '"answerKey": "B"}. Fix: convert the file to that schema (see tests/data/cqa/ for small examples)'),
    Case("data-cqa-answer-not-a-choice", "data", CQA, setup=train_file("cqa", lambda d: put(d[1], "answerKey", "Z")),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 2 (id 'cqa-train-001'): gold answerKey "
                 "'Z' is not among the choices A, B, C, D, E"),
    Case("data-cqa-duplicate-id", "data", CQA, setup=train_file("cqa", lambda d: put(d[2], "id", d[3]["id"])),
         message="star: error: cqa train file {tmp}/train.jsonl (task.data_files.train): duplicated ids (1); every "
                 "id must be unique, drop or rename the repeats:\n  row 4 repeats id 'cqa-train-003' of row 3"),
    Case("data-cqa-id-not-a-string", "data", CQA, setup=train_file("cqa", lambda d: put(d[1], "id", 7)),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 2: id must be a string, got int 7"),
    Case("data-cqa-empty-question", "data", CQA, setup=train_file("cqa", lambda d: put(d[0], "question", "")),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 1 (id 'cqa-train-000'): question is "
                 "empty"),
    Case("data-cqa-choices-uneven", "data", CQA,
         setup=train_file("cqa", lambda d: put(d[1], "choices", {"label": ["A", "B"], "text": ["x"]})),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 2 (id 'cqa-train-001'): choices need "
                 "equal label and text lists of 2 or more, got 2 labels and 1 texts"),
    Case("data-cqa-choices-not-an-object", "data", CQA,
         setup=train_file("cqa", lambda d: put(d[1], "choices", "A or B")),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 2 (id 'cqa-train-001'): choices must "
                 'be {"label": [...], "text": [...]}'),
    Case("data-cqa-repeated-label", "data", CQA,
         setup=train_file("cqa", lambda d: d[2]["choices"]["label"].__setitem__(1, "A")),
         message=f"star: error: cqa train file {{tmp}}/train.jsonl {BAD_ROWS} 3 (id 'cqa-train-002'): "
                 "choices.label repeats a label: ['A', 'A', 'C', 'D', 'E']"),
    Case("data-cqa-dev-takes-every-row", "data",
         ["task=cqa", "task.data_files.train={data}/cqa/train.jsonl", "task.data_files.test={data}/cqa/test.jsonl",
          "task.dev_size=100"],
         "star: error: cqa train split has no rows left: dev is carved from the train rows (task.dev_size=100) and "
         "takes every row whose question is not a few-shot exemplar's or in the test data; lower task.dev_size or "
         "pass task.data_files.dev=PATH"),
    Case("data-gsm8k-row-without-answer", "data", GSM8K, setup=train_file("gsm8k", lambda d: d[0].pop("answer")),
         message=f"star: error: gsm8k train file {{tmp}}/train.jsonl {BAD_ROWS} 1: missing answer"),
    Case("data-gsm8k-no-final-number", "data", GSM8K,
         setup=train_file("gsm8k", lambda d: put(d[0], "answer", "no final number here")),
         message=f"star: error: gsm8k train file {{tmp}}/train.jsonl {BAD_ROWS} 1: answer must end in one '#### N' "
                 "(the final number), found 0 '####'"),
    Case("data-gsm8k-two-final-numbers", "data", GSM8K,
         setup=train_file("gsm8k", lambda d: put(d[0], "answer", d[0]["answer"] + "\n#### 35")),
         message=f"star: error: gsm8k train file {{tmp}}/train.jsonl {BAD_ROWS} 1: answer must end in one '#### N' "
                 "(the final number), found 2 '####'"),
    Case("data-gsm8k-final-answer-in-words", "data", GSM8K,
         setup=train_file("gsm8k", lambda d: put(d[0], "answer", d[0]["answer"].replace("#### 34", "#### thirty"))),
         message=f"star: error: gsm8k train file {{tmp}}/train.jsonl {BAD_ROWS} 1: the final answer after '####' "
                 "must be a number, got 'thirty'"),
    Case("data-gsm8k-no-solution-steps", "data", GSM8K, setup=train_file("gsm8k", lambda d: put(d[0], "answer", "#### 34")),
         message=f"star: error: gsm8k train file {{tmp}}/train.jsonl {BAD_ROWS} 1: answer has no solution lines "
                 "before '####'"),
    Case("data-gsm8k-question-not-a-string", "data", GSM8K, setup=train_file("gsm8k", lambda d: put(d[0], "question", 42)),
         message=f"star: error: gsm8k train file {{tmp}}/train.jsonl {BAD_ROWS} 1: question must be a string, got "
                 "int 42"),
    Case("data-gsm8k-duplicate-id", "data", GSM8K,
         setup=train_file("gsm8k", lambda d: [put(r, "id", f"g{1 if n == 5 else n}") for n, r in enumerate(d)]),
         message="star: error: gsm8k train file {tmp}/train.jsonl (task.data_files.train): duplicated ids (1); "
                 "every id must be unique, drop or rename the repeats:\n  row 6 repeats id 'g1' of row 2"),
    Case("data-gsm8k-some-rows-with-ids", "data", GSM8K, setup=train_file("gsm8k", lambda d: put(d[0], "id", "g0")),
         message="star: error: gsm8k train data: some rows have an id and some do not; give every row a unique id, "
                 "or drop the id field"),
    Case("data-gsm8k-file-of-another-task", "data", [*GSM8K, "task.data_files.train={data}/cqa/train.jsonl"],
         "star: error: gsm8k train file {data}/cqa/train.jsonl (task.data_files.train): missing field answer (found: "
         "id, question, question_concept, choices, answerKey). Each row must have the hub's fields, e.g. "
         '{"question": "Tom has 3 bags of 4 apples. How many apples?", "answer": "He has 3 * 4 = <<3*4=12>>12 '
         'apples.\\n#### 12"}. Fix: convert the file to that schema (see tests/data/gsm8k/ for small examples)'),

    # --- model paths (model=hf): checked before anything loads
    Case("model-vllm-environment-missing", "model", ["generator=vllm", "model=smollm2_135m",
                                                     "generator.python={tmp}/nowhere/bin/python"],
         "star: error: generator=vllm needs the vLLM environment, but {tmp}/nowhere/bin/python does not exist: run "
         "`bash scripts/setup.sh --vllm` (or set generator.python to an interpreter that has vllm)"),
    Case("model-vllm-environment-without-vllm", "model", ["generator=vllm", "model=smollm2_135m",
                                                          "generator.python={tmp}/venv/python"],
         "star: error: generator=vllm: {tmp}/venv/python has no vllm package: run `bash scripts/setup.sh --vllm` (or "
         "set generator.python to an interpreter that has vllm)", setup=lambda tmp: python_without_vllm(tmp)),
    Case("model-hf-without-a-path", "model", ["model=hf"],
         "star: error: model=hf needs a model: set model.name_or_path=HUB_ID_OR_DIRECTORY"),
    Case("model-missing-directory", "model", HF,
         f"star: error: model directory '{{tmp}}/model' does not exist; {MODEL_FIX}"),
    Case("model-relative-missing-directory", "model", ["model=hf", "model.name_or_path=./checkpoints/iter_3"],
         f"star: error: model directory './checkpoints/iter_3' does not exist; {MODEL_FIX}"),
    Case("model-a-file", "model", ["model=hf", "model.name_or_path={tmp}/model.safetensors"],
         setup=a_file("model.safetensors"),
         message=f"star: error: model.name_or_path '{{tmp}}/model.safetensors' is a file, not a directory; {MODEL_FIX}"),
    Case("model-empty-directory", "model", HF, setup=model_dir(),
         message=f"star: error: model directory '{{tmp}}/model' has no config.json: it holds no model files; {MODEL_FIX}"),
    Case("model-tokenizer-only", "model", HF, setup=model_dir("tokenizer.json", "tokenizer_config.json"),
         message=f"star: error: model directory '{{tmp}}/model' has no config.json: it holds a tokenizer only; "
                 f"{MODEL_FIX}"),
    Case("model-lora-adapter-only", "model", HF, setup=model_dir("adapter_config.json", "adapter_model.safetensors"),
         message=f"star: error: model directory '{{tmp}}/model' has no config.json: it holds a LoRA adapter only "
                 f"(merge it into its base first); {MODEL_FIX}"),
    Case("model-no-weights", "model", HF, setup=model_dir("config.json", "tokenizer.json"),
         message="star: error: model directory '{tmp}/model' has no weights (none of model.safetensors, "
                 "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json); save the model "
                 f"there with save_pretrained, or {MODEL_FIX}"),
    Case("model-no-tokenizer", "model", HF, setup=model_dir("config.json", "model.safetensors"),
         message="star: error: model directory '{tmp}/model' has no tokenizer (none of tokenizer.json, "
                 "tokenizer_config.json, tokenizer.model, vocab.json, vocab.txt, spiece.model); save it there too: "
                 "tokenizer.save_pretrained('{tmp}/model')"),
    Case("model-unknown-dtype", "model", ["model.dtype=fp8"],
         "star: error: model.dtype must be one of float32, bfloat16, float16, got 'fp8'"),
    Case("model-unknown-device", "model", ["model.device=tpu"],
         "star: error: model.device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),

    # --- SLURM: fits as SLURM jobs (trainer.*), generation shards (generator.*), sweeps (hydra/launcher=slurm)
    Case("slurm-nodes-without-slurm", "slurm", DDP2,
         "star: error: trainer.num_nodes=2 runs each fine-tuning as a SLURM job (one task per device on every node), "
         "but SLURM is not available here (no sbatch/srun/squeue on PATH); run star on a SLURM cluster (a login "
         "node, or a small driver job), or train on this node: trainer.num_nodes=1 trainer.slurm_launch=false with "
         "trainer.devices=N"),
    Case("slurm-zero-nodes", "slurm", ["trainer.num_nodes=0"],
         "star: error: trainer.num_nodes must be >= 1, got 0"),
    Case("slurm-nodes-without-ddp", "slurm", ["trainer.num_nodes=2"],
         "star: error: trainer.num_nodes=2 with 2 processes needs trainer.strategy=ddp or fsdp (trainer=ddp, "
         "trainer=fsdp, trainer=cpu_ddp), got 'auto'"),
    Case("slurm-launch-devices-not-a-count", "slurm", ["trainer.slurm_launch=true", "trainer.devices=auto"],
         "star: error: trainer.slurm_launch=true needs trainer.devices as a count of devices (tasks) per node, got "
         "auto"),
    Case("slurm-launch-with-dev-callback", "slurm", ["trainer.slurm_launch=true", "trainer.eval_every_n_steps=5"],
         "star: error: trainer.eval_every_n_steps is not supported with trainer.slurm_launch=true (the dev callback "
         "runs in the loop's process); set trainer.eval_every_n_steps=null"),
    Case("slurm-train-zero-timeout", "slurm", [*DDP2, "trainer.slurm.timeout_min=0"],
         "star: error: trainer.slurm.timeout_min must be >= 1, got 0"),
    Case("slurm-train-timeout-not-a-number", "slurm", [*DDP2, "trainer.slurm.timeout_min=4h"],
         "star: error: trainer.slurm.timeout_min: Value '4h' of type 'str' could not be converted to Integer; "
         "trainer.slurm.timeout_min takes int, e.g. trainer.slurm.timeout_min=240"),
    Case("slurm-train-zero-cpus", "slurm", [*DDP2, "trainer.slurm.cpus_per_task=0"],
         "star: error: trainer.slurm.cpus_per_task must be >= 1, got 0"),
    Case("slurm-train-zero-poll", "slurm", [*DDP2, "trainer.slurm.poll_s=0"],
         "star: error: trainer.slurm.poll_s must be > 0, got 0.0"),
    Case("slurm-train-unknown-key", "slurm", [*DDP2, "trainer.slurm.partitions=gpu"],
         "star: error: trainer.slurm.partitions is not a key of trainer.slurm (its keys: partition, timeout_min, "
         "gpus_per_node, cpus_per_task, mem_gb, additional_parameters, setup, poll_s); check the spelling"),
    Case("slurm-shards-without-slurm", "slurm", SHARDS,
         "star: error: generator.shards=2 splits generation over a SLURM job array, but SLURM is not available here "
         "(no sbatch/squeue on PATH); set generator.shards=0, or generator.devices=N for worker processes on this "
         "machine"),
    Case("slurm-negative-shards", "slurm", ["generator.shards=-1"],
         "star: error: generator.shards must be >= 0 (0: no SLURM job array), got -1"),
    Case("slurm-shards-and-devices", "slurm", [*SHARDS, "generator.devices=2"],
         "star: error: generator.devices and generator.shards both split a pass: set one (devices: processes on "
         "this node; shards: a SLURM job array)"),
    Case("slurm-shards-zero-parallelism", "slurm", [*SHARDS, "generator.slurm.array_parallelism=0"],
         "star: error: generator.slurm.array_parallelism must be >= 1, got 0"),
    Case("slurm-shards-negative-takeover", "slurm", [*SHARDS, "generator.slurm.takeover_after_s=-1"],
         "star: error: generator.slurm.takeover_after_s must be >= 0, got -1.0"),
    Case("slurm-unknown-launcher", "slurm", ["hydra/launcher=slurmm"], flags=("-m",),
         message="star: error: unknown hydra/launcher option 'slurmm'; choose one of: basic, local, slurm, submitit, "
                 "submitit_local, submitit_slurm (hydra/launcher=NAME)"),
    Case("slurm-launcher-without-slurm", "slurm", SLURM_SWEEP, flags=("-m",),
         message="star: error: hydra/launcher=slurm submits every sweep point with sbatch, but SLURM is not "
                 "available here (no sbatch/srun on PATH); run the sweep on a SLURM login node, or on this machine "
                 "with hydra/launcher=local (one point after another) or hydra/launcher=submitit (each point its own "
                 "process)"),
    Case("slurm-launcher-zero-timeout", "slurm", [*SLURM_SWEEP, "hydra.launcher.timeout_min=0"], flags=("-m",),
         message="star: error: hydra.launcher.timeout_min must be >= 1 (minutes of wall time per sweep point), got 0"),
    Case("slurm-launcher-timeout-not-a-number", "slurm", [*SLURM_SWEEP, "hydra.launcher.timeout_min=4h"],
         flags=("-m",),
         message="star: error: hydra.launcher.timeout_min: Value '4h' of type 'str' could not be converted to "
                 "Integer; hydra.launcher.timeout_min takes int, e.g. hydra.launcher.timeout_min=60"),
    Case("slurm-launcher-zero-parallelism", "slurm", [*SLURM_SWEEP, "hydra.launcher.array_parallelism=0"],
         flags=("-m",),
         message="star: error: hydra.launcher.array_parallelism must be >= 1 (sweep points running at once), got 0"),
    Case("slurm-launcher-partition-refused", "slurm", [*SLURM_SWEEP, "hydra.launcher.partition=nosuch"],
         flags=("-m",), fake_slurm=True,
         message="sbatch: error: invalid partition specified: nosuch\n"
                 "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
                 "star: error: sbatch refused the sweep's jobs (its message is above); fix the hydra.launcher "
                 "setting it names (partition, timeout_min, mem_gb, additional_parameters.account ...), or check "
                 "that SLURM answers here (sinfo)"),

    # --- sweeps (-m, sweeps/*.yaml): every point is checked before any is launched
    Case("sweep-file-missing", "sweep", [], flags=("-cd", "{repo}/sweeps", "-cn", "nosuch"),
         message="star: error: -cn nosuch: there is no nosuch.yaml in {repo}/sweeps/; choose one of: "
                 "default_ablations, ood_lengths, paper_arithmetic, paper_cqa, paper_gsm8k, rationalization_ablation, "
                 "samples_ablation, schedule_ablation, small_arithmetic, temperature_ablation (-cn NAME)"),
    Case("sweep-crosses-a-negative-value", "sweep", ["n_iterations=0,-1"], flags=("-m",),
         message="star: error: sweep point 2 of 2 (n_iterations=-1): n_iterations must be >= 0 (0 runs only the "
                 "few-shot baseline), got -1; nothing was launched"),
    Case("sweep-crosses-a-bad-type", "sweep", ["seed=0,a"], flags=("-m",),
         message="star: error: seed: Value 'a' of type 'str' could not be converted to Integer; seed takes int, "
                 "e.g. seed=0"),
    Case("sweep-crosses-an-unknown-option", "sweep", ["task=arithmetic,nosuch"], flags=("-m",),
         message="star: error: unknown task option 'nosuch'; choose one of: arithmetic, arithmetic_cpu, cqa, gsm8k, "
                 "reasoning_gym (task=NAME)"),
    Case("sweep-crosses-a-key-typo", "sweep", ["seed=0,1", "task.digitz=3"], flags=("-m",),
         message="star: error: task.digitz is not a key of task=arithmetic (its keys: name, train_size, dev_size, "
                 "test_size, sample_per_iteration, max_new_tokens, digits, ood_digits, ood_size, ood_max_new_tokens); check the spelling"),
    Case("sweep-crosses-a-combination", "sweep", ["trainer=cpu,fsdp", "trainer.eval_every_n_steps=5"],
         flags=("-m",),
         message="star: error: sweep point 2 of 2 (trainer=fsdp): trainer.eval_every_n_steps is not supported "
                 "with trainer.strategy=fsdp (each rank holds a shard of the weights, and gathering the whole model "
                 "to generate every few steps would cost what FSDP saves); set trainer.eval_every_n_steps=null, or "
                 "use trainer=ddp; nothing was launched"),
    Case("sweep-file-with-a-bad-override", "sweep", ["schedule.base_steps=0"],
         flags=("-cd", "{repo}/sweeps", "-cn", "schedule_ablation"),
         message="star: error: sweep point 1 of 3 (schedule=exponential): schedule.base_steps must be > 0, got 0; "
                 "nothing was launched"),
    Case("sweep-file-crossing-a-bad-temperature", "sweep", ["sampling.temperature=0.5,-1"],
         flags=("-cd", "{repo}/sweeps", "-cn", "temperature_ablation"),
         message="star: error: sweep point 2 of 2 (sampling.temperature=-1): sampling.temperature must be >= 0 "
                 "(0 = greedy), got -1.0; nothing was launched"),
    Case("sweep-file-with-an-unknown-option", "sweep", ["ablation=nosuch"],
         flags=("-cd", "{repo}/sweeps", "-cn", "default_ablations"),
         message="star: error: unknown ablation option 'nosuch'; choose one of: default, direct_finetune, "
                 "faithful_only, rationalization_off, samples_2, samples_4, temperature (ablation=NAME)"),
]


class ModelLoaded(Exception):
    """Raised by the patched model loaders: the run got as far as loading a model."""


def fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{data}", str(DATA)).replace("{repo}", str(REPO))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error_exits_2_with_its_exact_message(case, tmp_path, monkeypatch, capsys):
    if case.setup is not None:
        case.setup(tmp_path)
    bin_dir = tmp_path / "bin"  # the run's whole PATH: no SLURM, or one that refuses every job
    bin_dir.mkdir()
    if case.fake_slurm:
        refuse = ('echo "sbatch: error: invalid partition specified: nosuch" >&2\n'
                  'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\nexit 1\n')
        for name, script in (("sbatch", refuse), ("srun", "exit 0\n")):
            (bin_dir / name).write_text(f"#!/bin/sh\n{script}")
            (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.chdir(tmp_path)
    loaded = []

    def load(*args, **kwargs):
        loaded.append(args)
        raise ModelLoaded  # stop the run here: a load is this test's failure, whatever follows it

    # Patched in star.models, where every loader looks these up when it runs (star/model_cache.py calls
    # models.X; star/sharding.py and star/training/slurm.py import them inside the function).
    monkeypatch.setattr("star.models.load_model_and_tokenizer", load)
    monkeypatch.setattr("star.models.load_checkpoint", load)
    argv = [*(fill(f, tmp_path) for f in case.flags), *FAST, *(fill(o, tmp_path) for o in case.overrides),
            f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    monkeypatch.setattr(sys, "argv", ["star", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises((SystemExit, ModelLoaded)) as e:
        cli.main()
    out = capsys.readouterr()
    assert not loaded, "no model may be loaded before the input is checked"
    assert e.value.code == 2
    assert "Traceback" not in out.err + out.out
    shown = out.err.replace(str(tmp_path), "{tmp}").replace(str(DATA), "{data}").replace(str(REPO), "{repo}")
    assert shown.rstrip("\n") == case.message
    assert not list(tmp_path.rglob("iter_00")), "nothing of an iteration may be written"


def test_the_table_has_50_cases_and_3_of_every_group():
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES), "ids are unique"
    assert all(c.group in GROUPS and c.id.startswith(f"{c.group}-") for c in CASES)
    counts = {g: sum(c.group == g for c in CASES) for g in GROUPS}
    assert min(counts.values()) >= 3, counts


def test_settings_without_effect_are_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["star", *FAST, "rationalization=off", "rationalization.p_rationalization=0.5",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    cli.main()
    notes = [line for line in capsys.readouterr().out.splitlines() if "no effect" in line]
    assert len(notes) == 1
    assert "rationalization.p_rationalization=0.5 (rationalization.enabled=false)" in notes[0]
    assert (tmp_path / "run" / "iter_00" / "eval.json").exists(), "allowed: the run goes on"
