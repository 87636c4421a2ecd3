"""Which reasoning_gym datasets task=reasoning_gym may score: the audit of their scorers.

    from star.tasks.reasoning_gym_audit import refusal, safe_datasets
    refusal("spiral_matrix")    # why it is refused (a sentence), or None: its scorer may see model output
    python -c "from star.tasks.reasoning_gym_audit import safe_datasets; print(safe_datasets())"
    python -m pytest -q tests/test_reasoning_gym_audit.py   # re-audit (after a reasoning-gym upgrade)

star's promise: model output is parsed, never executed. task=reasoning_gym hands the model's answer
to the dataset's own `score_answer`, and at reasoning-gym 0.1.25 some of those pass it to Python's
`eval` or to sympy's `parse_expr` (which evaluates it too): an answer reading
`__import__('os').system(...)` runs. Fed through each dataset's scorer, a file-creating answer created
its file for exactly the nine datasets marked "runs the answer" below, and for none of the other 96
that build with their default config (composite needs one).

Decision: refuse the datasets in UNSAFE (a ValueError when the task is built, which the pre-flight
turns into exit code 2, naming the reason and the safe datasets), rather than score in a sandbox:
- Refusing is provably safe: an answer reaches only scorers read for this audit, and the audit test
  checks from the installed sources that no function reachable from an accepted scorer names
  eval/exec/compile/__import__, sympy, pickle, subprocess, os or a library not audited (it flags
  exactly the nine, and two lines that evaluate the dataset's own gold data), then feeds hostile
  answers (code, 9**9**9**9, 100000 nested parentheses) through every accepted scorer: nothing runs,
  nothing scores correct, no call takes 5 s (the slowest, 0.25 s).
- A sandbox is not: a scorer subprocess without secrets and with limits still runs the answer as code
  that can write files and reach the network; replacing `eval` by a literal parser means patching
  reasoning_gym's module internals, and sympy's parse_expr has no literal-only mode.
- It costs little: 12 of 106 datasets, none of them used by star's tests or benchmarks. Besides the
  nine: composite (delegates to any scorer), game_of_life_halting (scores any non-empty answer 1.0) and
  propositional_logic (its parser held a 200 KB answer for over 5 s).

The audit holds for one reasoning-gym version, AUDITED_VERSION (the one pyproject pins): with any
other version installed every dataset is refused until someone re-audits it (run the test above, read
what it flags, update UNSAFE and AUDITED_VERSION). So an upgrade cannot silently add a scorer that
evaluates answers.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata

AUDITED_VERSION = "0.1.25"

_RUNS = "its scorer passes the answer to"
# Dataset -> why its scorer must never see model output (reasoning-gym 0.1.25's sources).
UNSAFE: dict[str, str] = {
    "binary_matrix": f"runs the answer: {_RUNS} Python's eval (algorithmic/binary_matrix.py, score_answer)",
    "spiral_matrix": f"runs the answer: {_RUNS} Python's eval (algorithmic/spiral_matrix.py, score_answer)",
    "string_insertion": f"runs the answer: {_RUNS} Python's eval (algorithmic/string_insertion.py, score_answer)",
    "n_queens": f"runs the answer: {_RUNS} Python's eval (games/n_queens.py, score_answer)",
    "countdown": f"runs the answer: {_RUNS} sympy's parse_expr, which evaluates it (games/countdown.py)",
    "puzzle24": f"runs the answer: {_RUNS} sympy's parse_expr, which evaluates it (games/puzzle24.py)",
    "polynomial_multiplication": f"runs the answer: {_RUNS} sympy's parse_expr, which evaluates it "
                                 "(algebra/polynomial_multiplication.py)",
    "simple_integration": f"runs the answer: {_RUNS} sympy's parse_expr, which evaluates it "
                          "(algebra/simple_integration.py)",
    "intermediate_integration": f"runs the answer: {_RUNS} sympy's parse_expr, which evaluates it "
                                "(algebra/intermediate_integration.py)",
    "composite": "its scorer hands the answer to any dataset's scorer, the ones above included (composite.py)",
    "propositional_logic": "its scorer's parser takes time quadratic in the answer's length (an answer of "
                           "100000 nested parentheses held it for over 5 s, until Python's recursion limit)",
    "game_of_life_halting": "its scorer scores every non-empty answer 1.0 (bool(answer) == bool(gold)): "
                            "every rationale would count as correct",
}


@lru_cache(maxsize=1)
def installed_version() -> str | None:
    try:
        return metadata.version("reasoning-gym")
    except metadata.PackageNotFoundError:
        return None


def refusal(dataset: str) -> str | None:
    """Why task=reasoning_gym refuses `dataset` (one sentence naming the fix), or None when it may
    score it. Unknown names are the caller's to report."""
    version = installed_version()
    if version != AUDITED_VERSION:
        return (f"reasoning-gym {version} is installed, but star's audit of which scorers may see model output "
                f"covers {AUDITED_VERSION} only (star/tasks/reasoning_gym_audit.py); install "
                f"reasoning-gym=={AUDITED_VERSION}, or re-audit with tests/test_reasoning_gym_audit.py")
    if dataset in UNSAFE:
        return f"reasoning_gym dataset {dataset!r} is refused: {UNSAFE[dataset]}"
    return None


def safe_datasets() -> list[str]:
    """Every dataset name task=reasoning_gym accepts, sorted."""
    import reasoning_gym  # local: importing it takes about a second

    return sorted(n for n in reasoning_gym.factory.DATASETS if refusal(n) is None)
