"""`self1e segment`: masks, overlays and RLE for one image; bad input exits cleanly."""
import json

import numpy as np
import pytest
from PIL import Image

from self1e.cli import main


def write_image(path, w=90, h=40):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_segment_cli_writes_masks_overlay_and_rle(tiny_model_dir, tmp_path):
    from pycocotools import mask as mask_utils

    img = write_image(tmp_path / "wide.jpg")
    rc = main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the red circle",
               "--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png"),
               "--json", str(tmp_path / "r.json")])
    assert rc == 0
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (40, 90) and set(np.unique(mask)) <= {0, 255}
    ov = Image.open(tmp_path / "o.png")
    assert ov.width == 90 and ov.height >= 40  # the overlay may add a caption band
    data = json.loads((tmp_path / "r.json").read_text())
    seg = data["results"][0]["segmentation"]
    decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask > 0)

    rc = main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the circle",
               "--text", "the box", "--out", str(tmp_path / "many")])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "many").iterdir()) == ["0.png", "1.png"]


def test_segment_overlay_alone_draws_every_mask_with_a_legend(tiny_model_dir, tmp_path, capsys):
    from self1e import Self1ePredictor
    from self1e.common.overlay import draw_masks, pick_colours

    img = write_image(tmp_path / "wide.jpg")
    texts = ["the circle", "the box"]
    args = ["segment", "--model", str(tiny_model_dir), "--image", str(img), "--overlay", str(tmp_path / "o.png")]
    assert main(args + [x for t in texts for x in ("--text", t)]) == 0
    picture = np.asarray(Image.open(tmp_path / "o.png"))
    predictor = Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")
    image = Image.open(img).convert("RGB")
    predictor.set_image(image)
    masks = [r.mask for r in predictor.predict_batch(texts)]
    colours = pick_colours(image, masks)
    assert np.array_equal(picture[:40], np.asarray(draw_masks(image, masks, colours)))  # the picture, then
    legend = picture[40:]
    assert legend.shape[0] > 2 * 12  # one legend row per expression
    for c in colours:  # each mask's swatch is in the legend
        assert (legend.reshape(-1, 3) == np.array(c)).all(1).any()
    assert main(["segment", "--model", str(tiny_model_dir), "--image", str(img), "--text", "the box"]) == 2
    assert "nothing to write" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty_text", "missing_model"])
def test_segment_cli_bad_input_exits_nonzero_without_traceback(case, tiny_model_dir, tmp_path, capsys):
    img = write_image(tmp_path / "ok.png")
    model, text = str(tiny_model_dir), "the circle"
    if case == "missing":
        img = tmp_path / "nope.png"
    elif case == "corrupt":
        img = tmp_path / "bad.png"
        img.write_bytes(write_image(tmp_path / "src.png").read_bytes()[:60])
    elif case == "empty_text":
        text = "  "
    else:
        model = str(tmp_path / "no_model")
    rc = main(["segment", "--model", model, "--image", str(img), "--text", text, "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "error:" in err
    expected = {"missing": "nope.png", "corrupt": "bad.png", "empty_text": "empty", "missing_model": "no_model"}[case]
    assert expected in err
    assert not (tmp_path / "m.png").exists()
