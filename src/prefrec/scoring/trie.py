"""Constrained decoding to a list of answers: a trie over their token ids.

Greedy generation may name a title that is not among the candidates (zero-shot ValidRatio 0.5 in a trial). Decoding
through the trie of the candidates' answer tokens (each answer's tokens + the end-of-turn token, exactly what the
scorer scores) can only produce one of them, so ValidRatio is 1 by construction; among the candidates it still
follows the model's greedy choice token by token (which is not the same as the likelihood ranking's best answer,
a comparison of whole answers). transformers' `generate(prefix_allowed_tokens_fn=...)` asks the trie for the
allowed next tokens after each generated prefix.
"""

from __future__ import annotations

from typing import Sequence


class AnswerTrie:
    """The token-id sequences of the allowed answers, as nested dicts (token -> subtree)."""

    def __init__(self, answers: Sequence[Sequence[int]], end: int | None):
        if not answers:
            raise ValueError("AnswerTrie: no answers")
        self.root: dict[int, dict] = {}
        self.end = end
        for ids in answers:
            node = self.root
            for i in ids:
                node = node.setdefault(int(i), {})

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Token ids that may follow `generated`; past a complete answer, only the end token (or nothing)."""
        node = self.root
        for i in generated:
            node = node.get(int(i))
            if node is None:  # off the trie: generation should already have ended; end it now
                return [self.end] if self.end is not None else []
        if node:
            return list(node)
        return [self.end] if self.end is not None else []
