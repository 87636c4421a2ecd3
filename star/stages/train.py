"""Stages 2 and 4, filter and fine-tune: keep the correct answers (direct and rationalized), pair each
with its question WITHOUT the hint, and fine-tune the base (or M(n-1)) on them -> M(n).

Writes iter_NN/train.jsonl (the examples trained on), iter_NN/checkpoint/ (M(n)) and this fit's rows
of train_steps.csv (per step: loss, lr, grad norm, tokens/s; sent to W&B live as they come); returns the
train marker, which names M(n) (see star/model_cache.py). The fit runs in this process (spawning its
own workers for DDP/FSDP), or as one SLURM job over several nodes (trainer.num_nodes > 1 or
trainer.slurm_launch, star/training/slurm.py). Steps follow the schedule (`scheduled_steps`).
"""

from __future__ import annotations

import copy
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from star import artifacts as A
from star.evaluation import evaluate
from star.generation import build_generator
from star.faults import armed, crash_point
from star.model_cache import BASE, ModelRef, model_ref
from star.models import save_checkpoint
from star.stages.context import StageContext
from star.training import slurm as slurm_training
from star.training.callbacks import CrashPointCallback, GenerationCallback
from star.training.module import NonFiniteLossError
from star.training.steps import DEV_KEY, StepForwarder, StepLog, merge_train_steps, read_step_rows


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


def kept_examples(ctx: StageContext, iteration: int) -> tuple[list[dict], dict]:
    """(training rows, counts): the filter. Rows are {id, source, prompt, completion}; the prompt is the
    question without the hint, so the hint never reaches training. method.keep_only_faithful keeps only
    faithful completions; method.min_rationale_lines > 0 only completions with at least that many lines of
    reasoning before their answer line; of a question's sampling.num_samples completions, up to
    method.max_kept_per_question distinct ones are kept (`distinct_completions`). method.data=gold trains
    on every question's gold completion instead.

    counts: n_direct and n_rationalized (examples kept of each kind), n_kept_questions (questions with at
    least one example) and n_unique (distinct correct completions before the per-question cap)."""
    direct, rationalized = (
        [r for r in A.read_jsonl(A.stage_file(ctx.run_dir, iteration, name)) if r["correct"]]
        for name in ("generations.jsonl", "rationalizations.jsonl"))
    if ctx.cfg.method.keep_only_faithful:
        direct = [r for r in direct if r["faithful"] is not False]
        rationalized = [r for r in rationalized if r["faithful"] is not False]
    min_lines = ctx.cfg.method.min_rationale_lines
    if min_lines > 0:
        direct, rationalized = ([r for r in rows if reasoning_lines(ctx, r) >= min_lines]
                                for rows in (direct, rationalized))
    cap = ctx.cfg.method.max_kept_per_question
    (direct, n_unique_direct), (rationalized, n_unique_rat) = (distinct_completions(rows, cap)
                                                               for rows in (direct, rationalized))
    counts = {"n_direct": len(direct), "n_rationalized": len(rationalized), "n_unique": n_unique_direct + n_unique_rat}
    questions = ctx.train_questions(iteration)
    if ctx.cfg.method.data == "gold":
        write = ctx.task.direct_completion if ctx.cfg.method.direct else ctx.task.gold_rationale
        rows = [{"id": ex.id, "source": "gold", "prompt": ctx.task.format_question(ex), "completion": write(ex)}
                for ex in questions]
        return rows, {**counts, "n_kept_questions": len(rows)}
    by_id = {ex.id: ex for ex in questions}
    rows = [{"id": r["id"], "source": source, "prompt": ctx.task.format_question(by_id[r["id"]]),
             "completion": r["completion"]}
            for source, kept in (("direct", direct), ("rationalized", rationalized)) for r in kept]
    return rows, {**counts, "n_kept_questions": len({r["id"] for r in rows})}


def distinct_completions(rows: list[dict], cap: int) -> tuple[list[dict], int]:
    """(kept, n distinct): of each question's rows (in sample order), the first `cap` whose completions
    differ after whitespace is normalized; n distinct counts every distinct completion before the cap.
    Rows of one question need not be adjacent; the kept rows keep their file order."""
    seen: dict[str, set[str]] = {}
    kept, n_distinct = [], 0
    for r in rows:
        texts = seen.setdefault(r["id"], set())
        text = " ".join(r["completion"].split())
        if text in texts:
            continue
        texts.add(text)
        n_distinct += 1
        if len(texts) <= cap:
            kept.append(r)
    return kept, n_distinct


def reasoning_lines(ctx: StageContext, row: dict) -> int:
    """A generations/rationalizations row's lines of reasoning before its answer line (rows written before
    they were recorded: counted now, by the task)."""
    n = row.get("reasoning_lines")
    return ctx.task.reasoning_lines(row["completion"]) if n is None else n


def train(ctx: StageContext, iteration: int) -> dict:
    rows, kept_counts = kept_examples(ctx, iteration)
    A.write_jsonl(A.stage_file(ctx.run_dir, iteration, "train.jsonl"), rows)
    counts = {"n_examples": len(rows), **kept_counts}
    start = BASE if ctx.cfg.method.restart_from_base else model_ref(ctx.run_dir, iteration - 1)
    if not rows or not ctx.cfg.method.train:
        # Nothing kept (or a method that never trains): M(n) is the start model.
        return {"checkpoint": start.checkpoint, "prompted": start.prompted, **counts, "steps": 0, "loss": None,
                "train_tokens_per_s": None}
    trained = ModelRef(A.checkpoint_of_iteration(iteration), ctx.cfg.method.keep_prompt_in_training)
    steps = scheduled_steps(ctx.cfg.schedule, iteration, len(rows), ctx.cfg.trainer.batch_size)
    fit = fit_on_slurm if slurm_training.enabled(ctx.cfg.trainer) else fit_here
    step_log = StepLog(A.steps_stream(ctx.run_dir, iteration), iteration, offset=steps_before(ctx, iteration))
    # A generation engine of its own (generator=vllm) holds M(n-1), which nothing asks for after this fit
    # (M(n) is evaluated next): stopped now, its memory (a GPU's, on GPUs) goes to the fit.
    ctx.close()
    with live_steps(ctx, step_log):
        stats = fit(ctx, iteration, start, trained, rows, steps, step_log)
    step_rows = keep_step_rows(ctx, iteration, step_log)
    info = {"checkpoint": trained.checkpoint, "prompted": trained.prompted, **counts, "steps": stats.steps,
            "loss": stats.loss, "train_tokens_per_s": stats.tokens_per_s}
    if getattr(stats, "setup", None):
        info["trainer"] = stats.setup  # strategy, world size, precision, LoRA: what actually ran
    dev_curve = [{"step": r["step"], "accuracy": r[DEV_KEY]} for r in step_rows if DEV_KEY in r]
    if dev_curve:  # the generation callback ran (trainer.eval_every_n_steps)
        info["dev_curve"] = dev_curve
    return info


def steps_before(ctx: StageContext, iteration: int) -> int:
    """The optimizer steps of every earlier iteration's fit: where this fit's global steps start."""
    return sum(A.read_done(ctx.run_dir, k, "train")["steps"] for k in range(1, iteration))


@contextmanager
def live_steps(ctx: StageContext, step_log: StepLog):
    """While the fit runs: its per-step rows go to the W&B run as they are written (whichever process
    fits: this one, spawned DDP ranks, a SLURM job)."""
    if ctx.tracker is None:
        yield
        return
    with ctx.tracker.live(), StepForwarder(step_log.path, ctx.tracker.log_step) as forwarder:
        yield
    if forwarder.error is not None:
        warnings.warn(f"[star] per-step W&B logging stopped: {forwarder.error}", stacklevel=2)


def keep_step_rows(ctx: StageContext, iteration: int, step_log: StepLog) -> list[dict]:
    """This fit's rows replace the iteration's rows in train_steps.csv (an earlier, killed attempt's go).
    Returns them."""
    stream = Path(step_log.path)
    rows = read_step_rows(stream)
    csv_path = A.train_steps_csv(ctx.run_dir)
    A.write_text(csv_path, merge_train_steps(csv_path, iteration, rows))
    stream.unlink(missing_ok=True)
    return rows


def training_prefix(ctx: StageContext, trained: ModelRef) -> str:
    """The few-shot prompt kept in the training text (method.keep_prompt_in_training), else ""."""
    return ctx.fewshot_prefix() if trained.prompted else ""


def fit_here(ctx: StageContext, iteration: int, start: ModelRef, trained: ModelRef, rows: list[dict], steps: int,
             step_log: StepLog):
    """Fine-tune a copy of the start model in this process (or its spawned DDP/FSDP ranks) and save it as
    M(n). Returns the FitStats."""
    cfg = ctx.cfg
    model = copy.deepcopy(ctx.models.get(start))  # the base itself stays untouched for later iterations
    ctx.models.forget()
    dev_callback = generation_callback(ctx, trained, step_log) if cfg.trainer.eval_every_n_steps else None
    callbacks = [c for c in (step_log, dev_callback) if c is not None]
    if armed(f"{iteration}/train/step_"):  # fault tests: die mid-training
        callbacks.append(CrashPointCallback(f"{iteration}/train"))
    crash_point(f"{iteration}/train/before_fit")
    try:
        stats = ctx.finetune_fn(model, ctx.models.tokenizer, rows, steps=steps, trainer_cfg=cfg.trainer,
                                seed=ctx.seed(iteration, "train"), prefix=training_prefix(ctx, trained),
                                callbacks=callbacks, progress=cfg.generator.progress, lora=cfg.model.lora,
                                desc=f"iter {iteration} train")
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"iteration {iteration}: {e}") from None
    crash_point(f"{iteration}/train/after_fit")
    save_checkpoint(model, ctx.models.tokenizer, ctx.run_dir / trained.checkpoint,
                    max_shard_size=cfg.checkpoint.max_shard_size)
    ctx.models.put(trained, model)
    return stats


def fit_on_slurm(ctx: StageContext, iteration: int, start: ModelRef, trained: ModelRef, rows: list[dict],
                 steps: int, step_log: StepLog):
    """The fit as one SLURM job over num_nodes x devices tasks; its rank 0 saves M(n). Returns the FitStats."""
    job_dir, job_record = A.slurm_train_paths(ctx.run_dir, iteration)
    crash_point(f"{iteration}/train/before_fit")
    stats = slurm_training.fit_on_slurm(
        ctx.cfg, start=None if start.checkpoint is None else ctx.run_dir / start.checkpoint, rows=rows, steps=steps,
        seed=ctx.seed(iteration, "train"), prefix=training_prefix(ctx, trained),
        save_to=ctx.run_dir / trained.checkpoint, job_dir=job_dir, job_record=job_record, desc=f"iter {iteration} train",
        callbacks=[step_log])
    crash_point(f"{iteration}/train/after_fit")
    ctx.models.forget()  # eval loads M(n) from the checkpoint the job wrote
    return stats


def generation_callback(ctx: StageContext, trained: ModelRef, step_log: StepLog) -> GenerationCallback:
    """Dev accuracy every trainer.eval_every_n_steps steps of the fit, on callback_dev_size dev questions,
    asked in the format the model is being trained on; each point goes to the step rows (W&B live, the
    train marker's dev_curve). Under DDP the callback travels to the spawned ranks (so it must pickle:
    the configured generator is built there) and rank 0 generates while the others wait."""
    in_process = ctx.cfg.trainer.strategy == "auto"
    evaluate_fn = DevEvaluator(ctx.task, ctx.task.load("dev")[: ctx.cfg.trainer.callback_dev_size],
                               training_prefix(ctx, trained), ctx.cfg.task.max_new_tokens, ctx.cfg.generator,
                               ctx.models.tokenizer, ctx.make_generator if in_process else None)
    return GenerationCallback(evaluate_fn, every_n_steps=ctx.cfg.trainer.eval_every_n_steps, at_fit_end=False,
                              report=step_log.dev_point)


@dataclass
class DevEvaluator:
    """model -> {"accuracy"} on a few dev questions (greedy). `make_generator` (model, tokenizer) -> generator:
    the loop's (tests script it); None builds the configured one (`generator`), as a spawned rank must."""

    task: Any
    dev: list
    prefix: str
    max_new_tokens: int
    generator: Any
    tokenizer: Any
    make_generator: Callable | None = None

    def __call__(self, model) -> dict:
        make = self.make_generator or (lambda m, tok: build_generator(self.generator, m, tok))
        result = evaluate(make(model, self.tokenizer), self.task, self.dev, self.prefix, self.max_new_tokens,
                          desc="fit eval")
        return {"accuracy": result["accuracy"]}
