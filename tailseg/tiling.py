"""Sliding windows over a scene and the weights that blend them without seams.

Windows of one size start every `window - overlap` pixels; the last row and column may reach
past the scene and are padded by reflection. A window's weight is the outer product of two
1-D profiles. On a side shared with a neighbour, a profile is 0 over the first `margin` pixels
(predictions there saw the U-Net's zero padding), then rises as sin^2 over the rest of the
overlap; the neighbour falls as cos^2 over the same pixels, so the weights of overlapping windows
sum to one everywhere. Sides on the scene border are not tapered.

Blending accumulates weighted sums for one row of windows at a time (a strip of `window` rows),
so memory is about 8 bytes x window x scene width, whatever the scene height.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


def axis_starts(size: int, window: int, overlap: int) -> list[int]:
    """Window starts along one axis: every window - overlap pixels until the axis is covered."""
    if size <= window:
        return [0]
    stride = window - overlap
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def ramp_profile(length: int, overlap: int, margin: int, taper_start: bool,
                 taper_end: bool) -> np.ndarray:
    """1-D blending weights of a window of `length` pixels (see the module docstring)."""
    profile = np.ones(length, dtype=np.float32)
    ramp_length = overlap - 2 * margin
    ramp = np.sin(0.5 * np.pi * (np.arange(ramp_length) + 0.5) / max(ramp_length, 1)) ** 2
    rising = np.concatenate([np.zeros(margin), ramp]).astype(np.float32)
    if taper_start:
        profile[: len(rising)] = rising
    if taper_end:
        profile[length - len(rising):] = np.minimum(profile[length - len(rising):], rising[::-1])
    return profile


@dataclass(frozen=True)
class Tile:
    """One window: its position in the scene and its blending weights (window_h, window_w)."""

    row: int
    col: int
    y: int
    x: int
    weights: np.ndarray


@dataclass(frozen=True)
class Tiling:
    """The windows covering a height x width scene."""

    height: int
    width: int
    window: int
    overlap: int
    margin: int

    @property
    def window_shape(self) -> tuple[int, int]:
        """Every window's (height, width): the window side, or the scene's when smaller."""
        return min(self.window, self.height), min(self.window, self.width)

    @property
    def row_starts(self) -> list[int]:
        return axis_starts(self.height, self.window, self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return axis_starts(self.width, self.window, self.overlap)

    @property
    def n_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def padded_width(self) -> int:
        """Width of the strip buffers: the last window may reach past the scene."""
        return self.col_starts[-1] + self.window_shape[1]

    def final_rows(self, row: int) -> tuple[int, int]:
        """Scene rows [start, stop) that no later row of windows touches once `row` is done."""
        starts = self.row_starts
        stop = starts[row + 1] if row + 1 < len(starts) else self.height
        return starts[row], min(stop, self.height)

    def strip(self, row: int) -> Iterator[Tile]:
        """The windows of one row, left to right."""
        rows, cols = self.row_starts, self.col_starts
        window_h, window_w = self.window_shape
        profile_y = ramp_profile(window_h, self.overlap, self.margin, row > 0,
                                 row < len(rows) - 1)
        for col, x in enumerate(cols):
            profile_x = ramp_profile(window_w, self.overlap, self.margin, col > 0,
                                     col < len(cols) - 1)
            yield Tile(row, col, rows[row], x, np.outer(profile_y, profile_x))


class StripAccumulator:
    """Weighted sums of window predictions for the current row of windows.

    add() accumulates a window; pop() returns the blended rows that are final and shifts the
    buffers up by the stride, keeping the overlap for the next row.
    """

    def __init__(self, tiling: Tiling):
        self.tiling = tiling
        shape = (tiling.window_shape[0], tiling.padded_width)
        self.total = np.zeros(shape, dtype=np.float32)
        self.weight = np.zeros(shape, dtype=np.float32)

    def add(self, tile: Tile, prediction: np.ndarray) -> None:
        height, width = tile.weights.shape
        self.total[:height, tile.x: tile.x + width] += tile.weights * prediction
        self.weight[:height, tile.x: tile.x + width] += tile.weights

    def pop(self, row: int) -> tuple[int, np.ndarray]:
        """(first scene row, blended probabilities) of the rows final after `row`; NaN where no
        window contributed (all-nodata windows are skipped)."""
        start, stop = self.tiling.final_rows(row)
        count = stop - start
        with np.errstate(invalid="ignore", divide="ignore"):
            blended = self.total[:count, : self.tiling.width] / self.weight[:count,
                                                                              : self.tiling.width]
        blended[self.weight[:count, : self.tiling.width] <= 0] = np.nan
        if row + 1 < len(self.tiling.row_starts):
            stride = self.tiling.row_starts[row + 1] - start
            for buffer in (self.total, self.weight):
                buffer[:-stride] = buffer[stride:].copy()
                buffer[-stride:] = 0
        return start, blended
