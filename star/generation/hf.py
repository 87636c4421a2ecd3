"""Batched generation with a transformers causal LM: the engine of every STaR pass.

Knows nothing of Lightning, tasks or STaR: it turns (prefix, questions) into completions.

    gen = HFGenerator(model, tokenizer, batch_size=16)
    texts = gen.generate(prefix, questions, seeds=[...], max_new_tokens=96, stop=("\\n\\n",))

How it saves work:
- The prompt of question i is the token ids of `prefix` followed by those of
  `questions[i]` (tokenized separately, so the ids are the same with or without reuse).
  With reuse_prefix the shared prefix is encoded once per call and its KV cache is
  copied into every batch instead of being re-encoded per question.
- Questions are sorted by length before batching (little padding), left-padded, and
  each sequence leaves the batch as soon as it writes a stop string or EOS.
- The KV cache of a batch is preallocated for the whole pass (prefix + prompt +
  max_new_tokens) and written in place: transformers' DynamicCache concatenates every
  layer's keys and values at every step, which with a 600-token few-shot prefix copied
  into each row is most of a CPU decode step.
- Sampling is seeded per question (seeds[i]), so a completion does not depend on
  which other questions share its batch. temperature 0 is greedy.
- Equal questions in one call (the k samples of a question, sampling.num_samples) are
  next to each other after the sort; within a batch their prompt is encoded once and its
  cache copied to each sample's row.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from star.faults import crash_point
from star.progress import Progress

try:  # transformers >= 4.56 keeps one layer object per decoder layer
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - older transformers: no preallocation
    DynamicCache = DynamicLayer = None


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` right after the earliest stop string; return (text, stopped)."""
    cut = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (cut is None or i + len(s) < cut):
            cut = i + len(s)
    return (text, False) if cut is None else (text[:cut], True)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Pick one token per row: argmax when temperature == 0, else seeded top-p sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set whose mass reaches top_p (always at least the top token).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # The per-question generators are CPU generators (seeded the same on any device): draw on the
    # CPU, so a GPU run samples exactly what a CPU run would from the same probabilities.
    probs = probs.cpu()
    return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)]).to(logits.device)


if DynamicLayer is not None:

    class _PreallocLayer(DynamicLayer):
        """A DynamicLayer whose keys/values live in a buffer with room for the whole pass:
        update() writes the new positions in place and returns views, instead of
        concatenating (a full copy of the layer's cache per step)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch: int, capacity: int):
            super().__init__()
            b, h, n, _ = keys.shape
            self._k = keys.new_empty((batch, h, capacity, keys.shape[-1]))
            self._v = values.new_empty((batch, h, capacity, values.shape[-1]))
            self._k[:, :, :n] = keys  # broadcasts a batch-1 prefix over the rows
            self._v[:, :, :n] = values
            self._n = n
            self.device = keys.device
            self.is_initialized = True
            self._views()

        def _views(self) -> None:
            self.keys = self._k[:, :, : self._n]
            self.values = self._v[:, :, : self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if self._n + n > self._k.shape[-2]:  # out of room (not expected): fall back to growing
                self._k = torch.cat([self._k[:, :, : self._n], key_states.to(self._k.dtype)], dim=-2)
                self._v = torch.cat([self._v[:, :, : self._n], value_states.to(self._v.dtype)], dim=-2)
            else:
                self._k[:, :, self._n : self._n + n] = key_states
                self._v[:, :, self._n : self._n + n] = value_states
            self._n += n
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._k = self._k[indices]
            self._v = self._v[indices]
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()


def _preallocated(cache, batch: int, extra: int):
    """A copy of `cache` (a DynamicCache of plain layers, batch 1 or `batch`) with `batch`
    rows and room for `extra` more positions per layer; None when that is not possible."""
    if DynamicCache is None or cache is None or type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    out = DynamicCache()
    out.layers = [_PreallocLayer(layer.keys, layer.values, batch, layer.keys.shape[-2] + extra) for layer in layers]
    return out


def length_order(question_ids: Sequence[Sequence[int]]) -> list[int]:
    """The order a pass works through its questions in, whatever the engine: indices sorted by token length
    (ties: input order). Sharding cuts this order into whole batches (star/sharding.py), so every engine
    must use it."""
    return sorted(range(len(question_ids)), key=lambda i: (len(question_ids[i]), i))


def distinct_rows(rows: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(the first row of each distinct token sequence, for every row the position of its sequence in
    that list): rows [a, a, b, a] give ([0, 2], [0, 0, 1, 0])."""
    first_of: dict[tuple[int, ...], int] = {}
    distinct, copy_from = [], []
    for r, ids in enumerate(rows):
        key = tuple(ids)
        if key not in first_of:
            first_of[key] = len(distinct)
            distinct.append(r)
        copy_from.append(first_of[key])
    return distinct, copy_from


class HFGenerator:
    def __init__(self, model, tokenizer, batch_size: int = 16, reuse_prefix: bool = True, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.progress = progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        # Counters for perf/gen_tokens_per_s (new tokens written, across calls).
        self.n_new_tokens = 0

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def batch_order(self, questions: Sequence[str]) -> list[int]:
        """The order generate() works through `questions` in: indices sorted by token length (ties:
        input order); each run of batch_size consecutive indices is one batch. A caller that hands
        generate() a contiguous run of whole batches of this order (star/sharding.py) gets exactly
        those batches, and so exactly the completions of the whole call."""
        return length_order([self._ids(q) for q in questions])

    @torch.no_grad()
    def generate(
        self,
        prefix: str,
        questions: Sequence[str],
        *,
        seeds: Sequence[int],
        max_new_tokens: int,
        stop: Sequence[str],
        temperature: float = 0.0,
        top_p: float = 1.0,
        desc: str = "generate",
    ) -> list[str]:
        """Completions for prefix + each question, in the order of `questions`."""
        if len(seeds) != len(questions):
            raise ValueError("generate() needs one seed per question")
        if not questions:
            return []
        self.model.eval()
        device = next(self.model.parameters()).device
        prefix_ids = self._ids(prefix)
        question_ids = [self._ids(q) for q in questions]
        prefix_cache = None
        if self.reuse_prefix and prefix_ids:
            out = self.model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
            prefix_cache = out.cache

        # Length-sorted batches waste little padding; results go back to the input order.
        order = length_order(question_ids)
        results: list[str] = [""] * len(questions)
        # Questions done and new tokens per second: a bar on a terminal, a line every 10% in a log.
        bar = Progress(desc, len(questions), unit="question", enabled=self.progress, leave=False)
        tokens_before = self.n_new_tokens
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            texts = self._generate_batch(
                prefix_ids, prefix_cache, [question_ids[i] for i in batch], [seeds[i] for i in batch],
                max_new_tokens, stop, temperature, top_p, device,
            )
            for i, text in zip(batch, texts):
                results[i] = text
            bar.update(start + len(batch), tokens=self.n_new_tokens - tokens_before)
            crash_point(f"{desc}/batch_{start // self.batch_size + 1}")
        bar.close()
        return results

    def _generate_batch(self, prefix_ids, prefix_cache, question_ids, seeds, max_new_tokens, stop, temperature, top_p, device):
        n = len(question_ids)
        # Rows asking the same question (its k samples, sampling.num_samples) are encoded once: the first
        # step runs on the distinct rows, then their cache and logits are copied to every row sharing them.
        distinct, copy_from = distinct_rows(question_ids)
        shared = len(distinct) < n
        n_first = len(distinct)  # rows of the first step (n when no two rows ask the same question)
        if prefix_cache is not None:
            rows = question_ids
            width = max(len(r) for r in rows)
            cache = _preallocated(prefix_cache, n_first, width + max_new_tokens)
            if cache is None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(n_first)
            n_cached = len(prefix_ids)
        else:
            rows = [prefix_ids + q for q in question_ids]
            cache = None
            n_cached = 0
        width = max(len(r) for r in rows)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((n, n_cached + width), dtype=torch.long, device=device)
        mask[:, :n_cached] = 1
        for r, ids in enumerate(rows):
            if ids:
                input_ids[r, width - len(ids):] = torch.tensor(ids, device=device)
                mask[r, n_cached + width - len(ids):] = 1
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

        alive = list(range(n))  # batch row -> original row, shrinks as sequences finish
        new_tokens: list[list[int]] = [[] for _ in range(n)]
        texts = [""] * n
        step_ids = input_ids
        for step in range(max_new_tokens):
            # Positions count only real tokens, so left padding does not shift them.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            first_shared = step == 0 and shared
            if first_shared:
                idx = torch.tensor(distinct, device=device)
                out = self.model(input_ids=step_ids[idx], attention_mask=mask[idx], position_ids=positions[idx],
                                 cache=cache, use_cache=True)
            else:
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                 cache=cache, use_cache=True)
            cache = out.cache
            if step == 0 and n_cached == 0:
                # No prefix: the prompt's own cache gets room for the new tokens.
                cache = _preallocated(cache, n_first, max_new_tokens) or cache
            logits = out.logits[:, -1, :]
            if first_shared:
                spread = torch.tensor(copy_from, device=device)
                cache.batch_select_indices(spread)
                logits = logits[spread]
            next_ids = _sample(logits, temperature, top_p, [generators[r] for r in alive])
            keep = []
            for b, r in enumerate(alive):
                tok = int(next_ids[b])
                self.n_new_tokens += 1
                if tok == self.eos_id:
                    texts[r] = self.tokenizer.decode(new_tokens[r], skip_special_tokens=True)
                    continue
                new_tokens[r].append(tok)
                text, stopped = truncate_at_stop(self.tokenizer.decode(new_tokens[r], skip_special_tokens=True), stop)
                texts[r] = text
                if not stopped:
                    keep.append(b)
            if not keep:
                break
            if len(keep) < len(alive):
                # Finished sequences leave the batch: no more compute spent on them.
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask = mask[idx]
                next_ids = next_ids[idx]
                alive = [alive[b] for b in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            step_ids = next_ids.view(-1, 1)
        return texts
