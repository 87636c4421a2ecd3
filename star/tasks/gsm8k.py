"""GSM8K: grade-school math word problems with a step-by-step solution (the STaR paper's second task).

Data comes through `datasets` (star/tasks/hf_data.py): the hub's `openai/gsm8k`, config
`main`, when no files are given, or local json/jsonl/parquet files in the hub's schema, one
row per problem:

    {"question": "...", "answer": "She has 24 - 15 = <<24-15=9>>9 left.\\n#### 9"}

    star task=gsm8k task.data_files.train=gsm8k_train.jsonl task.data_files.test=gsm8k_test.jsonl

Splits (hf_data.split_rows): train = the hub's "train" split (or the train file) less dev; dev =
a fixed slice of it, task.dev_size rows picked by a constant seed, the same for every run (or
the dev file); test = the hub's "test" split, the split the paper reports (or the test file).
Given a train file and no test file, a run has no test split. Rows whose question is a few-shot
exemplar's are dropped from every split, and the splits share no question.

Offline without files: `task.source=gsm_symbolic` generates GSM8K-style problems from the
GSM-Symbolic templates (through reasoning_gym's `gsm_symbolic` dataset) from the seed:

    star task=gsm8k task.source=gsm_symbolic task.train_size=1000 task.dev_size=100 task.test_size=100

dev, test and train are separate generator streams, drawn in that order, each dropping
questions already drawn and the few-shot exemplars' (reasoning_gym.generate). Each problem
becomes an Example in this task's schema: the question
(without the generator's "Give the result as your final answer. Do not include units."), the
answer number, and its worked solution (metadata answer_cot) as meta["solution"] ending in
"#### N", or None when it has none or it does not end at the answer; then gold_rationale is
None and class_of is "all". The verifier and prompts are this task's.

The hub rows have no id: an example is named by the file or hub split it was read from and
its row there, counting from 0 ("train-00042"; a dev example carved from train keeps its
"train-..." name), so a problem keeps its id whatever the sizes. A file may add an "id" column
of unique strings instead. task.train_size / dev_size / test_size cap each split at its first
N rows in file order. Every row of every file is checked (also those past the cap): missing,
empty or non-string fields, and an answer that does not end in "#### N" with N a number and at
least one solution line before it, are errors that name the row.

Prompt and completion (prompts/gsm8k.txt holds 8 hand-written exemplars; gsm8k_direct.txt
the same questions with only the answer line, for the few-shot-direct baseline):

    Q: A baker makes 24 muffins ... How many muffins does she have now?
                                 <- with hint=True: "...now? (hint: the answer is 17)"
    A: After selling, she has 24 - 15 = 9 muffins.
    After baking 8 more, she has 9 + 8 = 17 muffins.
    The answer is 17.
    <blank line>

One step a line, no blank line inside (a blank line is the stop string). The hint shows the
gold final number only, never the gold solution. gold_rationale is the dataset's solution in
this format: calculator annotations (<<3*4=12>>) removed, blank lines dropped, then
"The answer is N.". class_of is the number of solution lines before "####" (a difficulty
proxy), as a string. is_faithful is None: steps are not checked.

Decisions worth knowing (the verifier, `answer_value`):
- Only text before the first stop ("\\n\\n") and before a line starting "Q:" (the model
  began a new exemplar) is read.
- Answer statements: "answer is N", "answer: N", "#### N", "\\boxed{N}" (case-insensitive;
  "answer is not" is not one), each up to the end of its sentence. Statements that hold no
  number are ignored; the others must all agree, or there is no answer.
- In a statement, the number is the one after the last "=" when there is one ("the answer
  is 12 * 32 = 384"), else the first number ("384 (12 full shelves)"). Two numbers joined
  by "or", "and", ",", "to" or "-" ("21 or 24", "6, 12, 16") are two answers: none.
- Numbers: thousands separators ("1,250"; a comma elsewhere, as in "50,00", is no number),
  space-grouped thousands ("5 000"), currency signs, "%", trailing zeros ("5.00"), the
  unicode minus and "minus 5", "5 degrees below zero", "17 dollars and 50 cents", simple
  fractions ("3/2") and number words up to ninety-nine ("twenty-four"). Compared exactly
  as fractions, so 1.5 == 3/2 and 5000.0 == 5000.
- With no answer statement at all, a completion that finished (it wrote the stop, or began
  a new "Q:") is read by its last line: the number after its last "=", else its only
  number ("So Lena has 24 apples left."). A completion cut off by max_new_tokens with no
  answer statement has no answer.
- Measured on 58 held-out labelled outputs (tests/data/verifier_labels/gsm8k.jsonl, split
  "holdout"; benchmarks/verifier_rates.md): false-negative rate 1/40 = 2.5% ("the answer is
  none" for 0), false-positive rate 0/18 = 0%.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

from star.tasks import answers
from star.tasks.base import (
    SPLITS,
    Example,
    answer_hint,
    answer_line,
    normalize_question,
    qa_question,
    read_prompt,
    split_sizes,
    unknown_split,
)
from star.tasks.hf_data import (
    NO_TEST_FIX,
    DataSource,
    HubDataConfig,
    SourcedRow,
    TaskDataError,
    data_files_of,
    load_rows,
    split_rows,
    text_problem,
)

NAME = "gsm8k"
HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
# dev is carved from the hub's train split.
HUB_SPLITS = {"train": "train", "test": "test"}
STOP = "\n\n"
SOURCES = ("hub_or_files", "gsm_symbolic")
_SYMBOLIC_SUFFIX = "Give the result as your final answer. Do not include units."
REQUIRED = ("question", "answer")
SCHEMA = ('{"question": "Tom has 3 bags of 4 apples. How many apples?", '
          '"answer": "He has 3 * 4 = <<3*4=12>>12 apples.\\n#### 12"}')
# What a GSM8K row holds and where the rows live; each task sets its own hub id and files (with_location).
SOURCE = DataSource(task=NAME, hub_id=HUB_ID, hub_config=HUB_CONFIG, hub_splits=HUB_SPLITS, data_files={},
                    required=REQUIRED, schema=SCHEMA)

AMBIGUOUS = "<ambiguous>"

_MARKER_RE = re.compile(r"\banswer\s*(?:is\b|:|=)(?!\s*not\b)|####|\\boxed\{", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_JOINED_RE = re.compile(r"\s*(?:,|;|or|and|to|-|,\s*(?:or|and))?\s*", re.IGNORECASE)
_GROUPED_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CALC_RE = re.compile(r"<<[^<>]*>>")
_EXEMPLAR_RE = re.compile(r"Q: (?P<q>.+?)\nA:(?P<c>.*)", re.DOTALL)

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
          "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_WORD_NUMBER_RE = re.compile(
    rf"\b(?:(?P<tens>{'|'.join(_TENS)})(?:[\s-](?P<unit>{'|'.join(_UNITS[1:10])}))?|(?P<small>{'|'.join(_UNITS)}))\b",
    re.IGNORECASE)


@dataclass
class Gsm8kConfig(HubDataConfig):
    """The GSM8K task's config keys: TaskConfig's, the `datasets` ones, and where problems come from."""

    # hub_or_files (data_files, else the hub) or gsm_symbolic (generated offline from the
    # GSM-Symbolic templates, via reasoning_gym, from the seed).
    source: str = "hub_or_files"


# ----------------------------------------------------------------------------- numbers

def parse_number(token: str) -> Fraction | None:
    """One number token ("-1,250.50", "3/2") as an exact Fraction, or None when malformed."""
    token = token.rstrip(",")
    sign = -1 if token.startswith("-") else 1
    body = token.lstrip("-")
    if "/" in body:
        num, den = body.split("/", 1)
        if not (num.isdigit() and den.isdigit()) or int(den) == 0:
            return None
        return sign * Fraction(int(num), int(den))
    if "," in body:
        if not _GROUPED_RE.fullmatch(body):
            return None  # "50,00", "1,2": not thousands separators
        body = body.replace(",", "")
    try:
        return sign * Fraction(body)
    except (ValueError, ZeroDivisionError):
        return None


def canonical(value: Fraction) -> str:
    """"5000", "-5", "1.5"; a fraction that is no finite decimal stays "p/q"."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = 60
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _clean(text: str) -> str:
    """Rewrite the number spellings the verifier accepts into plain tokens."""
    s = text.replace("\u2212", "-").replace("\u2013", "-")
    s = re.sub(r"\\boxed\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:text|mathrm)\{[^{}]*\}|[{}]", " ", s)
    s = re.sub(r"[$\u20ac\u00a3\u00a5\u20b9%]", "", s)
    s = re.sub(r"\bminus\s+(?=\d)", "-", s, flags=re.IGNORECASE)
    s = re.sub(r"(\d[\d,]*(?:\.\d+)?)\s*degrees?\s+below\s+zero", r"-\1", s, flags=re.IGNORECASE)
    s = re.sub(r"(\d[\d,]*)\s*dollars?\s+and\s+(\d{1,2})\s*cents?",
               lambda m: f"{m.group(1)}.{int(m.group(2)):02d}", s, flags=re.IGNORECASE)
    # "5 000" (thin or plain spaces between groups of three) -> "5000"
    s = re.sub(r"(?<![\d.,])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d.,]*\d)",
               lambda m: re.sub(r"\s", "", m.group(0)), s)
    return s


def _word_number(text: str) -> Fraction | None:
    m = _WORD_NUMBER_RE.search(text)
    if not m:
        return None
    if m.group("small"):
        return Fraction(_UNITS.index(m.group("small").lower()))
    unit = _UNITS.index(m.group("unit").lower()) if m.group("unit") else 0
    return Fraction(20 + 10 * _TENS.index(m.group("tens").lower()) + unit)


def number_in(statement: str) -> Fraction | str | None:
    """The answer number of one statement, AMBIGUOUS (two joined numbers, a malformed one),
    or None when it holds no number."""
    s = _clean(statement)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    tokens = list(_NUMBER_RE.finditer(s))
    if not tokens:
        return _word_number(s)
    if len(tokens) > 1 and _JOINED_RE.fullmatch(s[tokens[0].end():tokens[1].start()]):
        return AMBIGUOUS
    value = parse_number(tokens[0].group(0))
    return AMBIGUOUS if value is None else value


# ----------------------------------------------------------------------------- verifier

def answer_value(completion: str) -> Fraction | None:
    """The one final number a completion states, or None (none, malformed, or several)."""
    region, finished = answers.answer_region_finished(completion, STOP)
    # " :" dropped before the sentence end is looked for: "answer is: 5" and "answer: : 5" read "5".
    statements = answers.answer_statements(region, _MARKER_RE, lead=" :")
    values = set()
    for statement in statements:
        v = number_in(statement)
        if v == AMBIGUOUS:
            return None
        if v is not None:
            values.add(v)
    if statements:
        return values.pop() if len(values) == 1 else None
    if not finished:
        return None  # cut off before any answer
    lines = [line.strip() for line in region.split("\n") if line.strip()]
    if not lines:
        return None
    last = _clean(lines[-1])
    if "=" in last:
        v = number_in(last)
        return v if isinstance(v, Fraction) else None
    tokens = _NUMBER_RE.findall(last)
    return parse_number(tokens[0]) if len(tokens) == 1 else None


def extract_answer(completion: str) -> str | None:
    """The final number as a canonical string ("5000", "-5", "1.5"), or None."""
    v = answer_value(completion)
    return None if v is None else canonical(v)


def reasoning_lines(completion: str) -> int:
    """The non-empty lines before the first answer statement's line (with none, the last line), in the part
    that answers this question."""
    return answers.reasoning_lines(answers.answer_region(completion, STOP), _MARKER_RE.search)


# ----------------------------------------------------------------------------- data

def split_solution(answer: str) -> tuple[list[str], str]:
    """A hub answer -> (its solution lines before "####", the text after "####")."""
    body, _, final = answer.rpartition("####")
    return [line.strip() for line in body.split("\n") if line.strip()], final.strip()


def gold_number(answer: str) -> Fraction | None:
    """The number after "####", read strictly: one number token, commas and currency allowed."""
    _, final = split_solution(answer)
    s = _clean(final).strip()
    return parse_number(s) if _NUMBER_RE.fullmatch(s) else None


def _row_problems(row: dict) -> list[str]:
    problems = [p for p in (text_problem(row, "question"), text_problem(row, "answer")) if p]
    if "id" in row and row["id"] is not None:
        p = text_problem(row, "id")
        if p:
            problems.append(p)
    if not text_problem(row, "answer"):
        answer = row["answer"]
        n = answer.count("####")
        lines, final = split_solution(answer)
        if n != 1:
            problems.append(f"answer must end in one '#### N' (the final number), found {n} '####'")
        elif gold_number(answer) is None:
            problems.append(f"the final answer after '####' must be a number, got {final[:30]!r}")
        elif not lines:
            problems.append("answer has no solution lines before '####'")
    return problems


def row_example(row: dict, rid: str) -> Example:
    """A checked hub row (see _row_problems) as an Example named rid: the stripped question, the
    canonical final number as the answer, the solution and its step count in meta."""
    lines, _ = split_solution(row["answer"])
    return Example(id=rid, question=row["question"].strip(), answer=canonical(gold_number(row["answer"])),
                   meta={"solution": row["answer"], "n_steps": len(lines)})


def gold_rationale_for(solution: str) -> str:
    """A hub solution in the completion format: one step a line, no calculator annotations, no
    blank line, then the answer line and the stop."""
    lines, _ = split_solution(solution)
    steps = [re.sub(r"\s+", " ", _CALC_RE.sub("", line)).strip() for line in lines]
    value = gold_number(solution)
    if value is None:
        raise ValueError(f"not a GSM8K solution ending in '#### N': {solution[-40:]!r}")
    return " " + "\n".join([s for s in steps if s] + [f"The answer is {canonical(value)}."]) + STOP


# ----------------------------------------------------------------------------- prompts

def parse_exemplars(text: str) -> list[tuple[str, str]]:
    """A few-shot file -> (question, completion with the stop) pairs: blocks split by a blank
    line, each "Q: ...\\nA: ..." ending in an answer the verifier reads."""
    shape = "Q: ...\\nA: ..."
    matches = answers.exemplar_matches(
        text, STOP, _EXEMPLAR_RE, label="GSM8K few-shot exemplar", shape=shape,
        no_exemplars=f"the GSM8K few-shot file has no exemplars; write '{shape}' blocks separated by blank lines")
    out = []
    for n, m in enumerate(matches, 1):
        completion = m.group("c") + STOP
        if answer_value(completion) is None:
            raise ValueError(f"GSM8K few-shot exemplar {n} ('Q: {m.group('q')[:40]}...') has no final answer; "
                             f"end it with 'The answer is N.'")
        out.append((m.group("q").strip(), completion))
    return out


def symbolic_question(question: str) -> str:
    """A gsm_symbolic question without the generator's closing instruction."""
    question = question.strip()
    if question.endswith(_SYMBOLIC_SUFFIX):
        question = question[: -len(_SYMBOLIC_SUFFIX)].strip()
    return question


def gsm_symbolic_example(entry: dict, rid: str) -> Example:
    """A reasoning_gym gsm_symbolic entry as an Example in this task's schema."""
    question = symbolic_question(entry["question"])
    value = parse_number(str(entry["answer"]).strip())
    if value is None:
        raise ValueError(f"gsm_symbolic problem {rid} has no numeric answer: {entry['answer']!r}")
    answer = canonical(value)
    cot = (entry.get("metadata") or {}).get("answer_cot")
    solution = None
    if isinstance(cot, str) and cot.strip():
        body = cot.strip() if "####" in cot else f"{cot.strip()}\n#### {answer}"
        lines, _ = split_solution(body)
        # Keep it only when it is one GSM8K solution that ends at this answer and reads back as it.
        if (body.count("####") == 1 and lines and gold_number(body) == value
                and answer_value(gold_rationale_for(body)) == value):
            solution = body
    n_steps = len(split_solution(solution)[0]) if solution else "all"
    return Example(id=rid, question=question, answer=answer, meta={"solution": solution, "n_steps": n_steps})


def gsm_symbolic_splits(seed: int, sizes: dict[str, int], exemplars: list[str]) -> dict[str, list[Example]]:
    """dev, test and train generated from the GSM-Symbolic templates, in that order; pairwise
    disjoint and free of the exemplar questions (each stream drops questions already taken)."""
    from star.tasks.reasoning_gym import generate  # local: reasoning_gym takes a second to import

    def key(question: str) -> str:
        return normalize_question(symbolic_question(question))

    taken = {key(q) for q in exemplars}
    out = {}
    for split in ("dev", "test", "train"):
        _, entries = generate("gsm_symbolic", {}, seed, split, sizes[split], taken, size_key=f"task.{split}_size",
                              key=key)
        out[split] = [gsm_symbolic_example(e, f"{split}-{n:05d}") for n, e in enumerate(entries)]
    return {split: out[split] for split in SPLITS}


def example_id(row: SourcedRow) -> str:
    """A row's own id, else "<where it was read>-<its row there>"."""
    return row.row["id"] if row.row.get("id") is not None else f"{row.origin}-{row.index:05d}"


class Gsm8kTask:
    """GSM8K; see the module docstring for the format, the splits and the decisions.

    source="hub_or_files" reads each split from its file in data_files, else train and test
    from the hub (hub_id, hub_config) and dev carved from train; source="gsm_symbolic"
    generates all three from the seed and takes no files. prompt_dir holds gsm8k.txt and
    gsm8k_direct.txt in place of the packaged ones.
    """

    name = NAME
    stop = (STOP,)
    config_class = Gsm8kConfig
    eval_splits: dict = {}  # no extra evaluation split (star/tasks/base.py); never written to

    def __init__(self, train_size: int, dev_size: int, test_size: int = 100, data_files: dict | None = None,
                 hub_id: str | None = HUB_ID, hub_config: str | None = HUB_CONFIG,
                 prompt_dir: str | Path | None = None, source: str = "hub_or_files", seed: int = 0):
        sizes = split_sizes(train_size, dev_size, test_size)
        if source not in SOURCES:
            raise ValueError(f"unknown gsm8k source {source!r}; set task.source to one of: {', '.join(SOURCES)}")
        if source != "hub_or_files" and any((data_files or {}).get(s) for s in SPLITS):
            raise ValueError(f"task.data_files are read only with task.source=hub_or_files, not {source}; "
                             f"unset task.data_files or set task.source=hub_or_files")
        self.origin = source
        self.seed = int(seed)
        self.sizes = sizes
        self.prompt_dir = Path(prompt_dir) if prompt_dir is not None else None
        self.source = SOURCE.with_location(hub_id, hub_config, data_files)  # read by origin hub_or_files only
        self.splits = self.source.task_splits() if source == "hub_or_files" else SPLITS
        # Filled on first use; per instance, so there is no module-level mutable state.
        self._splits: dict[str, list[Example]] = {}
        self._fewshot: dict[tuple[bool, bool], str] = {}

    @classmethod
    def from_config(cls, task_cfg, seed: int) -> "Gsm8kTask":
        hub_id, hub_config = getattr(task_cfg, "hub_id", None), getattr(task_cfg, "hub_config", None)
        if not hub_id:  # the default config name belongs to the default hub id only
            hub_id, hub_config = HUB_ID, HUB_CONFIG
        return cls(train_size=task_cfg.train_size, dev_size=task_cfg.dev_size, test_size=task_cfg.test_size,
                   data_files=data_files_of(task_cfg), hub_id=hub_id, hub_config=hub_config,
                   source=getattr(task_cfg, "source", None) or "hub_or_files", seed=seed)

    # --- data

    def load(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise unknown_split(NAME, split, self.splits, NO_TEST_FIX if split == "test" else "")
        if not self._splits and self.origin == "gsm_symbolic":
            self._splits = gsm_symbolic_splits(self.seed, self.sizes, self.exemplar_questions())
        elif not self._splits:
            rows = split_rows(self.source, self._read, question=lambda r: r["question"],
                              exemplars=self.exemplar_questions(), sizes=self.sizes)
            self._splits = {s: [row_example(r.row, example_id(r)) for r in located] for s, located in rows.items()}
        return list(self._splits[split])  # a copy: callers cannot edit the cache

    def _read(self, split: str) -> list[dict]:
        rows = load_rows(self.source, split, limit=None, check_row=_row_problems, row_id=lambda r: r.get("id"),
                         unique="id")
        with_id = [r.get("id") is not None for r in rows]
        if any(with_id) and not all(with_id):
            raise TaskDataError(f"{NAME} {split} data: some rows have an id and some do not; "
                                f"give every row a unique id, or drop the id field")
        return rows

    def exemplar_questions(self) -> list[str]:
        """The questions of both few-shot files: no split holds one."""
        return [q for name in ("gsm8k.txt", "gsm8k_direct.txt")
                for q, _ in parse_exemplars(read_prompt(name, self.prompt_dir))]

    # --- prompts

    def hint_text(self, example: Example) -> str:
        return answer_hint(example.answer)

    def format_question(self, example: Example, hint: bool = False) -> str:
        return qa_question(example.question, self.hint_text(example) if hint else "")

    def fewshot_prompt(self, direct: bool = False, hint: bool = False) -> str:
        """The exemplars with step-by-step solutions, or with the answer line only (direct=True);
        hint=True shows each exemplar's answer as a hint (the rationalization prompt)."""
        key = (direct, hint)
        if key not in self._fewshot:
            name = "gsm8k_direct.txt" if direct else "gsm8k.txt"
            text = read_prompt(name, self.prompt_dir)
            self._fewshot[key] = "".join(
                self.format_question(Example(id="fewshot", question=q, answer=extract_answer(c) or ""), hint=hint) + c
                for q, c in parse_exemplars(text))
        return self._fewshot[key]

    # --- scoring

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def reasoning_lines(self, completion: str) -> int:
        return reasoning_lines(completion)

    def is_correct(self, example: Example, completion: str) -> bool:
        got = answer_value(completion)
        return got is not None and got == Fraction(example.answer)

    def class_of(self, example: Example) -> str:
        if "n_steps" in example.meta:
            return str(example.meta["n_steps"])
        return str(len(split_solution(example.meta.get("solution", ""))[0]))

    def gold_rationale(self, example: Example) -> str | None:
        solution = example.meta.get("solution")
        return None if solution is None else gold_rationale_for(solution)

    def direct_completion(self, example: Example) -> str:
        """The gold answer alone, as the answers-only prompt writes it."""
        return answer_line(example.answer, STOP)

    def is_faithful(self, example: Example, completion: str) -> None:
        return None
