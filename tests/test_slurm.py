"""Launchers, sweep files and W&B naming; then, on a real private SLURM cluster (tests/slurm_cluster.py),
a sweep through hydra-submitit-launcher and jobs interrupted mid-iteration that resume to identical files.

    python -m pytest tests/test_slurm.py              # the fast part: profiles, sweep files, naming
    python -m pytest tests/test_slurm.py -m slurm     # the cluster part (the fixture starts the cluster)

The cluster tests skip when the cluster cannot start, and fail instead with CI=true or REQUIRE_SLURM=1.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from star.cli import CONF_DIR
from star.config import register_configs, validate
from star.slurm import final_states
from star.tracking import _inspect_records, _offline_logs, iteration_rows, read_wandb_offline, read_wandb_run_ids
from tests.conftest import REPO, run_star
from tests.test_cli import deterministic_files

SWEEPS = REPO / "sweeps"
LAUNCHERS = Path(CONF_DIR) / "hydra" / "launcher"


def compose_with_hydra(config_name: str = "config", overrides: list[str] | None = None, config_dir: Path | None = None):
    """The composed config including the `hydra` node (the launcher, the sweeper)."""
    register_configs()
    GlobalHydra.instance().clear()
    extra = [] if config_dir is None else [f"hydra.searchpath=[file://{CONF_DIR}]"]
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*extra, *(overrides or [])], return_hydra_config=True)


# ---------------------------------------------------------------- launcher profiles (fast)
@pytest.mark.parametrize("launcher,target", [
    ("local", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
    ("submitit", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_launcher_profiles_compose(launcher, target):
    cfg = compose_with_hydra(overrides=[f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target
    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # every interpolation resolves


def test_slurm_profile_settings():
    launcher = compose_with_hydra(overrides=["hydra/launcher=slurm"]).hydra.launcher
    for key in ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "signal_delay_s",
                "max_num_timeout", "array_parallelism"):
        assert key in launcher, key
    assert launcher.partition is None, "no partition is committed: the cluster default, or a site profile"
    # submitit counts a preemption as a time-out while the job ran under min(0.8 T, T - 10 min):
    # with T <= 10 min that is always, and time-outs stop requeueing after max_num_timeout.
    assert launcher.timeout_min > 10 and launcher.max_num_timeout >= 1
    assert launcher.signal_delay_s < launcher.timeout_min * 60
    setup = OmegaConf.to_container(launcher, resolve=True)["setup"]
    assert any("OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in line for line in setup)


def test_site_profile_is_git_ignored_and_extends_slurm():
    """The README's recipe: a cluster's own profile in conf/hydra/launcher/site_<name>.yaml."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    name = f"site_pytest_{os.getpid()}"
    path = LAUNCHERS / f"{name}.yaml"
    path.write_text("defaults:\n  - slurm\n\npartition: gpu-long\naccount: my-lab\ngpus_per_node: 1\n")
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(REPO))], cwd=REPO)
        assert ignored.returncode == 0, f"{path.name} is not git-ignored: add conf/hydra/launcher/site_*.yaml"
        launcher = compose_with_hydra(overrides=[f"hydra/launcher={name}"]).hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        assert (launcher.partition, launcher.account, launcher.gpus_per_node) == ("gpu-long", "my-lab", 1)
        assert launcher.max_num_timeout == 3, "the site profile keeps the project profile's other settings"
    finally:
        path.unlink()


# ---------------------------------------------------------------- sweep files (fast)
def sweep_points(config_name: str) -> list[list[str]]:
    """The override lists the basic sweeper makes from a sweep file's hydra.sweeper.params."""
    params = compose_with_hydra(config_name, config_dir=SWEEPS).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [list(p) for p in itertools.product(*axes)]


EXPECTED_SWEEPS = {
    "default_ablations": 15,        # the default and 4 ablations x seeds 0, 1, 2
    "rationalization_ablation": 6,  # on/off x seeds 0, 1, 2
    "temperature_ablation": 4,      # greedy, 0.5, 0.7, 1.0
    "samples_ablation": 18,
    "ood_lengths": 12,              # STaR, direct fine-tuning, few-shot scratchpad and direct x seeds 0, 1, 2         # k = 1, 2, 4 x rationalization on/off x seeds 0, 1, 2
    "schedule_ablation": 3,         # exponential, linear, epoch
    "small_arithmetic": 5,          # the arithmetic rows at small scale (SmolLM2-135M, CPU)
    "paper_arithmetic": 3,          # the paper's rows, GPT-J 6B (a real cluster's GPUs)
    "paper_cqa": 5,
    "paper_gsm8k": 5,
}
ROWS = {"fewshot_direct", "fewshot_cot", "direct_finetune", "star_norat", "star"}


def test_every_sweep_file_is_listed():
    assert sorted(p.stem for p in SWEEPS.glob("*.yaml")) == sorted(EXPECTED_SWEEPS)


@pytest.mark.parametrize("name,n_points", sorted(EXPECTED_SWEEPS.items()))
def test_sweep_file_composes_every_point(name, n_points):
    text = (SWEEPS / f"{name}.yaml").read_text()
    assert f"Run: star -cd sweeps -cn {name}" in text.splitlines()[0], "the first line documents the command"
    cfg = compose_with_hydra(name, config_dir=SWEEPS)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    points = sweep_points(name)
    assert len(points) == n_points
    composed = [compose_with_hydra(name, point, config_dir=SWEEPS) for point in points]
    if name.startswith("paper_"):
        # GPT-J 6B rows: validate() would look for the model and a GPU's memory, which this machine lacks.
        task = name.removeprefix("paper_")
        assert {c.task.name for c in composed} == {task} and {c.model.name_or_path for c in composed} == {"EleutherAI/gpt-j-6b"}
        assert {p[0].removeprefix(f"experiment={task}_gptj_") for p in points} <= ROWS
        assert compose_with_hydra(name, config_dir=SWEEPS).hydra.launcher._target_.endswith("SlurmLauncher")
        return
    for c in composed:
        validate(c)
    if name == "temperature_ablation":
        assert sorted(c.sampling.temperature for c in composed) == [0.0, 0.5, 0.7, 1.0]
        assert len({c.sampling.top_p for c in composed}) == 1, "only the temperature varies"
    elif name == "schedule_ablation":
        assert sorted(c.schedule.mode for c in composed) == ["epoch", "exponential", "linear"]
    elif name == "default_ablations":
        # The default, then one change each: (rationalization, temperature, faithful only, method).
        arms = {(c.rationalization.enabled, c.sampling.temperature, c.method.keep_only_faithful, c.method.name)
                for c in composed}
        assert arms == {(True, 0.0, False, "star"), (False, 0.0, False, "star"), (True, 0.7, False, "star"),
                        (True, 0.0, True, "star"), (True, 0.0, False, "direct_finetune")}
        assert {c.seed for c in composed} == {0, 1, 2} and {c.model.name for c in composed} == {"smollm2_135m"}
    elif name == "small_arithmetic":
        assert {p[0].removeprefix("experiment=arithmetic_smollm2_") for p in points} == ROWS
        assert {c.model.name for c in composed} == {"smollm2_135m"}
        assert {c.method.name for c in composed} == {"fewshot_direct", "fewshot_cot", "direct_finetune", "star"}
    elif name == "rationalization_ablation":
        assert sorted((c.rationalization.enabled, c.seed) for c in composed) == sorted(
            itertools.product([False, True], [0, 1, 2]))


# ---------------------------------------------------------------- W&B names (fast)
class _FakeTracker:
    seen: dict = {}

    def __init__(self, run_dir, logger_cfg, config, run_name=None):
        _FakeTracker.seen = {"group": logger_cfg.group, "name": logger_cfg.name or run_name}

    def finish(self):
        pass


class _FakeLoop:
    def __init__(self, *a, **kw):
        pass

    def run(self):
        return []


@pytest.mark.parametrize("mode,overrides,expected", [
    ("RUN", [], {"group": None, "name": "run_dir_name"}),
    ("MULTIRUN", [], {"group": "rationalization_ablation", "name": "rationalization=off,seed=2"}),
    ("MULTIRUN", ["logger.group=mine", "logger.name=mine_too"], {"group": "mine", "name": "mine_too"}),
])
def test_wandb_run_named_by_overrides_grouped_by_sweep(monkeypatch, tmp_path, mode, overrides, expected):
    import star.loop
    import star.tracking
    from star.cli import run

    cfg = compose_with_hydra("rationalization_ablation", ["model=tiny", "debug=fast", "print_table=false",
                                                        *overrides], config_dir=SWEEPS)
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.job.override_dirname = "rationalization=off,seed=2"
    monkeypatch.setattr(star.tracking, "Tracker", _FakeTracker)
    monkeypatch.setattr(star.loop, "StarLoop", _FakeLoop)
    HydraConfig.instance().set_config(cfg)
    job_cfg = cfg.copy()  # what the task function gets: the config without its `hydra` node
    with open_dict(job_cfg):
        del job_cfg["hydra"]
    try:
        run(job_cfg, tmp_path / "run_dir_name")
    finally:
        HydraConfig.instance().cfg = None  # a process-wide singleton: leave it as found
    assert _FakeTracker.seen == expected


# ---------------------------------------------------------------- accounting (fast)
def scripted_sacct(monkeypatch, answers: list[list[tuple]]) -> None:
    """star.slurm.accounting answers each call with the next rows of `answers` (the last one from then on)."""
    import star.slurm

    calls = iter(answers)
    last: list = []

    def accounting(job_ids, fields, env):
        nonlocal last
        last = next(calls, last)
        return last

    monkeypatch.setattr(star.slurm, "accounting", accounting)


def test_final_states_wait_for_accounting_to_catch_up(monkeypatch):
    """sacct lags a job's end: no row yet, then RUNNING, then the final state; final_states returns only that."""
    done = [("7_0", "COMPLETED", "00:00:05"), ("7_1", "CANCELLED by 0", "00:00:00")]
    scripted_sacct(monkeypatch, [[], [("7_0", "RUNNING", "00:00:03"), ("7_1", "PENDING", "00:00:00")], done])
    assert final_states(["7"], poll_s=0) == done


def test_final_states_give_up_with_what_they_saw(monkeypatch):
    scripted_sacct(monkeypatch, [[("8", "REQUEUED", "00:01:00")]])
    start = time.monotonic()
    assert final_states(["8"], timeout=0.3, poll_s=0.05) == [("8", "REQUEUED", "00:01:00")]
    assert time.monotonic() - start >= 0.3


# ---------------------------------------------------------------- on the SLURM cluster
# The same points as one of the sweep's, so an interrupted run has an uninterrupted twin.
# The interrupted run is held at a pause point inside fit (star/faults.py) until SLURM kills it:
# racing a running job let it finish within KillWait, before the requeue took effect.
POINT = ["model=tiny", "debug=fast", "n_iterations=1", "schedule.base_steps=20"]
SECRET = "wandb-key-sentinel-6f1c2a"  # a fake API key: it must not reach any output file


def slurm_args(cluster, sweep_dir: Path) -> list[str]:
    return ["-cd", "sweeps", "-cn", "rationalization_ablation", "hydra/launcher=slurm",
            f"hydra.launcher.partition={cluster.partition}", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", *POINT, f"hydra.sweep.dir={sweep_dir}"]


def wandb_run_record(run_dir: Path) -> dict:
    for log in _offline_logs(run_dir):
        for record in _inspect_records(log):
            if record.get("type") == "run":
                return record["run"]
    raise AssertionError(f"no W&B run record under {run_dir}")


def job_logs(sweep_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit").rglob("*_log.*")))


def point_dir(sweep_dir: Path, rationalization: str, seed: int) -> Path:
    [d] = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
           and f"rationalization={rationalization}," in d.name and d.name.endswith(f"seed={seed}")]
    return d


@pytest.fixture(scope="module")
def slurm_sweep(slurm_cluster, tmp_path_factory):
    """rationalization on/off x seeds 0, 1 (the sweep file, seeds narrowed) as one SLURM job array."""
    sweep = tmp_path_factory.mktemp("slurm_sweep") / "sweep"
    start = time.monotonic()
    proc = run_star([*slurm_args(slurm_cluster, sweep), "seed=0,1"], env={"WANDB_API_KEY": SECRET}, timeout=600)
    print(f"[slurm] 2x2 sweep took {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + job_logs(sweep)[-4000:]
    return sweep


@pytest.mark.slurm
def test_sweep_runs_every_point_as_one_wandb_run(slurm_cluster, slurm_sweep):
    runs = sorted(d for d in slurm_sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(runs) == 4, [d.name for d in runs]
    for run in runs:
        for name in ("iter_00/eval.done", "iter_01/generations.jsonl", "iter_01/rationalizations.jsonl",
                     "iter_01/train.jsonl", "iter_01/eval.json", "iter_01/log.done", "metrics.csv"):
            assert (run / name).exists(), f"{run.name}/{name} missing"
        if "rationalization=on" in run.name:  # debug=fast: gold rationalizations, so something to train on
            assert (run / "iter_01" / "checkpoint" / "model.safetensors").exists(), run.name
        assert [int(r["iteration"]) for r in iteration_rows(read_wandb_offline(run))] == [0, 1]
        record = wandb_run_record(run)
        assert record["run_group"] == "rationalization_ablation"
        assert record["display_name"] == run.name.split("_", 1)[1], "run name = the point's overrides"
        assert record["config"]["update"]["seed"] == int(run.name.rsplit("seed=", 1)[1])
    ids = [read_wandb_run_ids(run) for run in runs]
    assert all(len(i) == 1 for i in ids) and len(set().union(*ids)) == 4, "one W&B run per point"
    # One job array; the scheduler's own accounting (slurmdbd) saw its four tasks complete.
    array_ids = {d.name.split("_")[0] for d in (slurm_sweep / ".submitit").iterdir() if d.name[0].isdigit()}
    assert len(array_ids) == 1, array_ids
    array_id = array_ids.pop()
    # The launcher returns once results exist; the jobs may still be exiting: wait for their final states.
    rows = final_states([array_id], ("JobName", "State"))
    assert rows == [("star-rationalization_ablation", "COMPLETED")] * 4, rows


@pytest.mark.slurm
def test_sweep_outputs_hold_no_secret(slurm_sweep):
    for path in slurm_sweep.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the API key leaked into {path}"


@pytest.mark.slurm
def test_lightning_leaves_requeue_to_submitit(slurm_sweep):
    """One owner of SLURM signals: submitit checkpoints and requeues; Lightning's auto-requeue is off
    (fit.py passes SLURMEnvironment(auto_requeue=False) under SLURM)."""
    import logging

    import star.training.fit  # noqa: F401  (the logging settings the jobs ran with)

    logs = job_logs(slurm_sweep) + "".join(p.read_text() for p in slurm_sweep.glob("*/cli.log"))
    runs = [d for d in slurm_sweep.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert runs and all((d / "iter_01" / "train.done").exists() for d in runs), "every job ran Lightning's fit"
    # Lightning announces auto-requeue at INFO on this logger: it must not be silenced, or the check is empty.
    assert logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").isEnabledFor(logging.INFO)
    assert "SLURM auto-requeueing enabled" not in logs


def interrupt_preempt(cluster, job_id: str, submitit_folder: Path) -> None:
    """What SLURM preemption looks like to submitit: SIGTERM, then USR2 -> checkpoint + requeue."""
    import submitit

    submitit.SlurmJob(folder=submitit_folder / "%j", job_id=job_id)._interrupt()  # SLURM_CONF: the fixture's


def interrupt_requeue(cluster, job_id: str, submitit_folder: Path) -> None:
    """An operator's `scontrol requeue`: the job is killed and started again from scratch."""
    cluster.run("scontrol", "requeue", job_id)


@pytest.mark.slurm
@pytest.mark.parametrize("interrupt", [interrupt_preempt, interrupt_requeue], ids=["preempt", "scontrol_requeue"])
def test_interrupted_job_resumes_to_identical_artifacts(slurm_cluster, slurm_sweep, tmp_path, interrupt):
    sweep = tmp_path / "sweep"
    args = [*slurm_args(slurm_cluster, sweep), "rationalization=on", "seed=0"]
    out = tmp_path / "star.out"
    paused = tmp_path / "paused"  # made when the first run stops at training step 2; the requeued run goes on
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STAR_PAUSE_AT": f"1/train/step_2:{paused}"}
    with out.open("w") as f:
        proc = subprocess.Popen(["star", *args], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        # Interrupt while the job is held inside the train stage (Lightning's fit).
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert proc.poll() is None, f"star exited early:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the job never reached training step 2 of iteration 1"
            time.sleep(0.05)
        [job_dir] = [d for d in (sweep / ".submitit").iterdir() if d.name[0].isdigit()]
        interrupt(slurm_cluster, job_dir.name, sweep / ".submitit")
        run = point_dir(sweep, "on", 0)
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*.done")}
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.read_text()[-3000:] + job_logs(sweep)[-4000:]
    assert "iter_01/log.done" not in {str(p.relative_to(run)) for p in before}, "interrupted too late"
    logs = job_logs(sweep)
    assert logs.count("Starting with JobEnvironment") == 2, "the job ran exactly twice (started, then requeued)"
    if interrupt is interrupt_preempt:
        assert "Requeued job" in logs, "submitit's checkpoint() requeued the job"

    after = {p: p.stat().st_mtime_ns for p in run.rglob("*.done")}
    assert all(after[p] == t for p, t in before.items()), "a stage finished before the interrupt was redone"
    reference = point_dir(slurm_sweep, "on", 0)
    assert deterministic_files(run) == deterministic_files(reference), "resumed files differ from an uninterrupted run"
    train_ids = [json.loads(line)["id"] for line in (run / "iter_01" / "train.jsonl").read_text().splitlines()]
    assert len(train_ids) == len(set(train_ids)) > 0, "no training example duplicated"
    assert not list(run.rglob(".*.tmp")), "temp files left behind"
    assert [int(r["iteration"]) for r in iteration_rows(read_wandb_offline(run))] == [0, 1], "each iteration logged once"
    assert read_wandb_run_ids(run) == {(run / "wandb_run_id.txt").read_text().strip()}, "the requeued job kept its W&B run"
