"""No selection rule reads the test split: a run whose test file is changed (other gold answers, so
other test accuracies) stops at the same iteration, keeps the same checkpoints and trains on the same
examples, with the same dev numbers. And a task without a test split says so once and reports dev."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from star import artifacts as A
from star.loop import StarLoop
from tests.conftest import compose_config

DATA = Path(__file__).parent / "data" / "gsm8k"
QUESTION = re.compile(r"Q: (.+?)( \(hint: the answer is [^)]*\))?\nA:$", re.DOTALL)


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


def gold(row: dict) -> str:
    return row["answer"].rsplit("####", 1)[1].strip()


class AnswerBook:
    """A generator that answers from a fixed book of question -> answer (the files' first gold answers):
    right wherever the run's gold agrees with the book, whatever the model or the iteration."""

    def __init__(self, book: dict[str, str]):
        self.book = book
        self.n_new_tokens = 0

    def generate(self, prefix, questions, *, seeds, max_new_tokens, stop, temperature=0.0, top_p=1.0, desc=""):
        out = []
        for q in questions:
            text = QUESTION.match(q).group(1).strip()
            out.append(f" The answer is {self.book.get(text, '-1')}.\n\n")
        return out


def run(tmp_path: Path, name: str, test_rows: list[dict] | None, book: dict[str, str]) -> StarLoop:
    files = {"train": DATA / "train.jsonl", "dev": DATA / "dev.jsonl"}
    if test_rows is not None:
        files["test"] = tmp_path / f"{name}-test.jsonl"
        files["test"].write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    cfg = compose_config(["~experiment", "task=gsm8k", "model=tiny", "debug=fast", "logger=none", "n_iterations=4",
                          "plateau_patience=1", "checkpoint.keep=last_and_best", "rationalization.gold_oracle=false",
                          *(f"task.data_files.{split}={path}" for split, path in files.items())])
    loop = StarLoop(cfg, tmp_path / name, make_generator=lambda model, tokenizer: AnswerBook(book))
    loop.run()
    return loop


def selection_files(run_dir: Path) -> dict[str, object]:
    """Everything a selection rule decides or reads: the iterations run, the kept checkpoints, the
    examples trained on, the dev results."""
    out: dict[str, object] = {"iterations": sorted(p.name for p in run_dir.glob("iter_*"))}
    log = run_dir / A.RETENTION_LOG
    out["retention"] = log.read_text() if log.exists() else ""
    out["checkpoints"] = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("iter_*/checkpoint"))
    for path in sorted(run_dir.glob("iter_*/*")):
        if path.name in ("train.jsonl", "generations.jsonl", "rationalizations.jsonl"):
            out[str(path.relative_to(run_dir))] = path.read_text()
        if path.name == "eval.json":
            dev = {k: v for k, v in A.read_json(path).items() if k != "test"}
            out[str(path.relative_to(run_dir))] = dev
    return out


@pytest.mark.slow
def test_changing_the_test_file_changes_no_selection(tmp_path):
    train, dev, test = rows("train"), rows("dev"), rows("test")
    # The book is right on half of the training and dev questions and on every test question of file A.
    book = {r["question"]: gold(r) for r in train[::2] + dev[::2] + test}
    changed = [{**r, "answer": r["answer"].rsplit("####", 1)[0] + f"#### {int(gold(r)) + 1}"} for r in test]
    a = run(tmp_path, "a", test, book)
    b = run(tmp_path, "b", changed, book)
    history_a = [A.read_json(p) for p in sorted(a.run_dir.glob("iter_*/metrics.json"))]
    history_b = [A.read_json(p) for p in sorted(b.run_dir.glob("iter_*/metrics.json"))]
    assert [h["test/accuracy"] for h in history_a] == [1.0] * len(history_a)
    assert [h["test/accuracy"] for h in history_b] == [0.0] * len(history_b)
    assert len(history_a) < 5, "the plateau rule stopped the run early"
    assert selection_files(a.run_dir) == selection_files(b.run_dir)
    assert [h["eval/accuracy"] for h in history_a] == [h["eval/accuracy"] for h in history_b]


@pytest.mark.slow
def test_a_task_without_a_test_split_says_so_once_and_reports_dev(tmp_path, capsys):
    book = {r["question"]: gold(r) for r in rows("train") + rows("dev")}
    loop = run(tmp_path, "no_test", None, book)
    out = capsys.readouterr().out
    assert out.count("has no test split") == 1 and "task.data_files.test" in out
    metrics = A.read_json(A.metrics_of(loop.run_dir, 0))
    assert "test/accuracy" not in metrics and metrics["eval/accuracy"] == 1.0
    assert "test" not in A.read_json(A.stage_file(loop.run_dir, 0, "eval.json"))
