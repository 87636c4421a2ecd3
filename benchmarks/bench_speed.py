"""Speed benchmark (issue 7): generation and fine-tuning against the naive way and this machine's ceiling.

Run from the repository root, when nothing else runs (every number is wall-clock; the full run took
18 minutes on the 2-core Intel Xeon dev machine, 25 on the 2-core AMD EPYC one: most of it is the naive
and batched passes):

    python benchmarks/bench_speed.py                       # 256 questions -> benchmarks/results.md
    python benchmarks/bench_speed.py --quick --out /tmp/r.md   # smoke check: 8 questions, a few steps
    python benchmarks/bench_speed.py --n 64 --out /tmp/r.md model=tiny   # trailing args: Hydra overrides

It uses the default config (the default model and task: `star` with no arguments) plus any overrides,
and writes a markdown file whose first line is `generation speedup vs naive: N.Nx`. In one run:

1. Matmul rate: fp32 and bf16 GFLOP/s of torch.matmul on the model's own projection shapes; the
   best shape is this machine's ceiling for the utilization figures below.
2. Generation, the first `--n` training questions of the task's own train split (its seed), each
   prompt = the task's few-shot prefix + question, exactly what the loop's generate stage sends:
   - fast: the project's HFGenerator (generator config: batches, shared-prefix KV reuse);
   - naive: `model.generate()` per question, batch 1, the full prompt every time;
   - batched: `model.generate()` on left-padded batches of the fast path's batch size (what a careful
     user writes), the full prompt in every row;
   - vllm: generator=vllm (its own environment, scripts/setup.sh --vllm), its engine start timed apart;
     skipped, and said so, where that environment is missing;
   both fp32 (model.dtype), greedy, the task's max_new_tokens, KV cache on, the same stop rule
   (star.generation.hf.truncate_at_stop after every token, or EOS). Texts are compared one by one;
   for each mismatch the first token where they part is found and the naive path's top-2 logit gap
   there is reported (a near-tie is < 1e-3).
3. Training tokens/s with trainer.packing true and false (the default trainer config: bf16-mixed,
   batch 8) on the gold scratchpads of the same questions, one pass over them; model FLOPs
   utilization = 6 * n_params * real tokens / seconds / the matmul rate in the precision used.
4. One default iteration (`star n_iterations=1`): "after" stage times measured in the real loop;
   "before" generation stages composed from naive seconds per question measured on a sample of
   that stage's own prompts and model, and the train stage measured as an unpacked fit of the same
   rows and steps; "after" for train is the fit the run's trainer.packing does (the packed fit beside it).

Every measured pass runs in a fresh child process (`--child`), so each peak RSS (ru_maxrss) is that
pass's alone and no pass warms another's caches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEAR_TIE = 1e-3
QUICK_N = 8


# ----------------------------------------------------------------------------- config, task, model


def compose_cfg(overrides: list[str]):
    """The config `star OVERRIDES` would run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from star.cli import CONF_DIR
    from star.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def bench_task(cfg, n: int):
    """The config's task with a train split of at least n questions (its own generator and seed)."""
    from omegaconf import OmegaConf

    from star.tasks import build_task

    task_cfg = OmegaConf.merge(cfg.task, {"train_size": max(n, cfg.task.train_size)})
    return build_task(task_cfg, seed=cfg.seed)


def load_model(cfg, checkpoint: str | None = None):
    from star.models import load_checkpoint, load_model_and_tokenizer

    if checkpoint:
        return load_checkpoint(checkpoint, dtype=cfg.model.dtype, device=cfg.model.device)
    return load_model_and_tokenizer(cfg.model, seed=cfg.seed)


def model_info(model) -> dict:
    c = model.config
    hidden = getattr(c, "hidden_size", None) or c.n_embd
    inner = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    # Parameters counted once (SmolLM2 ties its embedding and output matrices; the output matmul is
    # real work, the embedding lookup is not, so the tied count is the one 2N/6N FLOPs per token use).
    return {"n_params": sum(p.numel() for p in model.parameters()), "hidden": hidden, "inner": inner,
            "vocab": c.vocab_size, "class": type(model).__name__}


# ----------------------------------------------------------------------------- generation


def fast_generate(model, tokenizer, cfg, prefix: str, questions: list[str], seeds: list[int],
                  stop: tuple[str, ...]) -> dict:
    """The project's path: HFGenerator with the config's batch size and prefix reuse."""
    from star.generation.hf import HFGenerator

    gen = HFGenerator(model, tokenizer, batch_size=cfg.generator.batch_size,
                      reuse_prefix=cfg.generator.reuse_prefix, progress=False)
    start = time.perf_counter()
    texts = gen.generate(prefix, questions, seeds=seeds, max_new_tokens=cfg.task.max_new_tokens,
                         stop=stop, temperature=0.0)
    seconds = time.perf_counter() - start
    n_prefix = len(gen._ids(prefix))
    # Tokens actually run through the model: the prefix once (when reused) and every question and new
    # token (left padding not counted).
    n_prompt = sum(len(gen._ids(q)) for q in questions) + n_prefix * (1 if gen.reuse_prefix and n_prefix else len(questions))
    return {"texts": texts, "seconds": seconds, "new_tokens": gen.n_new_tokens,
            "model_tokens": n_prompt + gen.n_new_tokens}


def prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids as HFGenerator builds them (prefix and question tokenized apart), so every path sees the
    same tokens."""
    return tokenizer(text, add_special_tokens=False).input_ids if text else []


def greedy_config(tokenizer, cfg):
    """model.generate()'s settings for the naive paths: greedy, KV cache on, the task's max_new_tokens."""
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GenerationConfig(max_new_tokens=cfg.task.max_new_tokens, do_sample=False, use_cache=True,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_id)


def stop_on_text(tokenizer, stop: tuple[str, ...], width: int):
    """The generator's stop rule for model.generate(): each row is done once its new text (after the first
    `width` positions) holds a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from star.generation.hf import truncate_at_stop

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([truncate_at_stop(tokenizer.decode(row[width:], skip_special_tokens=True), stop)[1]
                                 for row in input_ids], device=input_ids.device)

    return StoppingCriteriaList([StopOnText()])


def naive_generate(model, tokenizer, cfg, prefix: str, questions: list[str], stop: tuple[str, ...]) -> dict:
    """The naive way: model.generate() per question, batch 1, the full prompt every time, KV cache on.

    Prompt ids are built as HFGenerator builds them (prefix and question tokenized separately), so
    the two paths see the same tokens. Per question it also records, for every step, the top-2 gap of
    the raw logits (before any processing) and the text decoded so far, to locate mismatches later.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from star.generation.hf import truncate_at_stop

    class Top2Gap(LogitsProcessor):
        def __init__(self):
            self.gaps: list[float] = []

        def __call__(self, input_ids, scores):
            top = scores[0].float().topk(2).values
            self.gaps.append(float(top[0] - top[1]))
            return scores

    gen_cfg = greedy_config(tokenizer, cfg)
    device = next(model.parameters()).device
    prefix_ids = prompt_ids(tokenizer, prefix)
    model.eval()
    texts, steps_text, gaps = [], [], []
    new_tokens = model_tokens = 0
    start = time.perf_counter()
    for q in questions:
        prompt = prefix_ids + prompt_ids(tokenizer, q)
        input_ids = torch.tensor([prompt], device=device)
        gap = Top2Gap()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 generation_config=gen_cfg, logits_processor=LogitsProcessorList([gap]),
                                 stopping_criteria=stop_on_text(tokenizer, stop, len(prompt)))
        new = out[0, len(prompt):].tolist()
        texts.append(truncate_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)[0])
        steps_text.append(new)  # decoded after the clock stops
        gaps.append(gap.gaps)
        new_tokens += len(new)
        model_tokens += len(prompt) + len(new)
    seconds = time.perf_counter() - start
    # The text after each step (for locating the first differing token), outside the timed loop.
    steps_text = [[tokenizer.decode(new[:k + 1], skip_special_tokens=True) for k in range(len(new))]
                  for new in steps_text]
    return {"texts": texts, "seconds": seconds, "new_tokens": new_tokens, "model_tokens": model_tokens,
            "step_texts": steps_text, "gaps": gaps}


def batched_generate(model, tokenizer, cfg, prefix: str, questions: list[str], stop: tuple[str, ...]) -> dict:
    """The careful user's way: model.generate() on left-padded batches of the hf engine's batch size, in input
    order, the full prompt in every row, KV cache on, greedy; a row leaves when its text holds a stop string
    (a per-row StoppingCriteria) or writes EOS. Prompt ids built as HFGenerator builds them."""
    import torch

    from star.generation.hf import truncate_at_stop

    gen_cfg = greedy_config(tokenizer, cfg)
    pad_id = gen_cfg.pad_token_id
    device = next(model.parameters()).device
    prefix_ids = prompt_ids(tokenizer, prefix)
    model.eval()
    outputs, model_tokens = [], 0
    start = time.perf_counter()
    for b in range(0, len(questions), cfg.generator.batch_size):
        prompts = [prefix_ids + prompt_ids(tokenizer, q) for q in questions[b: b + cfg.generator.batch_size]]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(input_ids)
        for r, p in enumerate(prompts):
            input_ids[r, width - len(p):] = torch.tensor(p, device=device)
            mask[r, width - len(p):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg,
                                 stopping_criteria=stop_on_text(tokenizer, stop, width))
        outputs += [row[width:].tolist() for row in out]
        model_tokens += out.numel()  # every row runs to the batch's end: padding and finished rows included
    seconds = time.perf_counter() - start
    texts, new_tokens = [], 0
    for new in outputs:  # outside the clock: a row's own tokens end at its stop string or EOS (then padding)
        k = len(new)
        for j in range(1, len(new) + 1):
            if new[j - 1] == tokenizer.eos_token_id or truncate_at_stop(
                    tokenizer.decode(new[:j], skip_special_tokens=True), stop)[1]:
                k = j
                break
        new_tokens += k
        texts.append(truncate_at_stop(tokenizer.decode(new[:k], skip_special_tokens=True), stop)[0])
    return {"texts": texts, "seconds": seconds, "new_tokens": new_tokens, "model_tokens": model_tokens}


def vllm_generate(cfg, model_dir: str, prefix: str, questions: list[str], seeds: list[int],
                  stop: tuple[str, ...]) -> dict:
    """generator=vllm: the engine in its own environment, the config's batch size as its sequence limit.
    seconds excludes the engine start (startup_s); engine_peak_rss_mib is its largest process."""
    from star.generation.vllm_engine import VLLMGenerator
    from star.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    gen = VLLMGenerator(model_dir, tokenizer, batch_size=cfg.generator.batch_size, progress=False)
    start = time.perf_counter()
    texts = gen.generate(prefix, questions, seeds=seeds, max_new_tokens=cfg.task.max_new_tokens, stop=stop,
                         temperature=0.0)
    total = time.perf_counter() - start
    gen.close()
    startup = gen.timings["start"][0]
    n_prefix = len(tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 0
    n_batches = -(-len(questions) // cfg.generator.batch_size)
    n_prompt = sum(len(tokenizer(q, add_special_tokens=False).input_ids) for q in questions) + n_prefix * n_batches
    return {"texts": texts, "seconds": total - startup, "startup_s": startup, "new_tokens": gen.n_new_tokens,
            "model_tokens": n_prompt + gen.n_new_tokens,
            "engine_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def first_difference(step_texts: list[str], other: str) -> int:
    """The step at which the naive path's text stops agreeing with `other` (the fast path's text):
    the first step whose decoded text is not a prefix of `other`; if every one is (the naive path
    stopped early, e.g. on EOS), its last step."""
    for k, text in enumerate(step_texts):
        if not other.startswith(text):
            return k
    return max(0, len(step_texts) - 1)


def mismatches(questions: list[str], naive: dict, fast: dict) -> list[dict]:
    out = []
    for i, (q, a, b) in enumerate(zip(questions, naive["texts"], fast["texts"])):
        if a == b:
            continue
        k = first_difference(naive["step_texts"][i], b)
        before = naive["step_texts"][i][k - 1] if k > 0 else ""
        gap = naive["gaps"][i][k] if k < len(naive["gaps"][i]) else float("nan")
        out.append({"index": i, "question": q, "step": k, "naive_piece": naive["step_texts"][i][k][len(before):],
                    "fast_piece": b[len(before):len(before) + 8], "gap": gap, "near_tie": gap < NEAR_TIE,
                    "naive": a, "fast": b})
    return out


# ----------------------------------------------------------------------------- training


def train_rows_gold(task, examples) -> list[dict]:
    """What the train stage would fit if every question were solved: question -> gold scratchpad."""
    return [{"prompt": task.format_question(ex), "completion": task.gold_rationale(ex)} for ex in examples]


def train_pass(cfg, rows: list[dict], steps: int, seed: int, packing: bool) -> dict:
    import lightning as L

    from star.training import finetune

    class Recorder(L.Callback):
        def __init__(self):
            self.losses, self.slots = [], 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.slots += int(batch["input_ids"].numel())  # token positions computed, padding included

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    model, tokenizer = load_model(cfg)
    info = model_info(model)
    trainer_cfg = cfg.trainer.copy()
    trainer_cfg.packing = packing
    rec = Recorder()
    stats = finetune(model, tokenizer, rows, steps=steps, trainer_cfg=trainer_cfg, seed=seed,
                     progress=False, callbacks=[rec])
    return {"steps": stats.steps, "tokens": stats.n_tokens, "slots": rec.slots, "seconds": stats.seconds,
            "losses": rec.losses, "precision": str(cfg.trainer.precision), **info}


# ----------------------------------------------------------------------------- children


def child(kind: str, spec: dict) -> dict:
    """One measured pass in this (fresh) process; returns its numbers and its peak RSS."""
    cfg = compose_cfg(spec["overrides"])
    if kind in ("fast", "naive", "batched"):
        model, tokenizer = load_model(cfg, spec.get("checkpoint"))
        if kind == "fast":
            out = fast_generate(model, tokenizer, cfg, spec["prefix"], spec["questions"], spec["seeds"],
                                tuple(spec["stop"]))
        elif kind == "batched":
            out = batched_generate(model, tokenizer, cfg, spec["prefix"], spec["questions"], tuple(spec["stop"]))
        else:
            out = naive_generate(model, tokenizer, cfg, spec["prefix"], spec["questions"], tuple(spec["stop"]))
        out.update(model_info(model))
    elif kind == "vllm":
        from star.models import saved_base

        out = vllm_generate(cfg, spec.get("checkpoint") or saved_base(cfg.model), spec["prefix"], spec["questions"],
                            spec["seeds"], tuple(spec["stop"]))
    elif kind == "train":
        out = train_pass(cfg, spec["rows"], spec["steps"], spec["seed"], spec["packing"])
    elif kind == "loop":
        out = run_loop_iteration(cfg, Path(spec["run_dir"]))
    else:
        raise ValueError(f"unknown child kind {kind}")
    # ru_maxrss is in KiB on Linux.
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(kind: str, spec: dict, workdir: Path, fresh: bool = True) -> dict:
    """child(kind, spec) in a fresh Python process (fresh=False: in this one, for tests; its peak RSS
    is then this process's so far, not the pass's own)."""
    print(f"[bench] {kind} ...", flush=True)
    start = time.perf_counter()
    if fresh:
        spec_path, result_path = workdir / f"{kind}-spec.json", workdir / f"{kind}-result.json"
        spec_path.write_text(json.dumps(spec))
        subprocess.run([sys.executable, __file__, "--child", kind, str(spec_path), str(result_path)],
                       check=True, cwd=REPO)
        out = json.loads(result_path.read_text())
    else:
        out = json.loads(json.dumps(child(kind, spec)))  # the same JSON round trip as a child's result
    print(f"[bench] {kind} done in {time.perf_counter() - start:.0f}s", flush=True)
    return out


def run_loop_iteration(cfg, run_dir: Path) -> dict:
    """One default iteration through the real StarLoop (iteration 0's eval comes first, as always)."""
    from star import artifacts as A
    from star.loop import StarLoop

    StarLoop(cfg, run_dir).run()
    done = {stage: A.read_done(run_dir, 1, stage) for stage in ("generate", "rationalize", "train", "eval")}
    return {"done": done, "baseline_eval_s": A.read_done(run_dir, 0, "eval")["seconds"]}


# ----------------------------------------------------------------------------- matmul


def matmul_rates(info: dict, seconds: float = 0.5, tokens: int = 512) -> list[dict]:
    """GFLOP/s of (tokens x K) @ (K x N) for the model's projection shapes, fp32 and bf16."""
    import torch

    h, inner, vocab = info["hidden"], info["inner"], info["vocab"]
    shapes = [("attention q/o", h, h), ("MLP up", h, inner), ("MLP down", inner, h), ("output", h, vocab)]
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, k, n in shapes:
            a = torch.randn(tokens, k, dtype=dtype)
            b = torch.randn(k, n, dtype=dtype)
            for _ in range(2):
                torch.matmul(a, b)  # warm-up (allocation, kernel choice)
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                torch.matmul(a, b)
                reps += 1
            elapsed = time.perf_counter() - start
            out.append({"dtype": str(dtype).replace("torch.", ""), "shape": f"{name} ({tokens}x{k})@({k}x{n})",
                        "gflops": 2 * tokens * k * n * reps / elapsed / 1e9})
    return out


def ceiling(rates: list[dict], dtype: str) -> float:
    return max(r["gflops"] for r in rates if r["dtype"] == dtype)


# ----------------------------------------------------------------------------- report


def speedup_line(speedup: float) -> str:
    return f"generation speedup vs naive: {speedup:.1f}x"


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, Python {platform.python_version()}")


def _md_escape(text: str) -> str:
    return json.dumps(text)[1:-1].replace("|", "\\|")


def render(r: dict) -> str:
    g, t = r["generation"], r["training"]
    fp32, bf16 = ceiling(r["matmul"], "float32"), ceiling(r["matmul"], "bfloat16")
    lines = [speedup_line(g["speedup"]), ""]
    if r["smoke"]:
        lines += ["**Smoke check (--quick or --n below 256): small numbers, not the benchmark's.**", ""]
    lines += [
        f"Machine: {r['machine']}. Load average (1 min) at start {r['load'][0]:.2f}, at end {r['load'][1]:.2f}.",
        f"Date: {r['date']}. Commit: {r['commit']}. Total benchmark time {r['total_s'] / 60:.1f} min.",
        f"Command: `{r['command']}`",
        f"Model: {g['model']['class']}, {g['model']['n_params'] / 1e6:.1f}M parameters (tied counted once); "
        f"overrides: {' '.join(r['overrides']) or '(none: the default run)'}."
        + (" Every pass ran in one process (--in-process): peak RSS is cumulative." if r["in_process"]
           else " Every pass ran in a fresh process: each peak RSS is that pass's own."), "",
        "## Matmul rate (torch.matmul, the model's projection shapes)", "",
        "| dtype | shape | GFLOP/s |", "|---|---|---|"]
    lines += [f"| {m['dtype']} | {m['shape']} | {m['gflops']:.1f} |" for m in r["matmul"]]
    lines += ["", f"Ceilings used below (best shape): fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s.", "",
              f"## Generation: {g['n']} training questions, fp32, greedy, max_new_tokens {g['max_new_tokens']}, "
              f"stop {_md_escape(' / '.join(g['stop']))} or EOS", "",
              "Naive: `model.generate()` per question (batch 1, full prompt, KV cache on). Fast: HFGenerator "
              f"(batch {g['batch_size']}, shared-prefix KV reuse {g['reuse_prefix']}). Utilization = 2 x params x "
              "tokens run through the model (prompt tokens actually encoded + new tokens) / seconds / fp32 ceiling.", "",
              "| path | seconds | s/question | new tokens | new tok/s | tokens run | utilization (fp32) | peak RSS (MiB) |",
              "|---|---|---|---|---|---|---|---|"]
    paths = [name for name in ("naive", "batched", "fast", "vllm") if g.get(name)]
    for name in paths:
        p = g[name]
        util = 2 * g["model"]["n_params"] * p["model_tokens"] / p["seconds"] / (fp32 * 1e9)
        rss = f"{p['peak_rss_mib']:.0f}" + (f" (+ engine {p['engine_peak_rss_mib']:.0f})" if name == "vllm" else "")
        lines.append(f"| {name} | {p['seconds']:.1f} | {p['seconds'] / g['n']:.3f} | {p['new_tokens']} | "
                     f"{p['new_tokens'] / p['seconds']:.1f} | {p['model_tokens']} | {util:.1%} | {rss} |")
    lines += ["", "batched: `model.generate()` on left-padded batches of the fast path's batch size, in input order "
              "(tokens run: every slot of every batch, padding included). vllm: generator=vllm, seconds without its "
              "engine start" + (f" ({g['vllm']['startup_s']:.1f} s, measured apart)." if g.get("vllm") else
                                f": not measured here ({g.get('vllm_missing')}).")]
    for name in ("fast", "vllm"):
        if g.get(name):
            p = g[name]
            lines.append(f"- {name}: {g['naive']['seconds'] / p['seconds']:.1f}x vs naive, "
                         f"{g['batched']['seconds'] / p['seconds']:.1f}x vs batched naive"
                         + (f"; with its start-up {g['naive']['seconds'] / (p['seconds'] + p['startup_s']):.1f}x "
                            f"and {g['batched']['seconds'] / (p['seconds'] + p['startup_s']):.1f}x"
                            if name == "vllm" else ""))
    for name, mm in (("fast", g["mismatches"]), ("batched", g.get("batched_mismatches") or []),
                     ("vllm", g.get("vllm_mismatches") or [])):
        if not g.get(name):
            continue
        lines += ["", f"{name} vs naive, texts compared one by one: {g['n'] - len(mm)} of {g['n']} identical, "
                  f"{len(mm)} differ; {sum(m['near_tie'] for m in mm)} of them at a near-tie "
                  f"(naive top-2 logit gap < {NEAR_TIE:g} at the first differing token)."]
        if mm:
            lines += ["", f"| # | question | step | naive token | {name} text there | top-2 gap | near-tie |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {m['index']} | {_md_escape(m['question'])} | {m['step']} | `{_md_escape(m['naive_piece'])}` | "
                      f"`{_md_escape(m['fast_piece'])}` | {m['gap']:.2e} | {'yes' if m['near_tie'] else 'NO'} |"
                      for m in mm]
    rate = bf16 if t["packed"]["precision"].startswith("bf16") else fp32
    lines += ["", f"## Training: gold scratchpads of the {t['n_rows']} questions, {t['packed']['steps']} steps "
              f"(one pass), trainer.batch_size {t['batch_size']}, precision {t['packed']['precision']}", "",
              f"Packed and unpacked see the same examples in the same steps (same sampler). Utilization = 6 x params "
              f"x real tokens / seconds / {'bf16' if rate == bf16 else 'fp32'} ceiling ({rate:.1f} GFLOP/s).", "",
              "| trainer.packing | seconds | real tokens | token slots (with padding) | tokens/s | utilization | "
              "peak RSS (MiB) | last loss |", "|---|---|---|---|---|---|---|---|"]
    for name in ("packed", "unpacked"):
        p = t[name]
        tps = p["tokens"] / p["seconds"]
        util = 6 * p["n_params"] * tps / (rate * 1e9)
        lines.append(f"| {name == 'packed'} | {p['seconds']:.1f} | {p['tokens']} | {p['slots']} | {tps:.1f} | "
                     f"{util:.1%} | {p['peak_rss_mib']:.0f} | {p['losses'][-1]:.4f} |")
    diffs = [abs(a - b) for a, b in zip(t["packed"]["losses"], t["unpacked"]["losses"])]
    lines += ["", f"Packed / unpacked tokens/s: {t['ratio']:.2f}x. Per-step loss, packed vs unpacked: largest "
              f"difference {max(diffs):.2e} over {len(diffs)} steps (the same examples per step; only the "
              "rounding differs with the layout)."]
    s = r.get("stages")
    if s:
        lines += ["", "## One default iteration (iteration 1 of `star`), before and after", "",
                  "After: the project's path. Before: naive generation, unpacked training. "
                  f"Naive seconds per question measured on a sample of each stage's own prompts and model "
                  f"(generate: the {g['n']}-question pass above; rationalize and eval: {s['sample']} questions each).", "",
                  "| stage | questions | before (s) | how | after (s) | how |", "|---|---|---|---|---|---|"]
        for row in s["rows"]:
            lines.append(f"| {row['stage']} | {row['count']} | {row['before']:.1f} | {row['before_how']} | "
                         f"{row['after']:.1f} | {row['after_how']} |")
        lines += ["", f"Total: before {s['before_total']:.1f} s, after {s['after_total']:.1f} s "
                  f"({s['before_total'] / s['after_total']:.1f}x). {s['note']}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def stage_table(cfg, overrides, task, loop: dict, naive_gen: dict, n_gen: int, run_dir: Path, run,
                sample: int) -> dict:
    """Before/after per stage for iteration 1 of the loop run in run_dir (see the module docstring)."""
    from star import artifacts as A
    from star.stages.context import derive_seed

    done = loop["done"]
    rows = []
    # generate: naive s/question from the big pass (same model M0, same few-shot prefix).
    n = done["generate"]["n_questions"]
    rows.append({"stage": "generate", "count": n, "before": naive_gen["seconds"] / n_gen * n,
                 "before_how": f"composed: naive s/question x {n}", "after": done["generate"]["seconds"],
                 "after_how": "measured (loop)"})
    # rationalize: M0 with the hinted few-shot prompt, the run's own failures.
    rats = A.read_jsonl(A.iter_dir(run_dir, 1) / "rationalizations.jsonl")
    by_id = {ex.id: ex for ex in task.load("train")}
    n = len(rats)
    if n:
        chosen = [by_id[r["id"]] for r in rats[:sample]]
        prefix = task.fewshot_prompt(hint=True) if cfg.rationalization.hinted_prompt else task.fewshot_prompt()
        naive = run("naive", {"overrides": overrides, "prefix": prefix, "stop": list(task.stop),
                              "questions": [task.format_question(ex, hint=True) for ex in chosen]})
        before = naive["seconds"] / len(chosen) * n
    else:
        before = 0.0
    rows.append({"stage": "rationalize", "count": n, "before": before,
                 "before_how": f"composed: naive s/question ({min(n, sample)} measured) x {n}",
                 "after": done["rationalize"]["seconds"], "after_how": "measured (loop)"})
    # train: the run's own rows and steps, fitted unpacked and packed in fresh processes. "After" is the fit
    # the run's own trainer.packing does (the default fits unpacked), so packing is credited only where it is on.
    train_rows = A.read_jsonl(A.iter_dir(run_dir, 1) / "train.jsonl")
    steps = done["train"]["steps"]
    fits = {False: 0.0, True: 0.0}
    if train_rows and steps:
        spec = {"overrides": overrides, "rows": train_rows, "steps": steps, "seed": derive_seed(cfg.seed, 1, "train")}
        fits = {packing: run("train", {**spec, "packing": packing})["seconds"] for packing in (False, True)}
    packing = bool(cfg.trainer.packing)
    rows.append({"stage": "train", "count": len(train_rows), "before": fits[False],
                 "before_how": f"measured: unpacked fit, {steps} steps", "after": fits[packing],
                 "after_how": f"measured: {'packed' if packing else 'unpacked'} fit (the run's trainer.packing="
                              f"{packing}), {steps} steps"})
    # eval: M1 (the run's checkpoint), in the format it was trained on, on dev.
    ref_done = done["train"]
    dev = task.load("dev")
    n = len(dev)
    chosen = dev[:sample]
    prefix = task.fewshot_prompt() if ref_done["prompted"] else ""
    spec = {"overrides": overrides, "prefix": prefix, "stop": list(task.stop),
            "questions": [task.format_question(ex) for ex in chosen]}
    if ref_done["checkpoint"]:
        spec["checkpoint"] = str(run_dir / ref_done["checkpoint"])
    naive = run("naive", spec)
    rows.append({"stage": "eval", "count": n, "before": naive["seconds"] / len(chosen) * n,
                 "before_how": f"composed: naive s/question ({len(chosen)} measured) x {n}",
                 "after": done["eval"]["seconds"], "after_how": "measured (loop)"})
    loop_train = done["train"]["seconds"]
    return {"rows": rows, "sample": sample, "before_total": sum(r["before"] for r in rows),
            "after_total": sum(r["after"] for r in rows),
            "note": (f"The loop's own train stage (fit with trainer.packing={cfg.trainer.packing}, plus tokenizing and "
                     f"the checkpoint save) took {loop_train:.1f} s; the train row compares fits alone (a packed fit of "
                     f"the same rows and steps: {fits[True]:.1f} s). Iteration 0's "
                     f"few-shot eval ({loop['baseline_eval_s']:.1f} s) is not part of an iteration.")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="training questions for the generation and training passes (default 256)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 8 questions, short loop, short timings")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results.md"))
    ap.add_argument("--stage-sample", type=int, default=None, help="questions per naive stage sample (default 16)")
    ap.add_argument("--no-stages", action="store_true", help="skip the one-iteration stage table")
    ap.add_argument("--in-process", action="store_true",
                    help="run every pass in this process (tests: faster; peak RSS no longer per pass)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "RESULT"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for `star`")
    args = ap.parse_args(argv)
    if args.child:
        kind, spec_path, result_path = args.child
        out = child(kind, json.loads(Path(spec_path).read_text()))
        Path(result_path).write_text(json.dumps(out))
        return 0

    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    n = args.n or (QUICK_N if args.quick else 256)
    sample = args.stage_sample or (2 if args.quick else 16)
    overrides = ["generator.progress=false", *args.overrides]
    cfg = compose_cfg(overrides)
    task = bench_task(cfg, n)
    from star.stages.context import derive_seed

    examples = task.load("train")[:n]
    prefix = task.fewshot_prompt(direct=cfg.method.direct)
    questions = [task.format_question(ex) for ex in examples]
    bench_overrides = overrides + [f"task.train_size={max(n, cfg.task.train_size)}"]
    workdir = Path(tempfile.mkdtemp(prefix="star-bench-"))

    def run(kind: str, spec: dict) -> dict:
        return run_child(kind, spec, workdir, fresh=not args.in_process)

    try:
        gen_spec = {"overrides": bench_overrides, "prefix": prefix, "questions": questions, "stop": list(task.stop),
                    "seeds": [derive_seed(cfg.seed, 1, "generate", ex.id) for ex in examples]}
        fast = run("fast", gen_spec)
        naive = run("naive", gen_spec)
        batched = run("batched", gen_spec)
        from star.generation.vllm_engine import environment_problem
        from star.models import saved_base

        vllm_missing = environment_problem(None) or (
            None if saved_base(cfg.model) else f"model={cfg.model.name} is built in memory: vLLM loads a directory")
        vllm = None if vllm_missing else run("vllm", gen_spec)
        info = {k: fast[k] for k in ("n_params", "hidden", "inner", "vocab", "class")}
        mm = mismatches(questions, naive, fast)
        keys = ("seconds", "new_tokens", "model_tokens", "peak_rss_mib")
        generation = {"n": n, "max_new_tokens": cfg.task.max_new_tokens, "stop": list(task.stop),
                      "batch_size": cfg.generator.batch_size, "reuse_prefix": cfg.generator.reuse_prefix,
                      "model": info, "speedup": naive["seconds"] / fast["seconds"], "mismatches": mm,
                      "naive": {k: naive[k] for k in keys}, "fast": {k: fast[k] for k in keys},
                      "batched": {k: batched[k] for k in keys}, "batched_mismatches": mismatches(questions, naive, batched),
                      "vllm": vllm and {k: vllm[k] for k in (*keys, "startup_s", "engine_peak_rss_mib")},
                      "vllm_mismatches": vllm and mismatches(questions, naive, vllm), "vllm_missing": vllm_missing}
        mm = mm + (generation["vllm_mismatches"] or [])

        rows = train_rows_gold(task, examples)
        steps = 4 if args.quick else max(1, len(rows) // cfg.trainer.batch_size)
        spec = {"overrides": bench_overrides, "rows": rows, "steps": steps, "seed": cfg.seed}
        packed = run("train", {**spec, "packing": True})
        unpacked = run("train", {**spec, "packing": False})
        training = {"n_rows": len(rows), "batch_size": cfg.trainer.batch_size, "packed": packed, "unpacked": unpacked,
                    "ratio": (packed["tokens"] / packed["seconds"]) / (unpacked["tokens"] / unpacked["seconds"])}

        stages = None
        if not args.no_stages:
            loop_overrides = overrides + ["n_iterations=1", "logger=none"]
            if args.quick:
                loop_overrides += ["task.train_size=8", "task.dev_size=4", "schedule.base_steps=2"]
            run_dir = workdir / "run"
            loop = run("loop", {"overrides": loop_overrides, "run_dir": str(run_dir)})
            loop_cfg = compose_cfg(loop_overrides)
            from star.tasks import build_task

            stages = stage_table(loop_cfg, loop_overrides, build_task(loop_cfg.task, seed=loop_cfg.seed), loop,
                                 naive, n, run_dir, run, sample)

        from star.run_info import commit_label

        print("[bench] matmul rates ...", flush=True)
        rates = matmul_rates(info, seconds=0.1 if args.quick else 0.5)
        result = {"generation": generation, "training": training, "stages": stages, "matmul": rates,
                  "machine": machine(), "load": (load_start, os.getloadavg()[0]),
                  "date": datetime.datetime.now().isoformat(timespec="minutes"), "commit": commit_label(),
                  "command": " ".join(["python", "benchmarks/bench_speed.py", *(argv if argv is not None else sys.argv[1:])]),
                  "overrides": args.overrides, "total_s": time.perf_counter() - t0, "in_process": args.in_process,
                  "smoke": args.quick or n < 256}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(result))
        print(out.read_text())
        bad = [m for m in mm if not m["near_tie"]]
        if bad:
            print(f"[bench] {len(bad)} mismatch(es) are NOT near-ties: a bug, not rounding", file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
