"""Reading answers out of completions, and exemplars out of few-shot files: what the tasks read alike.

Plain functions that a task calls with its own stop string, marker regex and exemplar regex:

    region = answer_region(completion, STOP)                     # what answers this question
    region, finished = answer_region_finished(completion, STOP)  # ... and whether the model ended it
    statements = answer_statements(region, MARKER_RE)            # "the answer is X." -> ["X"]
    n = reasoning_lines(region, MARKER_RE.search)                # lines written before the answer line
    for n, m in enumerate(exemplar_matches(text, STOP, EXEMPLAR_RE, label="CQA few-shot exemplar",
                                           shape="Q: ...", no_exemplars="the CQA ..."), 1):
        ...                                                      # check exemplar n, then the next

Decisions worth knowing:
- A completion answers its question up to the first stop string, and up to a line starting
  "Q:" (leading whitespace allowed): there the model began a new exemplar of its own.
- A statement runs from the end of its marker to the end of its sentence: . ! ? or ; followed
  by whitespace or the end of the line. So "1.5", "$1.50" and "st.louis" read whole (but
  "e.g. this" ends after "e.g").
- The answer line of a completion is the first line stating an answer (its task's marker), else
  its last non-empty line; the lines of reasoning are the non-empty lines before it. A line that
  reasons and answers at once ("9 + 8 = 17, so the answer is 17.") is the answer line: it counts 0.
  CQA writes its rationale as one paragraph, so there a sentence counts as a line (sentence_lines).
- Few-shot files are blocks separated by the stop string (a blank line); blocks are
  stripped and empty ones dropped, so extra blank lines between exemplars do no harm.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

# The model began a new exemplar: what follows answers some other question.
NEW_QUESTION_RE = re.compile(r"^\s*Q:", re.MULTILINE)
# A sentence ends at . ! ? ; followed by a space or the end ("(B)." ends; "st.louis" does not).
SENTENCE_END_RE = re.compile(r"[.!?;](?=\s|$)")


def before_stop(completion: str, stop: str) -> str:
    """The completion up to (not including) the first stop string; all of it when there is none."""
    return completion.split(stop, 1)[0]


def answer_region_finished(completion: str, stop: str) -> tuple[str, bool]:
    """(the part that answers this question, whether the model finished it).

    The part is the text before the first stop and before a line starting "Q:". The model
    finished when it wrote either of them; otherwise it was cut off (e.g. by max_new_tokens).
    """
    text = before_stop(completion, stop)
    m = NEW_QUESTION_RE.search(text)
    if m:
        return text[: m.start()], True
    return text, stop in completion


def answer_region(completion: str, stop: str) -> str:
    """The part of a completion that answers this question: before the stop and before a new "Q:" line."""
    return answer_region_finished(completion, stop)[0]


def answer_statements(region: str, marker_re: re.Pattern[str], lead: str = "") -> list[str]:
    """What follows each match of marker_re, up to the end of its sentence, stripped, in order.

    Markers are searched line by line, so a statement never runs onto the next line; a line
    with two markers gives two statements. `lead` lists characters dropped from the start of a
    statement before its sentence end is looked for (gsm8k: " :" after "answer is:").
    """
    out = []
    for line in region.split("\n"):
        for m in marker_re.finditer(line):
            rest = line[m.end():].lstrip(lead)
            end = SENTENCE_END_RE.search(rest)
            out.append((rest[: end.start()] if end else rest).strip())
    return out


def reasoning_lines(region: str, is_answer_line: Callable[[str], object]) -> int:
    """The non-empty lines of `region` before its answer line: the first line is_answer_line accepts, else
    the last non-empty line. 0 for an answer alone (" The answer is 67.") and for an empty region."""
    lines = [line for line in region.split("\n") if line.strip()]
    for n, line in enumerate(lines):
        if is_answer_line(line):
            return n
    return max(len(lines) - 1, 0)


def sentence_lines(region: str) -> str:
    """The region with a line break after each sentence end: one sentence a line, for tasks whose
    rationales are one paragraph (CQA), so reasoning_lines counts their sentences."""
    return SENTENCE_END_RE.sub(lambda m: m.group(0) + "\n", region)


def exemplar_matches(text: str, stop: str, block_re: re.Pattern[str], *, label: str, shape: str,
                     no_exemplars: str) -> Iterator[re.Match[str]]:
    """The blocks of a few-shot file, each fullmatched by block_re, in file order.

    The file is split at each stop string (a blank line); blocks are stripped and empty ones
    dropped. Raises ValueError(no_exemplars) when no block is left, and
    ValueError("<label> <n> is not '<shape>': <start of the block>") for a block that block_re
    does not match, n counting exemplars from 1.

    Lazy: block n is matched only when the caller asks for it, so a caller that checks each
    exemplar as it goes reports the first bad exemplar, whatever is wrong with it.
    """
    blocks = [block.strip() for block in text.split(stop) if block.strip()]
    if not blocks:
        raise ValueError(no_exemplars)
    for n, block in enumerate(blocks, 1):
        m = block_re.fullmatch(block)
        if not m:
            raise ValueError(f"{label} {n} is not '{shape}': {block[:60]!r}")
        yield m
