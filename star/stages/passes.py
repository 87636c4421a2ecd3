"""A training-set pass with M(n-1) (the generate and rationalize stages), and the row each answer
becomes in generations.jsonl / rationalizations.jsonl.

    samples, completions, n_tokens = sample_pass(ctx, iteration, "generate", ref, prefix, questions)
    completions, n_tokens = run_pass(ctx, iteration, "generate", ref, prefix, prompts, seeds)

sample_pass asks each question sampling.num_samples (k) times, each sample with its own seed; the k
prompts of a question sit next to each other, so the engine encodes their shared prompt once.

The pass runs in the loop's process, or split over device processes or a SLURM job array
(generator.devices / generator.shards, star/sharding.py) with the same output.
"""

from __future__ import annotations

from star import sharding
from star.model_cache import ModelRef, model_stamp
from star.stages.context import StageContext
from star.tasks.base import Example


def sample_seed(ctx: StageContext, iteration: int, name: str, example_id: str, sample: int) -> int:
    """The seed of one sample of one question in a pass. Sample 0 has the seed a one-sample pass uses, so
    the first samples of a k-sample run are what a k = 1 run at the same temperature writes."""
    return ctx.seed(iteration, name, example_id if sample == 0 else f"{example_id}/sample={sample}")


def samples_of(ctx: StageContext, examples: list[Example]) -> list[tuple[Example, int]]:
    """(question, sample index) for each of the sampling.num_samples samples of each question, in order."""
    return [(ex, j) for ex in examples for j in range(ctx.cfg.sampling.num_samples)]


def sample_pass(ctx: StageContext, iteration: int, name: str, ref: ModelRef, prefix: str, examples: list[Example],
                hint: bool = False) -> tuple[list[tuple[Example, int]], list[str], int]:
    """(the (question, sample index) of each completion, the completions, new tokens written): k =
    sampling.num_samples completions per question, a question's samples consecutive and in order."""
    samples = samples_of(ctx, examples)
    completions, n_tokens = run_pass(ctx, iteration, name, ref, prefix,
                                     [ctx.task.format_question(ex, hint=hint) for ex, _ in samples],
                                     [sample_seed(ctx, iteration, name, ex.id, j) for ex, j in samples])
    return samples, completions, n_tokens


def run_pass(ctx: StageContext, iteration: int, name: str, ref: ModelRef, prefix: str, prompts: list[str],
             seeds: list[int]) -> tuple[list[str], int]:
    """(completions, new tokens written) of one pass over `prompts` with the model `ref`."""
    cfg = ctx.cfg
    kw = dict(max_new_tokens=cfg.task.max_new_tokens, stop=ctx.task.stop, temperature=cfg.sampling.temperature,
              top_p=cfg.sampling.top_p, desc=f"iter {iteration} {name}")
    split = sharding.mode(cfg.generator)
    if split is None:
        gen = ctx.generator(ref)
        tokens_before = getattr(gen, "n_new_tokens", 0)
        completions = gen.generate(prefix, prompts, seeds=seeds, **kw)
        return completions, getattr(gen, "n_new_tokens", 0) - tokens_before
    g = cfg.generator
    wanted = len(sharding.resolve_devices(g.devices, cfg.model.device)) if split == "devices" else g.shards
    spec = sharding.PassSpec(name=name, iteration=iteration, checkpoint=ref.checkpoint,
                             model_stamp=model_stamp(ctx.run_dir, iteration - 1), prefix=prefix,
                             questions=list(prompts), seeds=[int(s) for s in seeds], stop=list(kw.pop("stop")),
                             batch_size=g.batch_size, n_shards=sharding.plan_shards(len(prompts), g.batch_size, wanted),
                             **kw)
    return sharding.run_pass(ctx.run_dir, cfg, spec, lambda: ctx.generator(ref))


def answer_rows(ctx: StageContext, samples: list[tuple[Example, int]], completions: list[str]) -> tuple[list[dict], int]:
    """One line of generations.jsonl / rationalizations.jsonl per answer (the answer as the task reads it;
    reasoning_lines: the lines written before the answer line, 0 for a bare answer; `sample`: which of the
    question's k samples, only when sampling.num_samples > 1), and how many of them the task's scorer
    raised on (scored wrong). Counting those is optional in the Task protocol (an int attribute
    `scorer_errors`): 0 for a task whose verifier cannot raise."""
    task = ctx.task
    errors_before = int(getattr(task, "scorer_errors", 0))
    several = ctx.cfg.sampling.num_samples > 1
    rows = [{"id": ex.id, **({"sample": j} if several else {}), "question": ex.question, "gold": ex.answer,
             "completion": c, "answer": task.extract_answer(c), "correct": task.is_correct(ex, c),
             "faithful": task.is_faithful(ex, c), "reasoning_lines": task.reasoning_lines(c)}
            for (ex, j), c in zip(samples, completions)]
    return rows, int(getattr(task, "scorer_errors", 0)) - errors_before


def solved_ids(rows: list[dict]) -> set[str]:
    """The questions with at least one correct completion among `rows`."""
    return {r["id"] for r in rows if r["correct"]}
