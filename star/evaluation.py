"""Accuracy of a model on a split: overall and per class (e.g. per digit count), always greedy.

    result = evaluate(generator, task, dev_examples, prefix="")
    result["accuracy"], result["per_class"]["2"], result["samples"][:3]

The result holds no timings or paths, so two equal runs write equal eval.json files.
"""

from __future__ import annotations

from collections import defaultdict

from star.tasks.base import Example, Task


def score(task: Task, examples: list[Example], completions: list[str], n_samples: int = 8,
          faithful: bool = False) -> dict:
    """Accuracy overall and per class of given completions, plus the first few as samples; with `faithful`,
    also faithful_rate: the fraction whose every step checks out (None where the task cannot check steps)."""
    correct = [task.is_correct(ex, c) for ex, c in zip(examples, completions)]
    by_class: dict[str, list[bool]] = defaultdict(list)
    for ex, ok in zip(examples, correct):
        by_class[task.class_of(ex)].append(ok)
    samples = [
        {"id": ex.id, "question": ex.question, "gold": ex.answer, "completion": c,
         "answer": task.extract_answer(c), "correct": ok}
        for ex, c, ok in list(zip(examples, completions, correct))[:n_samples]
    ]
    checks = [task.is_faithful(ex, c) for ex, c in zip(examples, completions)] if faithful else []
    checked = [ok for ok in checks if ok is not None]
    extra = {"faithful_rate": sum(checked) / len(checked) if checked else None} if faithful else {}
    return {
        **extra,
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "n": len(correct),
        "n_correct": sum(correct),
        "per_class": {k: sum(v) / len(v) for k, v in sorted(by_class.items())},
        "per_class_n": {k: len(v) for k, v in sorted(by_class.items())},
        "samples": samples,
    }


def evaluate(generator, task: Task, examples: list[Example], prefix: str, max_new_tokens: int,
             n_samples: int = 8, desc: str = "eval", faithful: bool = False) -> dict:
    """Greedy completions for every example (no hint), scored by the task's verifier."""
    completions = generator.generate(
        prefix, [task.format_question(ex) for ex in examples], seeds=[0] * len(examples),
        max_new_tokens=max_new_tokens, stop=task.stop, temperature=0.0, desc=desc,
    )
    return score(task, examples, completions, n_samples=n_samples, faithful=faithful)
