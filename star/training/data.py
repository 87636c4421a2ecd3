"""Training data: (prompt, completion) rows -> token ids with loss only on the completion.

The prompt's tokens (the optional few-shot prefix and the question) get label -100, so
the loss covers every completion token, rationale and answer alike. Prefix, prompt and
completion are tokenized separately and concatenated, exactly as the generator builds
its prompts, so training sees the token boundaries generation will see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def tokenize_rows(rows: list[dict], tokenizer, prefix: str, max_seq_len: int) -> list[TokenizedExample]:
    """rows carry "prompt" and "completion"; the shared `prefix` ("" for none) goes first."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    prefix_ids = ids(prefix)
    out = []
    for row in rows:
        prompt_ids = prefix_ids + ids(row["prompt"])
        completion_ids = ids(row["completion"])
        input_ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
        # Too long: drop from the left, so the completion (what is learned) survives.
        input_ids, labels = input_ids[-max_seq_len:], labels[-max_seq_len:]
        out.append(TokenizedExample(input_ids, labels))
    return out


class SFTDataset(Dataset):
    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> TokenizedExample:
        return self.examples[i]


class PadCollator:
    """Right-pads a batch; padded positions are masked out and carry no loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, e in enumerate(batch):
            n = len(e.input_ids)
            input_ids[r, :n] = torch.tensor(e.input_ids)
            labels[r, :n] = torch.tensor(e.labels)
            mask[r, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
