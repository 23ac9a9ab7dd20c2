"""The seed recipe's data preparation, written the way the seed tutorials write it (used by train_speed.py).

A hand-written Qwen chat-template f-string, the tokenizer called once per example inside `datasets.map`, the
prompt masked with -100, the pad token appended as the end marker, truncation from the end at 1024 tokens.

The seeds ran it with the slow Python tokenizer (`use_fast=False`). transformers 5 has none any more (it ignores
`use_fast`), so, run as a script under transformers 4 (`make setup-seed` builds `.venv-seed`), this file times
the seed's preparation with transformers 4's slow Qwen2 tokenizer, built from the model's own vocabulary and
merges, and writes the examples/s and the token ids it produced (train_speed.py checks them against the fast
tokenizer's):

    .venv-seed/bin/python benchmarks/seed_recipe.py MODEL_DIR ROWS.jsonl OUT.json

This file imports neither smalltune nor torch: it runs in that small environment of its own.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

MAX_LENGTH = 1024
SEED_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # what Qwen2.5's template adds


def seed_process_func(tokenizer, max_length: int = MAX_LENGTH):
    """The seeds' per-example `process_func`: template f-string, prompt masked, pad token as the end marker."""

    def process_func(example: dict) -> dict:
        instruction = tokenizer(
            f"<|im_start|>system\n{SEED_SYSTEM}<|im_end|>\n<|im_start|>user\n{example['instruction'] + example['input']}"
            "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
        response = tokenizer(f"{example['output']}", add_special_tokens=False)
        input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.pad_token_id]
        attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.pad_token_id]
        if len(input_ids) > max_length:
            input_ids, attention_mask, labels = input_ids[:max_length], attention_mask[:max_length], labels[:max_length]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    return process_func


def slow_qwen2_tokenizer(model_dir: Path):
    """transformers 4's Python Qwen2Tokenizer from the model's tokenizer.json (its vocabulary, merges, added tokens)."""
    from transformers import AddedToken, Qwen2Tokenizer

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in spec["model"]["merges"]]
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer reads both files when it is built
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(spec["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = Qwen2Tokenizer(str(vocab_file), str(merges_file), pad_token="<|endoftext|>")
    added = sorted(spec["added_tokens"], key=lambda t: t["id"])
    tokenizer.add_tokens([AddedToken(t["content"], special=t["special"], normalized=False) for t in added])
    wrong = [t["content"] for t in added if tokenizer.convert_tokens_to_ids(t["content"]) != t["id"]]
    if wrong:
        raise SystemExit(f"slow tokenizer: added tokens got other ids than tokenizer.json's: {wrong}")
    return tokenizer


def main() -> None:
    model_dir, rows_file, out_file = (Path(a) for a in sys.argv[1:4])
    from datasets import Dataset

    rows = [json.loads(line) for line in rows_file.read_text(encoding="utf-8").splitlines()]
    tokenizer = slow_qwen2_tokenizer(model_dir)
    started = time.perf_counter()
    raw = Dataset.from_list(rows)
    dataset = raw.map(seed_process_func(tokenizer), remove_columns=raw.column_names)
    seconds = time.perf_counter() - started
    out_file.write_text(json.dumps({
        "tokenizer": f"{type(tokenizer).__name__} (slow: {not tokenizer.is_fast})",
        "examples_per_s": len(rows) / seconds,
        "input_ids": list(dataset["input_ids"]),
    }), encoding="utf-8")


if __name__ == "__main__":
    main()
