"""One generation pass split over workers (star/sharding.py): shards are whole batches of the
length-sorted order, so sharded output is byte-identical to one process; worker processes on this
machine; the SLURM driver's claim logic against a scripted queue (no deadlock: it takes over what
nobody runs); resume keeps finished shards; config errors. The real SLURM cluster: test_slurm_shards.py."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from star import artifacts as A
from star import sharding as S
from star.config import ConfigError, validate
from star.generation import build_generator
from star.loop import StarLoop
from star.models import load_model_and_tokenizer
from star.preflight import preflight
from star.stages.context import derive_seed
from tests.conftest import compose_config
from tests.test_cli import deterministic_files
from tests.test_loop import ScriptedGenerator

BASE = ["~experiment", "model=tiny", "debug=fast", "logger=none"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model on one thread: as fast as two on an idle machine, and ten times faster on a busy
    2-core one (OpenMP threads spin against other processes). Results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the split
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_shards_are_contiguous_whole_batches_of_the_sorted_order(batch_size):
    for n in range(1, 40):
        for wanted in range(1, 7):
            n_shards = S.plan_shards(n, batch_size, wanted)
            n_batches = -(-n // batch_size)
            assert n_shards == min(wanted, n_batches)
            slices = [S.shard_slice(n, batch_size, n_shards, k) for k in range(n_shards)]
            assert [i for s in slices for i in range(n)[s]] == list(range(n)), "in order, each position once"
            assert all(s.start % batch_size == 0 and s.stop > s.start for s in slices), "whole batches, none empty"
            sizes = [-(-(s.stop - s.start) // batch_size) for s in slices]
            assert max(sizes) - min(sizes) <= 1, "balanced to one batch"


@pytest.fixture(scope="module")
def tiny_pass():
    """The loop's first generate pass for 33 arithmetic questions of 1-3 digits, on the tiny model (enough
    questions that its greedy completions differ: random weights write few distinct texts)."""
    cfg = compose_config([*BASE, "task.digits=[1,2,3]", "task.train_size=33", "generator.batch_size=4"])
    loop = StarLoop(cfg, "/nonexistent")
    model, tok = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    questions = loop.task.load("train")
    return cfg, build_generator(cfg.generator, model, tok), loop.task.fewshot_prompt(), \
        [loop.task.format_question(ex) for ex in questions], [derive_seed(0, 1, "generate", ex.id) for ex in questions]


@pytest.mark.parametrize("temperature,k", [(0.0, 1), (0.8, 1), (0.8, 3)], ids=["greedy", "sampled", "3_samples"])
def test_sharded_pass_is_byte_identical_to_one_pass(tiny_pass, tmp_path, temperature, k):
    """k > 1: each question k times in a row with seeds of its own (sampling.num_samples), so a question's
    samples share a batch's encoding and sometimes straddle two batches (k = 3, batches of 4)."""
    cfg, gen, prefix, questions, seeds = tiny_pass
    questions = [q for q in questions for _ in range(k)]
    seeds = [s + j for s in seeds for j in range(k)]
    kw = dict(max_new_tokens=12, stop=["\n\n"], temperature=temperature, top_p=1.0)
    whole = gen.generate(prefix, questions, seeds=seeds, **kw)
    assert len(set(whole)) > 3, "completions differ across questions (else the test proves little)"
    order = gen.batch_order(questions)
    assert [len(questions[i]) for i in order] == sorted(len(q) for q in questions)
    for wanted in (2, 3, 6):
        spec = S.PassSpec(name="generate", iteration=1, checkpoint=None, model_stamp="base", prefix=prefix,
                          questions=questions, seeds=seeds, batch_size=4, desc="test",
                          n_shards=S.plan_shards(len(questions), 4, wanted), **kw)
        run = tmp_path / f"w{wanted}"
        S.write_spec(run, spec)
        for k in reversed(range(spec.n_shards)):  # any order: a shard does not depend on the others
            S.run_shard(run, spec, k, gen, worker="test")
        completions, n_tokens = S.gather(run, spec)
        assert completions == whole, f"{wanted} shards"
        assert n_tokens > 0


# ---------------------------------------------------------------- worker processes on this machine
def loop_run(path, overrides, make_generator=None):
    cfg = compose_config([*BASE, *overrides])
    StarLoop(cfg, path, make_generator=make_generator).run()
    return path


def shard_workers(run, iteration, name):
    spec = S.read_spec(run, iteration, name)
    return [S.read_shard(run, spec, k)[0]["worker"] for k in range(spec.n_shards)]


def test_device_processes_write_what_one_process_writes(tmp_path):
    """generator.devices=2 on CPU: the generate pass in two spawned worker processes, sampled at
    temperature 0.7; every file equals the one-process run's. (Most of the time here is the two
    workers importing torch and transformers.)"""
    point = ["n_iterations=1", "sampling.temperature=0.7"]
    ref = loop_run(tmp_path / "ref", point)
    run = loop_run(tmp_path / "devices", [*point, "generator.devices=2"])
    assert deterministic_files(run) == deterministic_files(ref)
    assert shard_workers(run, 1, "generate") == ["process 0 on cpu", "process 1 on cpu"]
    assert not list((run / "iter_01" / "shards").glob(".*.tmp"))


class InstantArray:
    """A SLURM whose array tasks run at once, in this process, through the real shard worker."""

    def __init__(self, *args):
        self.cancelled: list[str] = []

    def submit(self, fn, args):
        for run_dir, cfg, name, iteration, k in args:
            S.shard_worker(run_dir, cfg, name, iteration, k, worker=f"task {k}")
        return [f"7_{k}" for _, _, _, _, k in args]

    def states(self):
        return {}

    def cancel(self, ids):
        self.cancelled += ids


def test_shard_workers_load_the_checkpoint_of_the_previous_iteration(tmp_path, monkeypatch):
    """Iteration 2 generates with M1: the worker loads it from iter_01/checkpoint, as the loop would."""
    ref = loop_run(tmp_path / "ref", ["n_iterations=2"])
    monkeypatch.setattr(S, "SlurmQueue", InstantArray)
    run = loop_run(tmp_path / "slurm", ["n_iterations=2", "generator.shards=3"])
    assert (run / "iter_01" / "checkpoint").is_dir() and S.read_spec(run, 2, "generate").checkpoint
    assert deterministic_files(run) == deterministic_files(ref)
    assert shard_workers(run, 2, "generate") == ["task 0", "task 1"], "16 questions in batches of 8: 2 shards"


# ---------------------------------------------------------------- the SLURM driver, against a scripted queue
class EchoGenerator:
    """Completions by rule; batch_order like HFGenerator's (by length, then input order)."""

    batch_size = 2

    def __init__(self, fail_after: int | None = None):
        self.calls: list[str] = []
        self.fail_after = fail_after
        self.n_new_tokens = 0

    def batch_order(self, questions):
        return sorted(range(len(questions)), key=lambda i: (len(questions[i]), i))

    def generate(self, prefix, questions, *, seeds, max_new_tokens, stop, temperature=0.0, top_p=1.0, desc=""):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("killed")
        self.calls.append(desc.rsplit(" ", 1)[1])
        self.n_new_tokens += len(questions)
        return [f"{prefix}{q}->{s}" for q, s in zip(questions, seeds)]


QUESTIONS = ["q" * (1 + (7 * i) % 5) + str(i) for i in range(9)]


def echo_spec(n_shards=3, stamp="m1") -> S.PassSpec:
    return S.PassSpec(name="generate", iteration=1, checkpoint=None, model_stamp=stamp, prefix=">", questions=QUESTIONS,
                      seeds=list(range(100, 109)), max_new_tokens=4, stop=[], temperature=0.0, top_p=1.0,
                      batch_size=2, n_shards=n_shards, desc="test")


EXPECTED = [f">{q}->{100 + i}" for i, q in enumerate(QUESTIONS)]


class ScriptedQueue:
    """squeue/scancel/submit by script: `states` maps job id -> state (absent = gone)."""

    def __init__(self, states=None, fail_submit=False):
        self.alive = dict(states or {})
        self.fail_submit = fail_submit
        self.submitted: list[int] = []
        self.cancelled: list[str] = []

    def submit(self, fn, args):
        if self.fail_submit:
            raise RuntimeError("sbatch: error: Batch job submission failed")
        self.submitted += [a[-1] for a in args]
        ids = [f"1_{a[-1]}" for a in args]
        for j in ids:
            self.alive.setdefault(j, "PENDING")
        return ids

    def states(self):
        return dict(self.alive)

    def cancel(self, ids):
        self.cancelled += ids
        for j in ids:
            self.alive.pop(j, None)


def slurm_cfg(takeover_after_s=0.0):
    return OmegaConf.create({"takeover_after_s": takeover_after_s, "poll_s": 0.02})


def drive(run, spec, queue, gen, takeover_after_s=0.0):
    S.write_spec(run, spec)
    S.run_slurm(run, {}, spec, slurm_cfg(takeover_after_s), lambda: gen, queue=queue, log=lambda m: None)
    return S.gather(run, spec)[0]


def test_driver_takes_over_an_array_that_never_starts(tmp_path):
    """The deadlock case: the driver holds the CPUs the tasks need, so they stay PENDING. After
    takeover_after_s the driver generates every shard itself and cancels the tasks."""
    queue, gen = ScriptedQueue(), EchoGenerator()
    start = time.monotonic()
    assert drive(tmp_path, echo_spec(), queue, gen, takeover_after_s=0.3) == EXPECTED
    assert time.monotonic() - start >= 0.3, "the array had its chance first"
    assert queue.submitted == [0, 1, 2]
    assert gen.calls == ["2", "1", "0"], "from the last shard down (the array starts at 0)"
    assert sorted(queue.cancelled) == ["1_0", "1_1", "1_2"] and not queue.alive


def test_driver_waits_only_for_shards_a_running_task_holds(tmp_path):
    """Task 1_0 runs and claims shard 0: the driver leaves it alone, generates shards 2 and 1 (not
    started: their tasks are cancelled), and gathers task 1_0's shard when it lands."""
    spec = echo_spec()
    queue = ScriptedQueue()
    run = tmp_path

    def task_0():
        time.sleep(0.05)
        assert S.write_exclusive(S.claim_path(run, 1, "generate", 0), {"worker": "slurm job 1_0", "job_id": "1_0"})
        queue.alive["1_0"] = "RUNNING"
        time.sleep(0.5)
        S.run_shard(run, spec, 0, EchoGenerator(), "slurm job 1_0")
        queue.alive.pop("1_0")

    S.write_spec(run, spec)
    S.claim_path(run, 1, "generate", 0).parent.mkdir(parents=True, exist_ok=True)
    # Shard 0 is claimed before the driver looks, as a task that started first would.
    thread = threading.Thread(target=task_0)
    thread.start()
    time.sleep(0.2)
    gen = EchoGenerator()
    try:
        assert drive(run, spec, queue, gen) == EXPECTED
    finally:
        thread.join()
    assert gen.calls == ["2", "1"]
    assert shard_workers(run, 1, "generate") == ["slurm job 1_0", S.driver_identity()["worker"],
                                                 S.driver_identity()["worker"]]
    assert "1_0" not in queue.cancelled and sorted(queue.cancelled) == ["1_1", "1_2"]


def test_driver_takes_over_stale_claims_and_failed_submission(tmp_path):
    """Claims nobody is working on: a task that is gone, a task requeued and pending, an earlier
    driver (the run lock says it is dead). And sbatch itself failing: a warning, then the driver does it all."""
    S.write_spec(tmp_path, echo_spec())
    claims = {0: {"worker": "slurm job 9_0", "job_id": "9_0"},            # gone (not in squeue)
              1: {"worker": "driver pid 1 on old (deadbeef)", "job_id": None},
              2: {"worker": "slurm job 9_2", "job_id": "9_2"}}            # requeued: PENDING again
    for k, c in claims.items():
        S.write_exclusive(S.claim_path(tmp_path, 1, "generate", k), c)
    queue, gen = ScriptedQueue({"9_2": "PENDING"}, fail_submit=True), EchoGenerator()
    with pytest.warns(UserWarning, match="could not submit the shard array"):
        assert drive(tmp_path, echo_spec(), queue, gen) == EXPECTED
    assert sorted(gen.calls) == ["0", "1", "2"]
    assert "9_2" in queue.cancelled
    me = S.driver_identity()["worker"]
    assert all(S.read_claim(S.claim_path(tmp_path, 1, "generate", k))["worker"] == me for k in range(3))


def test_a_killed_driver_resumes_with_its_finished_shards(tmp_path):
    """Killed after one shard: the rerun generates only the other two; a corrupt shard file or a new
    model (spec) is generated again."""
    queue = ScriptedQueue(fail_submit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="killed"):
            drive(tmp_path, echo_spec(), queue, EchoGenerator(fail_after=1))
        kept = S.shard_path(tmp_path, 1, "generate", 2)
        before = (kept.read_bytes(), kept.stat().st_mtime_ns)
        gen = EchoGenerator()
        assert drive(tmp_path, echo_spec(), queue, gen) == EXPECTED
        assert sorted(gen.calls) == ["0", "1"], "shard 2 was finished before the kill: reused"
        assert (kept.read_bytes(), kept.stat().st_mtime_ns) == before

        broken = S.shard_path(tmp_path, 1, "generate", 1)
        broken.write_text(broken.read_text()[:-10])  # a truncated last line
        short = S.shard_path(tmp_path, 1, "generate", 0)
        short.write_text("".join(short.read_text().splitlines(keepends=True)[:-1]))  # a row short of its header
        gen = EchoGenerator()
        assert drive(tmp_path, echo_spec(), queue, gen) == EXPECTED
        assert sorted(gen.calls) == ["0", "1"]

        gen = EchoGenerator()
        assert drive(tmp_path, echo_spec(stamp="m1-retrained"), queue, gen) == EXPECTED
        assert sorted(gen.calls) == ["0", "1", "2"], "shards of another model are never reused"


def test_loop_resumes_a_split_pass_after_a_crash(tmp_path, monkeypatch):
    """The loop, with generate and rationalize split over 3 shards that the driver generates (sbatch
    fails), dies in the middle of the generate pass; the same run again finishes it, reusing the
    finished shard, with the files an unsplit run writes."""
    point = ["n_iterations=1", "task.train_size=30", "rationalization.gold_oracle=false"]
    ref = loop_run(tmp_path / "ref", point, lambda m, t: ScriptedGenerator([]))
    monkeypatch.setattr(S, "SlurmQueue", lambda *a: ScriptedQueue(fail_submit=True))
    overrides = [*point, "generator.shards=3"]
    log: list = []

    class DiesOnSecondShard(ScriptedGenerator):
        def generate(self, prefix, questions, **kw):
            if "shard" in kw["desc"] and any("shard" in c["desc"] for c in self.log):
                raise RuntimeError("killed")
            return super().generate(prefix, questions, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="killed"):
            loop_run(tmp_path / "run", overrides, lambda m, t: DiesOnSecondShard(log))
        assert [c["desc"] for c in log if "shard" in c["desc"]] == ["iter 1 generate shard 2"]
        assert not A.is_done(tmp_path / "run", 1, "generate")
        log.clear()
        run = loop_run(tmp_path / "run", overrides, lambda m, t: ScriptedGenerator(log))
    assert [c["desc"] for c in log if "generate" in c["desc"]] == ["iter 1 generate shard 1", "iter 1 generate shard 0"]
    assert S.read_spec(run, 1, "rationalize").n_shards == 3, "the rationalize pass was split too"
    assert A.read_jsonl(run / "iter_01" / "rationalizations.jsonl")
    assert deterministic_files(run) == deterministic_files(ref)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,message", [
    (["generator.devices=0"], "generator.devices must be"),
    (["generator.devices=2", "generator.shards=2"], "set one"),
    (["generator.shards=-1"], "generator.shards must be >= 0"),
    (["generator.shards=2", "generator.slurm.cpus_per_task=0"], "generator.slurm.cpus_per_task"),
])
def test_bad_split_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([*BASE, *overrides]))


# What the machine lacks is refused by the pre-flight checks (star/preflight.py), before any model loads.
def test_devices_that_are_not_visible_are_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match=r"generator.devices asks for cuda:0 but 0 GPU\(s\) are visible"):
        preflight(compose_config([*BASE, "generator.devices=[cuda:0]"]))


def test_shards_without_slurm_are_refused(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    with pytest.raises(ConfigError, match="SLURM is not available here"):
        preflight(compose_config([*BASE, "generator.shards=2"]))


def test_devices_on_cpu_are_processes():
    assert S.resolve_devices(3, "cpu") == ["cpu", "cpu", "cpu"]
    assert S.resolve_devices(["cuda:1", "cuda:3"], "auto") == ["cuda:1", "cuda:3"]
    validate(compose_config([*BASE, "generator.devices=2", "model.device=cpu"]))
