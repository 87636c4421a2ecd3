"""n-digit addition with a scratchpad: the STaR arithmetic task (paper: 1-5 digits).

Problems are generated in-process and deterministically from the seed (no files, no
network). The model writes a terse scratchpad that adds column by column, right to
left, one line per column, carrying as it goes; then the answer line; then a blank
line (the stop string):

    Q: 47 + 85
    A: 7+5+0=12
    4+8+1=13
    The answer is 132.
    <blank line>

Each column line is "<digit of a>+<digit of b>+<carry in>=<sum>": the carry in is always
written (0 or 1), so every line has the same shape. What a line "writes" is implicit:
the last digit of its sum is the answer's digit for that column and the tens digit is
the carry into the next line; the last line's sum is written whole (its tens digit is
the final carry), so the answer reads as the last sum followed by the other lines' last
digits, bottom to top. The operators have no spaces around them because the SmolLM2
tokenizer splits every digit and every space into its own token. Why this format (and
not the earlier "7+5+0=12, write 2, carry 1." with a "Final carry" line): a 135M model
follows it few-shot about as badly on 2-3 digits but it costs half the tokens (a
3-digit problem is about 38 completion tokens with the stop, a 5-digit one about 52),
which halves generation and training time; see benchmarks/default_search.md, round 2.
The arithmetic task needs max_new_tokens >= 8 * digits + 14.

Use it through the registry (`build_task(cfg.task, seed)`) or directly:

    task = ArithmeticTask(digits=[1, 2, 3], train_size=1000, dev_size=100, seed=0)
    ex = task.load("dev")[0]                       # Example(id="dev-000000", question="7 + 3", ...)
    prompt = task.fewshot_prompt() + task.format_question(ex)
    task.is_correct(ex, completion); task.is_faithful(ex, completion)
    scratchpad(ex)                                 # the gold completion, exactly in the format

Decisions worth knowing:
- The answer line is a line of its own, "The answer is N." (trailing period optional,
  case-insensitive, surrounding whitespace ignored). N is an integer: an optional "-"
  then digits. Commas ("1,234") are rejected (None): the format never writes them, so a
  comma means the model left the format. Leading zeros are fine: answers compare as
  integers, so "0132" is correct for 132.
- Several answer lines that agree count as one answer; disagreeing ones, or any line
  that starts "The answer is" but does not hold a plain integer, give None.
- is_faithful is stricter than is_correct: every line must be the right step, in order,
  with nothing extra, and the answer must be the digits the steps wrote; a right answer
  reached through a wrong step is correct but not faithful.
- Problems are ordered pairs: 47 + 85 and 85 + 47 are different problems.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from star.tasks import answers
from star.tasks.base import Example, TaskConfig, answer_hint, answer_line, qa_question, read_prompt, split_sizes

SPLITS = ("train", "dev")
STOP = "\n\n"

# Pools with at most this many (a, b) pairs (1 and 2 digits) are enumerated and
# shuffled, so they can be drawn to exhaustion without rejection sampling slowing down.
# Larger pools (3+ digits: >= 810,000 pairs) are rejection-sampled.
_ENUMERATE_LIMIT = 10_000

# Column step, e.g. "7+5+0=12" (a+b+carry in=sum). Spaces are tolerated around every
# token so "7 + 5 + 0 = 12" parses too; a trailing period is tolerated.
_STEP_RE = re.compile(r"(\d)\s*\+\s*(\d)\s*\+\s*(\d)\s*=\s*(\d+)\s*\.?")
_ANSWER_PREFIX_RE = re.compile(r"the answer is\b", re.IGNORECASE)
_ANSWER_RE = re.compile(r"the answer is\s+(-?\d+)\s*\.?", re.IGNORECASE)
_QUESTION_RE = re.compile(r"\s*(\d+)\s*\+\s*(\d+)\s*")
_EXEMPLAR_RE = re.compile(r"Q: (.+)\nA:(.*)", re.DOTALL)


@dataclass
class ArithmeticConfig(TaskConfig):
    """The arithmetic task's config keys (besides TaskConfig's)."""

    # The operand digit counts to draw from (paper: 1-5).
    digits: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])

    def problems(self) -> list[str]:
        """TaskConfig's range checks, and digits must list digit counts >= 1."""
        out = super().problems()
        if not (len(self.digits) > 0 and all(d >= 1 for d in self.digits)):
            out.append(f"task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got {list(self.digits)}")
        return out


# ----------------------------------------------------------------------------- format

def scratchpad_for(a: int, b: int) -> str:
    """The gold completion for a + b: one "a+b+c=s" line per column, answer line, stop."""
    lines = []
    carry = 0
    for da, db in _columns(a, b):
        s = da + db + carry
        lines.append(f"{da}+{db}+{carry}={s}")
        carry = s // 10
    lines.append(f"The answer is {a + b}.")
    # Leading space: the completion follows "A:" directly.
    return " " + "\n".join(lines) + STOP


def scratchpad(example: Example) -> str:
    """The gold completion for an example, exactly in the format the checker accepts."""
    a, b = operands(example)
    return scratchpad_for(a, b)


def operands(example: Example) -> tuple[int, int]:
    """(a, b) from meta, or parsed from the question when meta is missing (e.g. an
    Example rebuilt from a jsonl file without its meta)."""
    if "a" in example.meta and "b" in example.meta:
        return int(example.meta["a"]), int(example.meta["b"])
    m = _QUESTION_RE.fullmatch(example.question)
    if not m:
        raise ValueError(f"not an addition question: {example.question!r} (expected 'A + B')")
    return int(m.group(1)), int(m.group(2))


def _columns(a: int, b: int) -> list[tuple[int, int]]:
    """Digit pairs right to left; the shorter operand is padded with 0s."""
    sa, sb = str(a), str(b)
    n = max(len(sa), len(sb))
    sa, sb = sa.zfill(n), sb.zfill(n)
    return [(int(sa[i]), int(sb[i])) for i in range(n - 1, -1, -1)]


def extract_answer(completion: str) -> str | None:
    """The integer on the answer line(s) before the first stop string, as a canonical
    string ("0132" -> "132"), or None when there is no answer line, an answer line is
    malformed (non-numeric, commas, ...), or two answer lines disagree."""
    found: set[int] = set()
    for line in answers.before_stop(completion, STOP).split("\n"):
        line = line.strip()
        if not _ANSWER_PREFIX_RE.match(line):
            continue
        m = _ANSWER_RE.fullmatch(line)
        if not m:
            return None  # an answer line we cannot read: malformed output
        found.add(int(m.group(1)))
    if len(found) != 1:
        return None
    return str(found.pop())


def faithfulness_error(a: int, b: int, completion: str) -> str | None:
    """The first wrong or malformed line of a scratchpad for a + b, or None if every
    step is right (and so is the answer). Only text before the first stop is read."""
    lines = [line.strip() for line in answers.before_stop(completion, STOP).strip().split("\n")]
    columns = _columns(a, b)
    carry = 0
    written: list[int] = []
    for k, (da, db) in enumerate(columns):
        if k >= len(lines):
            return f"missing step for column {k + 1}"
        m = _STEP_RE.fullmatch(lines[k])
        if not m:
            return f"line {k + 1} is not a column step: {lines[k]!r}"
        ga, gb, gcin, gs = (int(g) for g in m.groups())
        if (ga, gb) != (da, db):
            return f"line {k + 1}: digits {ga},{gb}, expected {da},{db}"
        if gcin != carry:
            return f"line {k + 1}: carry in {gcin}, expected {carry}"
        if gs != ga + gb + gcin:
            return f"line {k + 1}: sum {gs}, expected {ga + gb + gcin}"
        written.append(gs % 10)
        carry = gs // 10
    if carry:
        written.append(carry)  # the last sum's tens digit: the final carry
    i = len(columns)
    if i >= len(lines):
        return "missing answer line"
    m = _ANSWER_RE.fullmatch(lines[i])
    if not m:
        return f"line {i + 1} is not the answer line: {lines[i]!r}"
    answer = int(m.group(1))
    from_steps = int("".join(str(w) for w in reversed(written)))
    if answer != from_steps:
        return f"answer {answer} is not the written digits {from_steps}"
    if answer != a + b:  # cannot happen if all steps are right; kept as a guard
        return f"answer {answer}, expected {a + b}"
    if i + 1 != len(lines):
        return f"extra text after the answer line: {lines[i + 1]!r}"
    return None


def parse_exemplars(text: str) -> list[tuple[str, str]]:
    """Split a few-shot file into (question, completion) pairs: blocks separated by a
    blank line, each "Q: <question>\\nA:<completion>"; the completion gets the stop
    string back. Raises ValueError on an empty file or a malformed block."""
    matches = answers.exemplar_matches(
        text, STOP, _EXEMPLAR_RE, label="few-shot exemplar", shape="Q: ...\\nA: ...",
        no_exemplars="the arithmetic few-shot file has no exemplars; "
                     "write 'Q: A + B\\nA: ...' blocks separated by blank lines")
    return [(m.group(1), m.group(2) + STOP) for m in matches]


# ----------------------------------------------------------------------------- data

def pair_stream(d: int, rng: random.Random) -> Iterator[tuple[int, int]]:
    """Distinct (a, b) pairs of d-digit operands in a random order, until the pool is
    exhausted. 1-digit operands are 0-9; longer ones have no leading zero."""
    lo = 0 if d == 1 else 10 ** (d - 1)
    hi = 10 ** d
    n = hi - lo
    if n * n <= _ENUMERATE_LIMIT:
        order = list(range(n * n))
        rng.shuffle(order)
        for k in order:
            yield lo + k // n, lo + k % n
    else:
        seen: set[tuple[int, int]] = set()
        while len(seen) < n * n:
            pair = (rng.randrange(lo, hi), rng.randrange(lo, hi))
            if pair not in seen:
                seen.add(pair)
                yield pair


def _round_robin(streams: dict[int, Iterator[tuple[int, int]]], digits: list[int],
                 n: int) -> list[tuple[int, tuple[int, int]]]:
    """Up to n (digits, pair) items cycling over digit counts; a digit count whose pool
    runs dry drops out and the cycle goes on over the others."""
    out: list[tuple[int, tuple[int, int]]] = []
    active = list(digits)
    pos = 0
    while len(out) < n and active:
        d = active[pos]
        pair = next(streams[d], None)
        if pair is None:
            del active[pos]
            if pos >= len(active):
                pos = 0
            continue
        out.append((d, pair))
        pos = (pos + 1) % len(active)
    return out


@dataclass(frozen=True)
class _Splits:
    train: list[Example]
    dev: list[Example]


class ArithmeticTask:
    """n-digit addition; see the module docstring for the format and the decisions."""

    name = "arithmetic"
    stop = (STOP,)
    config_class = ArithmeticConfig

    def __init__(self, digits, train_size: int, dev_size: int, seed: int,
                 prompt_path: str | Path | None = None):
        # Keep the user's order (it fixes the round-robin order) but drop repeats.
        self.digits = list(dict.fromkeys(int(d) for d in digits))
        if not self.digits or any(d < 1 for d in self.digits):
            raise ValueError(f"digits must list digit counts >= 1, e.g. [1, 2, 3]; got {list(digits)}")
        sizes = split_sizes(train_size, dev_size)
        self.train_size, self.dev_size = sizes["train"], sizes["dev"]
        self.seed = int(seed)
        self.prompt_path = Path(prompt_path) if prompt_path is not None else None
        # Filled on first use; per instance, so there is no module-level mutable state.
        self._splits: _Splits | None = None
        self._fewshot: dict[tuple[bool, bool], str] = {}

    @classmethod
    def from_config(cls, task_cfg, seed: int) -> "ArithmeticTask":
        return cls(digits=list(task_cfg.digits), train_size=task_cfg.train_size,
                   dev_size=task_cfg.dev_size, seed=seed)

    # --- data

    def load(self, split: str) -> list[Example]:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' for arithmetic; valid splits: {', '.join(SPLITS)}")
        if self._splits is None:
            self._splits = self._build()
        return list(getattr(self._splits, split))  # a copy: callers cannot edit the cache

    def _build(self) -> _Splits:
        # One stream per digit count, seeded by seed and digit count only, so the
        # d-digit problems do not change when other digit counts are added. Dev draws
        # first and train continues the same streams: disjoint, and dev has priority.
        streams = {d: pair_stream(d, random.Random(f"star-arithmetic/seed={self.seed}/digits={d}"))
                   for d in self.digits}
        dev = _round_robin(streams, self.digits, self.dev_size)
        if len(dev) < self.dev_size:
            raise ValueError(
                f"task.dev_size={self.dev_size} is more than the {len(dev)} distinct problems with "
                f"digit counts {self.digits}; lower task.dev_size or add digit counts to task.digits")
        train = _round_robin(streams, self.digits, self.train_size)
        if len(train) < self.train_size:
            raise ValueError(
                f"task.train_size={self.train_size} cannot be met: only {len(train)} distinct problems "
                f"with digit counts {self.digits} are left after the {self.dev_size} dev problems; "
                f"lower task.train_size (or task.dev_size), or add larger digit counts to task.digits")
        return _Splits(train=self._examples("train", train), dev=self._examples("dev", dev))

    @staticmethod
    def _examples(split: str, items) -> list[Example]:
        return [Example(id=f"{split}-{i:06d}", question=f"{a} + {b}", answer=str(a + b),
                        meta={"a": a, "b": b, "digits": d})
                for i, (d, (a, b)) in enumerate(items)]

    # --- prompts

    def hint_text(self, example: Example) -> str:
        return answer_hint(example.answer)

    def format_question(self, example: Example, hint: bool = False) -> str:
        return qa_question(example.question, self.hint_text(example) if hint else "")

    def fewshot_prompt(self, direct: bool = False, hint: bool = False) -> str:
        """The exemplars; with hint=True each exemplar's question also shows its answer as a
        hint, as the rationalization prompt does (so the model sees how a hint is used);
        with direct=True each completion is the answer line alone (few-shot direct)."""
        key = (direct, hint)
        if key not in self._fewshot:
            text = read_prompt("arithmetic.txt", self.prompt_path)
            exemplars = parse_exemplars(text)
            # A wrong exemplar would teach wrong arithmetic: refuse it loudly.
            for q, completion in exemplars:
                ex = Example(id="fewshot", question=q, answer="")
                err = faithfulness_error(*operands(ex), completion)
                if err:
                    raise ValueError(f"few-shot exemplar 'Q: {q}' is wrong: {err}")
            # Canonical join: exemplars separated by (and ending with) exactly the stop
            # string, so prefix + format_question(ex) reads as the next exemplar.
            parts = []
            for q, c in exemplars:
                ex = Example(id="fewshot", question=q, answer=extract_answer(c) or "")
                parts.append(self.format_question(ex, hint=hint) + (self.direct_completion(ex) if direct else c))
            self._fewshot[key] = "".join(parts)
        return self._fewshot[key]

    # --- scoring

    def gold_rationale(self, example: Example) -> str:
        return scratchpad(example)

    def direct_completion(self, example: Example) -> str:
        """The gold answer line alone (answers-only prompt and direct fine-tuning)."""
        return answer_line(example.answer, STOP)

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def is_correct(self, example: Example, completion: str) -> bool:
        got = extract_answer(completion)
        return got is not None and int(got) == int(example.answer)

    def class_of(self, example: Example) -> str:
        if "digits" in example.meta:
            return str(example.meta["digits"])
        a, b = operands(example)
        return str(max(len(str(a)), len(str(b))))

    def is_faithful(self, example: Example, completion: str) -> bool:
        return faithfulness_error(*operands(example), completion) is None
