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
follows it few-shot about as badly on 2-3 digits but it costs half the tokens,
which halves generation and training time; see benchmarks/default_search.md, round 2.
The longest d-digit completion (99..9 + 99..9, stop included) is 10 * d + 8 tokens with the
SmolLM2 tokenizer (one token per digit: 9 per column line with its newline, the answer line's
d + 1 digits and 6 tokens around them, the leading space): 18, 28, 38, 48, 58 for 1-5 digits
(`scratchpad_tokens(d)`; other tokenizers count differently). A max_new_tokens below that cuts
some completions before their answer line (debug=fast's 24 is below the 28 of its 2-digit
problems: its random-weight model writes no scratchpad anyway). The ood split gets a budget of its
own (task.ood_max_new_tokens, null: scratchpad_tokens of its longest digit count).

Use it through the registry (`build_task(cfg.task, seed)`) or directly:

    task = ArithmeticTask(digits=[1, 2, 3], train_size=1000, dev_size=100, test_size=100, seed=0)
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
- Problems are unordered pairs: 47 + 85 and 85 + 47 are one problem (which of the two a
  split shows is drawn from the seed). A d-digit problem has two d-digit operands.

Splits (train, dev, test) are pairwise disjoint as problems and hold no few-shot exemplar's
problem (the exemplars of the few-shot file, as unordered pairs: 3 + 4, 8 + 6, 47 + 85, ...).
Each digit count d has one stream of its problems in a random order, seeded by the seed and d
only (so the d-digit problems do not change when other digit counts are added), with the
exemplars left out; splits take problems from the streams in the order dev, test, train, so
no problem is drawn twice. The mix: a small pool (there are only 55 unordered pairs of 1-digit
numbers, 53 without the exemplars) must not be used up by whichever split draws first, and dev
and test must not change with train_size (a setting searched on dev must not move dev). So:

    dev and test each hold at most floor(available_d / 3) problems of digit count d;
    train holds at most what dev and test left of it,

where available_d is the number of d-digit problems the exemplars leave. Each split is filled
round-robin over the digit counts in task.digits order, a digit count dropping out once the
split holds its cap of it, so no stream runs dry; a split that cannot be filled is a ValueError
naming the sizes that fit. Default CPU run (digits [1, 2, 3], train 160, dev 102, test 102): dev
and test each get 17 1-digit, 43 2-digit and 42 3-digit problems; train 19, 71 and 70 (the
1-digit share of every split is smaller than a third: there are too few of them).

The out-of-distribution split "ood" (task.ood_digits, e.g. [4] while task.digits=[1,2,3]; [] for
none, the default) is an extra evaluation split (`eval_splits`, star/tasks/base.py): reported
beside test after every iteration (eval.json["ood"], metrics ood/accuracy and ood/accuracy/<digit
count>), never selected on. Its digit counts must not be in task.digits, so it shares no problem
with train, dev or test; it holds no exemplar's problem either. It draws task.ood_size problems
(null: task.test_size) from streams of its own, seeded by the seed and the digit count
("star-arithmetic/seed=S/ood/digits=d"), round-robin over ood_digits, a digit count dropping out
once its pool is used up; a size the pool cannot fill is a ValueError naming the size that fits.
Train, dev and test do not depend on ood_digits at all, nor does any training pass: the split is
generated with task.ood_max_new_tokens (null: the longest ood digit count's scratchpad_tokens),
task.max_new_tokens stays every other pass's budget. Config validation refuses ood digit counts
< 1 or in task.digits, ood_size <= 0, and an ood_max_new_tokens below that need (the split would be
scored on cut-off completions).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from star.tasks import answers
from star.tasks.base import (
    SPLITS,
    Example,
    TaskConfig,
    answer_hint,
    answer_line,
    qa_question,
    read_prompt,
    split_sizes,
    unknown_split,
)

STOP = "\n\n"
# Splits take problems from the digit streams in this order: dev and test before train.
DRAW_ORDER = ("dev", "test", "train")

# Pools with at most this many unordered pairs (1 and 2 digits) are enumerated and
# shuffled, so they can be drawn to exhaustion without rejection sampling slowing down.
# Larger pools (3+ digits: >= 405,450 pairs) are rejection-sampled.
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
    # Digit counts of the out-of-distribution split "ood", reported beside test (e.g. [4] while training
    # on [1,2,3]); [] for no such split.
    ood_digits: list[int] = field(default_factory=list)
    # Size of the ood split (null: task.test_size).
    ood_size: Optional[int] = None
    # The ood split's token budget (null: what its longest digit count's scratchpad takes, 10 x digits + 8);
    # task.max_new_tokens stays the budget of every other pass, so adding the split changes nothing else.
    ood_max_new_tokens: Optional[int] = None

    def problems(self) -> list[str]:
        """TaskConfig's range checks; digits must list digit counts >= 1; ood_digits digit counts >= 1
        not in digits, whose longest scratchpad fits ood_max_new_tokens when it is set; ood_size > 0 or null."""
        out = super().problems()
        if not (len(self.digits) > 0 and all(d >= 1 for d in self.digits)):
            out.append(f"task.digits must list digit counts >= 1, e.g. task.digits=[1,2,3]; got {list(self.digits)}")
        ood = list(self.ood_digits)
        if not all(d >= 1 for d in ood):
            out.append(f"task.ood_digits must list digit counts >= 1, e.g. task.ood_digits=[4]; got {ood}")
        shared = sorted(set(ood) & set(self.digits))
        if shared:
            out.append(f"task.ood_digits must be digit counts not trained on, e.g. task.digits=[1,2,3] "
                       f"task.ood_digits=[4]; got {ood}, which shares {shared} with task.digits")
        if self.ood_size is not None and not self.ood_size > 0:
            out.append(f"task.ood_size must be > 0, or null for task.test_size, got {self.ood_size}")
        longest, budget = max(ood, default=0), self.ood_max_new_tokens
        if longest >= 1 and budget is not None and budget < scratchpad_tokens(longest):
            need = scratchpad_tokens(longest)
            out.append(f"task.ood_max_new_tokens={budget} cuts the ood split's {longest}-digit completions short: they "
                       f"take up to {need} tokens (10 x digits + 8); raise it to {need}, or null (the default) for "
                       f"exactly that")
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


def scratchpad_tokens(d: int) -> int:
    """The most tokens a d-digit completion takes (99..9 + 99..9, stop included) with the SmolLM2
    tokenizer, one token per digit: d column lines of up to 9 tokens with their newline, the answer
    line (6 tokens and its d + 1 digits) and the leading space. The budget an ood split needs."""
    return 10 * d + 8


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


def reasoning_lines(completion: str) -> int:
    """The non-empty lines before the first answer line ("The answer is ..."), before the first stop."""
    return answers.reasoning_lines(answers.before_stop(completion, STOP),
                                   lambda line: _ANSWER_PREFIX_RE.match(line.strip()))


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

def unordered(a: int, b: int) -> tuple[int, int]:
    """The problem a + b as splits compare it: the smaller operand first."""
    return (a, b) if a <= b else (b, a)


def operand_range(d: int) -> tuple[int, int]:
    """[lo, hi) of d-digit operands: 0-9 for one digit, no leading zero for more."""
    return (0 if d == 1 else 10 ** (d - 1)), 10 ** d


def pool_size(d: int) -> int:
    """The number of unordered d-digit problems (pairs with repetition: n (n + 1) / 2)."""
    lo, hi = operand_range(d)
    return (hi - lo) * (hi - lo + 1) // 2


def in_pool(d: int, problems) -> set[tuple[int, int]]:
    """The unordered problems among `problems` whose two operands both have d digits."""
    lo, hi = operand_range(d)
    return {unordered(a, b) for a, b in problems if lo <= a < hi and lo <= b < hi}


def pair_stream(d: int, rng: random.Random, exclude=frozenset()) -> Iterator[tuple[int, int]]:
    """Distinct unordered d-digit problems in a random order, each shown as (a, b) in a random
    orientation, until the pool is exhausted; problems in `exclude` (unordered pairs) are skipped.

    Problem k of the pool (0 <= k < pool_size(d)) is the k-th pair (i, j), j <= i, of the
    triangle, read row by row: drawing k uniformly makes every unordered problem, doubles
    (5 + 5) included, equally likely."""
    lo, _ = operand_range(d)
    total = pool_size(d)
    skip = in_pool(d, exclude)

    def problem(k: int) -> tuple[int, int]:
        i = (math.isqrt(8 * k + 1) - 1) // 2  # the triangle's row: i (i + 1) / 2 <= k
        a, b = lo + k - i * (i + 1) // 2, lo + i
        return (b, a) if rng.random() < 0.5 else (a, b)

    if total <= _ENUMERATE_LIMIT:
        order = list(range(total))
        rng.shuffle(order)
        for k in order:
            a, b = problem(k)
            if unordered(a, b) not in skip:
                yield a, b
    else:
        seen = set(skip)
        while len(seen) < total:
            a, b = problem(rng.randrange(total))
            if unordered(a, b) not in seen:
                seen.add(unordered(a, b))
                yield a, b


def available_problems(digits: list[int], exemplars: set[tuple[int, int]]) -> dict[int, int]:
    """digit count -> how many of its problems are not a few-shot exemplar's."""
    return {d: pool_size(d) - len(in_pool(d, exemplars)) for d in digits}


def eval_cap(available: dict[int, int]) -> dict[int, int]:
    """digit count -> the most problems of it dev (and test) may hold: a third of its pool."""
    return {d: n // 3 for d, n in available.items()}


def fill(streams: dict[int, Iterator[tuple[int, int]]], digits: list[int], caps: dict[int, int],
         n: int) -> list[tuple[int, tuple[int, int]]]:
    """Up to n (digits, pair) items cycling over digit counts in `digits` order; a digit count
    drops out once it has given caps[d] items (so a stream holding at least caps[d] never runs dry)."""
    out: list[tuple[int, tuple[int, int]]] = []
    given = dict.fromkeys(digits, 0)
    active = [d for d in digits if caps[d] > 0]
    pos = 0
    while len(out) < n and active:
        d = active[pos]
        out.append((d, next(streams[d])))
        given[d] += 1
        if given[d] >= caps[d]:
            del active[pos]
            pos = pos if pos < len(active) else 0
        else:
            pos = (pos + 1) % len(active)
    return out


def size_error(digits: list[int], sizes: dict[str, int], available: dict[int, int]) -> ValueError | None:
    """The error for sizes the mix cannot fill (naming the sizes that fit), or None when it can."""
    third = sum(eval_cap(available).values())
    fits = {"dev": third, "test": third}
    fits["train"] = sum(available.values()) - min(sizes["dev"], third) - min(sizes["test"], third)
    short = [split for split in SPLITS if fits[split] < sizes[split]]
    if not short:
        return None
    named = [f"task.{split}_size={sizes[split]}" for split in short]
    asked = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    return ValueError(
        f"{asked} cannot be met without reusing a problem: with digits {digits} there are "
        f"{sum(available.values())} problems (few-shot exemplars left out); dev and test each hold at most a "
        f"third of each digit count's problems and train the rest: train at most {fits['train']}, dev at most "
        f"{fits['dev']}, test at most {fits['test']} with these sizes; lower task.train_size/dev_size/test_size "
        f"or add digit counts to task.digits")


def ood_size_error(ood_digits: list[int], size: int, available: dict[int, int]) -> ValueError | None:
    """The error for an ood split larger than its digit counts' problems (naming the size that fits), or None."""
    fits = sum(available.values())
    if size <= fits:
        return None
    return ValueError(
        f"task.ood_size={size} cannot be met without reusing a problem: with ood_digits {ood_digits} there are "
        f"{fits} problems (few-shot exemplars left out); lower task.ood_size to {fits} or less, or add digit "
        f"counts to task.ood_digits")


class ArithmeticTask:
    """n-digit addition; see the module docstring for the format, the splits and the decisions."""

    name = "arithmetic"
    stop = (STOP,)
    config_class = ArithmeticConfig
    splits = SPLITS

    def __init__(self, digits, train_size: int, dev_size: int, seed: int, test_size: int = 100,
                 prompt_path: str | Path | None = None, ood_digits=(), ood_size: int | None = None,
                 ood_max_new_tokens: int | None = None):
        # Keep the user's order (it fixes the round-robin order) but drop repeats.
        self.digits = list(dict.fromkeys(int(d) for d in digits))
        if not self.digits or any(d < 1 for d in self.digits):
            raise ValueError(f"digits must list digit counts >= 1, e.g. [1, 2, 3]; got {list(digits)}")
        self.sizes = split_sizes(train_size, dev_size, test_size)
        self.train_size, self.dev_size, self.test_size = self.sizes["train"], self.sizes["dev"], self.sizes["test"]
        # The ood split: digit counts not trained on, so it shares no problem with train, dev or test.
        self.ood_digits = list(dict.fromkeys(int(d) for d in ood_digits))
        if any(d < 1 or d in self.digits for d in self.ood_digits):
            raise ValueError(f"ood_digits must list digit counts >= 1 that are not in digits {self.digits}, "
                             f"e.g. [4] with digits [1, 2, 3]; got {list(ood_digits)}")
        self.ood_size = int(self.test_size if ood_size is None else ood_size)
        if self.ood_size < 0:
            raise ValueError(f"ood_size must be >= 0, got {ood_size}")
        # The ood split is generated with a budget its longest problems fit (its own key, or exactly that).
        budget = ood_max_new_tokens or (scratchpad_tokens(max(self.ood_digits)) if self.ood_digits else None)
        self.eval_splits: dict[str, int | None] = {"ood": budget} if self.ood_digits else {}
        self.seed = int(seed)
        self.prompt_path = Path(prompt_path) if prompt_path is not None else None
        # Filled on first use; per instance, so there is no module-level mutable state.
        self._splits: dict[str, list[Example]] | None = None
        self._fewshot: dict[tuple[bool, bool], str] = {}

    @classmethod
    def from_config(cls, task_cfg, seed: int) -> "ArithmeticTask":
        return cls(digits=list(task_cfg.digits), train_size=task_cfg.train_size, dev_size=task_cfg.dev_size,
                   test_size=task_cfg.test_size, seed=seed,
                   ood_digits=list(getattr(task_cfg, "ood_digits", None) or []),
                   ood_size=getattr(task_cfg, "ood_size", None),
                   ood_max_new_tokens=getattr(task_cfg, "ood_max_new_tokens", None))

    # --- data

    def load(self, split: str) -> list[Example]:
        if split not in self.splits and split not in self.eval_splits:
            raise unknown_split(self.name, split, self.splits + tuple(self.eval_splits),
                                "set task.ood_digits (e.g. [4]) for an ood split" if split == "ood" else "")
        if self._splits is None:
            self._splits = self._build()
        return list(self._splits[split])  # a copy: callers cannot edit the cache

    def exemplar_problems(self) -> set[tuple[int, int]]:
        """The few-shot file's problems as unordered pairs: no split holds one."""
        exemplars = parse_exemplars(read_prompt("arithmetic.txt", self.prompt_path))
        return {unordered(*operands(Example(id="fewshot", question=q, answer=""))) for q, _ in exemplars}

    def _build(self) -> dict[str, list[Example]]:
        exemplars = self.exemplar_problems()
        available = available_problems(self.digits, exemplars)
        error = size_error(self.digits, self.sizes, available)
        if error is not None:
            raise error
        streams = self._streams(self.digits, exemplars)
        # One set of streams drawn in DRAW_ORDER: no problem reaches two splits.
        left = dict(available)
        drawn = {}
        for split in DRAW_ORDER:
            caps = left if split == "train" else {d: min(cap, left[d]) for d, cap in eval_cap(available).items()}
            drawn[split] = fill(streams, self.digits, caps, self.sizes[split])
            for d, _ in drawn[split]:
                left[d] -= 1
        if self.ood_digits:
            drawn["ood"] = self._draw_ood(exemplars)
        return {split: self._examples(split, items) for split, items in drawn.items()}

    def _draw_ood(self, exemplars: set[tuple[int, int]]) -> list[tuple[int, tuple[int, int]]]:
        """The ood split's items: streams of their own (so train, dev and test never depend on it),
        round-robin over ood_digits, each digit count capped at its pool."""
        available = available_problems(self.ood_digits, exemplars)
        error = ood_size_error(self.ood_digits, self.ood_size, available)
        if error is not None:
            raise error
        return fill(self._streams(self.ood_digits, exemplars, "ood/"), self.ood_digits, available, self.ood_size)

    def _streams(self, digits: list[int], exemplars: set[tuple[int, int]], name: str = "") -> dict:
        """digit count -> its problem stream, seeded by the seed, `name` ("" for train/dev/test, "ood/") and d."""
        return {d: pair_stream(d, random.Random(f"star-arithmetic/seed={self.seed}/{name}digits={d}"), exemplars)
                for d in digits}

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

    def reasoning_lines(self, completion: str) -> int:
        return reasoning_lines(completion)

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
