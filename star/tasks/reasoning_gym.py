"""reasoning_gym: reasoning_gym's procedurally generated, verifiable datasets as a star task.

    star task=reasoning_gym task.dataset=chain_sum
    star task=reasoning_gym task.dataset=basic_arithmetic +task.dataset_kwargs.max_terms=3   # "+": a new key
    python -c "from star.tasks.reasoning_gym_audit import safe_datasets; print(safe_datasets())"   # accepted names

Problems are generated in-process from the seed (no files, no network), by
`reasoning_gym.create_dataset(task.dataset, seed=..., size=..., **task.dataset_kwargs)`, and
judged by the dataset's own `score_answer`: a completion is correct iff the answer it writes
scores exactly 1.0.

Prompt and completion (the same shape as the paper's tasks; a blank line is the stop):

    Q: Calculate 5 - 3 - 6.          <- with hint=True: "... 6. (hint: the answer is -4)"
    A: The answer is -4.
    <blank line>

Decisions worth knowing:
- Splits: four generator streams with seeds derived from (seed, dataset, stream name): the
  few-shot exemplars ("fewshot", 8 of them), then dev, then test, then train. Each keeps only
  questions not already taken (also within itself; compared by normalize_question), so
  exemplars, dev, test and train are pairwise disjoint, and dev and test do not change with
  train_size. Too few distinct questions for a size is a ValueError that names the key to lower.
- Questions are stripped and their blank lines collapsed: a blank line is the separator
  between exemplars (and the stop), so it must not occur inside one.
- Rationales: reasoning_gym has no rationale for most datasets. Where an entry's metadata
  holds one (`answer_cot`, e.g. gsm_symbolic) it becomes the exemplar's and the gold
  completion (one step a line, blank lines and a "#### N" line dropped, then the answer line),
  but only if the dataset scores that completion 1.0. Otherwise gold_rationale is None and the
  chain-of-thought exemplar is the answer line alone, " The answer is X." (then the CoT and
  the direct few-shot prompts are the same text).
- The answer extractor reads the text before the stop and before a line starting "Q:"; the
  answer is everything after the LAST "the answer is" (case-insensitive, an optional ":"), up
  to the end of that text, stripped, with one trailing "." removed. So multi-line answers work,
  and text after the answer (on its line or later lines) becomes part of it and is scored as
  such (usually wrong): the answer line must be the last thing written.
- Each exemplar's answer line must read back, through the extractor and the dataset's scorer,
  as correct; a dataset whose answers cannot (e.g. an answer holding a blank line) is refused
  with a ValueError when the prompt is built.
- class_of: the entry's metadata "difficulty" when it is a single value; when it is a dict of
  ranges (the dataset's config, the same for every entry), the entry's own values of those keys
  ("num_digits=1,num_terms=3"); else "all".
- is_faithful is None: steps are not checked.
- Safety: model output is parsed, never executed. Some reasoning_gym scorers evaluate the answer
  (Python's eval, sympy's parse_expr); those datasets are refused when the task is built, with the
  reason and the safe datasets named (star/tasks/reasoning_gym_audit.py has the list, the evidence and
  why refusing beats a sandbox; tests/test_reasoning_gym_audit.py re-checks it from the installed sources).
- A scorer that raises on an answer scores it wrong, and counts it in `scorer_errors` (the stages log
  the count per iteration as gen/scorer_errors): a scorer that chokes on every answer shows up as
  errors rather than as a solve rate of 0.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from star.tasks import answers
from star.tasks.base import (
    SPLITS,
    Example,
    TaskConfig,
    answer_hint,
    answer_line,
    normalize_question,
    qa_question,
    split_sizes,
    unknown_split,
)
from star.tasks.reasoning_gym_audit import refusal, safe_datasets

NAME = "reasoning_gym"
STOP = "\n\n"
N_EXEMPLARS = 8
# Metadata keys that hold a worked solution in some datasets (gsm_symbolic: answer_cot).
RATIONALE_KEYS = ("answer_cot",)
# Look at most this many generator indices per requested question before giving up on filling a split.
_TRIES_PER_QUESTION = 10
_TRIES_MIN = 1000

_ANSWER_RE = re.compile(r"\bthe answer is\b:?", re.IGNORECASE)
_BLANK_LINES_RE = re.compile(r"\n\s*\n")
_FINAL_LINE_RE = re.compile(r"^\s*####")


@dataclass
class ReasoningGymConfig(TaskConfig):
    """The reasoning_gym task's config keys (besides TaskConfig's)."""

    # The reasoning_gym dataset name, and the keyword arguments its config takes.
    dataset: Optional[str] = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the generator

def dataset_names() -> list[str]:
    """Every dataset name reasoning_gym registers."""
    import reasoning_gym  # local: importing it takes about a second

    return sorted(reasoning_gym.factory.DATASETS)


def make_dataset(name: str, kwargs: dict | None, seed: int, size: int):
    """reasoning_gym's dataset `name`, or a ValueError that says the fix."""
    import reasoning_gym

    names = dataset_names()
    if name not in names:
        raise ValueError(
            f"unknown reasoning_gym dataset {name!r}; e.g. basic_arithmetic, chain_sum, leg_counting, "
            f"gsm_symbolic ({len(names)} in all; list them with: python -c \"import reasoning_gym; "
            f"print(sorted(reasoning_gym.factory.DATASETS))\"); set task.dataset=NAME")
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **dict(kwargs or {}))
    except (TypeError, AssertionError, ValueError) as e:
        raise ValueError(f"reasoning_gym dataset {name!r} rejects task.dataset_kwargs={dict(kwargs or {})}: "
                         f"{type(e).__name__}: {e}; fix or remove the offending key") from None


def stream_seed(seed: int, dataset: str, stream: str) -> int:
    """A generator seed per (run seed, dataset, stream): far apart, so streams do not share items
    (many datasets seed item i with seed + i)."""
    digest = hashlib.sha256(f"star-{NAME}/seed={seed}/dataset={dataset}/stream={stream}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def clean_question(question: str) -> str:
    return _BLANK_LINES_RE.sub("\n", str(question).strip())


def generate(dataset: str, kwargs: dict | None, seed: int, stream: str, n: int, taken: set[str],
             size_key: str, key: Callable[[str], str] = normalize_question) -> tuple[Any, list[dict]]:
    """(the dataset object, the first n entries of `stream` whose question's key(question) is not
    in `taken`). Adds their keys to `taken`. size_key names the config key to lower in the error."""
    cap = max(_TRIES_PER_QUESTION * n, _TRIES_MIN)
    ds = make_dataset(dataset, kwargs, seed=stream_seed(seed, dataset, stream), size=cap)
    out: list[dict] = []
    for idx in range(cap):
        if len(out) == n:
            break
        entry = ds[idx]
        q = key(entry["question"])
        if q in taken:
            continue
        taken.add(q)
        out.append(entry)
    if len(out) < n:
        raise ValueError(f"reasoning_gym dataset {dataset!r} gave only {len(out)} new distinct questions in "
                         f"{cap} tries for {stream} (wanted {n}); lower {size_key}, or widen task.dataset_kwargs")
    return ds, out


# ----------------------------------------------------------------------------- the answer line

def extract_answer(completion: str) -> str | None:
    """Everything after the last "The answer is", one trailing "." dropped; None when absent or empty."""
    region = answers.answer_region(completion, STOP)
    matches = list(_ANSWER_RE.finditer(region))
    if not matches:
        return None
    answer = region[matches[-1].end():].strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer or None


def reasoning_lines(completion: str) -> int:
    """The non-empty lines before the first "The answer is" line, in the part that answers this question."""
    return answers.reasoning_lines(answers.answer_region(completion, STOP), _ANSWER_RE.search)


def rationale_steps(entry: dict) -> list[str] | None:
    """The entry's own worked solution as steps (one a line), or None when it has none."""
    meta = entry.get("metadata") or {}
    for key in RATIONALE_KEYS:
        text = meta.get(key)
        if isinstance(text, str) and text.strip():
            steps = [line.strip() for line in text.split("\n") if line.strip() and not _FINAL_LINE_RE.match(line)]
            return steps or None
    return None


# ----------------------------------------------------------------------------- the task

class ReasoningGymTask:
    """One reasoning_gym dataset as a star task; see the module docstring for the decisions."""

    name = NAME
    stop = (STOP,)
    config_class = ReasoningGymConfig
    splits = SPLITS
    eval_splits: dict = {}  # no extra evaluation split (star/tasks/base.py); never written to

    def __init__(self, dataset: str, train_size: int, dev_size: int, seed: int = 0,
                 dataset_kwargs: dict | None = None, test_size: int = 100):
        if not dataset:
            raise ValueError("task=reasoning_gym needs a dataset; set task.dataset=NAME (e.g. basic_arithmetic)")
        self.sizes = split_sizes(train_size, dev_size, test_size)
        self.dataset = str(dataset)
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.seed = int(seed)
        # Fail at construction, before anything is generated: on a dataset whose scorer would execute
        # model output (see reasoning_gym_audit), then on an unknown name or bad kwargs.
        if (why := refusal(self.dataset)) is not None:
            safe = safe_datasets()  # none when the installed reasoning-gym is not the audited one
            fix = (f"; model output is parsed, never executed: set task.dataset to one of the {len(safe)} "
                   f"datasets whose scorers only parse: {', '.join(safe)}") if safe else ""
            raise ValueError(why + fix)
        self._scorer = make_dataset(self.dataset, self.dataset_kwargs, seed=0, size=1)
        # Answers whose scoring raised (scored wrong); the stages log the count as gen/scorer_errors.
        self.scorer_errors = 0
        # Filled on first use; per instance, so there is no module-level mutable state.
        self._splits: dict[str, list[Example]] | None = None
        self._exemplars: list[Example] = []
        self._fewshot: dict[tuple[bool, bool], str] = {}

    @classmethod
    def from_config(cls, task_cfg, seed: int) -> "ReasoningGymTask":
        kwargs = getattr(task_cfg, "dataset_kwargs", None)
        if kwargs is not None and not isinstance(kwargs, dict):
            from omegaconf import OmegaConf

            kwargs = OmegaConf.to_container(kwargs, resolve=True)
        return cls(dataset=getattr(task_cfg, "dataset", None), train_size=task_cfg.train_size,
                   dev_size=task_cfg.dev_size, test_size=task_cfg.test_size, seed=seed, dataset_kwargs=kwargs)

    # --- data

    def load(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise unknown_split(NAME, split, self.splits)
        if self._splits is None:
            self._build()
        return list(self._splits[split])  # a copy: callers cannot edit the cache

    def _build(self) -> None:
        taken: set[str] = set()
        args = (self.dataset, self.dataset_kwargs, self.seed)
        _, fewshot = generate(*args, "fewshot", N_EXEMPLARS, taken, size_key="(nothing: too few problems for the prompt)")
        self._exemplars = self._examples("fewshot", fewshot)
        # dev and test before train: a larger train_size does not move them.
        entries = {}
        for split in ("dev", "test", "train"):
            self._scorer, entries[split] = generate(*args, split, self.sizes[split], taken,
                                                    size_key=f"task.{split}_size")
        self._splits = {split: self._examples(split, entries[split]) for split in SPLITS}

    @staticmethod
    def _examples(split: str, entries: list[dict]) -> list[Example]:
        return [Example(id=f"{split}-{i:06d}", question=clean_question(e["question"]), answer=str(e["answer"]),
                        meta={"entry": e}) for i, e in enumerate(entries)]

    # --- prompts

    def hint_text(self, example: Example) -> str:
        return answer_hint(example.answer)

    def format_question(self, example: Example, hint: bool = False) -> str:
        return qa_question(example.question, self.hint_text(example) if hint else "")

    def fewshot_prompt(self, direct: bool = False, hint: bool = False) -> str:
        """N_EXEMPLARS generated exemplars (a stream of their own): with their worked solution where
        the dataset gives one, else (and with direct=True) the answer line alone; hint=True shows
        each exemplar's answer as a hint (the rationalization prompt)."""
        key = (direct, hint)
        if key not in self._fewshot:
            if self._splits is None:
                self._build()
            parts = []
            for n, ex in enumerate(self._exemplars, 1):
                answer_line = self.direct_completion(ex)
                if not self.is_correct(ex, answer_line):
                    raise ValueError(
                        f"reasoning_gym dataset {self.dataset!r}: exemplar {n}'s answer {ex.answer[:60]!r} does not "
                        f"read back as correct from the answer line ' The answer is X.'; this dataset's answers "
                        f"cannot be written in this task's format; choose another task.dataset")
                completion = answer_line if direct else (self.gold_rationale(ex) or answer_line)
                parts.append(self.format_question(ex, hint=hint) + completion)
            self._fewshot[key] = "".join(parts)
        return self._fewshot[key]

    # --- scoring

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def reasoning_lines(self, completion: str) -> int:
        return reasoning_lines(completion)

    def score(self, example: Example, answer: str | None) -> float:
        """reasoning_gym's own score of an extracted answer (0.0 for None)."""
        if answer is None:
            return 0.0
        entry = example.meta.get("entry") or {"question": example.question, "answer": example.answer, "metadata": {}}
        try:
            return float(self._scorer.score_answer(answer, entry))
        except Exception as e:  # a scorer that chokes on a malformed answer: that answer is wrong, and counted
            self.scorer_errors += 1
            if self.scorer_errors == 1:  # the first one's cause, once; the count goes to the metrics
                warnings.warn(f"[star] reasoning_gym {self.dataset!r} scorer raised {type(e).__name__}: "
                              f"{str(e)[:200]} (on answer {answer[:80]!r}); scored wrong, counted in "
                              "gen/scorer_errors", stacklevel=2)
            return 0.0

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.score(example, extract_answer(completion)) == 1.0

    def class_of(self, example: Example) -> str:
        meta = (example.meta.get("entry") or {}).get("metadata") or {}
        difficulty = meta.get("difficulty")
        if isinstance(difficulty, (str, int, float)) and not isinstance(difficulty, bool):
            return str(difficulty)
        if isinstance(difficulty, dict):
            own = {k: meta[k] for k in sorted(difficulty) if k in meta and isinstance(meta[k], (str, int, float))}
            if own:
                return ",".join(f"{k}={v}" for k, v in own.items())
        return "all"

    def direct_completion(self, example: Example) -> str:
        """The gold answer line alone (answers-only prompt and direct fine-tuning)."""
        return answer_line(example.answer, STOP)

    def gold_rationale(self, example: Example) -> str | None:
        steps = rationale_steps(example.meta.get("entry") or {})
        if steps is None:
            return None
        completion = " " + "\n".join(steps + [f"The answer is {example.answer}."]) + STOP
        return completion if self.is_correct(example, completion) else None

    def is_faithful(self, example: Example, completion: str) -> None:
        return None
