"""The one drawing of masks (web page, CLI, demo): colours against the image, no blended overlaps."""
import numpy as np
from PIL import Image

from self1e.common.overlay import PALETTE, draw_masks, legend, pick_colours


def test_a_mask_on_a_red_object_is_not_drawn_in_red_and_colours_differ():
    arr = np.full((60, 80, 3), 240, np.uint8)
    arr[10:30, 10:30] = (230, 25, 75)  # the palette's own red
    image = Image.fromarray(arr)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 10:30] = True
    (colour,) = pick_colours(image, [mask])
    assert np.linalg.norm(np.subtract(colour, (230, 25, 75))) > 150
    many = pick_colours(image, [mask] * 12)
    assert len(set(many)) == 12 and set(many) == set(PALETTE)


def test_overlaps_take_the_later_colour_never_a_blend_of_two():
    image = Image.new("RGB", (40, 40), (128, 128, 128))
    a, b = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    a[5:25, 5:25], b[15:35, 15:35] = True, True
    out = np.asarray(draw_masks(image, [a, b], [(255, 0, 0), (0, 0, 255)], alpha=0.5)).astype(int)
    inside_both, only_a = out[20, 20], out[8, 8]
    assert tuple(inside_both) == (64, 64, 192)  # grey halfway to blue: b's fill alone
    assert tuple(only_a) == (192, 64, 64)
    assert tuple(out[15, 20]) == (0, 0, 255) and tuple(out[24, 8]) == (255, 0, 0)  # both outlines drawn
    only = np.asarray(draw_masks(image, [a], [(255, 0, 0)], mask_only=True))
    assert tuple(only[8, 8]) == (255, 0, 0) and tuple(only[39, 39]) == (0, 0, 0)


def test_legend_adds_one_swatch_row_per_entry():
    image = Image.new("RGB", (120, 50), (255, 255, 255))
    out = legend(image, [((230, 25, 75), "the red circle: 40 px"), ((0, 130, 200), "the star: no target")])
    arr = np.asarray(out)
    assert out.width == 120 and out.height > 50 + 2 * 12 and np.array_equal(arr[:50], np.asarray(image))
    for c in ((230, 25, 75), (0, 130, 200)):
        assert (arr[50:].reshape(-1, 3) == c).all(1).sum() > 20
    assert legend(image, []) is image
