"""Run outputs -> paper-style tables and plots (`star-report`), and the per-iteration table a run
prints at its end (`iteration_table`, used by the `star` CLI).

    star-report outputs/sweeps/2026-01-01/12-00-00          # a sweep: every run under it
    star-report RUN_A RUN_B SWEEP --out my_report/           # run and sweep directories, mixed
    star-report SWEEP --baseline ablation=default            # plus paired differences against that group
    print(iteration_table(history))                          # history: one metrics.json dict per iteration

A run directory holds `.hydra/config.yaml` and `iter_00/`; a sweep directory holds run directories
at any depth (`report/` folders are skipped). An iteration counts once its `iter_NN/metrics.json`
(written by the last stage, `log`) exists, so a run still in progress is reported with the
iterations it has finished and marked `running`. A run's `train_steps.csv` (one row per training
step, written during each fit; absent in older runs) feeds the loss plot.

Written to --out (default: `report/` inside the first PATH):
    report.md       the summary table (runs grouped over seeds: test accuracy, the headline, and dev
                    accuracy with mean, std and 95% interval, and the same for each extra evaluation
                    split the runs report, e.g. arithmetic's ood; the paper's GPT-J numbers beside), the
                    paired differences against --baseline, then each run's iteration-by-iteration table
    report.csv      the summary table, numbers unformatted
    runs.csv        one row per run: the values the summary averages
    ablations.csv   with --baseline: the paired differences
    accuracy.png    dev accuracy vs iteration, one line per run
    train_data.png  training data used (direct + rationalized, stacked) vs iteration
    per_class.png   dev accuracy per class (arithmetic: digit count) x iteration, one heat map per run,
                    for tasks with two or more classes
    loss.png        training loss (train/loss) vs global step, one line per iteration, with the dev
                    accuracy measured during the fit (fit/dev_accuracy) as points on a second axis;
                    one panel per run that has a train_steps.csv

Runs are grouped when their composed configs are equal except for the seed (and logging keys).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from star import artifacts as A
from star.stats import over_seeds, paired

# ------------------------------------------------------------------ the per-iteration table


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:5.1f}"


def _secs(x) -> str:
    return "-" if x is None else f"{x:6.1f}"


def iteration_table(history: list[dict]) -> str:
    """A Markdown table: iteration, solve rate, rationalized, train fraction, dev accuracy overall
    and per class, test accuracy (when the task has a test split), the accuracy on each extra
    evaluation split (e.g. "ood acc %", when the run has one), and stage times (seconds)."""
    classes = _classes(history)
    has_test = any("test/accuracy" in h for h in history)
    extras = extra_splits([history])
    stages = ("generate", "rationalize", "train", "eval")
    header = (["iter", "solve %", "rationalized %", "train data %", "dev acc %"]
              + [f"dev {c} %" for c in classes] + (["test acc %"] if has_test else [])
              + [f"{name} acc %" for name in extras] + [f"{s} s" for s in stages])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for h in history:
        cells = [str(h["iteration"]), _pct(h.get("gen/solve_rate")), _pct(h.get("gen/rationalized_rate")),
                 _pct(h.get("data/train_fraction")), _pct(h.get("eval/accuracy"))]
        cells += [_pct(h.get(f"eval/accuracy/{c}")) for c in classes] + ([_pct(h.get("test/accuracy"))] if has_test else [])
        cells += [_pct(h.get(f"{name}/accuracy")) for name in extras]
        cells += [_secs(h.get(f"time/{s}_s")) for s in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def extra_splits(histories: list[list[dict]]) -> list[str]:
    """The extra evaluation splits (star/tasks/base.py's eval_splits, e.g. arithmetic's "ood") that some
    iteration of these histories reports, by their <name>/accuracy key: every such key but eval's and
    test's. Sorted; [] when there is none, and then no table gains a column."""
    # The rule of star.metrics.reported_splits, kept here: the report reads run directories and imports
    # only artifacts, loop and stats (tests/test_imports.py).
    names = {key.split("/")[0] for history in histories for h in history for key in h
             if key.count("/") == 1 and key.endswith("/accuracy")}
    return sorted(names - {"eval", "test"})


def _classes(history: list[dict]) -> list[str]:
    """Per-class accuracy keys (eval/accuracy/<class>), digit counts in numeric order."""
    return sorted({k.split("/", 2)[2] for h in history for k in h if k.startswith("eval/accuracy/")},
                  key=lambda c: (len(c), c))


# ------------------------------------------------------------------ the paper's numbers

# method.name -> the paper's row label; "star" splits on rationalization.enabled.
METHOD_LABELS = {
    "fewshot_direct": "few-shot direct",
    "fewshot_cot": "few-shot CoT",
    "direct_finetune": "direct fine-tune",
    "star/off": "STaR without rationalization",
    "star/on": "STaR with rationalization",
}
FEWSHOT_METHODS = ("fewshot_direct", "fewshot_cot")

# (task.name, method label) -> (accuracy %, % of training data used), GPT-J 6B (PAPER.md).
# CQA: dev accuracy (Table 1). GSM8K: test accuracy (Table 2). Arithmetic: STaR with
# rationalization after 16 iterations; direct fine-tuning on 10,000 examples (no data % given).
PAPER: dict[tuple[str, str], tuple[float, float | str | None]] = {
    ("cqa", "few-shot direct"): (20.9, "~0"),
    ("cqa", "few-shot CoT"): (36.6, "~0"),
    ("cqa", "direct fine-tune"): (60.0, 100.0),
    ("cqa", "STaR without rationalization"): (68.8, 69.7),
    ("cqa", "STaR with rationalization"): (72.5, 86.7),
    ("gsm8k", "few-shot direct"): (3.0, "~0"),
    ("gsm8k", "few-shot CoT"): (3.1, "~0"),
    ("gsm8k", "direct fine-tune"): (5.8, 100.0),
    ("gsm8k", "STaR without rationalization"): (10.1, 25.0),
    ("gsm8k", "STaR with rationalization"): (10.7, 28.7),
    ("arithmetic", "direct fine-tune"): (76.3, None),
    ("arithmetic", "STaR with rationalization"): (89.5, None),
}

# Keys that cannot change a result: never a reason to keep two runs apart.
_IGNORED_KEYS = ("seed", "print_table", "generator.progress", "model.cache_dir", "trainer.memory_check")
_IGNORED_PREFIXES = ("logger.",)
# Keys the summary already shows in columns of their own.
_COLUMN_KEYS = ("task.name", "method.name", "model.name", "model.name_or_path")


def _ignored(key: str) -> bool:
    return key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES)


class ReportError(Exception):
    """A mistake the user can fix (a path with no run in it); printed without a traceback."""


# ------------------------------------------------------------------ reading runs


@dataclass
class Run:
    """One run directory: its composed config and the metrics of every finished iteration."""

    path: Path
    config: dict
    history: list[dict]
    overrides: tuple[str, ...] = ()   # the command line's overrides (.hydra/overrides.yaml), seed excluded

    def get(self, dotted: str, default=None):
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def task(self) -> str:
        return str(self.get("task.name", "?"))

    @property
    def method(self) -> str:
        return method_label(self.get("method.name"), self.get("rationalization.enabled"))

    @property
    def model(self) -> str:
        name, path = self.get("model.name"), self.get("model.name_or_path")
        return str(path) if path and name in (None, "hf") else str(name)

    @property
    def seed(self):
        return self.get("seed")

    @property
    def n_iterations(self) -> int | None:
        return self.get("n_iterations")

    @property
    def fewshot(self) -> bool:
        return self.get("method.name") in FEWSHOT_METHODS

    @property
    def last(self) -> dict | None:
        return self.history[-1] if self.history else None

    @property
    def status(self) -> str:
        """done: every iteration 0..n_iterations finished, or the loop stopped on a plateau
        (the loop's own rule, cfg.plateau_patience); running: not yet."""
        n = self.n_iterations
        if n is not None and len(self.history) >= n + 1:
            return "done"
        from star.loop import plateaued  # the loop's own rule; local: the loop imports the training stack

        accs = [h.get("eval/accuracy") for h in self.history]
        if None not in accs and plateaued(accs, self.get("plateau_patience"), self.get("plateau_min_delta") or 0.0):
            return "done"
        return "running"

    # The summary's values: the LAST finished iteration, in percent.
    @property
    def dev_acc(self) -> float | None:
        acc = (self.last or {}).get("eval/accuracy")
        return None if acc is None else 100 * acc

    @property
    def test_acc(self) -> float | None:
        return self.split_acc("test")

    def split_acc(self, name: str) -> float | None:
        """A reported split's accuracy (<name>/accuracy: test, ood) at the last finished iteration, in %."""
        acc = (self.last or {}).get(f"{name}/accuracy")
        return None if acc is None else 100 * acc

    def gain(self, key: str) -> float | None:
        """Points gained on `key` from iteration 0 (the few-shot model) to the last finished iteration;
        None before a second iteration has finished."""
        if len(self.history) < 2 or self.history[0].get("iteration") != 0:
            return None
        first, last = self.history[0].get(key), self.history[-1].get(key)
        return None if first is None or last is None else 100 * (last - first)

    @property
    def test_gain(self) -> float | None:
        return self.gain("test/accuracy")

    @property
    def dev_gain(self) -> float | None:
        return self.gain("eval/accuracy")

    @property
    def n_questions(self) -> tuple[int | None, int | None]:
        """(dev, test) questions the last iteration's accuracies rest on."""
        last = self.last or {}
        return last.get("eval/n"), last.get("test/n")

    @property
    def train_pct(self) -> float | str | None:
        frac = (self.last or {}).get("data/train_fraction")
        if frac is not None:
            return 100 * frac
        return "~0" if self.fewshot else None

    def _data_pct(self, key: str) -> float | None:
        last = self.last or {}
        n = last.get("data/n_questions")
        return 100 * last[key] / n if n and key in last else None

    @property
    def direct_pct(self) -> float | None:
        return self._data_pct("data/n_direct")

    @property
    def rationalized_pct(self) -> float | None:
        return self._data_pct("data/n_rationalized")

    @property
    def last_iteration(self) -> int | None:
        return self.last["iteration"] if self.last else None

    @cached_property
    def train_steps(self) -> list[dict]:
        """The per-step rows of its fits (read_train_steps); [] when it has none."""
        return read_train_steps(self.path)


_STEP_INTS = ("iteration", "step", "global_step")


def _number(cell: str | None) -> float | None:
    try:
        return float(cell) if cell not in (None, "") else None
    except ValueError:
        return None


def read_train_steps(run_dir: Path) -> list[dict]:
    """The rows of `<run_dir>/train_steps.csv`, ordered by global_step: iteration, step and global_step as
    int, every other column (train/loss, train/lr, ..., fit/dev_accuracy) as float, or None where the cell
    is empty or not a number. Rows without the three step numbers (a line cut by a kill) are skipped; a
    step written twice (a fit redone after a crash) keeps its last row. [] when the file is absent or
    unreadable: older runs and some logger settings write none."""
    path = A.train_steps_csv(run_dir)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    rows: dict[int, dict] = {}
    for r in raw:
        try:
            ints = {k: int(r[k]) for k in _STEP_INTS}
        except (KeyError, TypeError, ValueError):
            continue
        rows[ints["global_step"]] = {**ints, **{k: _number(v) for k, v in r.items()
                                                if k is not None and k not in _STEP_INTS}}
    return [rows[k] for k in sorted(rows)]


def method_label(name: str | None, rationalization: bool | None = None) -> str:
    """The paper's row label for a method.name ("star" splits on rationalization.enabled);
    names the paper has no row for are shown as they are."""
    if name == "star":
        return METHOD_LABELS["star/on" if rationalization else "star/off"]
    return METHOD_LABELS.get(str(name), str(name))


def is_run_dir(path: Path) -> bool:
    return A.hydra_config(path).is_file() and A.iter_dir(path, 0).is_dir()


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory in `paths` (each a run or a directory holding runs at any depth),
    in order, without duplicates. A path with no run in it raises ReportError."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ReportError(f"{path} does not exist")
        if not path.is_dir():
            raise ReportError(f"{path} is not a directory (give a run or sweep directory)")
        runs = []
        for dirpath, dirnames, _ in os.walk(path):
            here = Path(dirpath)
            if is_run_dir(here):
                runs.append(here)
                dirnames[:] = []  # runs do not nest
                continue
            # report/ holds our own output; hidden dirs are .hydra and temp dirs.
            dirnames[:] = sorted(d for d in dirnames if d != "report" and not d.startswith("."))
        if not runs:
            raise ReportError(f"no run directory in {path} (a run directory holds .hydra/config.yaml and iter_00/)")
        for run in runs:
            found.setdefault(run.resolve(), None)
    return list(found)


def read_run(path: Path) -> Run:
    """A run's composed config and the metrics of its finished iterations (0, 1, ... until the
    first iteration without metrics.json)."""
    import yaml

    path = Path(path)
    cfg_file = A.hydra_config(path)
    try:
        config = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"cannot read {cfg_file}: {e}") from None
    history = []
    while (metrics := A.metrics_of(path, len(history))).is_file():
        try:
            history.append(json.loads(metrics.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read {metrics}: {e}") from None
    overrides_file = A.hydra_overrides(path)
    overrides = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) if overrides_file.is_file() else []
    # An override of a key that cannot change a result (a progress bar, the memory pre-flight) does not
    # make a run one setting apart from its baseline.
    kept = tuple(o for o in overrides or [] if not o.startswith(("seed=", "hydra.", "hydra/"))
                 and not _ignored(o.split("=", 1)[0].lstrip("+~")))
    return Run(path, config, history, kept)


# ------------------------------------------------------------------ grouping over seeds


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    return {key: node if isinstance(node, str) else json.dumps(node, separators=(",", ":"))}


def _group_config(run: Run) -> dict[str, str]:
    flat = _flatten(run.config)
    return {k: v for k, v in flat.items() if not _ignored(k)}


@dataclass
class Group:
    """Runs that differ only in their seed: one row of the summary."""

    runs: list[Run]
    settings: str = ""  # the config keys that set it apart from groups of the same task, method, model

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def cell(self) -> tuple[str, str, str]:
        return self.first.task, self.first.method, self.first.model

    @property
    def status(self) -> str:
        return "done" if all(r.status == "done" for r in self.runs) else "running"

    @property
    def name(self) -> str:
        return ", ".join(x for x in (self.first.method, self.settings) if x)


def _method_order(label: str) -> tuple[int, str]:
    labels = list(METHOD_LABELS.values())
    return (labels.index(label), "") if label in labels else (len(labels), label)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with equal configs but for the seed, in the paper's order (task, method, model)."""
    by_key: dict[tuple, list[Run]] = {}
    configs = {}
    for run in runs:
        cfg = _group_config(run)
        key = tuple(sorted(cfg.items()))
        configs[key] = cfg
        by_key.setdefault(key, []).append(run)
    groups = {key: Group(sorted(rs, key=lambda r: (str(r.seed), str(r.path)))) for key, rs in by_key.items()}
    # Settings: the keys that differ between groups of one (task, method, model) cell.
    cells: dict[tuple, list[tuple]] = {}
    for key, g in groups.items():
        cells.setdefault(g.cell, []).append(key)
    for cell_keys in cells.values():
        if len(cell_keys) < 2:
            continue
        names = set().union(*(configs[k] for k in cell_keys)) - set(_COLUMN_KEYS)
        differing = sorted(n for n in names if len({configs[k].get(n) for k in cell_keys}) > 1)
        for k in cell_keys:
            groups[k].settings = " ".join(f"{n}={configs[k].get(n, '<unset>')}" for n in differing)
    return sorted(groups.values(), key=lambda g: (g.first.task, _method_order(g.first.method), g.first.model,
                                                  g.settings))


def _pct_spread(values: list[float | None]) -> dict:
    spread = over_seeds(values)
    return {"mean": None if spread is None else spread.mean, "std": None if spread is None else spread.std,
            "ci_low": None if spread is None else spread.low, "ci_high": None if spread is None else spread.high}


def _span(values: list) -> str | int | None:
    known = sorted({v for v in values if v is not None})
    return None if not known else known[0] if len(known) == 1 else f"{known[0]}-{known[-1]}"


def summarize(group: Group, extras: list[str] = ()) -> dict:
    """One summary row, numbers unformatted (percent); the CSV writes exactly this. `extras`: the extra
    evaluation splits of the whole report (extra_splits), each with <name>_acc_{mean,std,ci_low,ci_high}."""
    runs = group.runs
    first = group.first
    test, dev = _pct_spread([r.test_acc for r in runs]), _pct_spread([r.dev_acc for r in runs])
    train_values = [r.train_pct for r in runs]
    train = {"mean": "~0", "std": None} if all(v == "~0" for v in train_values) else _pct_spread(train_values)
    lasts = [r.last_iteration for r in runs]
    paper_acc, paper_train = PAPER.get((first.task, first.method), (None, None))
    return {
        "task": first.task, "method": first.method, "model": first.model, "settings": group.settings,
        "seeds": ",".join(str(r.seed) for r in runs), "n": sum(r.dev_acc is not None for r in runs),
        **{f"test_acc_{k}": v for k, v in test.items()}, **{f"dev_acc_{k}": v for k, v in dev.items()},
        **{f"{name}_acc_{k}": v for name in extras
           for k, v in _pct_spread([r.split_acc(name) for r in runs]).items()},
        **{f"test_gain_{k}": v for k, v in _pct_spread([r.test_gain for r in runs]).items()},
        **{f"dev_gain_{k}": v for k, v in _pct_spread([r.dev_gain for r in runs]).items()},
        "dev_gain_min": min((r.dev_gain for r in runs if r.dev_gain is not None), default=None),
        "n_test_questions": _span([r.n_questions[1] for r in runs]),
        "n_dev_questions": _span([r.n_questions[0] for r in runs]),
        "train_pct_mean": train["mean"], "train_pct_std": train["std"],
        "direct_pct_mean": _pct_spread([r.direct_pct for r in runs])["mean"],
        "rationalized_pct_mean": _pct_spread([r.rationalized_pct for r in runs])["mean"],
        "last_iteration_min": min((x for x in lasts if x is not None), default=None),
        "last_iteration_max": max((x for x in lasts if x is not None), default=None),
        "n_iterations": first.n_iterations, "status": group.status,
        "paper_dev_acc": paper_acc, "paper_train_pct": paper_train,
        "temperature": first.get("sampling.temperature"), "schedule": first.get("schedule.mode"),
        "runs": ";".join(str(r.path) for r in runs),
    }


# ------------------------------------------------------------------ ablations: paired differences


def find_baseline(groups: list[Group], baseline: str | list[str]) -> Group:
    """The one group whose runs were all started with the override `baseline` (e.g. "ablation=default"),
    or with every one of several (["ablation=default", "rationalization=on"]: a sweep over two axes)."""
    wanted = [baseline] if isinstance(baseline, str) else list(baseline)
    found = [g for g in groups if all(o in r.overrides for r in g.runs for o in wanted)]
    if len(found) != 1:
        choices = sorted({o for g in groups for r in g.runs for o in r.overrides})
        given = " ".join(f"--baseline {o}" for o in wanted)
        raise ReportError(f"{given} matches {len(found)} groups, not one; give overrides that only the "
                          f"baseline's runs have (--baseline again for each), e.g. of: "
                          f"{', '.join(choices) or '(no overrides)'}")
    return found[0]


def one_setting_apart(a: Group, b: Group) -> str | None:
    """The one override (key=value) in which a's runs differ from b's, or None when they differ in none or more."""
    as_dict = lambda g: dict(o.split("=", 1) for o in g.first.overrides if "=" in o)  # noqa: E731
    da, db = as_dict(a), as_dict(b)
    keys = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    return f"{keys[0]}={da.get(keys[0], '(unset)')}" if len(keys) == 1 else None


def ablation_rows(groups: list[Group], baseline: Group, extras: list[str] = ()) -> list[dict]:
    """For each group of the baseline's task that differs from it in one override and shares seeds: the
    paired difference (group - baseline) of test and dev accuracy over the shared seeds, in points, and of
    each extra evaluation split's accuracy in `extras` (<name>_diff_{mean,std,low,high})."""
    rows = []
    for g in groups:
        setting = one_setting_apart(g, baseline) if g is not baseline and g.first.task == baseline.first.task else None
        if setting is None:
            continue
        by_seed = lambda grp, acc: {r.seed: acc(r) for r in grp.runs}  # noqa: E731
        diff = lambda acc: paired(by_seed(g, acc), by_seed(baseline, acc))  # noqa: E731
        test, dev = diff(lambda r: r.test_acc), diff(lambda r: r.dev_acc)
        extra = {name: diff(lambda r, name=name: r.split_acc(name)) for name in extras}
        shared = sorted({r.seed for r in g.runs} & {r.seed for r in baseline.runs}, key=str)
        rows.append({"setting": setting, "group": g.name, "seeds": ",".join(map(str, shared)),
                     **{f"test_diff_{k}": getattr(test, k, None) for k in ("mean", "std", "low", "high")},
                     **{f"dev_diff_{k}": getattr(dev, k, None) for k in ("mean", "std", "low", "high")},
                     **{f"{name}_diff_{k}": getattr(diff, k, None) for name, diff in extra.items()
                        for k in ("mean", "std", "low", "high")}})
    return rows


# ------------------------------------------------------------------ tables


def _num(x, std=None) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.1f}" if std is None else f"{x:.1f} ± {std:.1f}"


def _signed(x, std=None) -> str:
    if x is None:
        return "-"
    return f"{x:+.1f}" if std is None else f"{x:+.1f} ± {std:.1f}"


def _interval(low, high) -> str:
    return "-" if low is None else f"[{low:.1f}, {high:.1f}]"


def _iterations(row: dict) -> str:
    lo, hi, n = row["last_iteration_min"], row["last_iteration_max"], row["n_iterations"]
    done = "-" if lo is None else (str(lo) if lo == hi else f"{lo}-{hi}")
    return f"{done}/{'?' if n is None else n}"


def _paper(row: dict) -> str:
    acc, train = row["paper_dev_acc"], row["paper_train_pct"]
    if acc is None:
        return ""
    if train is None:
        return f"{acc:.1f}"
    return f"{acc:.1f} ({train}% data)" if isinstance(train, str) else f"{acc:.1f} ({train:.1f}% data)"


SUMMARY_HEADER = ["task", "method", "model", "settings", "seeds", "n", "test acc %", "test 95% CI", "dev acc %",
                  "dev 95% CI", "test gain", "dev gain (min)", "questions dev / test", "train data %", "direct %", "rationalized %", "iterations",
                  "status", "paper (GPT-J)"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def summary_table(rows: list[dict], extras: list[str] = ()) -> str:
    """SUMMARY_HEADER's columns, and "<name> acc %" with its 95% CI after test's for each extra split."""
    at = SUMMARY_HEADER.index("test 95% CI") + 1
    header = (SUMMARY_HEADER[:at] + [c for name in extras for c in (f"{name} acc %", f"{name} 95% CI")]
              + SUMMARY_HEADER[at:])
    return _table(header, [
        [r["task"], r["method"], r["model"], r["settings"] or "-", r["seeds"], str(r["n"]),
         _num(r["test_acc_mean"], r["test_acc_std"]), _interval(r["test_acc_ci_low"], r["test_acc_ci_high"]),
         *[cell for name in extras for cell in (_num(r[f"{name}_acc_mean"], r[f"{name}_acc_std"]),
                                                _interval(r[f"{name}_acc_ci_low"], r[f"{name}_acc_ci_high"]))],
         _num(r["dev_acc_mean"], r["dev_acc_std"]), _interval(r["dev_acc_ci_low"], r["dev_acc_ci_high"]),
         _signed(r["test_gain_mean"], r["test_gain_std"]),
         "-" if r["dev_gain_mean"] is None else f"{_signed(r['dev_gain_mean'])} ({_signed(r['dev_gain_min'])})",
         f"{r['n_dev_questions'] or '-'} / {r['n_test_questions'] or '-'}",
         _num(r["train_pct_mean"], r["train_pct_std"]), _num(r["direct_pct_mean"]), _num(r["rationalized_pct_mean"]),
         _iterations(r), r["status"], _paper(r) or "-"] for r in rows])


ABLATION_HEADER = ["setting", "group", "paired seeds", "test diff (points)", "test 95% CI", "dev diff (points)",
                   "dev 95% CI"]


def ablation_table(rows: list[dict], extras: list[str] = ()) -> str:
    """ABLATION_HEADER's columns, then "<name> diff (points)" and its 95% CI for each extra split."""
    header = ABLATION_HEADER + [c for name in extras for c in (f"{name} diff (points)", f"{name} 95% CI")]
    return _table(header, [
        [r["setting"], r["group"], r["seeds"], _signed(r["test_diff_mean"], r["test_diff_std"]),
         _interval(r["test_diff_low"], r["test_diff_high"]), _signed(r["dev_diff_mean"], r["dev_diff_std"]),
         _interval(r["dev_diff_low"], r["dev_diff_high"]),
         *[cell for name in extras for cell in (_signed(r[f"{name}_diff_mean"], r[f"{name}_diff_std"]),
                                                _interval(r[f"{name}_diff_low"], r[f"{name}_diff_high"]))]]
        for r in rows])


RUN_COLUMNS = ["task", "method", "model", "settings", "seed", "test_acc", "dev_acc", "test_gain", "dev_gain",
               "n_dev_questions",
               "n_test_questions", "train_pct", "direct_pct", "rationalized_pct", "last_iteration", "n_iterations",
               "status", "overrides", "path"]


def run_columns(extras: list[str] = ()) -> list[str]:
    """RUN_COLUMNS, with <name>_acc after dev_acc for each extra evaluation split (e.g. ood_acc)."""
    at = RUN_COLUMNS.index("dev_acc") + 1
    return RUN_COLUMNS[:at] + [f"{name}_acc" for name in extras] + RUN_COLUMNS[at:]


def run_rows(groups: list[Group], extras: list[str] = ()) -> list[dict]:
    return [{"task": r.task, "method": r.method, "model": r.model, "settings": g.settings, "seed": r.seed,
             "test_acc": r.test_acc, "dev_acc": r.dev_acc,
             **{f"{name}_acc": r.split_acc(name) for name in extras},
             "test_gain": r.test_gain, "dev_gain": r.dev_gain,
             "n_dev_questions": r.n_questions[0],
             "n_test_questions": r.n_questions[1], "train_pct": r.train_pct, "direct_pct": r.direct_pct,
             "rationalized_pct": r.rationalized_pct, "last_iteration": r.last_iteration,
             "n_iterations": r.n_iterations, "status": r.status, "overrides": " ".join(r.overrides),
             "path": str(r.path)}
            for g in groups for r in g.runs]


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                         for c in columns})
    return buf.getvalue()


def run_title(run: Run, group: Group) -> str:
    return f"{run.task} · {group.name} · {run.model} · seed {run.seed}"


HOW_TO_READ = [
    "- **test acc %**, the headline: `test/accuracy` of each run's **last** finished iteration (not its best), "
    "on the test split, which no selection rule reads (the plateau stop and the best checkpoint read dev). "
    "Mean ± sample standard deviation (n-1) over the runs of a group (n runs, one per seed); runs are grouped "
    "when their configs differ only in the seed. **95% CI**: a Student t interval over seeds, mean ± "
    "t(0.975, n-1) · std / √n (none for one seed). `-` where the task had no test split.",
    "- **test gain**, **dev gain (min)**: points gained from iteration 0 (the few-shot model) to the last "
    "finished iteration, per run, then mean (± std over seeds; in brackets the lowest seed's dev gain).",
    "- **dev acc %**: the same on dev (`eval/accuracy`), the split settings may be chosen on; **questions dev / "
    "test**: how many questions each run's accuracies rest on.",
    "- **train data %**: `data/train_fraction` of that iteration (examples trained on / training questions), "
    "split into **direct** and **rationalized** over `data/n_questions`; few-shot methods train on nothing (~0).",
    "- **iterations**: last finished iteration / `n_iterations`; **status**: `done` when every iteration "
    "finished (or the run stopped on a plateau), `running` otherwise: its rows use the iterations finished so far.",
    "- **settings**: the config keys that differ between groups of the same task, method and model.",
    "- **paper (GPT-J)**: the paper's GPT-J 6B numbers, for scale only: CommonsenseQA dev accuracy (Table 1), "
    "GSM8K test accuracy (Table 2), arithmetic after 16 iterations.",
]


EXTRA_SPLITS_HOW = (
    "- {names}: the same as test acc % on an extra evaluation split the task reports beside test (arithmetic's "
    "ood: task.ood_digits, digit counts not trained on), also never read by a selection rule; `-` for runs "
    "without it.")


def _extras(groups: list[Group]) -> list[str]:
    """The extra evaluation splits any run of these groups reports (extra_splits)."""
    return extra_splits([r.history for g in groups for r in g.runs])


def markdown_report(groups: list[Group], rows: list[dict], plots: list[str], ablations: list[dict] | None = None,
                    baseline: Group | None = None, extras: list[str] = ()) -> str:
    """report.md; `extras`: the extra evaluation splits the runs report (_extras), a column each."""
    n_runs = sum(len(g.runs) for g in groups)
    how = HOW_TO_READ + ([EXTRA_SPLITS_HOW.format(names=", ".join(f"**{name} acc %**" for name in extras))]
                         if extras else [])
    out = ["# STaR report", "", f"{n_runs} run(s) in {len(groups)} group(s). How to read the summary:", "",
           *how, "", summary_table(rows, extras), ""]
    if baseline is not None:
        out += ["## Ablations: paired differences against the baseline", "",
                f"Baseline: {baseline.name} (`{' '.join(baseline.first.overrides) or 'no overrides'}`). Each row is a "
                "group started with one override different from the baseline's: per seed the group's accuracy "
                "minus the baseline's, then mean ± std and a 95% Student t interval over those paired "
                "differences (points of accuracy; an interval that excludes 0 is a difference three seeds resolve).",
                "", ablation_table(ablations or [], extras) if ablations else "(no group differs from the baseline "
                "in one override while sharing its seeds)", ""]
    if plots:
        out += ["Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    out += ["## Runs", ""]
    for g in groups:
        for r in g.runs:
            out += [f"### {run_title(r, g)} ({r.status})", "", f"`{r.path}`", "",
                    iteration_table(r.history) if r.history else "(no finished iteration yet)", ""]
    return "\n".join(out)


# ------------------------------------------------------------------ plots


@dataclass
class _Panel:
    """One subplot: a run, or (more than MAX_PANELS runs) a group's mean over its runs."""

    title: str
    histories: list[list[dict]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    def mean(self, iteration: int, key: str) -> float | None:
        vals = [h[iteration][key] for h in self.histories
                if iteration < len(h) and h[iteration].get(key) is not None]
        return statistics.fmean(vals) if vals else None

    @property
    def n_finished(self) -> int:
        return max((len(h) for h in self.histories), default=0)


MAX_PANELS = 12


def _panels(groups: list[Group], runs_filter=lambda r: True, merged: str = "mean of") -> list[_Panel]:
    """A panel per run that passes runs_filter; above MAX_PANELS runs, one per group, titled
    "(<merged> N)": how the plot combines the group's runs."""
    runs = [(g, r) for g in groups for r in g.runs if runs_filter(r)]
    tasks = {r.task for _, r in runs}
    prefix = (lambda r: f"{r.task} · ") if len(tasks) > 1 else (lambda r: "")
    if len(runs) <= MAX_PANELS:
        return [_Panel(f"{prefix(r)}{g.name}, seed {r.seed}", [r.history], [r]) for g, r in runs]
    panels = []
    for g in groups:
        rs = [r for r in g.runs if runs_filter(r)]
        if rs:
            panels.append(_Panel(f"{prefix(rs[0])}{g.name} ({merged} {len(rs)})", [r.history for r in rs], rs))
    return panels


def _wrap(title: str) -> str:
    import textwrap

    return textwrap.fill(title, 42)


def _grid(plt, n: int, width: float, height: float):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(groups: list[Group], path: Path) -> None:
    """Dev accuracy (%) vs iteration, one line per run; dashed while the run is running."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    runs = [(g, r) for g in groups for r in g.runs]
    tasks = {r.task for _, r in runs}
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        for j, r in enumerate(g.runs):
            xs = [h["iteration"] for h in r.history if h.get("eval/accuracy") is not None]
            ys = [100 * h["eval/accuracy"] for h in r.history if h.get("eval/accuracy") is not None]
            label = f"{r.task} · " if len(tasks) > 1 else ""
            label += f"{g.name}, seed {r.seed}" + (" (running)" if r.status == "running" else "")
            ax.plot(xs, ys, marker="o", color=colors[i % len(colors)], alpha=0.9,
                    linestyle="--" if r.status == "running" else "-",
                    markersize=4 + 2 * (j % 3), markerfacecolor="none" if j % 2 else None, label=label)
    ax.set(xlabel="iteration", ylabel="dev accuracy (%)", ylim=(-2, 102), title="Dev accuracy by iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_train_data(groups: list[Group], path: Path) -> None:
    """Training data used (% of training questions) per iteration, direct and rationalized stacked;
    one panel per run (per group above MAX_PANELS runs)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = _panels(groups)
    fig, axes = _grid(plt, len(panels), 3.6, 2.8)
    for panel, ax in zip(panels, axes):
        its = [i for i in range(1, panel.n_finished)]
        direct, rat = [], []
        for i in its:
            n = panel.mean(i, "data/n_questions")
            d, r = panel.mean(i, "data/n_direct"), panel.mean(i, "data/n_rationalized")
            direct.append(100 * d / n if n and d is not None else 0.0)
            rat.append(100 * r / n if n and r is not None else 0.0)
        if its:
            ax.bar(its, direct, width=0.6, color="tab:blue", label="direct")
            ax.bar(its, rat, width=0.6, bottom=direct, color="tab:orange", label="rationalized")
        else:
            ax.text(0.5, 0.5, "no training iteration", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_title(_wrap(panel.title), fontsize=7)
        ax.set(ylim=(0, 100), xlabel="iteration", ylabel="train data (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not its:
            ax.set_xticks([])
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange")]
    fig.legend(handles, ["direct", "rationalized"], loc="upper right", fontsize=8, frameon=False)
    fig.suptitle("Training data used per iteration", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_class(groups: list[Group], path: Path) -> bool:
    """Dev accuracy (%) per class (rows: the task's classes, e.g. the digit count for arithmetic) x
    iteration (columns), annotated, one heat map per run (per group above MAX_PANELS runs), for runs
    whose task splits dev into two or more classes. False (nothing written) when no run does."""
    panels = _panels(groups, lambda r: len(_classes(r.history)) > 1)
    if not panels:
        return False
    plt = _pyplot()
    import numpy as np

    width = max(3.2, 0.55 * max(p.n_finished for p in panels) + 1.6)
    height = max(2.4, 0.45 * max(len(_classes(h)) for p in panels for h in p.histories) + 1.4)
    fig, axes = _grid(plt, len(panels), width, height)
    image = None
    for panel, ax in zip(panels, axes):
        classes = _classes([row for h in panel.histories for row in h])
        grid = np.full((len(classes), panel.n_finished), np.nan)
        for i in range(panel.n_finished):
            for c_i, c in enumerate(classes):
                v = panel.mean(i, f"eval/accuracy/{c}")
                if v is not None:
                    grid[c_i, i] = 100 * v
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=100, cmap="viridis", aspect="auto",
                          origin="lower")
        for (c_i, i), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(i, c_i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 60 else "black")
        ax.set_xticks(range(panel.n_finished))
        ax.set_yticks(range(len(classes)), classes)
        ax.set(xlabel="iteration", ylabel="class")
        ax.set_title(_wrap(panel.title), fontsize=7)
    fig.suptitle("Dev accuracy (%) by class (eval/accuracy/<class>; arithmetic: digit count)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
    fig.colorbar(image, cax=cax, label="accuracy (%)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def loss_curves(rows: list[dict]) -> dict[int, dict[str, list]]:
    """Per iteration, what plot_loss draws from a run's train_steps rows: {"step": global steps,
    "loss": train/loss} over the rows that have a loss, {"dev_step", "dev_accuracy" (%)} over those
    that have fit/dev_accuracy."""
    curves: dict[int, dict[str, list]] = {}
    for r in rows:
        c = curves.setdefault(r["iteration"], {"step": [], "loss": [], "dev_step": [], "dev_accuracy": []})
        if r.get("train/loss") is not None:
            c["step"].append(r["global_step"])
            c["loss"].append(r["train/loss"])
        if r.get("fit/dev_accuracy") is not None:
            c["dev_step"].append(r["global_step"])
            c["dev_accuracy"].append(100 * r["fit/dev_accuracy"])
    return dict(sorted(curves.items()))


def plot_loss(groups: list[Group], path: Path) -> bool:
    """Training loss per step (train/loss vs global_step, from train_steps.csv), one line per iteration
    ("iter N"), and the dev accuracy the generation callback measured during the fit (fit/dev_accuracy)
    as points on a second axis; one panel per run that has per-step rows (per group above MAX_PANELS
    runs, its runs overlaid: steps of different seeds need not line up, so they are not averaged).
    False (nothing written) when no run has per-step rows."""
    panels = _panels(groups, lambda r: bool(r.train_steps), merged="overlaid")
    if not panels:
        return False
    plt = _pyplot()
    # One colour per iteration, the same in every panel (one legend); a gradient past the 10 of the cycle.
    last = max(r["iteration"] for p in panels for run in p.runs for r in run.train_steps)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = ((lambda it: cycle[(it - 1) % len(cycle)]) if last <= len(cycle)
                else (lambda it: plt.get_cmap("viridis")(0.9 * (it - 1) / (last - 1))))  # not the pale yellow end
    fig, axes = _grid(plt, len(panels), 5.4, 3.2)
    legend: dict[int, object] = {}
    any_dev = False
    for panel, ax in zip(panels, axes):
        dev_ax = None
        for run in panel.runs:
            for it, c in loss_curves(run.train_steps).items():
                color = color_of(it)
                (line,) = ax.plot(c["step"], c["loss"], color=color, linewidth=1,
                                  alpha=0.9 if len(panel.runs) == 1 else 0.5,
                                  marker="." if len(c["step"]) == 1 else None)
                legend.setdefault(it, line)
                if c["dev_step"]:
                    if dev_ax is None:
                        dev_ax = ax.twinx()
                        dev_ax.set_ylim(-2, 102)
                        dev_ax.set_ylabel("dev accuracy during fit (%)", fontsize=7)
                        dev_ax.tick_params(labelsize=7)
                    dev_ax.scatter(c["dev_step"], c["dev_accuracy"], marker="D", s=16, color=color,
                                   edgecolors="black", linewidths=0.5, zorder=3)
                    any_dev = True
        ax.set_title(_wrap(panel.title), fontsize=7)
        ax.set_xlabel("global step", fontsize=8)
        ax.set_ylabel("train loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [legend[it] for it in sorted(legend)]
    labels = [f"iter {it}" for it in sorted(legend)]
    if any_dev:
        handles.append(plt.Line2D([], [], marker="D", linestyle="none", markerfacecolor="none",
                                  markeredgecolor="black", markersize=4))
        labels.append("dev acc (fit)")
    # The legend right of the panels, clear of the dev axis; a title that fits one panel's width.
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle("Loss per step; dev accuracy during the fit", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.83, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ the command


def write_report(paths: list[Path], out: Path | None = None, plots: bool = True,
                 baseline: str | list[str] | None = None) -> dict[str, Path]:
    """Find and read every run under `paths`, write the tables (and plots) to `out` (default:
    report/ inside the first path); return {file name: path} of what was written. `baseline`: an
    override only the baseline group's runs have (e.g. "ablation=default"), or a list of overrides that
    together only its runs have: adds the paired differences
    of the groups one override away from it (ablations.csv and a section of report.md)."""
    if not paths:
        raise ReportError("give at least one run or sweep directory")
    runs = [read_run(p) for p in find_runs(paths)]
    groups = group_runs(runs)
    base = find_baseline(groups, baseline) if baseline else None
    extras = _extras(groups)
    ablations = ablation_rows(groups, base, extras) if base is not None else None
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarize(g, extras) for g in groups]
    written = {}
    if plots:
        plot_accuracy(groups, out / "accuracy.png")
        plot_train_data(groups, out / "train_data.png")
        written["accuracy.png"] = out / "accuracy.png"
        written["train_data.png"] = out / "train_data.png"
        # Plots only some runs have: written when one has their data, else an older copy is removed
        # so the folder matches report.md's "Plots" line.
        for name, plot in (("per_class.png", plot_per_class), ("loss.png", plot_loss)):
            if plot(groups, out / name):
                written[name] = out / name
            else:
                (out / name).unlink(missing_ok=True)
    (out / "report.csv").write_text(_csv(rows, list(rows[0])), encoding="utf-8")
    (out / "runs.csv").write_text(_csv(run_rows(groups, extras), run_columns(extras)), encoding="utf-8")
    if ablations:
        (out / "ablations.csv").write_text(_csv(ablations, list(ablations[0])), encoding="utf-8")
        written["ablations.csv"] = out / "ablations.csv"
    plot_names = [name for name in written if name.endswith(".png")]
    (out / "report.md").write_text(markdown_report(groups, rows, plot_names, ablations, base, extras) + "\n",
                                   encoding="utf-8")
    written["report.csv"] = out / "report.csv"
    written["runs.csv"] = out / "runs.csv"
    written["report.md"] = out / "report.md"
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="star-report",
        description="Tables (Markdown, CSV) and plots from STaR run and sweep directories.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="a sweep directory (every run under it) or a run directory; mix freely")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: report/ inside the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument("--baseline", metavar="OVERRIDE", action="append", default=None,
                        help="an override only the baseline group's runs were started with (e.g. ablation=default); "
                             "repeat it for a sweep over several axes (--baseline ablation=default --baseline "
                             "rationalization=on): adds paired differences against that group for the groups one "
                             "override away")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.paths, args.out, plots=not args.no_plots, baseline=args.baseline)
    except ReportError as e:
        print(f"star-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    report = written["report.md"].read_text(encoding="utf-8")
    print(report.split("\n## Runs")[0].rstrip())
    print(f"\n[star-report] wrote {', '.join(sorted(written))} to {written['report.md'].parent}")


if __name__ == "__main__":
    main()
