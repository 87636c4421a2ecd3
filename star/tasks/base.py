"""The task contract: what the STaR loop needs to know about a task, and nothing about models.

A task is one module under star/tasks/ with one class implementing `Task`, registered
in star/tasks/__init__.py, and one YAML file under conf/task/. The loop only ever talks
to a task through this protocol, so there is no `if task == ...` anywhere else.

A task's config keys are a dataclass next to its code: `TaskConfig` below holds the keys
every task reads, and each task module subclasses it with its own keys only (fields, no
behaviour but their range checks), named by the task class's `config_class`:

    @dataclass
    class ArithmeticConfig(TaskConfig):
        digits: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])

    class ArithmeticTask:
        config_class = ArithmeticConfig

Prompt anatomy (the generator concatenates token ids of the two parts, in this order):

    prefix   = task.fewshot_prompt()            # shared by every question; may be ""
    question = task.format_question(ex, hint)   # ends where the model's completion starts

A completion is everything the model writes after `question`, up to (and including)
the first stop string in `task.stop`. Training examples are (question without hint,
completion): the hint lives only in the prompt, so stripping it means pairing the
completion with `format_question(ex, hint=None)`.

Splits: a task loads `train` (the pool STaR learns from), `dev` (read by every selection rule:
plateau stop, best checkpoint, setting searches) and `test` (reported; no selection rule reads
it). `task.splits` names the ones it can load, known from its config without reading data:
("train", "dev", "test"), or ("train", "dev") for a file-backed task given local files without a
test file. The splits are leak-free: pairwise disjoint as problems (for addition a + b and b + a
are one problem; elsewhere questions compare by `normalize_question`), none holds a few-shot
exemplar's problem, and dev and test are drawn before train, so train_size does not move them
(arithmetic: except through its per-digit-count caps; see its module docstring).
`load(split)` of a split not in `splits` (or `eval_splits`) raises ValueError naming the fix
(`unknown_split`).

Extra evaluation splits: `task.eval_splits` maps the splits a task reports beside test to the token
budget each is generated with (None: task.max_new_tokens), for example an out-of-distribution set
whose longer problems need longer completions (arithmetic's "ood", from task.ood_digits, generated
with task.ood_max_new_tokens); {} when it has none.
A name is none of train, dev and test, nor a key eval.json has of its own (accuracy, per_class, ...).
They load with `load(name)` like the others, are disjoint from train, dev, test and the exemplars,
and are scored greedily after every iteration like test (eval.json gets one entry per name,
metrics.json `<name>/accuracy` and its per-class keys); as with test, no selection rule reads them
(not the plateau stop, not the best checkpoint). Like `splits`, the names are known from the config
without reading data.

Optional: a task whose verifier calls code that may raise on an answer (reasoning_gym's scorers)
scores that answer wrong and counts it in an int attribute `scorer_errors`; the stages log the
count per iteration as gen/scorer_errors (0 for tasks without one). It is not a protocol member,
so tasks whose verifiers cannot raise need not define it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

from omegaconf import MISSING


@dataclass(frozen=True)
class Example:
    """One question with its gold answer.

    id:        stable, unique within a split (used to derive per-example randomness)
    question:  the raw question text (task-specific; formatted by the task)
    answer:    the gold final answer, as the task writes it (e.g. "132")
    meta:      task-specific extras (e.g. the operands, the choices)
    """

    id: str
    question: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@runtime_checkable
class Task(Protocol):
    name: str
    # The splits load() accepts: ("train", "dev", "test"), or ("train", "dev") when there is no test data.
    splits: tuple[str, ...]
    # The extra evaluation splits reported beside test, loadable with load(), each with its max_new_tokens
    # (None: task.max_new_tokens), e.g. {"ood": 48}; {} when none.
    eval_splits: dict[str, Optional[int]]
    # Strings that end a completion; the generator stops a sequence at the first one.
    stop: tuple[str, ...]

    def load(self, split: str) -> list[Example]:
        """Examples of `split` ("train", "dev" or "test", one of `splits`; or one of `eval_splits`), in a
        fixed order. Any other split is a ValueError that says how to get it."""

    def fewshot_prompt(self, direct: bool = False, hint: bool = False) -> str:
        """The few-shot prefix (hand-written exemplars), ending right before a question.
        direct=True: the answers-only variant (each exemplar's completion is its answer line).
        hint=True: the exemplars with their answers shown as hints, formatted as
        format_question(ex, hint=True) formats them (the rationalization prompt)."""

    def format_question(self, example: Example, hint: bool = False) -> str:
        """The per-question prompt part; with hint=True it also shows the gold answer."""

    def hint_text(self, example: Example) -> str:
        """The exact hint string format_question inserts when hint=True."""

    def extract_answer(self, completion: str) -> str | None:
        """The final answer written in a completion, or None if there is none."""

    def reasoning_lines(self, completion: str) -> int:
        """The non-empty lines the completion writes before its answer line (the first line stating an
        answer, by the marker extract_answer reads; else its last non-empty line): 0 for an answer alone.
        Each task calls star.tasks.answers.reasoning_lines with its own answer region and marker; a task
        whose rationales are one paragraph (CQA) counts sentences as lines."""

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the completion's final answer equals the gold answer."""

    def class_of(self, example: Example) -> str:
        """The per-class accuracy key (e.g. the digit count for arithmetic)."""

    def direct_completion(self, example: Example) -> str:
        """The gold answer as an answers-only completion (few-shot direct, direct fine-tuning)."""

    def gold_rationale(self, example: Example) -> str | None:
        """A correct completion written by the task itself, or None where it has none.
        Used only by the debug oracle (rationalization.gold_oracle)."""

    def is_faithful(self, example: Example, completion: str) -> bool | None:
        """Whether every reasoning step is right, or None where the task cannot check steps."""


@dataclass
class TaskConfig:
    """The config keys every task reads (the `task:` section); a task's own keys live in its subclass.

    Optional[...] rather than `X | None`: OmegaConf reads these annotations as a schema.
    """

    name: str = MISSING
    # Size of the training pool (N), of the dev split (every selection reads it) and of the test
    # split (reported, never selected on). File-backed tasks read these as caps.
    train_size: int = 1000
    dev_size: int = 100
    test_size: int = 100
    # Sample k of the N training questions each iteration (null: all of them).
    sample_per_iteration: Optional[int] = None
    # Longest completion the generator may write for this task.
    max_new_tokens: int = 128

    def problems(self) -> list[str]:
        """Range checks a type cannot express: one message per key out of range, each naming the
        key and the value; [] when all are fine. Called on OmegaConf.to_object(cfg.task)."""
        out = []
        if not self.train_size > 0:
            out.append(f"task.train_size must be > 0, got {self.train_size}")
        if not self.dev_size > 0:
            out.append(f"task.dev_size must be > 0, got {self.dev_size}")
        if not self.test_size > 0:
            out.append(f"task.test_size must be > 0, got {self.test_size}")
        k = self.sample_per_iteration
        if not (k is None or 0 < k <= self.train_size):
            out.append(f"task.sample_per_iteration must be in 1..task.train_size ({self.train_size}) "
                       f"or null, got {k}")
        if not self.max_new_tokens > 0:
            out.append(f"task.max_new_tokens must be > 0, got {self.max_new_tokens}")
        return out


SPLITS = ("train", "dev", "test")


def split_sizes(train_size: int, dev_size: int, test_size: int) -> dict[str, int]:
    """{"train": train_size, "dev": dev_size, "test": test_size} as ints; a negative size is a
    ValueError. (0 is allowed here: the config's range checks, not the task, insist on more.)"""
    sizes = {"train": int(train_size), "dev": int(dev_size), "test": int(test_size)}
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"train_size, dev_size and test_size must be >= 0, got {train_size}, {dev_size}, {test_size}")
    return sizes


def unknown_split(task: str, split: str, splits: tuple[str, ...], fix: str = "") -> ValueError:
    """The error load(split) raises for a split not in `splits`: the valid ones, and `fix` (how
    to get the missing split, e.g. a file to pass) when there is one."""
    return ValueError(f"unknown split '{split}' for {task}; valid splits: {', '.join(splits)}"
                      + (f"; {fix}" if fix else ""))


def normalize_question(text: str) -> str:
    """A question as splits compare it: whitespace runs collapsed to one space, ends stripped,
    case folded. Two questions equal after this are one problem, whatever split they sit in."""
    return " ".join(str(text).split()).casefold()


# Shared plain-text formats. Tasks whose questions read "Q: ...\nA:" with the gold answer as
# the hint (arithmetic, GSM8K, reasoning_gym) call these from their own hint_text and
# format_question, so the hint and the answer line are written the same way everywhere.

def answer_hint(answer: str) -> str:
    """The rationalization hint appended to a question."""
    return f" (hint: the answer is {answer})"


def qa_question(question: str, hint: str = "") -> str:
    """ "Q: <question><hint>\nA:", the completion starts right after."""
    return f"Q: {question}{hint}\nA:"


def answer_line(answer: str, stop: str) -> str:
    """The answers-only completion: " The answer is <answer>." and the stop string."""
    return f" The answer is {answer}.{stop}"


def read_prompt(name: str, override: "str | Path | None" = None) -> str:
    """A few-shot file: `override` (a file, or a directory holding `name`) when given, else the
    packaged star/tasks/prompts/<name>."""
    if override is not None:
        path = Path(override)
        return (path / name if path.is_dir() else path).read_text(encoding="utf-8")
    return (resources.files("star.tasks") / "prompts" / name).read_text(encoding="utf-8")
