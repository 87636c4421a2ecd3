"""User errors, through the real `star` entry point (in-process): each of these inputs exits
non-zero before any model is loaded, with one message that names the problem, and no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from star import cli

DATA = Path(__file__).parent / "data"
FAST = ["~experiment", "model=tiny", "debug=fast", "logger=none", "n_iterations=0"]


def rows(task: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / task / "train.jsonl").read_text().splitlines()]


def bad_file(tmp_path: Path, task: str, edit) -> list[str]:
    data = rows(task)
    edit(data)
    path = tmp_path / f"{task}_bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return [f"task={task}", f"task.data_files.train={path}", f"task.data_files.dev={DATA / task / 'dev.jsonl'}"]


class ModelLoaded(Exception):
    """Raised by the patched model loaders: the run got as far as loading a model."""


def _set(row: dict, key: str, value) -> None:
    row[key] = value


# (overrides, or a function of tmp_path giving them) -> a string the message must contain
CASES = [
    (["task=nosuch"], "nosuch"),
    (["model=nosuch"], "nosuch"),
    (["method=nosuch"], "nosuch"),
    (["trainer=nosuch"], "nosuch"),
    (["hydra/launcher=nosuch"], "nosuch"),
    (["task.digitz=3"], "digitz"),
    (["model.name_or_path=/x"], "add model=hf"),
    (["task=cqa", "task.digits=[1,2]"], "task=arithmetic reads it"),
    (["task=cqa", "+task.digits=[1,2]"], "task=arithmetic reads it"),
    (["n_iterations=abc"], "n_iterations"),
    (["sampling.temperature=hot"], "temperature"),
    (["n_iterations=-1"], "n_iterations"),
    (["task.digits=[0]"], "task.digits"),
    (["task.digits=[]"], "task.digits"),
    (["task.train_size=0"], "task.train_size"),
    (["task.dev_size=-3"], "task.dev_size"),
    (["task.digits=[1]", "task.train_size=500"], "task.train_size"),
    (["task.sample_per_iteration=0"], "sample_per_iteration"),
    (["task.max_new_tokens=0"], "max_new_tokens"),
    (["sampling.temperature=-0.5"], "sampling.temperature"),
    (["sampling.top_p=0"], "sampling.top_p"),
    (["rationalization.p_rationalization=2"], "p_rationalization"),
    (["rationalization.p_rationalization=-1"], "p_rationalization"),
    (["schedule.mode=cosine"], "schedule.mode"),
    (["schedule.base_steps=0"], "schedule.base_steps"),
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.optimizer=sgd"], "trainer.optimizer"),
    (["generator.batch_size=0"], "generator.batch_size"),
    (["logger.mode=cloud"], "logger.mode"),
    (["plateau_patience=0"], "plateau_patience"),
    (["model=hf", "model.name_or_path=/no/such/model"], "/no/such/model"),
    (["task=reasoning_gym", "task.dataset=spiral_matrix"], "parsed, never executed"),  # its scorer runs answers
    (["task=cqa", "task.data_files.train=/no/such/file.jsonl", "task.data_files.dev=/no/such/dev.jsonl"],
     "/no/such"),
    (lambda t: bad_file(t, "cqa", lambda d: d[0].pop("answerKey")), "answerKey"),
    (lambda t: bad_file(t, "cqa", lambda d: _set(d[1], "answerKey", "Z")), "answerKey"),
    (lambda t: bad_file(t, "cqa", lambda d: _set(d[2], "id", d[3]["id"])), "id"),
    (lambda t: bad_file(t, "cqa", lambda d: _set(d[0], "question", "")), "question"),
    (lambda t: bad_file(t, "gsm8k", lambda d: d[0].pop("answer")), "answer"),
    (lambda t: bad_file(t, "gsm8k", lambda d: _set(d[0], "answer", "no final number here")), "####"),
    (lambda t: bad_file(t, "gsm8k", lambda d: _set(d[0], "question", 42)), "question"),
]


@pytest.mark.parametrize("case,needle", CASES, ids=[str(i) for i in range(len(CASES))])
def test_user_error_exits_with_one_clear_message(case, needle, tmp_path, monkeypatch, capsys):
    overrides = case(tmp_path) if callable(case) else case
    run_dir = tmp_path / "run"
    loaded = []

    def load(*args, **kwargs):
        loaded.append(args)
        raise ModelLoaded  # stop the run here: a load is this test's failure, whatever follows it

    # Patched in star.models, where every loader looks these up when it runs (star/model_cache.py calls
    # models.X; star/sharding.py and star/training/slurm.py import them inside the function).
    monkeypatch.setattr("star.models.load_model_and_tokenizer", load)
    monkeypatch.setattr("star.models.load_checkpoint", load)
    monkeypatch.setattr(sys, "argv", ["star", *FAST, *overrides, f"hydra.run.dir={run_dir}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises((SystemExit, ModelLoaded)) as e:
        cli.main()
    assert not loaded, "no model may be loaded before the input is checked"
    assert e.value.code == 2
    out = capsys.readouterr()
    text = out.err + out.out
    assert needle in text, text[-2000:]
    assert "Traceback" not in text
    assert not (run_dir / "iter_00").exists()


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_settings_without_effect_are_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["star", *FAST, "rationalization=off", "rationalization.p_rationalization=0.5",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    cli.main()
    notes = [line for line in capsys.readouterr().out.splitlines() if "no effect" in line]
    assert len(notes) == 1
    assert "rationalization.p_rationalization=0.5 (rationalization.enabled=false)" in notes[0]
    assert (tmp_path / "run" / "iter_00" / "eval.json").exists(), "allowed: the run goes on"
