"""A bounded, thread-safe LRU cache of prompt embeddings: encode each prompt once, keep the recent ones."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

from fastinv.errors import FastinvError

Embeddings = tuple[torch.Tensor, torch.Tensor | None]
"""(prompt_embeds [1, L, D], pooled [1, P] or None) on the model's device."""


class PromptCache:
    """`get(prompt, encode)`: the cached embeddings of `prompt`, or `encode(prompt)` stored as the newest.

    Holds at most `size` prompts and drops the least recently used. Safe from several threads: one lock
    guards the table and the encoder (text encoders are not re-entrant), so a prompt is encoded once
    even when threads ask for it together.
    """

    def __init__(self, size: int = 64) -> None:
        if size < 1:
            raise FastinvError(f"the prompt cache needs room for at least 1 prompt, got {size}")
        self.size = size
        self._table: OrderedDict[str, Embeddings] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str, encode: Callable[[str], Embeddings]) -> Embeddings:
        with self._lock:
            if prompt in self._table:
                self.hits += 1
                self._table.move_to_end(prompt)
                return self._table[prompt]
            self.misses += 1
            embeddings = encode(prompt)
            self._table[prompt] = embeddings
            if len(self._table) > self.size:
                self._table.popitem(last=False)
            return embeddings

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._table
