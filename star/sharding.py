"""One generation pass split over several workers, gathered back in order.

    star generator.devices=2             # worker processes on this node: cuda:0, cuda:1 (2 CPU processes without a GPU)
    star generator.devices=[cuda:0,cuda:2]
    star generator.shards=8 generator.slurm.partition=gpu generator.slurm.gpus_per_node=1
                                         # a SLURM job array through submitit, one task per shard

The loop's training-set passes (generate, and rationalize when it generates) go through
`run_pass`; dev evaluation stays in the loop's process. Every worker runs the same shard
worker, `shard_worker`: load M(n-1) (its checkpoint, or the base), build the generator as the
loop does (build_generator(cfg.generator, ...)), generate shard k, write
`iter_NN/shards/<pass>_<k>.jsonl` atomically. `gather` reads the shards in order.

Byte-identical to one process: HFGenerator sorts a pass's questions by token length and cuts
that order into batches of generator.batch_size (HFGenerator.batch_order). Shard k is a
contiguous run of WHOLE batches of that order (`shard_slice`), so each shard's batches are
batches of the unsharded pass, and sampling is seeded per question: every completion is the
one the unsharded pass writes, greedy or sampled. (On GPUs this holds as far as kernels are
deterministic for a given batch; on CPU it is tested byte for byte.)

Files, in iter_NN/shards/:
    <pass>.spec.json     what to generate (prompts, seeds, sampling, which model, shard count), by the driver
    <pass>_<k>.jsonl     header {shard, n_shards, spec, n, worker, n_new_tokens, seconds}, then {index, completion}
    <pass>_<k>.claim     SLURM only: who works on shard k (created exclusively: an array task or the driver)
    <pass>.jobs.json     SLURM only: every job id submitted for the pass, with its shard
    slurm/               submitit's scripts and logs of the array tasks

Resume: a driver killed mid-pass (crash, SLURM requeue) and rerun keeps every finished shard
whose file parses, holds its header's count of rows and belongs to the same spec (the spec names
the exact model: the train marker of M(n-1), so a retrained M(n-1) invalidates old shards);
everything else is generated again.

No deadlock on SLURM: the driver submits the array and never waits on a shard that nobody
works on. It claims any shard no array task has claimed (at once with
generator.slurm.takeover_after_s=0, the default; after that many seconds otherwise; at once
whenever the shard's task is gone or could not be submitted), cancels that shard's task, and
generates it itself. It waits only for shards whose claiming task is RUNNING; a claim whose
task is no longer running (failed, cancelled, timed out, requeued and pending) is taken over.
So on a node whose CPUs the driver holds, where the array cannot start, the driver does every
shard and the run ends; the pending tasks are cancelled.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from star import artifacts as A
# RUNNING_STATES: squeue states in which a task that holds a claim is (still) working on it.
from star.slurm import RUNNING_STATES, SlurmQueue


# ----------------------------------------------------------------------------- what to run

def mode(generator_cfg) -> str | None:
    """"devices" (worker processes on this node), "slurm" (a job array) or None (the loop's process)."""
    if generator_cfg.get("devices") is not None:
        return "devices"
    if (generator_cfg.get("shards") or 0) > 0:
        return "slurm"
    return None


def resolve_devices(devices, model_device: str = "auto") -> list[str]:
    """generator.devices as a list of torch devices: N means cuda:0..N-1 when the model goes to a GPU
    (model.device auto with a GPU visible, or cuda), else N CPU processes; a list is taken as is."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        from star.models import resolve_device

        on_gpu = resolve_device(model_device).startswith("cuda")
        return [f"cuda:{i}" if on_gpu else "cpu" for i in range(devices)]
    return [str(d) for d in devices]


def check_devices(devices) -> str | None:
    """Why generator.devices cannot run here (a GPU that is not visible), or None."""
    wanted = [d for d in devices if d.startswith("cuda")]
    if not wanted:
        return None
    import torch

    visible = torch.cuda.device_count()
    indices = [int(d.split(":", 1)[1]) if ":" in d else 0 for d in wanted]
    if max(indices) < visible:
        return None
    fix = (f"use generator.devices=N with N <= {visible}" if visible else
           "for N CPU processes use generator.devices=N with model.device=cpu")
    return f"generator.devices asks for {', '.join(wanted)} but {visible} GPU(s) are visible; {fix}"


@dataclass
class PassSpec:
    """Everything a worker needs to generate its shard of one pass (written by the driver)."""

    name: str                    # generate | rationalize
    iteration: int
    checkpoint: str | None       # M(n-1) relative to the run directory; None: the base
    model_stamp: str             # which M(n-1) exactly (see StarLoop._model_stamp)
    prefix: str
    questions: list[str]
    seeds: list[int]
    max_new_tokens: int
    stop: list[str]
    temperature: float
    top_p: float
    batch_size: int
    n_shards: int
    desc: str = ""

    @property
    def id(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def plan_shards(n_questions: int, batch_size: int, wanted: int) -> int:
    """Shards actually used: at most one per batch of the pass."""
    n_batches = -(-n_questions // batch_size)
    return max(1, min(wanted, n_batches))


def shard_slice(n_questions: int, batch_size: int, n_shards: int, k: int) -> slice:
    """Positions in the length-sorted order (HFGenerator.batch_order) that shard k generates: whole
    batches, spread as evenly as the batch count allows, contiguous and in order."""
    n_batches = -(-n_questions // batch_size)
    lo, hi = (k * n_batches) // n_shards, ((k + 1) * n_batches) // n_shards
    return slice(lo * batch_size, min(hi * batch_size, n_questions))


# ----------------------------------------------------------------------------- files

def shards_dir(run_dir: Path, iteration: int) -> Path:
    return A.iter_dir(run_dir, iteration) / "shards"


def spec_path(run_dir: Path, spec: PassSpec) -> Path:
    return shards_dir(run_dir, spec.iteration) / f"{spec.name}.spec.json"


def shard_path(run_dir: Path, iteration: int, name: str, k: int) -> Path:
    return shards_dir(run_dir, iteration) / f"{name}_{k}.jsonl"


def claim_path(run_dir: Path, iteration: int, name: str, k: int) -> Path:
    return shards_dir(run_dir, iteration) / f"{name}_{k}.claim"


def read_spec(run_dir: Path, iteration: int, name: str) -> PassSpec:
    return PassSpec(**A.read_json(shards_dir(run_dir, iteration) / f"{name}.spec.json"))


def write_spec(run_dir: Path, spec: PassSpec) -> None:
    """Write the pass's spec; an older, different spec makes its shards and claims stale: removed."""
    path = spec_path(run_dir, spec)
    if path.exists():
        try:
            same = read_spec(run_dir, spec.iteration, spec.name).id == spec.id
        except (OSError, ValueError, TypeError):
            same = False
        if same:
            return
        for stale in [*path.parent.glob(f"{spec.name}_*.jsonl"), *path.parent.glob(f"{spec.name}_*.claim")]:
            stale.unlink(missing_ok=True)
    A.write_json(path, asdict(spec))


def read_shard(run_dir: Path, spec: PassSpec, k: int) -> tuple[dict, list[dict]] | None:
    """(header, rows) of shard k when its file is complete and belongs to `spec`; else None."""
    path = shard_path(run_dir, spec.iteration, spec.name, k)
    if A.corrupt_reason(path):
        return None
    lines = A.read_jsonl(path)
    if not lines:
        return None
    header, rows = lines[0], lines[1:]
    if (not isinstance(header, dict) or header.get("spec") != spec.id or header.get("shard") != k
            or header.get("n_shards") != spec.n_shards or header.get("n") != len(rows)):
        return None
    n = len(spec.questions)
    if not all(isinstance(r.get("index"), int) and 0 <= r["index"] < n and isinstance(r.get("completion"), str)
               for r in rows):
        return None
    return header, rows


def gather(run_dir: Path, spec: PassSpec) -> tuple[list[str], int]:
    """Every shard's completions back in the order of spec.questions, and the new tokens written."""
    completions: list[str | None] = [None] * len(spec.questions)
    n_tokens = 0
    for k in range(spec.n_shards):
        shard = read_shard(run_dir, spec, k)
        if shard is None:
            raise RuntimeError(f"shard {k} of pass '{spec.name}' (iteration {spec.iteration}) is missing or incomplete")
        header, rows = shard
        n_tokens += int(header.get("n_new_tokens") or 0)
        for r in rows:
            if completions[r["index"]] is not None:
                raise RuntimeError(f"question {r['index']} of pass '{spec.name}' is in two shards")
            completions[r["index"]] = r["completion"]
    missing = [i for i, c in enumerate(completions) if c is None]
    if missing:
        raise RuntimeError(f"{len(missing)} question(s) of pass '{spec.name}' are in no shard (first: {missing[0]})")
    return completions, n_tokens  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the shard worker

def run_shard(run_dir: Path, spec: PassSpec, k: int, generator, worker: str) -> None:
    """Generate shard k of `spec` with `generator` and write its file atomically."""
    order = generator.batch_order(spec.questions) if hasattr(generator, "batch_order") \
        else list(range(len(spec.questions)))
    batch_size = getattr(generator, "batch_size", spec.batch_size)
    if batch_size != spec.batch_size:
        raise RuntimeError(f"shard {k}: the generator's batch size {batch_size} is not the pass's {spec.batch_size}")
    indices = order[shard_slice(len(spec.questions), spec.batch_size, spec.n_shards, k)]
    tokens_before = getattr(generator, "n_new_tokens", 0)
    start = time.perf_counter()
    completions = generator.generate(
        spec.prefix, [spec.questions[i] for i in indices], seeds=[spec.seeds[i] for i in indices],
        max_new_tokens=spec.max_new_tokens, stop=tuple(spec.stop), temperature=spec.temperature,
        top_p=spec.top_p, desc=f"{spec.desc} shard {k}")
    header = {"shard": k, "n_shards": spec.n_shards, "spec": spec.id, "n": len(indices), "worker": worker,
              "n_new_tokens": getattr(generator, "n_new_tokens", 0) - tokens_before,
              "seconds": round(time.perf_counter() - start, 3)}
    A.write_jsonl(shard_path(run_dir, spec.iteration, spec.name, k),
                  [header, *({"index": i, "completion": c} for i, c in zip(indices, completions))])


def load_generator(cfg, run_dir: Path, checkpoint: str | None, device: str | None = None):
    """M(n-1) (its checkpoint, or the base) on `device` (None: model.device), behind the generator the
    loop builds. The checkpoint's tokenizer is the base's (the loop saves the base tokenizer with it)."""
    from omegaconf import OmegaConf

    from star.generation import build_generator, loads_from_directory
    from star.models import load_checkpoint, load_model_and_tokenizer, load_tokenizer, saved_base

    device = device or cfg.model.device
    if loads_from_directory(cfg.generator):  # an engine that loads M(n-1) itself (vllm): its directory
        path = str(Path(run_dir) / checkpoint) if checkpoint is not None else saved_base(cfg.model)
        return build_generator(cfg.generator, path, load_tokenizer(path), model_cfg=cfg.model, device=device,
                               seed=cfg.seed)
    if checkpoint is None:
        model, tokenizer = load_model_and_tokenizer(OmegaConf.merge(cfg.model, {"device": device}), seed=cfg.seed)
    else:
        model, tokenizer = load_checkpoint(Path(run_dir) / checkpoint, dtype=cfg.model.dtype, device=device)
    return build_generator(cfg.generator, model, tokenizer)


def shard_worker(run_dir: str, cfg: dict, name: str, iteration: int, k: int, device: str | None = None,
                 worker: str = "") -> None:
    """THE shard worker (a device process, a SLURM array task): load M(n-1) as the spec names it,
    build the generator as the loop does, generate shard k of the pass, write its file."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg)
    spec = read_spec(Path(run_dir), iteration, name)
    if k >= spec.n_shards:
        return
    generator = load_generator(cfg, Path(run_dir), spec.checkpoint, device)
    try:
        run_shard(Path(run_dir), spec, k, generator, worker or f"shard worker pid {os.getpid()}")
    finally:
        if hasattr(generator, "close"):  # an engine of its own (vllm) stops with its worker
            generator.close()


# ----------------------------------------------------------------------------- one node: device processes

def _device_process(run_dir: str, cfg: dict, name: str, iteration: int, k: int, device: str, n_workers: int) -> None:
    if device == "cpu":
        import torch  # N workers share the node's cores instead of each taking all of them

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
    shard_worker(run_dir, cfg, name, iteration, k, device, worker=f"process {k} on {device}")


def run_devices(run_dir: Path, cfg_dict: dict, spec: PassSpec, devices: list[str]) -> None:
    """One spawned process per unfinished shard, shard k on devices[k]; all at once, then joined."""
    import multiprocessing

    todo = [k for k in range(spec.n_shards) if read_shard(run_dir, spec, k) is None]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked CUDA or thread state
    procs = []
    for k in todo:
        p = ctx.Process(target=_device_process, name=f"star-shard-{k}", daemon=True,
                        args=(str(run_dir), cfg_dict, spec.name, spec.iteration, k, devices[k], len(todo)))
        p.start()
        procs.append((k, p))
    failed = []
    for k, p in procs:
        p.join()
        if p.exitcode != 0:
            failed.append(f"shard {k} on {devices[k]} (exit code {p.exitcode})")
    if failed:
        raise RuntimeError(f"generation worker(s) failed: {', '.join(failed)}; their errors are above. Finished "
                           "shards are kept: rerun the same command to resume")


# ----------------------------------------------------------------------------- many nodes: a SLURM job array

def write_exclusive(path: Path, record: dict) -> bool:
    """Create `path` holding `record`, only if it does not exist (link(2) of a complete temp file:
    no reader ever sees it half written). True when this call created it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def read_claim(path: Path) -> dict | None:
    try:
        return A.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"worker": "unreadable claim", "job_id": None}


def slurm_task(run_dir: str, cfg: dict, name: str, iteration: int, k: int) -> str:
    """An array task: claim shard k (or find it claimed by the driver: nothing to do), then be its worker."""
    import submitit

    job_id = submitit.JobEnvironment().job_id
    me = {"worker": f"slurm job {job_id}", "job_id": job_id}
    run = Path(run_dir)
    spec = read_spec(run, iteration, name)
    if k >= spec.n_shards or read_shard(run, spec, k) is not None:
        return f"shard {k}: nothing to do"
    path = claim_path(run, iteration, name, k)
    if not write_exclusive(path, me):
        owner = read_claim(path) or {}
        if owner.get("job_id") != job_id:  # not this very task before a requeue
            return f"shard {k}: claimed by {owner.get('worker')}"
    shard_worker(run_dir, cfg, name, iteration, k, worker=me["worker"])
    return f"shard {k}: done"


_DRIVER_TOKEN = uuid.uuid4().hex[:8]


def driver_identity() -> dict:
    return {"worker": f"driver pid {os.getpid()} on {socket.gethostname()} ({_DRIVER_TOKEN})", "job_id": None}


def run_slurm(run_dir: Path, cfg_dict: dict, spec: PassSpec, slurm_cfg, local_generator: Callable,
              queue: SlurmQueue | None = None, log=lambda m: print(m, file=sys.stderr)) -> None:
    """Submit one array task per unfinished shard, then work with it until every shard is done (see the
    module docstring for why this never deadlocks); leftover tasks are cancelled."""
    sdir = shards_dir(run_dir, spec.iteration)
    queue = queue or SlurmQueue(sdir / "slurm", slurm_cfg, f"star-{spec.name}-shards")
    me = driver_identity()
    jobs_file = sdir / f"{spec.name}.jobs.json"
    jobs: dict[str, int] = A.read_json(jobs_file) if jobs_file.exists() else {}  # earlier attempts' too
    done = lambda k: read_shard(run_dir, spec, k) is not None  # noqa: E731
    todo = [k for k in range(spec.n_shards) if not done(k)]
    alive = queue.states() or {}
    fresh = [k for k in todo if not any(j in alive for j, kk in jobs.items() if kk == k)]
    if fresh:
        try:
            ids = queue.submit(slurm_task, [(str(run_dir), cfg_dict, spec.name, spec.iteration, k) for k in fresh])
            jobs.update(zip(ids, fresh))
            A.write_json(jobs_file, jobs)
            log(f"[star] {spec.desc}: {len(fresh)} shard(s) submitted as SLURM job(s) {ids[0]}..{ids[-1]}")
        except Exception as e:  # noqa: BLE001 - any submission failure: the driver does the shards itself
            warnings.warn(f"[star] could not submit the shard array ({type(e).__name__}: {e}); generating "
                          f"every shard of '{spec.desc}' in this process", stacklevel=2)
    submitted = time.monotonic()
    generator = None

    def waiting(k: int | None = None) -> list[str]:
        """Tasks (of shard k, or all) that are queued but not running: cancelled once not needed."""
        return [j for j, kk in jobs.items() if (k is None or kk == k) and j in alive and alive[j] not in RUNNING_STATES]

    def take(k: int, claim: Path, replace: bool) -> None:
        nonlocal generator
        if replace:  # a stale claim: swap in ours in one rename, never leaving the shard unclaimed
            tmp = claim.with_name(f".{claim.name}.{_DRIVER_TOKEN}.tmp")
            A.write_json(tmp, me)
            os.replace(tmp, claim)
        queue.cancel(waiting(k))  # a task of k that is already running sees our claim and exits by itself
        log(f"[star] {spec.desc}: the driver generates shard {k}")
        generator = generator or local_generator()
        run_shard(run_dir, spec, k, generator, me["worker"])

    while todo := [k for k in range(spec.n_shards) if not done(k)]:
        # Claims first, then the queue: a task that holds a claim and is not RUNNING now was running
        # when it claimed, so it has died or been requeued since.
        claims = {k: read_claim(claim_path(run_dir, spec.iteration, spec.name, k)) for k in todo}
        alive = queue.states()
        known = alive is not None
        alive = alive or {}
        acted = False
        for k in reversed(todo):  # the array starts at shard 0: the driver works from the end
            path, claim = claim_path(run_dir, spec.iteration, spec.name, k), claims[k]
            if claim is None:
                task_alive = any(j in alive for j, kk in jobs.items() if kk == k) or not known
                if (not task_alive or time.monotonic() - submitted >= slurm_cfg.takeover_after_s) \
                        and write_exclusive(path, me):
                    take(k, path, replace=False)
                    acted = True
                    break
            elif claim.get("worker") == me["worker"]:
                take(k, path, replace=False)  # ours, from an earlier round of this loop that failed
                acted = True
                break
            elif claim.get("job_id") is None or (known and alive.get(claim["job_id"]) not in RUNNING_STATES):
                # A dead driver's claim, or a task that is gone or requeued and waiting: nobody works on it.
                if claim.get("job_id"):
                    queue.cancel([claim["job_id"]])
                take(k, path, replace=True)
                acted = True
                break
        if not acted:
            time.sleep(slurm_cfg.poll_s)
    alive = queue.states() or {}
    if leftover := waiting():
        queue.cancel(leftover)
        log(f"[star] {spec.desc}: every shard done; cancelled {len(leftover)} task(s) that never started")


# ----------------------------------------------------------------------------- the driver's entry point

def run_pass(run_dir: Path, cfg, spec: PassSpec, local_generator: Callable) -> tuple[list[str], int]:
    """Generate `spec` split as generator.devices / generator.shards say; return (completions in the
    order of spec.questions, new tokens written). `local_generator()` builds the loop's own generator
    for M(n-1) (the SLURM driver generates shards no task took)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    write_spec(run_dir, spec)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    if mode(cfg.generator) == "devices":
        run_devices(run_dir, cfg_dict, spec, resolve_devices(cfg.generator.devices, cfg.model.device))
    else:
        run_slurm(run_dir, cfg_dict, spec, cfg.generator.slurm, local_generator)
    completions, n_tokens = gather(run_dir, spec)
    if mode(cfg.generator) == "devices":
        A.remove_stale_temps(shards_dir(run_dir, spec.iteration))  # the workers are gone: temps are leftovers
    return completions, n_tokens
