"""Training data: (prompt, completion) rows -> token ids with loss only on the completion.

The prompt's tokens (the optional few-shot prefix and the question) get label -100, so
the loss covers every completion token, rationale and answer alike. Prefix, prompt and
completion are tokenized separately and concatenated, exactly as the generator builds
its prompts, so training sees the token boundaries generation will see.

Two collators turn a batch of examples into tensors (trainer.packing picks one):

  PadCollator   one example per row, right-padded to the longest; an attention mask hides the pad.
  PackCollator  the batch's examples packed end to end into as few rows of at most max_seq_len
                tokens as fit; each example's position ids restart at 0, which (with no attention
                mask and no cache) makes transformers build a block-diagonal causal mask: no
                example attends to another. The same examples, the same loss (mean over their
                completion tokens), less padding.
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


class PackCollator:
    """Packs a batch's examples into rows of at most `max_len` tokens (first fit, longest first).

    Why packing stays inside one batch (and does not fill rows across batches): an optimizer
    step then sees exactly the examples and the loss it would see unpacked, so learning is the
    same and only the padding work goes away (tests/test_packing.py checks loss and gradients).

    Returns input_ids, labels, position_ids (restarting at 0 for every example and for the
    padding at a row's end) and n_tokens (real tokens, for tokens/s). No attention_mask: the
    model must see position_ids alone (and run with use_cache=False) to build its block-diagonal
    mask; CausalLMModule.training_step does exactly that.
    """

    def __init__(self, pad_id: int, max_len: int):
        self.pad_id = pad_id
        self.max_len = max_len

    def pack(self, batch: list[TokenizedExample]) -> list[list[TokenizedExample]]:
        rows: list[list[TokenizedExample]] = []
        used: list[int] = []
        for e in sorted(batch, key=lambda e: -len(e.input_ids)):
            n = len(e.input_ids)
            r = next((r for r, u in enumerate(used) if u + n <= self.max_len), None)
            if r is None:
                rows.append([e])
                used.append(n)
            else:
                rows[r].append(e)
                used[r] += n
        return rows

    def __call__(self, batch: list[TokenizedExample]) -> dict[str, torch.Tensor]:
        rows = self.pack(batch)
        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for e in row:
                n = len(e.input_ids)
                input_ids[r, at:at + n] = torch.tensor(e.input_ids)
                labels[r, at:at + n] = torch.tensor(e.labels)
                # An example's first token is never predicted unpacked (nothing precedes it);
                # packed, the previous example's last token would be trained to predict it.
                labels[r, at] = IGNORE_INDEX
                position_ids[r, at:at + n] = torch.arange(n)
                at += n
            position_ids[r, at:] = torch.arange(width - at)  # the padding is a block of its own
        n_tokens = sum(len(e.input_ids) for e in batch)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "n_tokens": torch.tensor(n_tokens)}
