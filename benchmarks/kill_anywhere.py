"""Kill anywhere: SIGKILL the real `star` CLI from outside at random moments, resume, and compare.

What
    A preempted or OOM-killed job dies at a moment nobody chose: inside a checkpoint save, a W&B
    write, the tokenizer, a half-flushed JSONL line. This script starts `star` as a user would, kills
    its whole process group (as SLURM kills a job) with SIGKILL at seeded random times, reruns the same
    command to resume after every kill, and once the run has finished checks it against an
    uninterrupted run of the same command:
      - every artifact byte-identical: generations, rationalizations, train.jsonl, eval.json, each
        checkpoint file (weights, config, tokenizer), checkpoint_retention.jsonl, the Hydra config,
        run_info.json; metrics.json, the stage markers and metrics.csv equal without their timings
        (`time/*`, `perf/*`, `seconds`, `*_per_s`), and so does train_steps.csv (one row per global step);
      - the same file names outside `wandb/`: a temp or partial file of any name left anywhere in the
        run directory is reported (as is a file lost);
      - `metrics.csv` has one row per iteration;
      - W&B: one run id; every offline part readable by `star.tracking.read_wandb_offline` (a part a
        kill cut short is read up to its last whole record); every iteration in the history, with the
        dev accuracy of its metrics.json.
    No process of a killed attempt may outlive the kill.

When
    Each attempt is killed at a time drawn by the seeded generator. Most kills ("uniform") fall at a
    uniformly random time in [0, T) after the attempt starts, T being the uninterrupted run's wall
    time, so they land anywhere in a run, startup included; an attempt that finishes first is not a
    kill. So that short windows are hit too, some kills wait for an event and then fall uniformly
    inside that event's window as the reference run measured it: "checkpoint" (a checkpoint's temp
    directory appears: the save is under way) and "wandb" (a new W&B offline part appears: the log
    stage is writing to W&B). After each kill the script records which stage was running (from the
    stage markers, the run lock and the temp files left) and resumes. A run that finishes starts a
    new round in a fresh run directory, until the requested number of kills is reached.

Run
    python benchmarks/kill_anywhere.py                     # >= 30 kills over small SmolLM2 runs (~30 min
                                                           # on 2 cores); writes benchmarks/kill_anywhere.md
    python benchmarks/kill_anywhere.py --model tiny --kills 5 --out /tmp/k.md   # seconds per round
    tests/test_kill_anywhere.py runs the tiny version in CI. Exit code 1 when anything differs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository's star, not another install
    sys.path.insert(0, str(REPO))

from star import artifacts as A
from star.run_info import commit_label
from star.tracking import read_wandb_offline, read_wandb_run_ids

# The commands measured. SmolLM2: the default experiment (a bare `star`) made small enough for many
# rounds: 2 iterations over 32 training questions, 8 steps each, 12 dev and 12 test questions.
RUNS = {
    "smollm2": ["task.train_size=32", "task.dev_size=12", "task.test_size=12", "schedule.base_steps=8",
                "generator.progress=false"],
    "tiny": ["~experiment", "model=tiny", "debug=fast", "n_iterations=2"],
}
# The same with four samples per question at temperature 0.7 (issue 16: sampling.num_samples).
SAMPLES = ["sampling=temperature", "sampling.num_samples=4"]
RUNS.update({f"{name}_samples": [*args, *SAMPLES] for name, args in list(RUNS.items())})
KINDS = {"uniform": 0.6, "checkpoint": 0.2, "wandb": 0.2}
POLL_S = 0.02
SURVIVOR_GRACE_S = 5.0  # how long a killed group may take to go before its members count as survivors
TIMING_KEYS = ("seconds",)
TIMING_PREFIXES = ("time/", "perf/")


def is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith("_per_s") or key.startswith(TIMING_PREFIXES)


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not is_timing(k)}
    return obj


# ----------------------------------------------------------------------------- watching a run directory

def n_iterations(run_dir: Path) -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.load(A.hydra_config(run_dir)).n_iterations)


def stage_order(n: int) -> list[tuple[int, str]]:
    """Every stage of a run of n iterations, in the order the loop runs them."""
    order = [(0, "eval"), (0, "log")]
    for it in range(1, n + 1):
        order += [(it, s) for s in ("generate", "rationalize", "train", "eval", "log")]
    return order


def first_unfinished(run_dir: Path, n: int) -> tuple[int, str] | None:
    return next(((it, s) for it, s in stage_order(n) if not A.is_done(run_dir, it, s)), None)


def temp_entries(run_dir: Path) -> list[Path]:
    """Temp files and directories anywhere outside wandb/: the project's `.NAME.XXXX.tmp` (atomic writes)
    and a checkpoint save's `checkpoint.tmp` / `checkpoint.old` (star/models.py: save_checkpoint)."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        if Path(root) == run_dir and "wandb" in dirs:
            dirs.remove("wandb")
        found += [Path(root) / n for n in dirs + files if n.endswith((".tmp", ".old"))]
    return sorted(found)


def temp_label(path: Path) -> str:
    """What a temp entry (relative to the run) is part of: iter_01/.train.jsonl.x1y2.tmp -> iter_01/train.jsonl."""
    name = path.name
    if name.startswith("."):
        name = name[1:].rsplit(".", 2)[0]
    elif name.endswith(".tmp"):
        name = name[: -len(".tmp")]
    else:
        name = name[: -len(".old")] + " (the one it replaces)"
    return str(path.parent / name)


def checkpoint_temp(run_dir: Path) -> bool:
    return any(p.name.lstrip(".").startswith("checkpoint.") for p in temp_entries(run_dir))


def wandb_parts(run_dir: Path) -> set[str]:
    w = run_dir / "wandb"
    return {p.name for p in w.glob("offline-run-*")} if w.exists() else set()


def lock_pid(run_dir: Path) -> int | None:
    try:
        words = (run_dir / A.LOCK_FILE).read_text().split()
        return int(words[1]) if len(words) > 1 and words[0] == "pid" else None
    except (OSError, ValueError):
        return None


def python_stack(pid: int) -> list[tuple[str, str]]:
    """The main thread's Python frames of a live process, innermost first, as (function, file:line),
    read with py-spy (optional: without it, [] and the stage comes from the run directory alone)."""
    spy = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not spy:
        return []
    proc = subprocess.run([spy, "dump", "--pid", str(pid)], check=False, capture_output=True, text=True)
    frames, in_main = [], False
    for line in proc.stdout.splitlines():
        if line.startswith("Thread "):
            in_main = line.split()[1] == str(pid)
        elif in_main and (m := re.match(r"^\s+(.+) \((.+)\)$", line)) and not m.group(2).startswith("<frozen"):
            frames.append((m.group(1), m.group(2)))
    return frames


def where_in_code(frames: list[tuple[str, str]]) -> str:
    """'star function (file:line)', plus the innermost library frame when that is not star's."""
    if not frames:
        return ""
    ours = next(((f, loc) for f, loc in frames if loc.startswith("star/")), None)
    text = f"{ours[0]} ({ours[1]})" if ours else ""
    if frames[0] != ours:
        text += f" > {frames[0][0]} ({frames[0][1]})"
    return text


def describe(run_dir: Path, pid: int, parts_before: set[str], frames: list[tuple[str, str]],
             stale: set[Path] = frozenset()) -> str:
    """Which stage the process with `pid` was in when it was killed: from what it left on disk, and
    the code it was running (its Python stack just before the kill) where py-spy is installed."""
    code = where_in_code(frames)
    code = f" [{code}]" if code else ""
    if lock_pid(run_dir) != pid:
        return "startup, before the run lock" + code
    if not A.hydra_config(run_dir).exists():
        return "startup"
    n = n_iterations(run_dir)
    where = first_unfinished(run_dir, n)
    if where is None:
        return "every stage done (a finished run restarting or closing)" + code
    it, stage = where
    text = f"iter {it} {stage}"
    writing = sorted({temp_label(p.relative_to(run_dir)) for p in temp_entries(run_dir) if p not in stale})
    if writing:
        text += ": writing " + ", ".join(writing)
    elif stage == "log" and wandb_parts(run_dir) - parts_before:
        text += ": W&B logging"
    return text + code


# ----------------------------------------------------------------------------- running star

def star_command(run_dir: Path, args: list[str]) -> list[str]:
    # The console script of this interpreter's environment (not whichever `star` PATH finds first).
    return [str(Path(sys.executable).parent / "star"), *args, f"hydra.run.dir={run_dir}"]


def start(run_dir: Path, args: list[str], log) -> subprocess.Popen:
    # PYTHONPATH: the star of this checkout, whatever the venv's editable install points at.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # A session of its own: the kill takes the whole group (wandb-core, workers), as SLURM would.
    return subprocess.Popen(star_command(run_dir, args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that still run. A zombie is dead: it only waits for its parent (PID 1
    once star is killed, which may reap late), so kill(pid, 0) would count it but this does not."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone while we read it
        if int(pgrp) == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return sorted(members)


@dataclass
class Reference:
    seconds: float
    windows: dict[str, float]  # kind -> the longest such window seen (s)


def run_reference(run_dir: Path, args: list[str], log_path: Path) -> Reference:
    """The uninterrupted run; measures its wall time and how long checkpoint saves and W&B parts take."""
    opened: dict[str, float] = {}
    windows = {"checkpoint": 0.0, "wandb": 0.0}
    parts: set[str] = set()
    with log_path.open("w") as log:
        t0 = time.monotonic()
        proc = start(run_dir, args, log)
        while proc.poll() is None:
            now = time.monotonic()
            if checkpoint_temp(run_dir):
                opened.setdefault("checkpoint", now)
            elif "checkpoint" in opened:
                windows["checkpoint"] = max(windows["checkpoint"], now - opened.pop("checkpoint"))
            new = wandb_parts(run_dir) - parts
            if new:
                parts |= new
                opened["wandb"] = now
            if "wandb" in opened and A.hydra_config(run_dir).exists():
                where = first_unfinished(run_dir, n_iterations(run_dir))
                if where is None or where[1] != "log":
                    windows["wandb"] = max(windows["wandb"], now - opened.pop("wandb"))
            time.sleep(POLL_S)
        seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed ({proc.returncode}); see {log_path}")
    return Reference(seconds, {k: max(v, POLL_S) for k, v in windows.items()})


@dataclass
class Kill:
    round: int
    attempt: int
    kind: str
    at_s: float  # seconds after the attempt started
    stage: str
    survivors: list[int] = field(default_factory=list)


def attempt(run_dir: Path, args: list[str], log, kind: str, delay: float, pid_note: list) -> tuple[bool, float, str]:
    """One attempt: start star; for kind "uniform" kill it `delay` s after it starts, otherwise `delay` s
    after its event appears. Returns (killed, seconds after start, stage hit)."""
    parts_before = wandb_parts(run_dir)
    stale = set(temp_entries(run_dir)) if run_dir.exists() else set()  # left by an earlier kill
    ckpt_before = checkpoint_temp(run_dir)
    t0 = time.monotonic()
    proc = start(run_dir, args, log)
    pid_note.append(proc.pid)
    due = t0 + delay if kind == "uniform" else None
    while proc.poll() is None:
        now = time.monotonic()
        if due is None:
            fired = (checkpoint_temp(run_dir) and not ckpt_before) if kind == "checkpoint" \
                else bool(wandb_parts(run_dir) - parts_before)
            ckpt_before = ckpt_before and checkpoint_temp(run_dir)  # a stale temp from an earlier kill
            if fired:
                due = now + delay
        if due is not None and now >= due:
            frames = python_stack(proc.pid)  # ~20 ms before the kill: where the code was
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, now - t0, describe(run_dir, proc.pid, parts_before, frames, stale)
        time.sleep(POLL_S)
    if proc.returncode != 0:
        raise SystemExit(f"an attempt exited with {proc.returncode} without being killed; see {log.name}")
    return False, time.monotonic() - t0, "finished"


def possible_kinds(run_dir: Path) -> list[str]:
    """Event kinds whose event can still happen in this run (a save is left; a log stage is left)."""
    kinds = ["uniform"]
    if not A.hydra_config(run_dir).exists():
        return kinds + ["checkpoint", "wandb"]
    n = n_iterations(run_dir)
    todo = [(it, s) for it, s in stage_order(n) if not A.is_done(run_dir, it, s)]
    if any(s == "train" for _, s in todo):
        kinds.append("checkpoint")
    if any(s == "log" for _, s in todo):
        kinds.append("wandb")
    return kinds


# ----------------------------------------------------------------------------- comparing

def files_outside_wandb(run_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(run_dir)): p for p in run_dir.rglob("*")
            if p.is_file() and "wandb" not in p.relative_to(run_dir).parts[:1]}


BYTE_IDENTICAL = ("generations.jsonl", "rationalizations.jsonl", "train.jsonl", "eval.json")
WITHOUT_TIMINGS = ("metrics.json",)


def compare(reference: Path, run: Path) -> list[str]:
    """Every difference between a killed-and-resumed run and the uninterrupted one (empty: identical)."""
    problems: list[str] = []
    ref_files, run_files = files_outside_wandb(reference), files_outside_wandb(run)
    problems += [f"left behind: {name}" for name in sorted(set(run_files) - set(ref_files))]
    problems += [f"missing: {name}" for name in sorted(set(ref_files) - set(run_files))]
    for name in sorted(set(ref_files) & set(run_files)):
        a, b = ref_files[name].read_bytes(), run_files[name].read_bytes()
        base = Path(name).name
        if base in BYTE_IDENTICAL or "/checkpoint/" in f"/{name}" or name in (
                A.RETENTION_LOG, "run_info.json", ".hydra/config.yaml", ".hydra/overrides.yaml"):
            if a != b:
                problems.append(f"differs: {name}")
        elif base in WITHOUT_TIMINGS or base.endswith(".done"):
            try:
                if without_timings(json.loads(a)) != without_timings(json.loads(b)):
                    problems.append(f"differs (timings aside): {name}")
            except json.JSONDecodeError:
                problems.append(f"not whole JSON: {name}")
    problems += compare_metrics_csv(reference, run)
    problems += check_wandb(run)
    return problems


def csv_rows(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def compare_metrics_csv(reference: Path, run: Path) -> list[str]:
    """metrics.csv: one row per iteration; it and train_steps.csv (one row per global step, from the
    attempt that finished) equal the uninterrupted run's, timings aside."""
    problems = []
    iterations = [r["iteration"] for r in csv_rows(run / "metrics.csv")]
    if iterations != [str(i) for i in range(n_iterations(run) + 1)]:
        problems.append(f"metrics.csv rows by iteration: {iterations}")
    steps = [r["global_step"] for r in csv_rows(run / A.TRAIN_STEPS_CSV)]
    if len(steps) != len(set(steps)):
        problems.append(f"{A.TRAIN_STEPS_CSV}: a global step twice")
    for name in ("metrics.csv", A.TRAIN_STEPS_CSV):
        ref, got = csv_rows(reference / name), csv_rows(run / name)
        if [without_timings(r) for r in ref] != [without_timings(r) for r in got]:
            problems.append(f"{name} differs (timings aside)")
    return problems


def check_wandb(run: Path) -> list[str]:
    problems = []
    stored = (run / "wandb_run_id.txt").read_text().strip()
    ids = read_wandb_run_ids(run)
    if ids != {stored}:
        problems.append(f"W&B run ids {sorted(ids)}, expected only {stored}")
    try:
        history = read_wandb_offline(run)
    except RuntimeError as e:  # the project's reader failed on a part: that is the finding
        return problems + [f"W&B offline parts unreadable: {e}"]
    for it in range(n_iterations(run) + 1):
        logged = [r for r in history if int(r.get("iteration", -1)) == it]
        try:
            metrics = A.read_json(A.metrics_of(run, it))
        except (OSError, ValueError) as e:
            problems.append(f"iteration {it}: metrics.json unreadable ({e})")
            continue
        if not logged:
            problems.append(f"W&B history has no row for iteration {it}")
        elif logged[-1].get("eval/accuracy") != metrics["eval/accuracy"]:
            problems.append(f"W&B iteration {it}: eval/accuracy {logged[-1].get('eval/accuracy')} "
                            f"!= metrics.json {metrics['eval/accuracy']}")
    return problems


# ----------------------------------------------------------------------------- the benchmark

@dataclass
class Result:
    model: str
    seed: int
    reference: Reference
    kills: list[Kill]
    rounds: list[dict]  # {"round", "attempts", "seconds", "problems"}

    @property
    def problems(self) -> list[str]:
        return [f"round {r['round']}: {p}" for r in self.rounds for p in r["problems"]] + [
            f"round {k.round} attempt {k.attempt}: processes alive after the kill: {k.survivors}"
            for k in self.kills if k.survivors]


def survivors(pids: list[int], grace_s: float = SURVIVOR_GRACE_S) -> list[int]:
    """Processes of the killed groups still running `grace_s` after the SIGKILL. The grace is for a
    loaded machine: SIGKILL takes effect only when a process leaves the kernel (a long disk write)."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = [member for pgid in pids for member in live_members(pgid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_S)


def benchmark(model: str, kills: int, seed: int, workdir: Path, log=print) -> Result:
    args = RUNS[model]
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"reference: star {' '.join(args)}")
    reference = run_reference(workdir / "reference", args, workdir / "reference.log")
    log(f"reference: {reference.seconds:.1f} s; windows {reference.windows}")
    result = Result(model, seed, reference, [], [])
    round_no = 0
    while len(result.kills) < kills:
        round_no += 1
        run_dir = workdir / f"round_{round_no:02d}"
        t_round = time.monotonic()
        n_attempts = 0
        with (workdir / f"round_{round_no:02d}.log").open("w") as out:
            while True:
                n_attempts += 1
                kinds = possible_kinds(run_dir)
                weights = [KINDS[k] for k in kinds]
                kind = rng.choices(kinds, weights)[0] if len(result.kills) < kills else "none"
                if kind == "none":
                    delay = float("inf")
                elif kind == "uniform":
                    delay = rng.uniform(0, reference.seconds)
                else:
                    delay = rng.uniform(0, reference.windows[kind])
                pids: list[int] = []
                print(f"\n===== attempt {n_attempts}: {kind} {delay:.3f} s", file=out, flush=True)
                if kind == "none":
                    killed, at, stage = attempt(run_dir, args, out, "uniform", float("inf"), pids)
                else:
                    killed, at, stage = attempt(run_dir, args, out, kind, delay, pids)
                if not killed:
                    break
                kill = Kill(round_no, n_attempts, kind, at, stage, survivors(pids))
                result.kills.append(kill)
                log(f"kill {len(result.kills):2d}: round {round_no} attempt {n_attempts} {kind:10s} "
                    f"at {at:7.2f} s  {stage}")
        problems = compare(workdir / "reference", run_dir)
        result.rounds.append({"round": round_no, "attempts": n_attempts,
                              "seconds": time.monotonic() - t_round, "problems": problems})
        log(f"round {round_no}: {n_attempts} attempts, {len(problems)} differences" +
            "".join(f"\n  {p}" for p in problems))
    return result


def report(result: Result, command: str) -> str:
    by_stage: dict[str, int] = {}
    for k in result.kills:
        key = k.stage.split(" [")[0].split(":")[0]  # the stage, without the file being written or the code
        by_stage[key] = by_stage.get(key, 0) + 1
    lines = [
        "# Kill anywhere: random outside SIGKILLs of the real CLI, resumed, compared",
        "",
        f"Command: `{command}` (`benchmarks/kill_anywhere.py`; what it checks is in its docstring).",
        (f"Commit {commit_label()}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
         f"{platform.node()} ({os.cpu_count()} CPUs, {platform.platform()})."),
        (f"Run killed: `star {' '.join(RUNS[result.model])}`; uninterrupted it took "
         f"{result.reference.seconds:.1f} s. Longest checkpoint save {result.reference.windows['checkpoint']:.2f} s, "
         f"longest W&B log stage {result.reference.windows['wandb']:.2f} s (the windows the targeted kills draw from)."),
        "",
        (f"**{len(result.kills)} kills in {len(result.rounds)} rounds; "
         f"{len(result.problems)} differences, {sum(len(k.survivors) for k in result.kills)} surviving processes.**"),
        "",
        "| round | differences from the uninterrupted run |",
        "|---|---|",
    ]
    for r in result.rounds:
        lines.append(f"| {r['round']} ({r['attempts']} attempts, {r['seconds']:.0f} s) | "
                     f"{'; '.join(r['problems']) or 'none: byte-identical, no leftovers, one W&B run'} |")
    lines += ["", "Kills by stage hit: " + ", ".join(f"{s} {n}" for s, n in sorted(by_stage.items())) + ".", "",
              "| # | round | attempt | kind | time after start (s) | stage hit |", "|---|---|---|---|---|---|"]
    for i, k in enumerate(result.kills, 1):
        lines.append(f"| {i} | {k.round} | {k.attempt} | {k.kind} | {k.at_s:.2f} | {k.stage} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(RUNS), default="smollm2")
    parser.add_argument("--kills", type=int, default=30, help="at least this many kills (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "kill_anywhere")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "kill_anywhere.md")
    ns = parser.parse_args(argv)
    if ns.workdir.exists() and any(ns.workdir.iterdir()):
        parser.error(f"--workdir {ns.workdir} is not empty: remove it or give another")
    result = benchmark(ns.model, ns.kills, ns.seed, ns.workdir)
    command = "python benchmarks/kill_anywhere.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    ns.out.write_text(report(result, command))
    print(f"wrote {ns.out}: {len(result.kills)} kills, {len(result.problems)} differences")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
