"""Tests for star/tasks/answers.py: the answer region, answer statements and few-shot exemplar
parsing that the tasks share. Tables of cases, nasty ones included: a stop string, a new "Q:"
line, several markers, "answer is not", sentence ends inside words ("st.louis") and numbers."""

from __future__ import annotations

import re

import pytest

from star.tasks.answers import (
    answer_region,
    answer_region_finished,
    answer_statements,
    before_stop,
    exemplar_matches,
)

STOP = "\n\n"
# The CQA task's marker: "answer is X", "answer: X", "choice is X", "option is X"; never "answer is not".
MARKER_RE = re.compile(r"\b(?:answer|choice|option)\s*(?:is\b|:)(?!\s*not\b)", re.IGNORECASE)
EXEMPLAR_RE = re.compile(r"Q: (?P<q>.+?)\nA:(?P<c>.*)", re.DOTALL)
MESSAGES = dict(label="Test few-shot exemplar", shape="Q: ...\\nA: ...", no_exemplars="no exemplars here; write some")


# ----------------------------------------------------------------------------- the region

# (completion, stop, the region, whether the model finished it)
REGIONS = [
    ("The answer is 5.\n\n", STOP, "The answer is 5.", True),
    ("The answer is 5.", STOP, "The answer is 5.", False),                      # cut off: not finished
    ("", STOP, "", False),
    ("\n\nThe answer is 5.", STOP, "", True),                                    # the stop first
    ("The answer is 5.\n\nThe answer is 6.\n\n", STOP, "The answer is 5.", True),  # only the first stop counts
    ("The answer is 5.\nQ: next?\nA: The answer is 6.", STOP, "The answer is 5.\n", True),  # a new exemplar
    ("The answer is 5.\n   Q: next?", STOP, "The answer is 5.\n", True),          # indented "Q:" too
    ("Q: next?\nA: 6", STOP, "", True),                                           # "Q:" on the first line
    ("x\n \nQ: y", STOP, "x\n", True),                                            # whitespace lines before "Q:" go too
    ("The answer is Q: 5.", STOP, "The answer is Q: 5.", False),                  # "Q:" inside a line is text
    ("A question: q: 5", STOP, "A question: q: 5", False),                        # lower-case "q:" is text
    ("The answer is 5.\nQ: next\n\nQ: more", STOP, "The answer is 5.\n", True),   # stop after the "Q:"
    ("The answer is 5.###rest", "###", "The answer is 5.", True),                 # any stop string
    ("The answer is 5.\n\nrest", "###", "The answer is 5.\n\nrest", False),
]


@pytest.mark.parametrize("completion,stop,region,finished", REGIONS)
def test_answer_region(completion, stop, region, finished):
    assert answer_region_finished(completion, stop) == (region, finished)
    assert answer_region(completion, stop) == region


@pytest.mark.parametrize("completion,stop,before", [
    ("a\n\nb\n\nc", STOP, "a"),
    ("a\nQ: b", STOP, "a\nQ: b"),  # only the stop: a new "Q:" is the region's business
    ("", STOP, ""),
    ("abc", "###", "abc"),
])
def test_before_stop(completion, stop, before):
    assert before_stop(completion, stop) == before


# ----------------------------------------------------------------------------- statements

# (completion, its answer statements): read through answer_region with the stop, as the tasks do.
STATEMENTS = [
    (" Milk spoils. Therefore, the answer is refrigerator (B).\n\n", ["refrigerator (B)"]),
    (" The answer is B", ["B"]),                                                 # no sentence end
    (" Answer: C\n\n", ["C"]),
    (" The best choice is dishwasher (C), because it cleans.", ["dishwasher (C), because it cleans"]),
    (" The correct option is C!", ["C"]),
    (" Is it the answer? The answer is 7? Yes.", ["7"]),
    (" THE ANSWER IS DISHWASHER", ["DISHWASHER"]),                               # case-insensitive marker
    # "answer is not" is no statement
    (" The answer is not sink (A). The answer is dishwasher (C).", ["dishwasher (C)"]),
    (" The answer is not sink.", []),
    (" The answer is nothing.", ["nothing"]),                                    # "not" only as a whole word
    # several markers: on one line, on several lines, in order
    (" The answer is A; the choice is B.", ["A", "B"]),
    (" The answer is A.\nTherefore, the answer is B.", ["A", "B"]),
    (" The answer is A, or the option is B.", ["A, or the option is B", "B"]),  # one sentence holds the next
    # sentence ends: . ! ? ; followed by a space or the end only
    (" The answer is st.louis (A).", ["st.louis (A)"]),
    (" The answer is 1.5. That is all.", ["1.5"]),
    (" The answer is $1.50.", ["$1.50"]),
    (" The answer is e.g. this", ["e.g"]),                                      # an abbreviation ends it: a known limit
    (" The answer is A.B.C. done", ["A.B.C"]),
    # a statement stays on its line
    (" The answer is\nB.", [""]),
    (" The answer is", [""]),
    # only the region is read: not past the stop, not past a new exemplar
    (" The answer is A.\n\nThe answer is B.", ["A"]),
    (" The answer is A.\nQ: Where?\nA: The answer is B.", ["A"]),
    ("\n\nThe answer is A.", []),
    # no marker
    ("", []),
    (" I think it is the fridge.\n\n", []),
    (" Answering is hard.", []),
]


@pytest.mark.parametrize("completion,expected", STATEMENTS)
def test_answer_statements(completion, expected):
    assert answer_statements(answer_region(completion, STOP), MARKER_RE) == expected


@pytest.mark.parametrize("region,lead,expected", [
    (" The answer is: : 5", "", [": : 5"]),
    (" The answer is: : 5", " :", ["5"]),
    (" Answer: : . x", "", [":"]),      # the sentence end is looked for after the lead is dropped ...
    (" Answer: : . x", " :", [""]),     # ... so dropping it can end the statement at once
    (" Answer:5.", " :", ["5"]),
])
def test_answer_statements_lead(region, lead, expected):
    assert answer_statements(region, MARKER_RE, lead=lead) == expected


def test_statement_tables_are_nasty_enough():
    assert len(REGIONS) >= 12 and len(STATEMENTS) >= 25
    assert sum(len(s) > 1 for _, s in STATEMENTS) >= 3 and sum(not s for _, s in STATEMENTS) >= 5


# ----------------------------------------------------------------------------- exemplars

def parse(text: str) -> list[tuple[str, str]]:
    return [(m.group("q"), m.group("c")) for m in exemplar_matches(text, STOP, EXEMPLAR_RE, **MESSAGES)]


@pytest.mark.parametrize("text,expected", [
    ("Q: one?\nA: 1\n\nQ: two?\nA: 2\n\n", [("one?", " 1"), ("two?", " 2")]),
    ("Q: one?\nA: 1", [("one?", " 1")]),                                         # no trailing stop
    ("\n\n\nQ: one?\nA: 1\n\n\n\n  \n\nQ: two?\nA: 2\n", [("one?", " 1"), ("two?", " 2")]),  # extra blank lines
    ("  Q: one?\nA: step\nThe answer is 1.  \n\n", [("one?", " step\nThe answer is 1.")]),  # blocks are stripped
])
def test_exemplar_matches(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text,message", [
    ("", "no exemplars here; write some"),
    ("\n\n  \n\n", "no exemplars here; write some"),
    ("2 + 2 is 4\n\n", "Test few-shot exemplar 1 is not 'Q: ...\\nA: ...': '2 + 2 is 4'"),
    ("Q: one?\nA: 1\n\nQ: two? A: 2\n\n", "Test few-shot exemplar 2 is not 'Q: ...\\nA: ...': 'Q: two? A: 2'"),
    ("Q: one?\nA: 1\n\n" + "x" * 100, f"Test few-shot exemplar 2 is not 'Q: ...\\nA: ...': {'x' * 60!r}"),
])
def test_exemplar_errors_name_the_exemplar(text, message):
    with pytest.raises(ValueError) as e:
        parse(text)
    assert str(e.value) == message


def test_exemplar_matches_is_lazy():
    # A caller that checks each exemplar as it goes reports the first bad one, whatever is wrong with it.
    matches = exemplar_matches("Q: one?\nA: 1\n\nbroken\n\n", STOP, EXEMPLAR_RE, **MESSAGES)
    assert next(matches).group("q") == "one?"
    with pytest.raises(ValueError, match="exemplar 2 is not"):
        next(matches)
