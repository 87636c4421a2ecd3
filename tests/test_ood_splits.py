"""Extra evaluation splits (issue 16 item 3): a task lists them in `eval_splits` (star/tasks/base.py), the
evaluate stage scores each like test, metrics.json gets <name>/accuracy and its per-class keys, and
star-report adds a column. Arithmetic's is `ood` (task.ood_digits: digit counts not trained on).

Fast tests: the ood split itself (disjoint, seeded, round-robin), its config checks, the evaluate stage
and the metrics through the real loop with a scripted generator, and the report on hand-made run
directories. One slow test runs the real `star` CLI on the tiny model with task.ood_digits and then
`star-report`. Run: python -m pytest -q tests/test_ood_splits.py [-m slow]
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from star import artifacts as A
from star import report as R
from star.evaluation import score
from star.loop import StarLoop
from star.stages.evaluate import TEST_KEYS
from star.tasks import task_class
from star.tasks.arithmetic import (
    ArithmeticConfig,
    ArithmeticTask,
    operand_range,
    scratchpad,
    scratchpad_for,
    scratchpad_tokens,
    unordered,
)
from star.tracking import Tracker
from tests.conftest import REPO, compose_config, run_star
from tests.test_report import make_run, read_csv, run_section_rows, summary_rows


def make(seed=0, digits=(1, 2, 3), ood_digits=(4,), ood_size=None, train=160, dev=102, test=102):
    return ArithmeticTask(digits=list(digits), train_size=train, dev_size=dev, test_size=test, seed=seed,
                          ood_digits=list(ood_digits), ood_size=ood_size)


def problems(examples) -> set[tuple[int, int]]:
    return {unordered(e.meta["a"], e.meta["b"]) for e in examples}


def content(examples) -> list[tuple[str, str, str]]:
    return [(e.id, e.question, e.answer) for e in examples]


# ----------------------------------------------------------------------------- the ood split


def test_ood_split_is_disjoint_from_every_split_and_the_exemplars():
    # ood digit count 1 with training on 2-3: the small 1-digit pool holds two exemplar problems (3 + 4, 8 + 6),
    # and taking all 53 others uses every stream to the end.
    task = make(digits=(2, 3), ood_digits=(1,), ood_size=53, train=100, dev=30, test=30)
    ood = task.load("ood")
    assert len(ood) == 53 and len(problems(ood)) == 53, "no problem twice"
    assert not problems(ood) & task.exemplar_problems()
    for split in ("train", "dev", "test"):
        assert not problems(ood) & problems(task.load(split)), split
    assert [e.id for e in ood] == [f"ood-{i:06d}" for i in range(53)]
    assert all(e.meta["digits"] == 1 and task.class_of(e) == "1" for e in ood)
    assert all(int(e.answer) == e.meta["a"] + e.meta["b"] for e in ood)


def test_ood_split_takes_its_digit_counts_round_robin_and_test_size_by_default():
    task = make(ood_digits=(5, 4))
    ood = task.load("ood")
    assert len(ood) == 102  # ood_size null: task.test_size
    assert [e.meta["digits"] for e in ood[:6]] == [5, 4, 5, 4, 5, 4]  # task.ood_digits order
    assert Counter(task.class_of(e) for e in ood) == {"4": 51, "5": 51}
    for e in ood:
        lo, hi = operand_range(e.meta["digits"])
        assert lo <= e.meta["a"] < hi and lo <= e.meta["b"] < hi


def test_train_dev_and_test_do_not_depend_on_ood_digits():
    plain = make(ood_digits=())
    with_ood = make(ood_digits=(4, 5), ood_size=40)
    assert plain.eval_splits == {} and with_ood.eval_splits == {"ood": 58}
    for split in ("train", "dev", "test"):
        assert content(with_ood.load(split)) == content(plain.load(split)), split


def test_ood_split_is_fixed_by_the_seed():
    first, again, other = make(seed=0).load("ood"), make(seed=0).load("ood"), make(seed=1).load("ood")
    assert content(first) == content(again)
    assert len(problems(first) & problems(other)) < 5, "another seed draws other problems"
    # Its own stream: its problems do not move with the training digit counts.
    assert content(make(digits=(1, 2)).load("ood")) == content(first)


def test_no_ood_split_without_ood_digits():
    task = make(ood_digits=())
    with pytest.raises(ValueError, match=r"valid splits: train, dev, test; set task.ood_digits \(e.g. \[4\]\)"):
        task.load("ood")
    assert make().splits == ("train", "dev", "test")  # the extra split is listed apart, in eval_splits


def test_an_ood_size_the_pool_cannot_fill_names_the_size_that_fits():
    task = make(digits=(2,), ood_digits=(1,), ood_size=54, train=10, dev=10, test=10)
    with pytest.raises(ValueError, match=r"task.ood_size=54 cannot be met .* lower task.ood_size to 53 or less"):
        task.load("train")  # splits are built together: the error comes before any data is used


@pytest.mark.parametrize("ood_digits", [[0], [2], [3, 4]])
def test_the_task_refuses_ood_digits_it_trains_on_or_below_one(ood_digits):
    with pytest.raises(ValueError, match="ood_digits must list digit counts >= 1 that are not in digits"):
        make(ood_digits=ood_digits)


def test_every_task_lists_its_extra_eval_splits():
    for name in ("cqa", "gsm8k", "reasoning_gym"):
        assert task_class(name).eval_splits == {}, name
    assert make(ood_digits=()).eval_splits == {} and make().eval_splits == {"ood": 48}


def test_per_class_keys_are_the_ood_digit_counts():
    task = make(ood_digits=(4, 5), ood_size=10)
    ood = task.load("ood")
    completions = [scratchpad(e) if e.meta["digits"] == 4 else scratchpad_for(e.meta["a"], e.meta["b"] + 1)
                   for e in ood]
    scored = score(task, ood, completions)
    assert scored["per_class"] == {"4": 1.0, "5": 0.0} and scored["per_class_n"] == {"4": 5, "5": 5}


# ----------------------------------------------------------------------------- the token budget


def smollm2_tokenizer():
    """The SmolLM2 tokenizer from the converted-model cache, or skip (converting it needs the slow tier)."""
    from star.models import SMOLLM2_CACHE_SUBDIR, SmolLM2Config, cache_root

    path = cache_root(SmolLM2Config(name="smollm2_135m")) / SMOLLM2_CACHE_SUBDIR
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no converted SmolLM2 at {path} (a run with model=smollm2_135m writes it)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_scratchpad_tokens_is_the_longest_gold_completion_with_the_smollm2_tokenizer():
    tok = smollm2_tokenizer()
    count = lambda a, b: len(tok(scratchpad_for(a, b), add_special_tokens=False)["input_ids"])  # noqa: E731
    for d in range(1, 7):
        lo, hi = operand_range(d)
        assert count(hi - 1, hi - 1) == scratchpad_tokens(d), d  # every column carries: the longest
        assert count(lo, lo) < scratchpad_tokens(d)
    assert all(count(e.meta["a"], e.meta["b"]) <= scratchpad_tokens(4) for e in make().load("ood"))


# (overrides, the problems ArithmeticConfig reports): what `star` prints, one "star: error:" line each
CONFIG_CASES = [
    ({"digits": [1, 2, 3], "ood_digits": [4], "max_new_tokens": 38}, []),  # the ood split has a budget of its own
    ({"digits": [1, 2, 3], "ood_digits": [4], "ood_max_new_tokens": 48}, []),
    ({"digits": [1, 2, 3], "ood_digits": [4], "ood_max_new_tokens": 47},
     ["task.ood_max_new_tokens=47 cuts the ood split's 4-digit completions short: they take up to 48 tokens "
      "(10 x digits + 8); raise it to 48, or null (the default) for exactly that"]),
    ({"digits": [1], "ood_digits": [5, 2], "ood_max_new_tokens": 40},  # the longest ood digit count sets the need
     ["task.ood_max_new_tokens=40 cuts the ood split's 5-digit completions short: they take up to 58 tokens "
      "(10 x digits + 8); raise it to 58, or null (the default) for exactly that"]),
    ({"digits": [1, 2, 3], "ood_digits": [3, 4]},
     ["task.ood_digits must be digit counts not trained on, e.g. task.digits=[1,2,3] task.ood_digits=[4]; "
      "got [3, 4], which shares [3] with task.digits"]),
    ({"ood_digits": [0, -1]}, ["task.ood_digits must list digit counts >= 1, e.g. task.ood_digits=[4]; got [0, -1]"]),
    ({"ood_size": 0}, ["task.ood_size must be > 0, or null for task.test_size, got 0"]),
    ({"ood_size": -2, "ood_digits": []}, ["task.ood_size must be > 0, or null for task.test_size, got -2"]),
    ({"digits": [1], "ood_digits": [6], "ood_size": 5}, []),
]


@pytest.mark.parametrize("overrides,expected", CONFIG_CASES)
def test_config_checks(overrides, expected):
    cfg = OmegaConf.merge(OmegaConf.structured(ArithmeticConfig), {"name": "arithmetic", **overrides})
    assert OmegaConf.to_object(cfg).problems() == expected


def test_the_shipped_options_have_no_ood_split():
    for option in ("arithmetic", "arithmetic_cpu"):
        task_cfg = compose_config([f"task={option}"]).task
        assert list(task_cfg.ood_digits) == [] and task_cfg.ood_size is None and task_cfg.ood_max_new_tokens is None


# ----------------------------------------------------------------------------- evaluate stage and metrics

QUESTION = re.compile(r"Q: (\d+) \+ (\d+)( \(hint: the answer is \d+\))?\nA:$")


class RuleGenerator:
    """Right iff (a + b) % 3 == 0, with or without a hint: every accuracy is known in advance."""

    def __init__(self, calls: list, budgets: dict | None = None):
        self.calls = calls
        self.budgets = {} if budgets is None else budgets
        self.n_new_tokens = 0

    def generate(self, prefix, questions, *, seeds, max_new_tokens, stop, temperature=0.0, top_p=1.0, desc=""):
        self.calls.append(desc)
        self.budgets[desc] = max_new_tokens
        out = []
        for q in questions:
            a, b = (int(x) for x in QUESTION.match(q).groups()[:2])
            out.append(scratchpad_for(a, b) if (a + b) % 3 == 0 else scratchpad_for(a, b + 1))
        return out


BASE = ["~experiment", "model=tiny", "debug=fast", "logger=csv", "task.train_size=30", "task.dev_size=12",
        "rationalization.gold_oracle=false"]


def run_loop(run_dir: Path, overrides: list[str], budgets: dict | None = None) -> tuple[StarLoop, list[str]]:
    cfg = compose_config(BASE + overrides)
    calls: list[str] = []
    with Tracker(run_dir, cfg.logger, config={}, run_name="ood") as tracker:
        loop = StarLoop(cfg, run_dir, make_generator=lambda m, t: RuleGenerator(calls, budgets), tracker=tracker)
        loop.run()
    return loop, calls


def rule_accuracy(examples) -> tuple[float, dict[str, float]]:
    right = [(e.meta["a"] + e.meta["b"]) % 3 == 0 for e in examples]
    by_class: dict[str, list[bool]] = {}
    for e, ok in zip(examples, right):
        by_class.setdefault(str(e.meta["digits"]), []).append(ok)
    return sum(right) / len(right), {c: sum(v) / len(v) for c, v in by_class.items()}


def test_evaluate_scores_the_ood_split_and_metrics_report_it(tmp_path):
    budgets: dict = {}
    loop, calls = run_loop(tmp_path / "ood", ["n_iterations=1", "task.ood_digits=[3,4]", "task.ood_size=14",
                                              "task.max_new_tokens=24"], budgets)
    # The ood split is generated with the budget its 4-digit scratchpads need; every other pass with task's.
    assert budgets["iter 1 ood"] == 48
    assert {b for desc, b in budgets.items() if not desc.endswith(" ood")} == {24}
    ood = loop.task.load("ood")
    accuracy, per_class = rule_accuracy(ood)
    assert 0 < accuracy < 1 and len(per_class) == 2
    assert calls.count("iter 0 ood") == 1 and calls.count("iter 1 ood") == 1
    for iteration in (0, 1):
        ev = json.loads(A.stage_file(loop.run_dir, iteration, "eval.json").read_text())
        assert ev["eval_splits"] == ["ood"]
        assert set(ev["ood"]) == {*TEST_KEYS, "faithful_rate", "samples"}
        # The rule writes the gold scratchpad when right and one with a wrong digit when wrong.
        assert ev["ood"]["faithful_rate"] == pytest.approx(accuracy)
        assert [s["id"] for s in ev["ood"]["samples"]] == [e.id for e in ood[:8]]
        assert ev["ood"]["n"] == 14 and ev["ood"]["per_class_n"] == {"3": 7, "4": 7}
        assert ev["ood"]["accuracy"] == pytest.approx(accuracy) and ev["ood"]["per_class"] == pytest.approx(per_class)
        m = json.loads(A.metrics_of(loop.run_dir, iteration).read_text())
        assert m["ood/accuracy"] == pytest.approx(accuracy) and m["ood/n"] == 14
        assert m["ood/faithful_rate"] == pytest.approx(accuracy) and "test/faithful_rate" not in m
        assert {k: v for k, v in m.items() if k.startswith("ood/accuracy/")} == pytest.approx(
            {f"ood/accuracy/{c}": v for c, v in per_class.items()})
        assert m["test/accuracy"] == ev["test"]["accuracy"]  # test is still there, beside it
    summary = json.loads((loop.run_dir / "summary.json").read_text())
    assert summary["final/ood_accuracy"] == pytest.approx(accuracy)
    assert summary["final/test_accuracy"] == m["test/accuracy"]
    # The tracker logs metrics.json as it is: metrics.csv has the ood columns on every iteration.
    rows = read_csv(loop.run_dir / "metrics.csv")
    assert [float(r["ood/accuracy"]) for r in rows] == pytest.approx([accuracy, accuracy])
    assert all(r["ood/accuracy/4"] != "" for r in rows)
    table = R.iteration_table([json.loads(A.metrics_of(loop.run_dir, i).read_text()) for i in (0, 1)])
    assert "| test acc % | ood acc % |" in table and f"{100 * accuracy:5.1f}" in table


def test_without_ood_digits_nothing_changes(tmp_path):
    with_ood, _ = run_loop(tmp_path / "ood", ["n_iterations=0", "task.ood_digits=[3]"])
    plain, calls = run_loop(tmp_path / "plain", ["n_iterations=0"])
    assert not any("ood" in c for c in calls)
    ev = json.loads(A.stage_file(plain.run_dir, 0, "eval.json").read_text())
    assert "ood" not in ev and "eval_splits" not in ev
    m = json.loads(A.metrics_of(plain.run_dir, 0).read_text())
    assert not [k for k in m if k.startswith("ood")]
    assert "ood" not in (plain.run_dir / "metrics.csv").read_text()
    assert "ood acc" not in R.iteration_table([m])
    assert not [k for k in json.loads((plain.run_dir / "summary.json").read_text()) if "ood" in k]
    # Dev and test (and so every selection) are the same with and without the ood split.
    ev_ood = json.loads(A.stage_file(with_ood.run_dir, 0, "eval.json").read_text())
    assert {k: v for k, v in ev_ood.items() if k not in ("ood", "eval_splits")} == ev


# ----------------------------------------------------------------------------- star-report


def add_ood(run: Path, accs) -> Path:
    """Give a make_run directory ood/accuracy (and per class) on each of its iterations."""
    for i, acc in enumerate(accs):
        path = A.metrics_of(run, i)
        m = json.loads(path.read_text())
        m.update({"ood/accuracy": acc, "ood/n": 40, "ood/accuracy/4": acc})
        path.write_text(json.dumps(m))
    return run


def report(paths, out: Path, **kw):
    written = R.write_report([Path(p) for p in paths], out, plots=False, **kw)
    return written, (out / "report.md").read_text(), read_csv(out / "report.csv"), read_csv(out / "runs.csv")


def test_report_has_no_ood_column_without_ood(tmp_path):
    make_run(tmp_path / "sweep", "s0", test_accs=(0.1, 0.2, 0.3))
    _, md, (row,), runs = report([tmp_path / "sweep"], tmp_path / "out")
    assert "ood acc" not in md and "**ood" not in md and not [k for k in row if k.startswith("ood")]
    assert list(runs[0]) == R.RUN_COLUMNS
    (cells,) = summary_rows(md)
    assert list(cells) == R.SUMMARY_HEADER


def test_report_shows_ood_accuracy_with_its_interval(tmp_path):
    oods = {0: 0.30, 1: 0.20, 2: 0.40}
    for seed, o in oods.items():
        add_ood(make_run(tmp_path / "sweep", f"s{seed}", seed=seed, test_accs=(0.1, 0.2, 0.5)), (0.0, 0.1, o))
    make_run(tmp_path / "sweep", "other", seed=0, temperature=0.7, test_accs=(0.1, 0.2, 0.5))  # no ood split
    _, md, rows, runs = report([tmp_path / "sweep"], tmp_path / "out")
    values = [100 * o for o in oods.values()]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = 4.303 * std / math.sqrt(3)  # t(0.975, 2)
    cells = {c["n"]: c for c in summary_rows(md)}
    header = list(cells["3"])
    assert header.index("ood acc %") == header.index("test 95% CI") + 1 and "ood 95% CI" in header
    assert cells["3"]["ood acc %"] == f"{mean:.1f} ± {std:.1f}"
    assert cells["3"]["ood 95% CI"] == f"[{mean - half:.1f}, {mean + half:.1f}]"
    assert cells["1"]["ood acc %"] == "-" and cells["1"]["ood 95% CI"] == "-"
    row = next(r for r in rows if r["n"] == "3")
    assert float(row["ood_acc_mean"]) == pytest.approx(mean) and float(row["ood_acc_ci_low"]) == pytest.approx(mean - half)
    assert sorted(float(r["ood_acc"]) for r in runs if r["ood_acc"]) == pytest.approx(sorted(values))
    assert list(runs[0]).index("ood_acc") == list(runs[0]).index("dev_acc") + 1
    assert "**ood acc %**" in md  # how to read it
    s0 = tmp_path / "sweep" / "s0"
    header_line = next(line for line in md.split(f"`{s0.resolve()}`", 1)[1].splitlines() if line.startswith("| iter"))
    assert "| test acc % | ood acc % |" in header_line
    assert [r[header_line.strip("|").split("|").index(" ood acc % ")] for r in run_section_rows(md, s0)] == \
        ["0.0", "10.0", "30.0"]


def test_report_ablations_pair_the_ood_accuracy(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, (base, off) in enumerate(((0.50, 0.40), (0.40, 0.35), (0.60, 0.40))):
        add_ood(make_run(sweep, f"base{seed}", seed=seed, test_accs=(0.0, 0.0, 0.5), overrides=["ablation=default"]),
                (0.0, 0.0, base))
        add_ood(make_run(sweep, f"off{seed}", seed=seed, rationalization=False, test_accs=(0.0, 0.0, 0.5),
                         overrides=["ablation=rationalization_off"]), (0.0, 0.0, off))
    written, md, _, _ = report([sweep], tmp_path / "out", baseline="ablation=default")
    (row,) = read_csv(written["ablations.csv"])
    diffs = [-10.0, -5.0, -20.0]
    assert float(row["ood_diff_mean"]) == pytest.approx(statistics.fmean(diffs))
    assert float(row["ood_diff_std"]) == pytest.approx(statistics.stdev(diffs))
    assert "ood diff (points)" in md


# ----------------------------------------------------------------------------- the real CLI


@pytest.mark.slow
def test_star_with_ood_digits_reports_an_ood_column(tmp_path):
    run = tmp_path / "run"
    proc = run_star(["~experiment", "model=tiny", "debug=fast", "n_iterations=1", "task.ood_digits=[4]",
                     f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ood acc %" in proc.stdout, "the run's own table shows the ood column"
    for iteration in (0, 1):
        m = json.loads(A.metrics_of(run, iteration).read_text())
        assert 0.0 <= m["ood/accuracy"] <= 1.0 and m["ood/n"] == 8 and "ood/accuracy/4" in m
    from star.tracking import iteration_rows, read_wandb_offline

    logged = iteration_rows(read_wandb_offline(run))
    assert [r["ood/accuracy"] for r in logged] == pytest.approx(
        [json.loads(A.metrics_of(run, i).read_text())["ood/accuracy"] for i in (0, 1)])
    rep = subprocess.run(["star-report", str(run), "--no-plots"], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    header = next(line for line in rep.stdout.splitlines() if line.startswith("| task"))
    assert "| ood acc % | ood 95% CI |" in header

    # A budget without room for the 4-digit scratchpads is refused before anything runs.
    refused = run_star(["~experiment", "model=tiny", "debug=fast", "task.ood_digits=[4]", "task.ood_max_new_tokens=40",
                        f"hydra.run.dir={tmp_path / 'refused'}"])
    assert refused.returncode == 2 and "raise it to 48" in refused.stderr
