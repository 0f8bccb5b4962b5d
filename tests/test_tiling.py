"""Window blending (tailseg.tiling): the scene border is covered, seams are not."""

import numpy as np
import pytest

from tailseg.tiling import StripAccumulator, Tiling


def _blend_constant(tiling: Tiling, value: float = 0.9) -> np.ndarray:
    """The mosaic of windows that all predict `value` everywhere."""
    accumulator = StripAccumulator(tiling)
    mosaic = np.full((tiling.height, tiling.width), -1.0, np.float32)
    for row in range(len(tiling.row_starts)):
        for tile in tiling.strip(row):
            accumulator.add(tile, np.full(tile.weights.shape, value, np.float32))
        start, blended = accumulator.pop(row)
        mosaic[start:start + blended.shape[0]] = blended
    return mosaic


@pytest.mark.parametrize("size", [(96, 96), (96, 150), (130, 96)])
def test_only_shared_sides_taper_so_the_scene_border_is_covered(size):
    # Window 64, overlap 32, margin 8: a side shared with a neighbour is 0 over its outer 8
    # pixels. The last row and column of windows (bottom rows, right columns of the scene)
    # and the first (top, left) have no neighbour there: tapered, those pixels would have no
    # weight at all and come out NaN.
    tiling = Tiling(*size, window=64, overlap=32, margin=8)
    assert len(tiling.row_starts) > 1 and len(tiling.col_starts) > 1
    mosaic = _blend_constant(tiling)
    assert not np.isnan(mosaic).any()
    np.testing.assert_allclose(mosaic, 0.9, rtol=1e-6)


def test_the_weights_of_overlapping_windows_sum_to_one():
    tiling = Tiling(96, 150, window=64, overlap=32, margin=8)
    total = np.zeros((tiling.height, tiling.padded_width + 64), np.float32)
    for row in range(len(tiling.row_starts)):
        for tile in tiling.strip(row):
            height, width = tile.weights.shape
            total[tile.y:tile.y + height, tile.x:tile.x + width] += tile.weights[
                : tiling.height - tile.y]
    np.testing.assert_allclose(total[:, : tiling.width], 1.0, atol=1e-6)
