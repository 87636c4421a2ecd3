"""Generation split over a SLURM job array (generator.shards, star/sharding.py) on the real local cluster
(the `slurm_cluster` fixture): the array tasks generate the shards and the run equals an unsplit one; and a
driver that holds every CPU of the node, so that the array cannot start, still finishes (no deadlock).

    python -m pytest -q -m slurm tests/test_slurm_shards.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from star import sharding as S
from star.slurm import final_states
from tests.conftest import run_star
from tests.test_cli import deterministic_files
from tests.test_slurm import job_logs

# Sampled (temperature 0.7), so equal files mean every shard drew exactly what one process draws.
POINT = ["~experiment", "model=tiny", "debug=fast", "logger=none", "n_iterations=1", "sampling.temperature=0.7"]


def shard_args(cluster, takeover_after_s: float) -> list[str]:
    return ["generator.shards=2", f"generator.slurm.partition={cluster.partition}", "generator.slurm.cpus_per_task=1",
            "generator.slurm.mem_gb=1", f"generator.slurm.takeover_after_s={takeover_after_s}", "generator.slurm.poll_s=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run in one process, no SLURM."""
    run = tmp_path_factory.mktemp("unsplit") / "run"
    proc = run_star([*POINT, f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def workers(run: Path) -> list[str]:
    spec = S.read_spec(run, 1, "generate")
    return [S.read_shard(run, spec, k)[0]["worker"] for k in range(spec.n_shards)]


@pytest.mark.slurm
def test_array_tasks_generate_the_shards(slurm_cluster, reference, tmp_path):
    """The driver (a plain process here) leaves both shards to the array (takeover_after_s=120) and
    gathers what the tasks wrote: the run's files equal the unsplit run's."""
    run = tmp_path / "run"
    start = time.monotonic()
    proc = run_star([*POINT, *shard_args(slurm_cluster, 120), f"hydra.run.dir={run}"])
    print(f"[slurm] sharded run with the array took {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert deterministic_files(run) == deterministic_files(reference)
    jobs = json.loads((run / "iter_01" / "shards" / "generate.jobs.json").read_text())
    assert sorted(jobs.values()) == [0, 1]
    assert workers(run) == [f"slurm job {j}" for j in sorted(jobs, key=jobs.get)], "each task wrote its own shard"
    rows = final_states(list(jobs))
    assert sorted(r[1] for r in rows) == ["COMPLETED", "COMPLETED"], rows


@pytest.mark.slurm
def test_driver_that_holds_the_node_does_every_shard(slurm_cluster, reference, tmp_path):
    """The driver is a SLURM job holding every CPU of the node: the shard tasks (1 CPU each) cannot
    start while it runs. It submits them anyway, takes the shards over after takeover_after_s, ends,
    and cancels the tasks, which never ran."""
    cpus = next(int(f.split("=", 1)[1]) for f in slurm_cluster.run("scontrol", "show", "node").stdout.split()
                if f.startswith("CPUTot="))
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    proc = run_star(["-m", "hydra/launcher=slurm", f"hydra.launcher.partition={slurm_cluster.partition}",
                     f"hydra.launcher.cpus_per_task={cpus}", "hydra.launcher.mem_gb=1", *POINT,
                     *shard_args(slurm_cluster, 3), f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=driver"])
    print(f"[slurm] sharded run with a starved array took {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:] + job_logs(sweep)[-3000:]
    run = sweep / "driver"
    assert deterministic_files(run) == deterministic_files(reference)
    assert all(w.startswith("driver pid") for w in workers(run)), workers(run)
    jobs = json.loads((run / "iter_01" / "shards" / "generate.jobs.json").read_text())
    arrays = sorted({j.split("_")[0] for j in jobs})  # a never-started array is one record: <id>_[0-1%2]
    rows = final_states(arrays)
    assert rows and all(state.startswith("CANCELLED") and elapsed == "00:00:00" for _, state, elapsed in rows), \
        f"the shard tasks were cancelled without ever starting: {rows}"
    task_logs = list((run / "iter_01" / "shards" / "slurm").rglob("*_log.*"))
    assert not task_logs, f"no shard task ever started, yet: {task_logs}"
    logs = job_logs(sweep)
    assert "the driver generates shard 1" in logs and "the driver generates shard 0" in logs
