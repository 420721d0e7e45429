"""The running batch's KV cache: one left-padded row per request, growing to the right.

Per layer, keys and values live in a buffer of shape (rows, kv_heads, capacity, head_dim)
of which columns [start, end) are in use; row i's tokens are the last `lengths[i]` of
them, the columns before are padding that the attention mask hides. A decode step writes
one column for every row. Admitting a request copies its prefilled cache into a new row,
right-aligned; retiring one drops its row and releases the leading columns no row uses any
more. The buffer grows by doubling (up to a cap), so a step writes one column in place
instead of copying the whole cache (transformers' DynamicCache concatenates at every step).

Why padded rows rather than paged blocks: on CPU, attention over a padded batch is one SDPA
call per layer that every transformers model already makes; paged attention needs its own
kernels (transformers' paged path runs far slower than `generate` on CPU), and the padding
costs only attention work over short idle columns, which retiring rows release.

It is a transformers `Cache`, so any decoder model takes it as `past_key_values`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

#: Columns a new buffer holds at least.
_MIN_CAPACITY = 64


class RowLayer(DynamicLayer):
    """One layer's keys and values; `keys`/`values` are views of the used columns."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.start = 0
        self.end = 0
        self.cap: int | None = None  # most columns the buffer ever needs (None: no cap)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.kbuf = key_states.new_zeros(*key_states.shape[:2], 0, key_states.shape[3])
        self.vbuf = value_states.new_zeros(*value_states.shape[:2], 0, value_states.shape[3])
        self.start = self.end = 0
        self._views()
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.kbuf is not None and self.vbuf is not None
        n = key_states.shape[-2]
        if self.end + n > self.kbuf.shape[-2]:
            self._reserve(self.end - self.start + n)
            assert self.kbuf is not None and self.vbuf is not None
        self.kbuf[:, :, self.end : self.end + n] = key_states
        self.vbuf[:, :, self.end : self.end + n] = value_states
        self.end += n
        self._views()
        return self.keys, self.values  # type: ignore[return-value]

    def _views(self) -> None:
        assert self.kbuf is not None and self.vbuf is not None
        self.keys = self.kbuf[:, :, self.start : self.end]
        self.values = self.vbuf[:, :, self.start : self.end]

    def _reserve(self, needed: int) -> None:
        """A new buffer with room for `needed` columns and more; the used ones move to 0."""
        assert self.kbuf is not None and self.vbuf is not None
        capacity = _capacity(needed, self.cap)
        used = self.end - self.start
        shape = (self.kbuf.shape[0], self.kbuf.shape[1], capacity, self.kbuf.shape[3])
        kbuf, vbuf = self.kbuf.new_zeros(shape), self.vbuf.new_zeros(shape)
        kbuf[:, :, :used] = self.kbuf[:, :, self.start : self.end]
        vbuf[:, :, :used] = self.vbuf[:, :, self.start : self.end]
        self.kbuf, self.vbuf, self.start, self.end = kbuf, vbuf, 0, used
        self._views()


class RowCache(Cache):
    """The KV cache of a batch of rows of different lengths (see the module docstring)."""

    def __init__(self, cap: int | None = None) -> None:
        super().__init__(layer_class_to_replicate=RowLayer)
        self.lengths: list[int] = []  # tokens held per row
        self.cap = cap

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
        *args: Any, **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        while len(self.layers) <= layer_idx:  # layers come with the cache's cap
            layer = RowLayer()
            layer.cap = self.cap
            self.layers.append(layer)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns in use (the longest row's length)."""
        return self.get_seq_length()

    def set_cap(self, columns: int | None) -> None:
        """The most columns any row will need: buffers never grow past it."""
        self.cap = columns
        for layer in self.layers:
            if isinstance(layer, RowLayer):
                layer.cap = columns

    def decode_inputs(self, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each row may attend (bool, rows × width + 1) and the position ids
        (rows, 1) for one more token per row."""
        width = self.width
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(width + 1, device=device)
        mask = columns.unsqueeze(0) >= (width - lengths).unsqueeze(1)
        return mask, lengths.unsqueeze(1)

    def stepped(self) -> None:
        """Every row took one more token (after a decode step)."""
        self.lengths = [n + 1 for n in self.lengths]

    def clear_padding(self) -> None:
        """Zero every row's columns before its tokens (after a padded prefill, they hold
        whatever the padding computed; a masked column must hold finite numbers, since a
        weight of 0 times NaN is NaN)."""
        for layer in self.layers:
            if not isinstance(layer, RowLayer) or layer.kbuf is None or layer.vbuf is None:
                continue
            width = layer.end - layer.start
            for row, length in enumerate(self.lengths):
                if length < width:
                    layer.kbuf[row, :, layer.start : layer.end - length] = 0
                    layer.vbuf[row, :, layer.start : layer.end - length] = 0

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); release the columns no row uses any more."""
        if len(rows) == self.rows:
            return
        self.lengths = [self.lengths[i] for i in rows]
        index = None
        for layer in self.layers:
            if not isinstance(layer, RowLayer) or layer.kbuf is None or layer.vbuf is None:
                continue
            if index is None:
                index = torch.tensor(rows, dtype=torch.long, device=layer.kbuf.device)
            layer.kbuf = layer.kbuf.index_select(0, index)
            layer.vbuf = layer.vbuf.index_select(0, index)
            layer.start = layer.end - max(self.lengths, default=0)
            layer._views()

    def admit(self, other: RowCache) -> None:
        """Append the rows of `other` (a prefilled request's cache) to this batch."""
        if not self.lengths:
            self.layers, self.lengths = other.layers, list(other.lengths)
            self.set_cap(self.cap)
            return
        width = max(self.width, other.width)
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            assert isinstance(mine, RowLayer) and isinstance(theirs, RowLayer)
            mine.kbuf, mine.vbuf = _join(mine, theirs, width)
            mine.start, mine.end = 0, width
            mine._views()
        self.lengths += other.lengths


def _capacity(needed: int, cap: int | None) -> int:
    """Columns for a buffer that must hold `needed`: twice that (at least _MIN_CAPACITY),
    but no more than `cap`, the most any row will need."""
    capacity = max(_MIN_CAPACITY, 2 * needed)
    return capacity if cap is None else max(needed, min(capacity, cap))


def _join(mine: RowLayer, theirs: RowLayer, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """New buffers holding both layers' rows, right-aligned at `width` columns."""
    assert mine.kbuf is not None and theirs.kbuf is not None
    capacity = _capacity(width, mine.cap)
    rows = mine.kbuf.shape[0] + theirs.keys.shape[0]  # type: ignore[union-attr]
    shape = (rows, mine.kbuf.shape[1], capacity, mine.kbuf.shape[3])
    out = []
    for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
        assert a is not None and b is not None
        buffer = a.new_zeros(shape)
        buffer[: a.shape[0], :, width - a.shape[2] : width] = a
        buffer[a.shape[0] :, :, width - b.shape[2] : width] = b
        out.append(buffer)
    return out[0], out[1]
