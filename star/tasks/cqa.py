"""CommonsenseQA: five-way multiple choice with a short rationale (the STaR paper's main task).

Data comes through `datasets` (star/tasks/hf_data.py): the hub's `tau/commonsense_qa` when
no files are given, or local json/jsonl/parquet files in the hub's schema, one row per question:

    {"id": "q1", "question": "...", "question_concept": "milk",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["...", ...]}, "answerKey": "B"}

    star task=cqa task.data_files.train=cqa_train.jsonl task.data_files.test=cqa_validation.jsonl

Splits (hf_data.split_rows): train = the hub's "train" split (or the train file) less dev; dev =
a fixed slice of it, task.dev_size rows picked by a constant seed, the same for every run (or
the dev file); test = the hub's "validation" split, the split the paper reports (the hub's own
test split has no answers), or the test file. Given a train file and no test file, a run has no
test split. Rows whose question is a few-shot exemplar's are dropped from every split, and the
splits share no question. task.train_size / dev_size / test_size cap each split at its first N
rows in file order. Every row of every file is checked (also those past the cap): missing or
empty fields, wrong types, labels that are not single capital letters, a gold answerKey that
is not among the labels, and repeated ids are errors that name the row. Examples keep the
rows' ids.

Prompt and completion (prompts/cqa.txt holds 8 hand-written exemplars; cqa_direct.txt the
same questions with only the answer line, for the few-shot-direct baseline):

    Q: Where would you put a carton of milk to keep it cold?
    Answer Choices:
    (A) cupboard
    (B) refrigerator            <- with hint=True: "(B) refrigerator (CORRECT)"
    ...
    A: Milk spoils when it gets warm, so ... Therefore, the answer is refrigerator (B).
    <blank line>

Decisions worth knowing (the verifier, `choice_of`):
- Only text before the first stop ("\\n\\n") and before a line starting "Q:" (the model
  began a new exemplar) is read.
- Answer statements are "answer is X", "answer: X", "choice is X", "option is X" (case-
  insensitive; "answer is not" is not one); X runs to the end of its sentence.
- X names a choice by letter ("(B)", "B", "b.", "option B", "B) refrigerator") or by text
  (the exact choice text, compared after lower-casing, dropping apostrophes, punctuation and
  a leading article, and crudely stemming each word so "building a snowman" matches "build
  a snowman"; else the one choice whose text it contains, or whose text contains it).
- A letter and a text that name different choices, two letters, or a text naming two
  choices make the statement ambiguous, and an ambiguous statement makes the completion
  wrong. Statements that name no choice ("the answer is something soft") are ignored; the
  others must all name the same choice.
- Measured on 60 held-out labelled outputs (tests/data/verifier_labels/cqa.jsonl, split
  "holdout"; benchmarks/verifier_rates.md): false-negative rate 1/33 = 3.0% (a paraphrase,
  "the answer is that it breaks" for "shatter"), false-positive rate 0/27 = 0%.
  Synonyms are the known blind spot: "sleepy" does not match "tired".

class_of is "all" (no per-class split); is_faithful and gold_rationale are None (a rationale
cannot be checked, and the dataset has none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from star.tasks import answers
from star.tasks.base import Example, read_prompt, split_sizes, unknown_split
from star.tasks.hf_data import (
    NO_TEST_FIX,
    DataSource,
    HubDataConfig,
    data_files_of,
    load_rows,
    split_rows,
    text_problem,
)

NAME = "cqa"
HUB_ID = "tau/commonsense_qa"
# dev is carved from the hub's train split; the hub's test split has no answers.
HUB_SPLITS = {"train": "train", "test": "validation"}
STOP = "\n\n"
HINT = " (CORRECT)"
REQUIRED = ("id", "question", "choices", "answerKey")
SCHEMA = ('{"id": "q1", "question": "Where is milk kept cold?", "question_concept": "milk", '
          '"choices": {"label": ["A", "B", "C", "D", "E"], "text": ["oven", "fridge", "desk", "car", "bag"]}, '
          '"answerKey": "B"}')
# What a CQA row holds and where the rows live; each task sets its own hub id and files (with_location).
SOURCE = DataSource(task=NAME, hub_id=HUB_ID, hub_config=None, hub_splits=HUB_SPLITS, data_files={},
                    required=REQUIRED, schema=SCHEMA)

AMBIGUOUS = "<ambiguous>"  # a statement that names more than one choice

# "answer is X", "answer: X", "choice is X", "option is X"; never "answer is not X".
_MARKER_RE = re.compile(r"\b(?:answer|choice|option)\s*(?:is\b|:)(?!\s*not\b)", re.IGNORECASE)
_PAREN_LETTER_RE = re.compile(r"\(([A-Za-z])\)")
_BARE_LETTER_RE = re.compile(r"(?:(?:option|choice|letter)\s+)?\(?([A-Za-z])\)?[.:]?", re.IGNORECASE)
_LETTER_THEN_TEXT_RE = re.compile(r"(?:(?:option|choice|letter)\s+)?\(?([A-Za-z])\s*[).:,\-\u2013]\s*(.+)",
                                  re.IGNORECASE | re.DOTALL)
_SECOND_LETTER_RE = re.compile(r"\(?([A-Za-z])\)?(?:[,.;:]|\s+(?:or|and)\b|$)")
_EXEMPLAR_RE = re.compile(r"Q: (?P<q>.+?)\nAnswer Choices:\n(?P<choices>(?:\([A-Z]\) .+\n)+)A:(?P<c>.*)", re.DOTALL)
# How an exemplar block reads, for error messages.
_EXEMPLAR_SHAPE = "Q: ...\\nAnswer Choices:\\n(A) ...\\nA: ..."
_CHOICE_LINE_RE = re.compile(r"\(([A-Z])\) (.+)")


@dataclass
class CqaConfig(HubDataConfig):
    """The CQA task's config keys: TaskConfig's and the `datasets` ones (data_files, hub_id, hub_config)."""


# ----------------------------------------------------------------------------- verifier

def _stem(word: str) -> str:
    """A crude stem, so inflections match ("building" ~ "build", "places" ~ "place"). Applied to
    both sides of a comparison; two choices that collide become ambiguous, never a wrong match."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, repl in (("sses", "ss"), ("ies", "y"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and not (suffix == "s" and word.endswith("ss")) \
                and len(word) - len(suffix) + len(repl) >= 3:
            word = word[: len(word) - len(suffix)] + repl
            if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # "running" -> "run"
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def normalize(text: str) -> str:
    """Lower case, apostrophes dropped, other punctuation -> spaces, one leading article dropped,
    each word stemmed."""
    t = re.sub(r"['\u2018\u2019`]", "", text.lower())
    t = re.sub(r"[\W_]+", " ", t).strip()
    t = re.sub(r"^(?:a|an|the)\s+", "", t)
    return " ".join(_stem(w) for w in t.split())


def answer_statements(completion: str) -> list[str]:
    """What follows each answer marker in the part that answers this question, up to the end of
    its sentence, in order (star/tasks/answers.py reads them)."""
    return answers.answer_statements(answers.answer_region(completion, STOP), _MARKER_RE)


def _mentions(phrase: str, texts: list[str]) -> set[int]:
    """Indices of choices whose text appears in phrase as whole words, keeping only the longest
    ones ("piggy bank" names the piggy bank, not also the bank)."""
    p = f" {normalize(phrase)} "
    norms = [normalize(t) for t in texts]
    hits = {i for i, n in enumerate(norms) if n and f" {n} " in p}
    return {i for i in hits
            if not any(j != i and norms[j] != norms[i] and f" {norms[i]} " in f" {norms[j]} " for j in hits)}


def _by_text(phrase: str, texts: list[str]) -> int | str | None:
    """The choice a phrase names by text: exact, else the one choice it contains, else the one
    choice that contains it. Index, AMBIGUOUS, or None."""
    p = normalize(phrase)
    if not p:
        return None
    norms = [normalize(t) for t in texts]
    exact = [i for i, n in enumerate(norms) if n == p]
    if exact:
        return exact[0] if len(exact) == 1 else AMBIGUOUS
    contained = _mentions(phrase, texts)
    if contained:
        return contained.pop() if len(contained) == 1 else AMBIGUOUS
    containing = [i for i, n in enumerate(norms) if f" {p} " in f" {n} "]
    if len(containing) == 1:
        return containing[0]
    return AMBIGUOUS if containing else None


def resolve(statement: str, labels: list[str], texts: list[str]) -> str | None:
    """The label one answer statement names, AMBIGUOUS, or None when it names no choice."""
    s = statement.strip().strip("\"'*\u201c\u201d").lstrip(":-\u2013\u2014 ").strip()
    upper = {lab.upper(): lab for lab in labels}
    letters = {m.group(1).upper() for m in _PAREN_LETTER_RE.finditer(s)}
    if letters:
        if len(letters) > 1:
            return AMBIGUOUS
        letter = letters.pop()
        if letter not in upper:
            return AMBIGUOUS  # "(F)" with choices A-E: not an answer to this question
        i = labels.index(upper[letter])
        others = _mentions(_PAREN_LETTER_RE.sub(" ", s), texts) - {i}
        return AMBIGUOUS if others else upper[letter]
    m = _BARE_LETTER_RE.fullmatch(s)
    if m and m.group(1).upper() in upper:
        return upper[m.group(1).upper()]
    m = _LETTER_THEN_TEXT_RE.fullmatch(s)
    if m and m.group(1).upper() in upper:
        letter, rest = upper[m.group(1).upper()], m.group(2)
        second = _SECOND_LETTER_RE.match(rest.strip())
        if second and second.group(1).upper() in upper:
            return AMBIGUOUS  # "A, B" or "A) or b": two letters
        others = _mentions(rest, texts) - {labels.index(letter)}
        return AMBIGUOUS if others else letter
    i = _by_text(s, texts)
    if i is None or i == AMBIGUOUS:
        return i
    return labels[i]


def choice_of(completion: str, labels: list[str], texts: list[str]) -> str | None:
    """The one choice label a completion answers, or None (no answer, or several)."""
    found = set()
    for statement in answer_statements(completion):
        r = resolve(statement, labels, texts)
        if r == AMBIGUOUS:
            return None
        if r is not None:
            found.add(r)
    return found.pop() if len(found) == 1 else None


def extract_answer(completion: str) -> str | None:
    """The last answer statement as written ("refrigerator (B)"), or None when there is none.
    Which choice it names depends on the choices: see choice_of."""
    statements = [s for s in answer_statements(completion) if s]
    return statements[-1] if statements else None


def reasoning_lines(completion: str) -> int:
    """The sentences before the first one with an answer marker, in the part that answers this question. A CQA
    rationale is one paragraph ("Milk spoils when warm. ... Therefore, the answer is refrigerator (B)."), so
    its sentences are its lines: that one has 2."""
    return answers.reasoning_lines(answers.sentence_lines(answers.answer_region(completion, STOP)),
                                   _MARKER_RE.search)


# ----------------------------------------------------------------------------- data

def _row_problems(row: dict) -> list[str]:
    problems = [p for p in (text_problem(row, "id"), text_problem(row, "question")) if p]
    concept = row.get("question_concept")
    if concept is not None and not isinstance(concept, str):
        problems.append(f"question_concept must be a string, got {type(concept).__name__}")
    choices = row.get("choices")
    labels: list = []
    if choices is None:
        problems.append("missing choices")
    elif not isinstance(choices, dict) or not {"label", "text"} <= set(choices):
        problems.append('choices must be {"label": [...], "text": [...]}')
    else:
        labels, texts = choices["label"], choices["text"]
        if not isinstance(labels, list) or not isinstance(texts, list):
            problems.append("choices.label and choices.text must be lists")
            labels = []
        elif len(labels) != len(texts) or len(labels) < 2:
            problems.append(f"choices need equal label and text lists of 2 or more, got {len(labels)} labels "
                            f"and {len(texts)} texts")
        else:
            if not all(isinstance(lab, str) and re.fullmatch(r"[A-Z]", lab) for lab in labels):
                problems.append(f"choices.label must be single capital letters like A..E, got {labels}")
            elif len(set(labels)) != len(labels):
                problems.append(f"choices.label repeats a label: {labels}")
            bad = [k for k, t in enumerate(texts) if not isinstance(t, str) or not t.strip() or "\n" in t]
            if bad:
                problems.append(f"choices.text {', '.join(str(k + 1) for k in bad)} must be a non-empty one-line string")
    key_problem = text_problem(row, "answerKey")
    if key_problem:
        problems.append(key_problem)
    elif labels and row["answerKey"] not in labels:
        problems.append(f"gold answerKey {row['answerKey']!r} is not among the choices {', '.join(map(str, labels))}")
    return problems


def row_example(row: dict) -> Example:
    """A checked hub row (see _row_problems) as an Example: stripped question and choice texts, the
    gold label as the answer, the labels, texts and concept in meta."""
    return Example(id=row["id"], question=row["question"].strip(), answer=row["answerKey"],
                   meta={"labels": list(row["choices"]["label"]),
                         "texts": [t.strip() for t in row["choices"]["text"]],
                         "concept": row.get("question_concept")})


# ----------------------------------------------------------------------------- prompts

def parse_exemplars(text: str) -> list[tuple[Example, str]]:
    """A few-shot file -> (question as an Example, completion with the stop) pairs: blocks split
    by a blank line, each _EXEMPLAR_SHAPE. The completion must answer one of its choices. The
    Example's answer is the choice the completion names."""
    out = []
    no_exemplars = (f"the CQA few-shot file has no exemplars; write '{_EXEMPLAR_SHAPE}' blocks "
                    "separated by blank lines")
    for n, m in enumerate(answers.exemplar_matches(text, STOP, _EXEMPLAR_RE, label="CQA few-shot exemplar",
                                                   shape=_EXEMPLAR_SHAPE, no_exemplars=no_exemplars), 1):
        pairs = [_CHOICE_LINE_RE.fullmatch(line).groups() for line in m.group("choices").strip().split("\n")]
        labels, texts = [p[0] for p in pairs], [p[1].strip() for p in pairs]
        completion = m.group("c") + STOP
        gold = choice_of(completion, labels, texts)
        if gold is None:
            raise ValueError(f"CQA few-shot exemplar {n} ('Q: {m.group('q')[:40]}...') names no single choice; "
                             f"end it with 'Therefore, the answer is <choice text> (<letter>).'")
        ex = Example(id=f"fewshot-{n}", question=m.group("q").strip(), answer=gold,
                     meta={"labels": labels, "texts": texts, "concept": None})
        out.append((ex, completion))
    return out


class CqaTask:
    """CommonsenseQA; see the module docstring for the format, the splits and the decisions.

    data_files maps "train", "dev" and "test" to a local file, or to None (train and test from
    the hub: hub_id, hub_config; dev carved from train); prompt_dir holds cqa.txt and
    cqa_direct.txt in place of the packaged few-shot files.
    """

    name = NAME
    stop = (STOP,)
    config_class = CqaConfig
    eval_splits: dict = {}  # no extra evaluation split (star/tasks/base.py); never written to

    def __init__(self, train_size: int, dev_size: int, test_size: int = 100, data_files: dict | None = None,
                 hub_id: str | None = HUB_ID, hub_config: str | None = None,
                 prompt_dir: str | Path | None = None):
        self.sizes = split_sizes(train_size, dev_size, test_size)
        self.source = SOURCE.with_location(hub_id, hub_config, data_files)
        self.splits = self.source.task_splits()
        self.prompt_dir = Path(prompt_dir) if prompt_dir is not None else None
        # Filled on first use; per instance, so there is no module-level mutable state.
        self._splits: dict[str, list[Example]] = {}
        self._fewshot: dict[tuple[bool, bool], str] = {}

    @classmethod
    def from_config(cls, task_cfg, seed: int) -> "CqaTask":
        return cls(train_size=task_cfg.train_size, dev_size=task_cfg.dev_size, test_size=task_cfg.test_size,
                   data_files=data_files_of(task_cfg), hub_id=getattr(task_cfg, "hub_id", None) or HUB_ID,
                   hub_config=getattr(task_cfg, "hub_config", None))

    # --- data

    def load(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise unknown_split(NAME, split, self.splits, NO_TEST_FIX if split == "test" else "")
        if not self._splits:
            rows = split_rows(self.source, self._read, question=lambda r: r["question"],
                              exemplars=self.exemplar_questions(), sizes=self.sizes)
            self._splits = {s: [row_example(r.row) for r in located] for s, located in rows.items()}
        return list(self._splits[split])  # a copy: callers cannot edit the cache

    def _read(self, split: str) -> list[dict]:
        return load_rows(self.source, split, limit=None, check_row=_row_problems, row_id=lambda r: r.get("id"),
                         unique="id")

    def exemplar_questions(self) -> list[str]:
        """The questions of both few-shot files: no split holds one."""
        return [ex.question for name in ("cqa.txt", "cqa_direct.txt")
                for ex, _ in parse_exemplars(read_prompt(name, self.prompt_dir))]

    # --- prompts

    def fewshot_prompt(self, direct: bool = False, hint: bool = False) -> str:
        """The exemplars with rationales, or with the answer line only (direct=True); hint=True
        tags each exemplar's gold choice, as the rationalization prompt does."""
        key = (direct, hint)
        if key not in self._fewshot:
            name = "cqa_direct.txt" if direct else "cqa.txt"
            text = read_prompt(name, self.prompt_dir)
            # Rebuilt through format_question, so the prefix and the next question read alike.
            self._fewshot[key] = "".join(self.format_question(ex, hint=hint) + c for ex, c in parse_exemplars(text))
        return self._fewshot[key]

    def hint_text(self, example: Example) -> str:
        return HINT

    def format_question(self, example: Example, hint: bool = False) -> str:
        lines = [f"Q: {example.question}", "Answer Choices:"]
        for label, text in zip(example.meta["labels"], example.meta["texts"]):
            tag = HINT if hint and label == example.answer else ""
            lines.append(f"({label}) {text}{tag}")
        lines.append("A:")
        return "\n".join(lines)

    # --- scoring

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def reasoning_lines(self, completion: str) -> int:
        return reasoning_lines(completion)

    def choice_of(self, example: Example, completion: str) -> str | None:
        return choice_of(completion, example.meta["labels"], example.meta["texts"])

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.choice_of(example, completion) == example.answer

    def class_of(self, example: Example) -> str:
        return "all"

    def gold_rationale(self, example: Example) -> None:
        return None

    def direct_completion(self, example: Example) -> str:
        """The gold choice alone, as the answers-only prompt writes it."""
        text = example.meta["texts"][example.meta["labels"].index(example.answer)]
        return f" The answer is {text} ({example.answer}).{STOP}"

    def is_faithful(self, example: Example, completion: str) -> None:
        return None
