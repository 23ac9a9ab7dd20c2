"""Constrained decoding in the transformers engine: each record's EBNF answer grammar (`TaskKind.grammar`)
compiled by xgrammar against the tokenizer, and applied to `generate` as a logits processor."""

from __future__ import annotations

import xgrammar as xgr
from transformers import LogitsProcessor, PreTrainedTokenizerBase
from xgrammar.contrib.hf import LogitsProcessor as GrammarProcessor


class Grammars:
    """Compiles (and caches) EBNF answer grammars against one tokenizer's vocabulary."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_ids: list[int]):
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, xgr.CompiledGrammar] = {}

    def compiled(self, ebnf: str) -> xgr.CompiledGrammar:
        """The grammar compiled for this vocabulary (the last 256 kept)."""
        if ebnf not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[ebnf] = self.compiler.compile_grammar(ebnf)
        return self._cache[ebnf]


def logits_processor(grammars: list[xgr.CompiledGrammar]) -> LogitsProcessor:
    """A processor for one `generate` call whose batch row i follows grammars[i]."""
    return GrammarProcessor(grammars)
