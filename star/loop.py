"""The outer STaR loop: the only place that knows the order of stages.

    iteration 0:  eval (few-shot base on dev) -> log
    iteration n:  generate -> rationalize -> train -> eval -> log

Each stage writes its files atomically, then its marker `iter_NN/<stage>.done` (which
holds the stage's counts and timings). A restarted run skips every stage with a marker
and redoes the first one without, from scratch. All randomness is derived from
(seed, iteration, stage, example id) and work runs in a fixed order, so a redone stage
gives the same result as an uninterrupted one.

    from star.loop import StarLoop
    StarLoop(cfg, run_dir).run()
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from star import artifacts as A
from star import sharding
from star.evaluation import evaluate
from star.faults import armed, crash_point
from star.generation import build_generator
from star.report import plateaued
from star.models import load_checkpoint, load_model_and_tokenizer, save_checkpoint
from star.tasks import build_task
from star.tasks.base import Example
from star.tracking import Tracker
from star.training import finetune
from star.training import slurm as slurm_training
from star.training.callbacks import CrashPointCallback, GenerationCallback
from star.training.module import NonFiniteLossError

ITERATION_STAGES = ("generate", "rationalize", "train", "eval", "log")
BASELINE_STAGES = ("eval", "log")
# Files each stage writes in iter_NN/ (besides its marker and, for train, the checkpoint).
STAGE_FILES = {"generate": ("generations.jsonl",), "rationalize": ("rationalizations.jsonl",),
               "train": ("train.jsonl",), "eval": ("eval.json",), "log": ("metrics.json",)}


def derive_seed(seed: int, iteration: int, stage: str, key: str = "") -> int:
    """A stable 32-bit seed (numpy's range, which Lightning's seeding needs) for one
    (run seed, iteration, stage, example) cell."""
    digest = hashlib.sha256(f"{seed}/{iteration}/{stage}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def scheduled_steps(schedule_cfg, iteration: int, n_examples: int, batch_size: int) -> int:
    """Optimizer steps for iteration n >= 1 (paper default: 40 * 1.2^(n-1))."""
    k = iteration - 1
    if schedule_cfg.mode == "exponential":
        return max(1, round(schedule_cfg.base_steps * (1 + schedule_cfg.growth) ** k))
    if schedule_cfg.mode == "linear":
        return max(1, schedule_cfg.base_steps + schedule_cfg.increment * k)
    if schedule_cfg.mode == "epoch":
        epochs = schedule_cfg.base_epochs + schedule_cfg.epoch_growth * k
        return max(1, math.ceil(epochs * n_examples / batch_size))
    raise ValueError(f"schedule.mode must be exponential, linear or epoch, got '{schedule_cfg.mode}'")


@dataclass
class ModelRef:
    """Which model M(n) is: a checkpoint directory (relative to the run) or the base, and
    whether it is asked with the few-shot prompt (the format it was trained on)."""

    checkpoint: str | None
    prompted: bool


class StarLoop:
    """Runs (or resumes) one STaR run in `run_dir`.

    make_generator and finetune_fn are injectable so tests can script generation and
    watch fine-tuning without a real model doing either.
    """

    def __init__(self, cfg, run_dir: Path, *, make_generator: Callable | None = None,
                 finetune_fn: Callable = finetune, tracker: Tracker | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.task = build_task(cfg.task, seed=cfg.seed)
        self.make_generator = make_generator or (lambda model, tok: build_generator(cfg.generator, model, tok))
        self.finetune_fn = finetune_fn
        self.tracker = tracker
        self._base = None          # (model, tokenizer) of M, loaded on first use
        self._current = None       # (ModelRef, model) last loaded or trained

    # ---------------------------------------------------------------- models
    def base(self):
        if self._base is None:
            self._base = load_model_and_tokenizer(self.cfg.model, seed=self.cfg.seed)
        return self._base

    def model_ref(self, iteration: int) -> ModelRef:
        if iteration == 0:
            return ModelRef(checkpoint=None, prompted=True)
        info = A.read_done(self.run_dir, iteration, "train")
        return ModelRef(checkpoint=info["checkpoint"], prompted=info["prompted"])

    def model_for(self, ref: ModelRef):
        if self._current is not None and self._current[0] == ref:
            return self._current[1]
        if ref.checkpoint is None:
            model = self.base()[0]
        else:
            model, _ = load_checkpoint(self.run_dir / ref.checkpoint, dtype=self.cfg.model.dtype)
        self._current = (ref, model)
        return model

    def prefix(self, ref: ModelRef) -> str:
        return self.task.fewshot_prompt(direct=self.cfg.method.direct) if ref.prompted else ""

    def generator(self, model):
        return self.make_generator(model, self.base()[1])

    # ---------------------------------------------------------------- data
    def train_questions(self, iteration: int) -> list[Example]:
        pool = self.task.load("train")
        k = self.cfg.task.sample_per_iteration
        if k is None or k >= len(pool):
            return pool
        rng = random.Random(derive_seed(self.cfg.seed, iteration, "sample"))
        chosen = sorted(rng.sample(range(len(pool)), k))
        return [pool[i] for i in chosen]

    # ---------------------------------------------------------------- run
    def stage_problem(self, iteration: int, stage: str) -> tuple[Path, str] | None:
        """(path, why) for the first file a finished stage left that is missing or corrupt, or None."""
        marker = A.marker(self.run_dir, iteration, stage)
        why = A.corrupt_reason(marker)
        if why:
            return marker, why
        d = A.iter_dir(self.run_dir, iteration)
        files = [d / name for name in STAGE_FILES[stage]]
        if stage == "train":
            checkpoint = A.read_done(self.run_dir, iteration, "train").get("checkpoint")
            # A checkpoint the retention policy deleted on purpose is not a fault.
            if checkpoint and checkpoint not in A.retained_deletions(self.run_dir):
                files.append(self.run_dir / checkpoint)
        return next(((f, why) for f in files if (why := A.corrupt_reason(f))), None)

    def verify_finished_stages(self) -> None:
        """Find the first finished stage whose files are truncated or corrupt; redo it and every
        stage after it (they were built from it), with a warning."""
        order = [(n, st) for n in range(self.cfg.n_iterations + 1)
                 for st in (BASELINE_STAGES if n == 0 else ITERATION_STAGES)]
        for k, (iteration, stage) in enumerate(order):
            if not A.is_done(self.run_dir, iteration, stage):
                continue
            problem = self.stage_problem(iteration, stage)
            if problem is None:
                continue
            path, why = problem
            warnings.warn(f"[star] {path.relative_to(self.run_dir)} is corrupt ({why}): redoing stage "
                          f"'{stage}' of iteration {iteration} and every stage after it", stacklevel=2)
            for later_iteration, later_stage in order[k:]:
                A.marker(self.run_dir, later_iteration, later_stage).unlink(missing_ok=True)
            return

    def run(self) -> list[dict]:
        """Run every unfinished stage; return one metrics dict per finished iteration."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.verify_finished_stages()
        history = []
        for iteration in range(self.cfg.n_iterations + 1):
            stages = BASELINE_STAGES if iteration == 0 else ITERATION_STAGES
            A.remove_stale_temps(A.iter_dir(self.run_dir, iteration))
            for stage in stages:
                if A.is_done(self.run_dir, iteration, stage):
                    continue
                crash_point(f"{iteration}/{stage}/start")
                start = time.perf_counter()
                info = getattr(self, f"stage_{stage}")(iteration)
                info["seconds"] = time.perf_counter() - start
                A.mark_done(self.run_dir, iteration, stage, info)
            history.append(A.read_json(A.iter_dir(self.run_dir, iteration) / "metrics.json"))
            if self.plateaued(history):
                print(f"[star] dev accuracy plateaued; stopping after iteration {iteration}")
                break
        return history

    def plateaued(self, history: list[dict]) -> bool:
        accs = [h["eval/accuracy"] for h in history]
        return plateaued(accs, self.cfg.plateau_patience, self.cfg.plateau_min_delta)

    # ---------------------------------------------------------------- stages
    def stage_generate(self, iteration: int) -> dict:
        """Every (sampled) training question, answered by M(n-1) without a hint."""
        questions = self.train_questions(iteration)
        if self.cfg.method.data == "gold":
            # Supervised on the gold answers: nothing to generate.
            A.write_jsonl(A.iter_dir(self.run_dir, iteration) / "generations.jsonl", [])
            return {"n_questions": len(questions), "n_correct": 0, "gen_tokens": 0, "gen_tokens_per_s": 0.0}
        ref = self.model_ref(iteration - 1)
        start = time.perf_counter()
        completions, n_tokens = self._complete(
            iteration, "generate", ref, self.prefix(ref), [self.task.format_question(ex) for ex in questions],
            [derive_seed(self.cfg.seed, iteration, "generate", ex.id) for ex in questions])
        seconds = time.perf_counter() - start
        crash_point(f"{iteration}/generate/after_batches")
        rows = [self._row(ex, c) for ex, c in zip(questions, completions)]
        A.write_jsonl(A.iter_dir(self.run_dir, iteration) / "generations.jsonl", rows)
        return {"n_questions": len(rows), "n_correct": sum(r["correct"] for r in rows),
                "gen_tokens": n_tokens, "gen_tokens_per_s": n_tokens / seconds if seconds > 0 else 0.0}

    def stage_rationalize(self, iteration: int) -> dict:
        """Every failure retried with the gold answer as a hint (when enabled)."""
        generations = A.read_jsonl(A.iter_dir(self.run_dir, iteration) / "generations.jsonl")
        by_id = {ex.id: ex for ex in self.train_questions(iteration)}
        failures = [by_id[r["id"]] for r in generations if not r["correct"]]
        rcfg = self.cfg.rationalization
        if rcfg.enabled and self.cfg.method.data == "generated":
            chosen = [ex for ex in failures
                      if random.Random(derive_seed(self.cfg.seed, iteration, "p_rationalization", ex.id)).random()
                      < rcfg.p_rationalization]
        else:
            chosen = []
        completions: list[str] = []
        if chosen and rcfg.gold_oracle:
            completions = [self.task.gold_rationale(ex) or "" for ex in chosen]
        elif chosen:
            ref = self.model_ref(iteration - 1)
            prefix = self.task.fewshot_prompt(hint=True) if rcfg.hinted_prompt else self.prefix(ref)
            completions, _ = self._complete(
                iteration, "rationalize", ref, prefix, [self.task.format_question(ex, hint=True) for ex in chosen],
                [derive_seed(self.cfg.seed, iteration, "rationalize", ex.id) for ex in chosen])
        rows = []
        for ex, c in zip(chosen, completions):
            row = self._row(ex, c)
            # A completion that repeats the hint would carry it into training: never keep it.
            row["hint_leaked"] = self.task.hint_text(ex).strip() in c
            row["correct"] = row["correct"] and not row["hint_leaked"]
            rows.append(row)
        A.write_jsonl(A.iter_dir(self.run_dir, iteration) / "rationalizations.jsonl", rows)
        return {"n_failures": len(failures), "n_attempted": len(rows), "n_correct": sum(r["correct"] for r in rows),
                "n_hint_leaked": sum(r["hint_leaked"] for r in rows)}

    def _complete(self, iteration: int, name: str, ref: ModelRef, prefix: str, prompts: list[str],
                  seeds: list[int]) -> tuple[list[str], int]:
        """(completions, new tokens) of one training-set pass with M(n-1): in this process, or split
        over device processes / a SLURM job array (generator.devices / generator.shards, star/sharding.py)."""
        kw = dict(max_new_tokens=self.cfg.task.max_new_tokens, stop=self.task.stop,
                  temperature=self.cfg.sampling.temperature, top_p=self.cfg.sampling.top_p,
                  desc=f"iter {iteration} {name}")
        split = sharding.mode(self.cfg.generator)
        if split is None:
            gen = self.generator(self.model_for(ref))
            tokens_before = getattr(gen, "n_new_tokens", 0)
            completions = gen.generate(prefix, prompts, seeds=seeds, **kw)
            return completions, getattr(gen, "n_new_tokens", 0) - tokens_before
        g = self.cfg.generator
        wanted = len(sharding.resolve_devices(g.devices, self.cfg.model.device)) if split == "devices" else g.shards
        spec = sharding.PassSpec(name=name, iteration=iteration, checkpoint=ref.checkpoint,
                                 model_stamp=self._model_stamp(iteration - 1), prefix=prefix, questions=list(prompts),
                                 seeds=[int(s) for s in seeds], stop=list(kw.pop("stop")), batch_size=g.batch_size,
                                 n_shards=sharding.plan_shards(len(prompts), g.batch_size, wanted), **kw)
        return sharding.run_pass(self.run_dir, self.cfg, spec, lambda: self.generator(self.model_for(ref)))

    def _model_stamp(self, iteration: int) -> str:
        """Which M(iteration) exactly: a hash of its train marker (it holds the fit's timing, so a retrained
        model gets a new stamp and shards generated with the old one are not reused); "base" for M0."""
        if iteration == 0:
            return "base"
        return hashlib.sha256(A.marker(self.run_dir, iteration, "train").read_bytes()).hexdigest()[:16]

    def _row(self, ex: Example, completion: str) -> dict:
        return {"id": ex.id, "question": ex.question, "gold": ex.answer, "completion": completion,
                "answer": self.task.extract_answer(completion), "correct": self.task.is_correct(ex, completion),
                "faithful": self.task.is_faithful(ex, completion)}

    def stage_train(self, iteration: int) -> dict:
        """Fine-tune the base (or M(n-1)) on the kept, hint-free examples -> M(n)."""
        d = A.iter_dir(self.run_dir, iteration)
        direct = [r for r in A.read_jsonl(d / "generations.jsonl") if r["correct"]]
        rationalized = [r for r in A.read_jsonl(d / "rationalizations.jsonl") if r["correct"]]
        if self.cfg.method.keep_only_faithful:
            direct = [r for r in direct if r["faithful"] is not False]
            rationalized = [r for r in rationalized if r["faithful"] is not False]
        questions = self.train_questions(iteration)
        by_id = {ex.id: ex for ex in questions}
        # The training prompt is the question WITHOUT the hint: the hint never reaches training.
        rows = [{"id": r["id"], "source": source, "prompt": self.task.format_question(by_id[r["id"]]),
                 "completion": r["completion"]}
                for source, kept in (("direct", direct), ("rationalized", rationalized)) for r in kept]
        if self.cfg.method.data == "gold":
            write = self.task.direct_completion if self.cfg.method.direct else self.task.gold_rationale
            rows = [{"id": ex.id, "source": "gold", "prompt": self.task.format_question(ex), "completion": write(ex)}
                    for ex in questions]
        A.write_jsonl(d / "train.jsonl", rows)
        previous = self.model_ref(iteration - 1)
        if not rows or not self.cfg.method.train:
            # Nothing kept (or a method that never trains): M(n) = M(n-1) (the base when restarting).
            ref = ModelRef(None, True) if self.cfg.method.restart_from_base else previous
            return {"checkpoint": ref.checkpoint, "prompted": ref.prompted, "n_examples": len(rows),
                    "n_direct": len(direct), "n_rationalized": len(rationalized), "steps": 0, "loss": None,
                    "train_tokens_per_s": None}
        start_ref = ModelRef(None, True) if self.cfg.method.restart_from_base else previous
        keep_prompt = self.cfg.method.keep_prompt_in_training
        steps = scheduled_steps(self.cfg.schedule, iteration, len(rows), self.cfg.trainer.batch_size)
        checkpoint = f"iter_{iteration:02d}/checkpoint"
        if slurm_training.enabled(self.cfg.trainer):
            # One SLURM job over num_nodes x devices tasks; its rank 0 saves M(n) to `checkpoint`.
            crash_point(f"{iteration}/train/before_fit")
            stats = slurm_training.fit_on_slurm(
                self.run_dir, self.cfg, iteration, start=start_ref.checkpoint, rows=rows, steps=steps,
                seed=derive_seed(self.cfg.seed, iteration, "train"), checkpoint=checkpoint,
                prefix=self.task.fewshot_prompt(direct=self.cfg.method.direct) if keep_prompt else "")
            crash_point(f"{iteration}/train/after_fit")
            self._current = None  # eval loads M(n) from the checkpoint the job wrote
            return self._train_info(checkpoint, keep_prompt, rows, direct, rationalized, stats)
        start_model = self.base()[0] if start_ref.checkpoint is None else self.model_for(start_ref)
        model = copy.deepcopy(start_model)  # the base itself stays untouched for later iterations
        self._current = None
        callbacks = []
        if self.cfg.trainer.eval_every_n_steps:
            callbacks.append(self._generation_callback(keep_prompt))
        if armed(f"{iteration}/train/step_"):  # fault tests: die mid-training
            callbacks.append(CrashPointCallback(f"{iteration}/train"))
        crash_point(f"{iteration}/train/before_fit")
        try:
            stats = self.finetune_fn(model, self.base()[1], rows, steps=steps, trainer_cfg=self.cfg.trainer,
                                     seed=derive_seed(self.cfg.seed, iteration, "train"),
                                     prefix=self.task.fewshot_prompt(direct=self.cfg.method.direct) if keep_prompt else "",
                                     callbacks=callbacks, progress=self.cfg.generator.progress,
                                     lora=self.cfg.model.lora)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"iteration {iteration}: {e}") from None
        crash_point(f"{iteration}/train/after_fit")
        save_checkpoint(model, self.base()[1], self.run_dir / checkpoint,
                        max_shard_size=self.cfg.checkpoint.max_shard_size)
        self._current = (ModelRef(checkpoint, keep_prompt), model)
        info = self._train_info(checkpoint, keep_prompt, rows, direct, rationalized, stats)
        if self.cfg.trainer.eval_every_n_steps:
            info["dev_curve"] = [{k: v for k, v in h.items() if k in ("step", "accuracy")} for h in callbacks[0].history]
        return info

    @staticmethod
    def _train_info(checkpoint: str, keep_prompt: bool, rows, direct, rationalized, stats) -> dict:
        """The train marker's contents for a fit that wrote M(n) to `checkpoint`."""
        info = {"checkpoint": checkpoint, "prompted": keep_prompt, "n_examples": len(rows),
                "n_direct": len(direct), "n_rationalized": len(rationalized), "steps": stats.steps,
                "loss": stats.loss, "train_tokens_per_s": stats.tokens_per_s}
        if getattr(stats, "setup", None):
            info["trainer"] = stats.setup  # strategy, world size, precision, LoRA: what actually ran
        return info

    def _generation_callback(self, prompted: bool) -> GenerationCallback:
        dev = self.task.load("dev")[: self.cfg.trainer.callback_dev_size]
        prefix = self.task.fewshot_prompt(direct=self.cfg.method.direct) if prompted else ""

        def evaluate_fn(model) -> dict:
            result = evaluate(self.generator(model), self.task, dev, prefix, self.cfg.task.max_new_tokens, desc="fit eval")
            return {"accuracy": result["accuracy"]}

        return GenerationCallback(evaluate_fn, every_n_steps=self.cfg.trainer.eval_every_n_steps, at_fit_end=False)

    def stage_eval(self, iteration: int) -> dict:
        """M(n) on dev, greedy, no hint, in the format it was trained on."""
        ref = self.model_ref(iteration)
        model = self.model_for(ref)
        dev = self.task.load("dev")
        result = evaluate(self.generator(model), self.task, dev, self.prefix(ref), self.cfg.task.max_new_tokens,
                          n_samples=self.cfg.logger.n_samples, desc=f"iter {iteration} eval")
        crash_point(f"{iteration}/eval/before_write")
        A.write_json(A.iter_dir(self.run_dir, iteration) / "eval.json", result)
        if self.cfg.checkpoint.keep == "last_and_best":
            A.prune_checkpoints(self.run_dir, iteration)
        return {"accuracy": result["accuracy"]}

    def stage_log(self, iteration: int) -> dict:
        """metrics.json for the iteration, then W&B / CSV through the tracker."""
        metrics, samples = self.collect_metrics(iteration)
        A.write_json(A.iter_dir(self.run_dir, iteration) / "metrics.json", metrics)
        if self.tracker is not None:
            self.tracker.log_iteration(iteration, metrics, samples)
        return {}

    def collect_metrics(self, iteration: int) -> tuple[dict, list[dict]]:
        d = A.iter_dir(self.run_dir, iteration)
        ev = A.read_json(d / "eval.json")
        m: dict = {"iteration": iteration, "eval/accuracy": ev["accuracy"]}
        for cls, acc in ev["per_class"].items():
            m[f"eval/accuracy/{cls}"] = acc
        m["time/eval_s"] = A.read_done(self.run_dir, iteration, "eval")["seconds"]
        samples = [{"iteration": iteration, "kind": "eval", **s} for s in ev["samples"]]
        if iteration == 0:
            return m, samples
        gen = A.read_done(self.run_dir, iteration, "generate")
        rat = A.read_done(self.run_dir, iteration, "rationalize")
        train = A.read_done(self.run_dir, iteration, "train")
        n = gen["n_questions"]
        kept = [r for r in A.read_jsonl(d / "generations.jsonl") if r["correct"]]
        kept_rat = [r for r in A.read_jsonl(d / "rationalizations.jsonl") if r["correct"]]
        faithful = [r["faithful"] for r in kept + kept_rat if r["faithful"] is not None]
        m.update({
            "gen/solve_rate": gen["n_correct"] / n,
            "gen/rationalized_rate": rat["n_correct"] / n,
            "gen/hint_leaked": rat["n_hint_leaked"],
            "data/train_fraction": train["n_examples"] / n,
            "data/n_examples": train["n_examples"],
            "data/n_direct": train["n_direct"],
            "data/n_rationalized": train["n_rationalized"],
            "data/n_questions": n,
            "train/steps": train["steps"],
            "perf/gen_tokens_per_s": gen["gen_tokens_per_s"],
        })
        if faithful:
            m["gen/faithful_rate"] = sum(faithful) / len(faithful)
        if train["loss"] is not None:
            m["train/loss"] = train["loss"]
            m["perf/train_tokens_per_s"] = train["train_tokens_per_s"]
        for stage in ("generate", "rationalize", "train"):
            m[f"time/{stage}_s"] = A.read_done(self.run_dir, iteration, stage)["seconds"]
        n_samples = self.cfg.logger.n_samples
        for kind, rows in (("direct", kept), ("rationalized", kept_rat)):
            samples += [{"iteration": iteration, "kind": kind, "id": r["id"], "question": r["question"],
                         "gold": r["gold"], "completion": r["completion"], "answer": r["answer"],
                         "correct": r["correct"]} for r in rows[:n_samples]]
        return m, samples


def config_to_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
