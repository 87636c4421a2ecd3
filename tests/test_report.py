"""`star-report`: run discovery, the summary table against the metrics files it reads, grouping over
seeds, runs still running, the paper's numbers, plots, and user errors. Fast tests build run
directories by hand; the slow ones report on real runs of the tiny model made by the real CLI."""

from __future__ import annotations

import csv
import json
import math
import statistics
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from star import report as R
from star.stats import over_seeds, paired, t_975
from tests.conftest import REPO, run_star

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ synthetic run directories


def make_run(root: Path, name: str, *, task="arithmetic", method="star", rationalization=True, seed=0,
             n_iterations=2, accs=(0.1, 0.3, 0.5), temperature=0.0, n_questions=20, extra_cfg=None,
             partial_next=False, test_accs=None, overrides=()) -> Path:
    """A run directory as the loop writes it: .hydra/config.yaml and iter_NN/metrics.json for each
    value in `accs` (the finished iterations); partial_next adds the next iteration's first files only.
    test_accs: test accuracy per iteration (None: no test split); overrides: .hydra/overrides.yaml."""
    run = root / name
    cfg = {"seed": seed, "n_iterations": n_iterations, "plateau_patience": None, "plateau_min_delta": 0.0,
           "print_table": True,
           "task": {"name": task, "digits": [1, 2], "train_size": n_questions},
           "model": {"name": "tiny", "name_or_path": None, "hidden_size": 64},
           "method": {"name": method, "train": not method.startswith("fewshot")},
           "rationalization": {"enabled": rationalization, "p_rationalization": 1.0},
           "sampling": {"temperature": temperature, "top_p": 1.0},
           "schedule": {"mode": "exponential", "base_steps": 2},
           "logger": {"wandb": False, "csv": False, "name": f"job-{name}"}}
    for key, value in (extra_cfg or {}).items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    for i, acc in enumerate(accs):
        m = {"iteration": i, "eval/accuracy": acc, "eval/n": 50, "time/eval_s": 0.5}
        if test_accs is not None:
            m.update({"test/accuracy": test_accs[i], "test/n": 60})
        # Arithmetic splits dev by digit count; CQA has one class ("all"), as the tasks do.
        m.update({"eval/accuracy/1": min(1.0, acc + 0.2), "eval/accuracy/2": max(0.0, acc - 0.2)}
                 if task == "arithmetic" else {"eval/accuracy/all": acc})
        if i > 0:
            n_direct = (3 * i + seed) % n_questions
            n_rat = (i + 2 * seed + 1) % (n_questions - n_direct) if rationalization else 0
            m.update({"gen/solve_rate": n_direct / n_questions, "gen/rationalized_rate": n_rat / n_questions,
                      "data/n_direct": n_direct, "data/n_rationalized": n_rat, "data/n_questions": n_questions,
                      "data/n_examples": n_direct + n_rat, "data/train_fraction": (n_direct + n_rat) / n_questions,
                      "train/steps": 2, "time/generate_s": 1.0, "time/rationalize_s": 0.1, "time/train_s": 2.0})
        d = run / f"iter_{i:02d}"
        d.mkdir(parents=True)
        (d / "eval.json").write_text("{}")
        (d / "metrics.json").write_text(json.dumps(m))
    if partial_next:
        d = run / f"iter_{len(accs):02d}"
        d.mkdir(parents=True)
        (d / "generations.jsonl").write_text('{"id": "q0"}\n')
        (d / "generate.done").write_text("{}")
    return run


def metrics_of(run: Path) -> list[dict]:
    """The metrics files, read independently of star.report."""
    out = []
    for d in sorted(run.glob("iter_*")):
        if (d / "metrics.json").exists():
            out.append(json.loads((d / "metrics.json").read_text()))
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary_rows(report_md: str) -> list[dict]:
    """The cells of the summary table in report.md (the first Markdown table)."""
    lines = [l for l in report_md.split("\n## Runs")[0].splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def run_section_rows(report_md: str, run: Path) -> list[list[str]]:
    """The body rows of a run's iteration table in report.md."""
    section = report_md.split(f"`{run.resolve()}`", 1)[1].split("\n### ", 1)[0]
    lines = [l for l in section.splitlines() if l.startswith("|")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]


def report(paths, out: Path) -> tuple[str, list[dict], list[dict]]:
    """The tables only (plots have tests of their own)."""
    R.write_report([Path(p) for p in paths], out, plots=False)
    return (out / "report.md").read_text(), read_csv(out / "report.csv"), read_csv(out / "runs.csv")


# ------------------------------------------------------------------ fast: labels and discovery


@pytest.mark.parametrize("name,rationalization,label", [
    ("fewshot_direct", None, "few-shot direct"),
    ("fewshot_cot", True, "few-shot CoT"),
    ("direct_finetune", False, "direct fine-tune"),
    ("star", False, "STaR without rationalization"),
    ("star", True, "STaR with rationalization"),
    ("my_method", True, "my_method"),
])
def test_method_labels(name, rationalization, label):
    assert R.method_label(name, rationalization) == label


def test_find_runs_in_sweeps_and_run_dirs(tmp_path):
    sweep = tmp_path / "sweep"
    a = make_run(sweep, "0_seed=0")
    b = make_run(sweep / "nested" / "deeper", "1_seed=1", seed=1)
    make_run(sweep / "report", "not_a_run")          # our own output folder: skipped
    (sweep / "half" / ".hydra").mkdir(parents=True)  # no iter_00 yet: not a run
    (sweep / "half" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (sweep / "multirun.yaml").write_text("{}\n")
    alone = make_run(tmp_path / "elsewhere", "run", seed=5)
    found = R.find_runs([sweep, alone, a])  # `a` again: reported once
    assert found == [a.resolve(), b.resolve(), alone.resolve()]
    assert R.find_runs([a]) == [a.resolve()]


def test_no_run_is_an_error_naming_the_path(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    for path in (empty, tmp_path / "missing"):
        with pytest.raises(SystemExit) as exc:
            R.main([str(path)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert str(path) in err and err.startswith("star-report: error:") and "Traceback" not in err
    # A good path beside a bad one is still an error: nothing is silently left out.
    run = make_run(tmp_path, "run")
    with pytest.raises(SystemExit) as exc:
        R.main([str(run), str(empty)])
    assert exc.value.code == 2 and str(empty) in capsys.readouterr().err


def test_console_script_exit_code_and_message(tmp_path):
    exe = shutil.which("star-report")
    assert exe, "star-report is not installed: pip install -e ."
    proc = subprocess.run([exe, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert f"no run directory in {tmp_path}" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ fast: the tables


def test_table_values_equal_the_metrics_files(tmp_path):
    # The last iteration is not the best: the table reports the last.
    run = make_run(tmp_path / "sweep", "run", accs=(0.125, 0.625, 0.25), seed=3)
    md, summary, runs = report([tmp_path / "sweep"], tmp_path / "out")
    last = metrics_of(run)[-1]
    assert last["iteration"] == 2
    (row,) = runs
    assert float(row["dev_acc"]) == 100 * last["eval/accuracy"]
    assert float(row["train_pct"]) == 100 * last["data/train_fraction"]
    assert float(row["direct_pct"]) == pytest.approx(100 * last["data/n_direct"] / last["data/n_questions"])
    assert float(row["rationalized_pct"]) == pytest.approx(100 * last["data/n_rationalized"] / last["data/n_questions"])
    assert (row["status"], row["last_iteration"], row["n_iterations"], row["seed"]) == ("done", "2", "2", "3")
    assert (row["task"], row["method"], row["model"]) == ("arithmetic", "STaR with rationalization", "tiny")
    (s,) = summary
    assert float(s["dev_acc_mean"]) == 100 * last["eval/accuracy"] and s["dev_acc_std"] == "" and s["n"] == "1"
    (cells,) = summary_rows(md)
    assert cells["dev acc %"] == f"{100 * last['eval/accuracy']:.1f}"
    assert cells["train data %"] == f"{100 * last['data/train_fraction']:.1f}"
    assert cells["direct %"] == f"{100 * last['data/n_direct'] / last['data/n_questions']:.1f}"
    assert cells["rationalized %"] == f"{100 * last['data/n_rationalized'] / last['data/n_questions']:.1f}"
    assert (cells["iterations"], cells["status"], cells["seeds"]) == ("2/2", "done", "3")
    assert cells["paper (GPT-J)"] == "89.5"
    assert "**last** finished iteration" in md  # the header says which iteration the table uses
    # The run's own iteration table: one row per metrics file, the same numbers.
    rows = run_section_rows(md, run)
    assert [r[0] for r in rows] == ["0", "1", "2"]
    for r, m in zip(rows, metrics_of(run)):
        assert r[4] == f"{100 * m['eval/accuracy']:.1f}"
        assert r[5] == f"{100 * m['eval/accuracy/1']:.1f}" and r[6] == f"{100 * m['eval/accuracy/2']:.1f}"


def test_running_run_shows_finished_iterations_only(tmp_path):
    run = make_run(tmp_path, "run", n_iterations=3, accs=(0.1, 0.4), partial_next=True)
    done = make_run(tmp_path, "done", seed=1, n_iterations=3, accs=(0.1, 0.2, 0.3, 0.35))
    md, summary, runs = report([run, done], tmp_path / "out")
    by_path = {r["path"]: r for r in runs}
    r = by_path[str(run.resolve())]
    assert (r["status"], r["last_iteration"], r["n_iterations"]) == ("running", "1", "3")
    assert float(r["dev_acc"]) == 100 * metrics_of(run)[-1]["eval/accuracy"] == 40.0
    assert by_path[str(done.resolve())]["status"] == "done"
    (cells,) = summary_rows(md)  # same config but the seed: one group, running while any run is
    assert (cells["status"], cells["iterations"], cells["n"]) == ("running", "1-3/3", "2")
    assert [row[0] for row in run_section_rows(md, run)] == ["0", "1"]
    assert "seed 0 (running)" in md and "seed 1 (done)" in md


def test_run_stopped_on_a_plateau_is_done(tmp_path):
    run = make_run(tmp_path, "run", n_iterations=5, accs=(0.5, 0.5, 0.5), extra_cfg={"plateau_patience": 2})
    _, _, (row,) = report([run], tmp_path / "out")
    assert row["status"] == "done"
    from star.loop import plateaued  # the report uses the loop's own stopping rule

    assert plateaued([0.5, 0.5, 0.5], 2) and not plateaued([0.1, 0.2, 0.3], 2) and not plateaued([0.5], None)


def test_grouping_over_seeds_mean_and_std(tmp_path):
    sweep = tmp_path / "sweep"
    lasts = {0: 0.2, 1: 0.35, 2: 0.65}
    runs = [make_run(sweep, f"s{seed}", seed=seed, accs=(0.0, last / 2, last)) for seed, last in lasts.items()]
    hot = make_run(sweep, "hot", seed=0, temperature=0.7, accs=(0.0, 0.1, 0.15))
    make_run(sweep, "off", seed=0, rationalization=False, accs=(0.0, 0.05, 0.1))
    md, summary, run_rows = report([sweep], tmp_path / "out")
    assert len(summary) == 3 and len(run_rows) == 5
    group = next(s for s in summary if s["method"] == "STaR with rationalization" and s["settings"] == "sampling.temperature=0.0")
    accs = [100 * metrics_of(r)[-1]["eval/accuracy"] for r in runs]
    train = [100 * metrics_of(r)[-1]["data/train_fraction"] for r in runs]
    assert group["n"] == "3" and group["seeds"] == "0,1,2"
    assert float(group["dev_acc_mean"]) == pytest.approx(statistics.mean(accs))
    assert float(group["dev_acc_std"]) == pytest.approx(statistics.stdev(accs))
    assert float(group["train_pct_mean"]) == pytest.approx(statistics.mean(train))
    assert float(group["train_pct_std"]) == pytest.approx(statistics.stdev(train))
    hot_row = next(s for s in summary if s["settings"] == "sampling.temperature=0.7")
    assert hot_row["n"] == "1" and float(hot_row["dev_acc_mean"]) == 100 * metrics_of(hot)[-1]["eval/accuracy"]
    off_row = next(s for s in summary if s["method"] == "STaR without rationalization")
    assert off_row["settings"] == ""  # alone in its (task, method, model) cell
    assert float(off_row["rationalized_pct_mean"]) == 0.0
    cells = next(c for c in summary_rows(md) if c["settings"] == "sampling.temperature=0.0")
    assert cells["dev acc %"] == f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f}"
    # Paper order: without rationalization before with.
    assert [c["method"] for c in summary_rows(md)][0] == "STaR without rationalization"


def test_logging_keys_do_not_split_groups(tmp_path):
    a = make_run(tmp_path, "a", seed=0, extra_cfg={"logger.wandb": True, "generator.progress": True})
    b = make_run(tmp_path, "b", seed=1, extra_cfg={"logger.wandb": False, "generator.progress": False})
    _, summary, _ = report([a, b], tmp_path / "out")
    assert len(summary) == 1 and summary[0]["n"] == "2"


def test_an_override_that_changes_no_result_neither_splits_a_group_nor_breaks_pairing(tmp_path):
    # Seed 1 of the arm ran with the memory pre-flight off (and the progress bar overridden): still one
    # group of two seeds, one setting (ablation=b) apart from the baseline, paired on both seeds.
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(sweep, f"base{seed}", seed=seed, test_accs=(0.0, 0.0, 0.5), overrides=["ablation=a"])
    make_run(sweep, "arm0", seed=0, temperature=0.7, test_accs=(0.0, 0.0, 0.6), overrides=["ablation=b"])
    make_run(sweep, "arm1", seed=1, temperature=0.7, test_accs=(0.0, 0.0, 0.7),
             extra_cfg={"trainer.memory_check": False},
             overrides=["ablation=b", "trainer.memory_check=false", "generator.progress=false"])
    written = R.write_report([sweep], tmp_path / "out", plots=False, baseline="ablation=a")
    assert sorted(row["n"] for row in read_csv(written["report.csv"])) == ["2", "2"]
    (row,) = read_csv(written["ablations.csv"])
    assert (row["setting"], row["seeds"]) == ("ablation=b", "0,1")
    assert float(row["test_diff_mean"]) == pytest.approx(15.0)


@pytest.mark.parametrize("task,method,rationalization,paper_acc,paper_train", [
    ("cqa", "star", True, 72.5, "86.7"),
    ("cqa", "star", False, 68.8, "69.7"),
    ("cqa", "fewshot_cot", False, 36.6, "~0"),
    ("cqa", "fewshot_direct", False, 20.9, "~0"),
    ("cqa", "direct_finetune", False, 60.0, "100.0"),
    ("gsm8k", "star", True, 10.7, "28.7"),
    ("gsm8k", "star", False, 10.1, "25.0"),
    ("gsm8k", "fewshot_direct", False, 3.0, "~0"),
    ("arithmetic", "direct_finetune", False, 76.3, ""),
    ("arithmetic", "star", False, None, ""),
])
def test_paper_numbers_beside_each_row(tmp_path, task, method, rationalization, paper_acc, paper_train):
    fewshot = method.startswith("fewshot")
    run = make_run(tmp_path, "run", task=task, method=method, rationalization=rationalization,
                   n_iterations=0 if fewshot else 2, accs=(0.3,) if fewshot else (0.1, 0.2, 0.3))
    md, (s,), _ = report([run], tmp_path / "out")
    assert s["paper_dev_acc"] == ("" if paper_acc is None else str(paper_acc))
    assert s["paper_train_pct"] == paper_train
    if fewshot:
        assert s["train_pct_mean"] == "~0" and summary_rows(md)[0]["train data %"] == "~0"
    (cells,) = summary_rows(md)
    assert cells["paper (GPT-J)"].startswith("-" if paper_acc is None else f"{paper_acc:.1f}")


# ------------------------------------------------------------------ fast: plots and the command


def assert_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1024, path


def test_plots_written_and_per_class_only_for_several_classes(tmp_path):
    make_run(tmp_path / "arith", "a0", seed=0)
    make_run(tmp_path / "arith", "a1", seed=1, n_iterations=3, partial_next=True)
    make_run(tmp_path / "arith", "fs", method="fewshot_cot", n_iterations=0, accs=(0.2,))
    written = R.write_report([tmp_path / "arith"])
    out = tmp_path / "arith" / "report"  # the default: report/ inside the first path
    assert set(written) == {"accuracy.png", "train_data.png", "per_class.png", "report.md", "report.csv", "runs.csv"}
    for name in ("accuracy.png", "train_data.png", "per_class.png"):
        assert_png(out / name)
    assert "[per_class.png](per_class.png)" in (out / "report.md").read_text()
    # Reporting again does not pick up the report folder as a run.
    R.write_report([tmp_path / "arith"])
    assert len(read_csv(out / "runs.csv")) == 3
    make_run(tmp_path / "cqa", "c0", task="cqa", accs=(0.2, 0.3, 0.4))
    written = R.write_report([tmp_path / "cqa"], tmp_path / "cqa_out")
    assert "per_class.png" not in written and not (tmp_path / "cqa_out" / "per_class.png").exists()
    assert_png(tmp_path / "cqa_out" / "train_data.png")


def test_many_runs_plot_one_panel_per_group(tmp_path):
    for seed in range(7):
        make_run(tmp_path, f"on{seed}", seed=seed)
        make_run(tmp_path, f"off{seed}", seed=seed, rationalization=False)
    groups = R.group_runs([R.read_run(p) for p in R.find_runs([tmp_path])])
    panels = R._panels(groups)
    assert [p.title for p in panels] == ["STaR without rationalization (mean of 7)",
                                         "STaR with rationalization (mean of 7)"]
    assert panels[1].mean(2, "eval/accuracy") == pytest.approx(0.5)
    R.write_report([tmp_path], tmp_path / "out")
    for name in ("accuracy.png", "train_data.png", "per_class.png"):
        assert_png(tmp_path / "out" / name)


STEP_COLUMNS = ["iteration", "step", "global_step", "train/loss", "train/lr", "train/grad_norm",
                "train/tokens_per_s", "time/elapsed_s", "fit/dev_accuracy"]


def write_train_steps(run: Path, text: str) -> None:
    """<run>/train_steps.csv as the step logger writes it: the header, then `text` (CSV rows)."""
    (run / "train_steps.csv").write_text(",".join(STEP_COLUMNS) + "\n" + text)


# Iteration 1: 3 steps, the generation callback at step 2; iteration 2: 2 steps, one with empty cells.
STEPS_CSV = """1,1,1,2.5,1e-05,0.9,1000.0,0.5,
1,2,2,2.0,1e-05,0.8,1100.0,1.0,0.25
1,3,3,1.5,1e-05,0.7,1200.0,1.5,
2,1,4,1.75,,,,2.0,
2,2,5,1.25,5e-06,0.6,1250.0,2.5,
"""


def test_read_train_steps_parses_numbers_and_empty_cells(tmp_path):
    run = make_run(tmp_path, "run")
    assert R.read_train_steps(run) == []  # no train_steps.csv: an older run
    write_train_steps(run, STEPS_CSV)
    rows = R.read_train_steps(run)
    assert [(r["iteration"], r["step"], r["global_step"]) for r in rows] == [(1, 1, 1), (1, 2, 2), (1, 3, 3),
                                                                            (2, 1, 4), (2, 2, 5)]
    assert rows[1] == {"iteration": 1, "step": 2, "global_step": 2, "train/loss": 2.0, "train/lr": 1e-05,
                       "train/grad_norm": 0.8, "train/tokens_per_s": 1100.0, "time/elapsed_s": 1.0,
                       "fit/dev_accuracy": 0.25}
    assert rows[3]["train/lr"] is None and rows[3]["train/grad_norm"] is None and rows[3]["train/loss"] == 1.75
    assert [r["fit/dev_accuracy"] for r in rows] == [None, 0.25, None, None, None]
    assert R.loss_curves(rows) == {
        1: {"step": [1, 2, 3], "loss": [2.5, 2.0, 1.5], "dev_step": [2], "dev_accuracy": [25.0]},
        2: {"step": [4, 5], "loss": [1.75, 1.25], "dev_step": [], "dev_accuracy": []},
    }
    # A line cut by a kill, a short row and a step written again (a redone fit): skipped, padded, last kept.
    write_train_steps(run, STEPS_CSV + "2,2,5,1.0\n2,3,")
    rows = R.read_train_steps(run)
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["train/loss"] == 1.0 and rows[-1]["fit/dev_accuracy"] is None
    # Only a header (a fit killed before its first step): no rows.
    write_train_steps(run, "")
    assert R.read_train_steps(run) == []


def test_loss_plot_only_for_runs_with_train_steps(tmp_path):
    with_steps = make_run(tmp_path / "sweep", "a0", seed=0)
    write_train_steps(with_steps, STEPS_CSV)
    make_run(tmp_path / "sweep", "a1", seed=1)  # no train_steps.csv: reported, no loss panel
    written = R.write_report([tmp_path / "sweep"], tmp_path / "out")
    assert "loss.png" in written
    assert_png(tmp_path / "out" / "loss.png")
    groups = R.group_runs([R.read_run(p) for p in R.find_runs([tmp_path / "sweep"])])
    panels = R._panels(groups, lambda r: bool(r.train_steps), merged="overlaid")
    assert [p.runs[0].path for p in panels] == [with_steps]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "[loss.png](loss.png)" in md
    assert len(read_csv(tmp_path / "out" / "runs.csv")) == 2

    # No run with per-step rows: no loss.png (an older one in the same folder is removed), not listed.
    (with_steps / "train_steps.csv").unlink()
    written = R.write_report([tmp_path / "sweep"], tmp_path / "out")
    assert "loss.png" not in written and not (tmp_path / "out" / "loss.png").exists()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "loss.png" not in md and "[accuracy.png](accuracy.png)" in md
    assert len(summary_rows(md)) == 1 and len(read_csv(tmp_path / "out" / "runs.csv")) == 2


def test_loss_plot_above_max_panels_overlays_each_group(tmp_path):
    for seed in range(R.MAX_PANELS + 1):
        write_train_steps(make_run(tmp_path, f"on{seed}", seed=seed), STEPS_CSV)
    groups = R.group_runs([R.read_run(p) for p in R.find_runs([tmp_path])])
    panels = R._panels(groups, lambda r: bool(r.train_steps), merged="overlaid")
    assert [(p.title, len(p.runs)) for p in panels] == [("STaR with rationalization (overlaid 13)", 13)]
    assert R.plot_loss(groups, tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png")


def test_main_prints_the_summary(tmp_path, capsys):
    run = make_run(tmp_path, "run")
    R.main([str(run), "--out", str(tmp_path / "out"), "--no-plots"])
    out = capsys.readouterr().out
    assert "| task | method |" in out and "STaR with rationalization" in out and str(tmp_path / "out") in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.md", "runs.csv"]


# ------------------------------------------------------------------ slow: real runs through the real CLI

FAST = ["model=tiny", "debug=fast", "n_iterations=1", "logger=none"]


def star_ok(args):
    proc = run_star(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-point sweep (rationalization on/off, seed 0) and a separate run (on, seed 1)."""
    root = tmp_path_factory.mktemp("report_runs")
    sweep, run = root / "sweep", root / "run_seed1"
    star_ok(["-m", "rationalization=on,off", *FAST, f"hydra.sweep.dir={sweep}"])
    star_ok([*FAST, "seed=1", f"hydra.run.dir={run}"])
    return sweep, run


@pytest.mark.slow
def test_report_on_real_runs(real_runs, tmp_path):
    sweep, single = real_runs
    proc = subprocess.run(["star-report", str(sweep), str(single), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 3
    for row in runs:
        last = metrics_of(Path(row["path"]))[-1]
        assert last["iteration"] == 1 and row["last_iteration"] == "1" and row["status"] == "done"
        assert float(row["dev_acc"]) == 100 * last["eval/accuracy"]
        assert float(row["train_pct"]) == 100 * last["data/train_fraction"]
        assert float(row["direct_pct"]) == pytest.approx(100 * last["data/n_direct"] / last["data/n_questions"])
        assert float(row["rationalized_pct"]) == pytest.approx(
            100 * last["data/n_rationalized"] / last["data/n_questions"])
        cfg = yaml.safe_load((Path(row["path"]) / ".hydra" / "config.yaml").read_text())
        assert row["seed"] == str(cfg["seed"]) and row["task"] == cfg["task"]["name"] == "arithmetic"
    summary = {s["method"]: s for s in read_csv(out / "report.csv")}
    assert set(summary) == {"STaR with rationalization", "STaR without rationalization"}
    on, off = summary["STaR with rationalization"], summary["STaR without rationalization"]
    assert (on["n"], on["seeds"], off["n"], off["seeds"]) == ("2", "0,1", "1", "0")
    on_accs = [float(r["dev_acc"]) for r in runs if r["method"] == on["method"]]
    assert float(on["dev_acc_mean"]) == pytest.approx(statistics.mean(on_accs))
    assert float(on["dev_acc_std"]) == pytest.approx(statistics.stdev(on_accs))
    assert float(off["rationalized_pct_mean"]) == 0.0  # rationalization off keeps no rationalized example
    assert float(on["rationalized_pct_mean"]) > 0.0    # debug=fast: gold rationales for every failure
    md = (out / "report.md").read_text()
    assert [c["iterations"] for c in summary_rows(md)] == ["1/1", "1/1"]
    for row in runs:
        assert [r[0] for r in run_section_rows(md, Path(row["path"]))] == ["0", "1"]
    for name in ("accuracy.png", "train_data.png", "per_class.png"):
        assert_png(out / name)
    assert "| task | method |" in proc.stdout


@pytest.mark.slow
def test_report_default_out_is_inside_the_sweep(real_runs):
    sweep, _ = real_runs
    for _ in range(2):  # the second time, sweep/report/ exists and must not count as a run
        proc = subprocess.run(["star-report", str(sweep)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(read_csv(sweep / "report" / "runs.csv")) == 2


# ------------------------------------------------------------------ fast: test headline, intervals, ablations


def test_test_accuracy_is_the_headline_with_a_95_percent_interval(tmp_path):
    tests = {0: 0.50, 1: 0.40, 2: 0.60}
    for seed, t in tests.items():
        make_run(tmp_path / "sweep", f"s{seed}", seed=seed, accs=(0.1, 0.3, 0.7), test_accs=(0.1, 0.2, t))
    md, (row,), runs = report([tmp_path / "sweep"], tmp_path / "out")
    values = [100 * t for t in tests.values()]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = 4.303 * std / math.sqrt(3)  # t(0.975, 2)
    assert float(row["test_acc_mean"]) == pytest.approx(mean) and float(row["test_acc_std"]) == pytest.approx(std)
    assert float(row["test_acc_ci_low"]) == pytest.approx(mean - half)
    assert float(row["test_acc_ci_high"]) == pytest.approx(mean + half)
    assert float(row["dev_acc_mean"]) == pytest.approx(70.0) and float(row["dev_acc_ci_low"]) == 70.0  # std 0
    assert (row["n_dev_questions"], row["n_test_questions"]) == ("50", "60")
    (cells,) = summary_rows(md)
    assert cells["test acc %"] == f"{mean:.1f} ± {std:.1f}"
    assert cells["test 95% CI"] == f"[{mean - half:.1f}, {mean + half:.1f}]"
    assert cells["questions dev / test"] == "50 / 60"
    assert sorted(float(r["test_acc"]) for r in runs) == sorted(values)
    assert "t interval over seeds" in md
    gains = [100 * (t - 0.1) for t in tests.values()]  # iteration 0 scored 10% on test, 10% on dev
    assert float(row["test_gain_mean"]) == pytest.approx(statistics.fmean(gains))
    assert float(row["test_gain_std"]) == pytest.approx(statistics.stdev(gains))
    assert float(row["dev_gain_mean"]) == pytest.approx(60.0) and float(row["dev_gain_min"]) == pytest.approx(60.0)
    assert cells["test gain"] == f"{statistics.fmean(gains):+.1f} ± {statistics.stdev(gains):.1f}"
    assert cells["dev gain (min)"] == "+60.0 (+60.0)"
    assert sorted(float(r["test_gain"]) for r in runs) == pytest.approx(sorted(gains))


def test_dev_gain_min_is_the_worst_seed(tmp_path):
    for seed, last in enumerate((0.7, 0.5, 0.9)):
        make_run(tmp_path / "sweep", f"s{seed}", seed=seed, accs=(0.1, 0.3, last))
    make_run(tmp_path / "sweep2", "one", accs=(0.2,), n_iterations=0)
    md, rows, _ = report([tmp_path / "sweep", tmp_path / "sweep2"], tmp_path / "out")
    by_n = {r["n"]: r for r in rows}
    assert float(by_n["3"]["dev_gain_mean"]) == pytest.approx(60.0)
    assert float(by_n["3"]["dev_gain_min"]) == pytest.approx(40.0)
    assert by_n["1"]["dev_gain_mean"] == "" and by_n["1"]["test_gain_mean"] == ""  # one iteration: no gain


def test_no_test_split_shows_a_dash_not_dev(tmp_path):
    make_run(tmp_path / "sweep", "s0", accs=(0.1, 0.3, 0.5))
    md, (row,), _ = report([tmp_path / "sweep"], tmp_path / "out")
    (cells,) = summary_rows(md)
    assert cells["test acc %"] == "-" and cells["dev acc %"] == "50.0" and row["test_acc_mean"] == ""


def test_paired_differences_against_the_baseline(tmp_path):
    sweep = tmp_path / "sweep"
    base = {0: 0.50, 1: 0.40, 2: 0.60}
    off = {0: 0.45, 1: 0.30, 2: 0.50}      # 5, 10, 10 points below, per seed
    for seed in base:
        make_run(sweep, f"base{seed}", seed=seed, test_accs=(0.0, 0.0, base[seed]), overrides=["ablation=default"])
        make_run(sweep, f"off{seed}", seed=seed, rationalization=False, test_accs=(0.0, 0.0, off[seed]),
                 overrides=["ablation=rationalization_off"])
    make_run(sweep, "hot", seed=0, temperature=0.7, test_accs=(0.0, 0.0, 0.9), overrides=["ablation=temperature"])
    make_run(sweep, "two", seed=0, temperature=0.7, rationalization=False, test_accs=(0.0, 0.0, 0.9),
             overrides=["ablation=temperature", "trainer.lr=1"])  # two overrides away: no row
    written = R.write_report([sweep], tmp_path / "out", plots=False, baseline="ablation=default")
    rows = {r["setting"]: r for r in read_csv(written["ablations.csv"])}
    assert set(rows) == {"ablation=rationalization_off", "ablation=temperature"}
    diffs = [-5.0, -10.0, -10.0]
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    off_row = rows["ablation=rationalization_off"]
    assert off_row["seeds"] == "0,1,2"
    assert float(off_row["test_diff_mean"]) == pytest.approx(mean)
    assert float(off_row["test_diff_high"]) == pytest.approx(mean + 4.303 * std / math.sqrt(3))
    hot = rows["ablation=temperature"]
    assert hot["seeds"] == "0" and float(hot["test_diff_mean"]) == pytest.approx(40.0) and hot["test_diff_low"] == ""
    md = written["report.md"].read_text()
    assert "## Ablations: paired differences against the baseline" in md and "ablation=rationalization_off" in md
    assert f"| {mean:+.1f} ± {std:.1f} |" in md  # signed: "-8.3 ± 2.9", a difference reads as one
    assert "Plots:" not in md  # plots=False: no plot line, and a CSV is never listed as one


def test_a_baseline_that_matches_no_single_group_is_an_error(tmp_path):
    make_run(tmp_path / "sweep", "a", overrides=["ablation=default"])
    with pytest.raises(R.ReportError, match="ablation=default"):
        R.write_report([tmp_path / "sweep"], tmp_path / "out", plots=False, baseline="ablation=nosuch")


@pytest.mark.parametrize("values,mean,std,half", [
    ([1.0, 2.0, 3.0], 2.0, 1.0, 4.303 / math.sqrt(3)),
    ([10.0, 10.0], 10.0, 0.0, 0.0),
    ([4.0] * 40, 4.0, 0.0, 0.0),
])
def test_over_seeds(values, mean, std, half):
    spread = over_seeds(values)
    assert (spread.mean, spread.std, spread.n) == (pytest.approx(mean), pytest.approx(std), len(values))
    assert spread.high - spread.mean == pytest.approx(half)


def test_over_seeds_edge_cases():
    assert over_seeds([]) is None and over_seeds([None]) is None
    one = over_seeds([3.0, None])
    assert (one.mean, one.std, one.low, one.n) == (3.0, None, None, 1)
    assert paired({0: 5.0, 1: 7.0, 2: 1.0}, {0: 4.0, 1: 4.0}).mean == pytest.approx(2.0)  # seeds 0, 1 only
    assert paired({0: 1.0}, {1: 1.0}) is None
    assert t_975(2) == 4.303 and t_975(1000) == pytest.approx(1.96, abs=0.01)


def test_a_baseline_of_two_overrides_for_a_two_axis_sweep(tmp_path, capsys):
    """sweeps/samples_ablation.yaml crosses ablation with rationalization: the baseline is the group started
    with both overrides, and each group one override away from it gets a row."""
    sweep = tmp_path / "sweep"
    arms = {("default", "on"): 0.5, ("default", "off"): 0.2, ("samples_2", "on"): 0.6, ("samples_2", "off"): 0.3}
    for (ablation, rat), acc in arms.items():
        for seed in (0, 1):
            make_run(sweep, f"{ablation}-{rat}-{seed}", seed=seed, rationalization=rat == "on",
                     temperature=0.0 if ablation == "default" else 0.7, test_accs=(0.0, 0.0, acc + seed / 100),
                     overrides=[f"ablation={ablation}", f"rationalization={rat}"])
    with pytest.raises(R.ReportError, match="--baseline ablation=default matches 2 groups, not one"):
        R.write_report([sweep], tmp_path / "one", plots=False, baseline="ablation=default")
    R.main([str(sweep), "--out", str(tmp_path / "out"), "--no-plots",
            "--baseline", "ablation=default", "--baseline", "rationalization=on"])
    rows = {r["setting"]: r for r in read_csv(tmp_path / "out" / "ablations.csv")}
    assert set(rows) == {"ablation=samples_2", "rationalization=off"}  # samples_2 without rationalization: 2 away
    assert float(rows["ablation=samples_2"]["test_diff_mean"]) == pytest.approx(10.0)
    assert float(rows["rationalization=off"]["test_diff_mean"]) == pytest.approx(-30.0)
