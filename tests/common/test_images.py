"""The bottom layer: the one image reader / RGB conversion, the mask PNG reader and writer, mask drawing."""
import numpy as np
import pytest
from PIL import Image

from self1e.common.errors import DataError
from self1e.common.images import image_size, open_image, read_mask, to_rgb, write_mask_png
from self1e.common.overlay import GREEN, draw_masks, overlay


def test_to_rgb_accepts_every_image_kind_and_converts_once(tmp_path):
    rgb = Image.new("RGB", (5, 3), (10, 20, 30))
    assert to_rgb(rgb) is rgb  # already RGB: no copy, so a second call costs nothing
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    for image in (tmp_path / "g.png", str(tmp_path / "g.png"), Image.new("RGBA", (5, 3)),
                  np.zeros((3, 5), np.uint8), np.zeros((3, 5, 1), np.uint8), np.ones((3, 5, 3), np.float32)):
        out = to_rgb(image)
        assert out.mode == "RGB" and out.size == (5, 3)
    assert np.asarray(to_rgb(np.ones((3, 5, 3), np.float32))).max() == 255  # floats in [0, 1] are scaled
    with pytest.raises(ValueError, match="shape"):
        to_rgb(np.zeros((3, 5, 2), np.uint8))
    with pytest.raises(ValueError, match="expected an image"):
        to_rgb(42)


def test_unreadable_files_raise_data_errors_naming_them(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    for read in (open_image, read_mask, image_size):
        with pytest.raises(DataError, match="bad.png"):
            read(tmp_path / "bad.png")


def test_mask_png_round_trip_is_0_255_single_channel(tmp_path):
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    path = write_mask_png(mask, tmp_path / "sub" / "m.png")  # makes the folder
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (6, 4)
        assert set(np.unique(np.asarray(im))) == {0, 255}
    assert np.array_equal(read_mask(path), mask)
    assert image_size(path) == (6, 4)
    Image.fromarray(mask.astype(np.uint8) * 3).convert("RGB").save(tmp_path / "rgb.png")  # any non-zero pixel
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), mask)


def test_draw_masks_tints_and_outlines_each_mask_in_its_colour():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    a, b = np.zeros((10, 20), bool), np.zeros((10, 20), bool)
    a[2:8, 2:8], b[2:8, 12:18] = True, True
    out = np.asarray(draw_masks(image, [a, b], [(200, 0, 0), (0, 0, 200)], alpha=0.5))
    assert tuple(out[5, 5]) == (100, 0, 0) and tuple(out[5, 15]) == (0, 0, 100)  # fills at alpha
    assert tuple(out[2, 2]) == (200, 0, 0) and tuple(out[2, 12]) == (0, 0, 200)  # outlines at full colour
    assert tuple(out[0, 0]) == (0, 0, 0)
    with pytest.raises(ValueError, match="height, width"):
        draw_masks(image, [np.zeros((5, 5), bool)], [(1, 2, 3)])
    captioned = overlay(image, a, "the red box", gt=b)
    assert captioned.width == 20 and captioned.height > 10
    truth_outline = np.asarray(overlay(image, a, gt=b))[2, 12]
    assert tuple(truth_outline) == GREEN
