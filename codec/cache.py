"""A value derived from tensors, kept until one of them is replaced or changed in place."""

from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

import torch

T = TypeVar("T")


class TensorCache(Generic[T]):
    """Caches ``compute()`` for a set of tensors.

    The key holds the tensor objects themselves (compared by identity, so a freed tensor's
    reused memory cannot match) and their in-place version counters (bumped by
    ``load_state_dict``, optimizer steps and index assignment). Tensors made under
    ``torch.inference_mode`` have no version counter: for them nothing is cached.
    """

    def __init__(self) -> None:
        self._key: list[tuple[torch.Tensor, int]] | None = None
        self._value: T | None = None

    def get(self, tensors: Iterable[torch.Tensor], compute: Callable[[], T]) -> T:
        tensors = list(tensors)
        if any(t.is_inference() for t in tensors):
            return compute()
        key = [(t, t._version) for t in tensors]
        old = self._key
        if old is None or len(old) != len(key) or any(a is not b or u != v for (a, u), (b, v) in zip(old, key)):
            self._key, self._value = key, compute()
        return self._value  # type: ignore[return-value]
