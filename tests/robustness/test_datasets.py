"""Bad datasets, second class: empty JSONL files, unknown keys, duplicate ids, masks of every image mode
read by one documented rule (pixel for pixel), non-binary masks reported by `data check`, broken COCO
polygons / RLE checked before pycocotools (which hangs, crashes or returns garbage on them), refs and
sentences of the wrong type, malformed LLaVA turns, and RefShapes specs asking for absurd sizes."""
from __future__ import annotations

import json
import pickle
import time
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import REFS, H, W, rect, write_refcoco
from self1e.common.errors import DataError
from self1e.common.images import _mask_pixels, read_mask
from self1e.data.datasets import MAX_REFSHAPES_SAMPLES, load_dataset
from self1e.data.jsonl import KNOWN_KEYS, read_jsonl, validate
from self1e.data.refer import _rle_string_counts, check_segmentation, decode_segmentation, load_refer
from self1e.data.vqa import load_llava


@pytest.fixture
def split(tmp_path, picture):
    """``split(lines)``: a JSONL file of ``lines`` (dicts or raw strings) next to an image ``im.png``
    and a 0/255 mask ``m.png`` of its size (30x20)."""
    picture("im.png")
    Image.fromarray((rect((2, 10, 3, 20), 30, 20)).astype(np.uint8) * 255).save(tmp_path / "m.png")

    def write(lines, name: str = "d.jsonl"):
        path = tmp_path / name
        path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        return path

    return write


GOOD = {"image": "im.png", "text": "the thing", "mask": "m.png"}


# ---- empty files ---------------------------------------------------------------------------------

EMPTY = {"empty": "", "one_newline": "\n", "blank_lines": "\n   \n\t\n\n", "crlf_blanks": "\r\n\r\n"}


@pytest.mark.parametrize("content", EMPTY.values(), ids=EMPTY.keys())
@pytest.mark.parametrize("reader", ["read_jsonl", "read_jsonl_skip_bad", "load_dataset"])
def test_an_empty_jsonl_is_an_error(tmp_path, content, reader):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content.encode())
    with pytest.raises(DataError) as e:
        if reader == "load_dataset":
            load_dataset(str(path))
        else:
            read_jsonl(path, skip_bad=reader.endswith("skip_bad"))
    assert str(e.value).startswith(f"no samples in {path}")


@pytest.mark.parametrize("content", ["", "\n \n"], ids=["empty", "blank_lines"])
def test_eval_and_train_refuse_an_empty_jsonl(cli, tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    err = cli.error("eval", "--model", "tiny:tiny", "--data", path, "--out", tmp_path / "r.json")
    assert f"no samples in {path}" in err and not (tmp_path / "r.json").exists()
    err = cli.error("train", "--out", tmp_path / "run", "--set", "model=tiny:tiny", "--set", f"data=[{path}]",
                    "--set", "lora.enabled=false", "--set", "max_steps=1")
    assert f"no samples in {path}" in err and not (tmp_path / "run" / "final").exists()


def test_data_check_reports_an_empty_jsonl_and_checks_the_others(cli, split, tmp_path):
    split([GOOD], "a_good.jsonl")
    (tmp_path / "b_empty.jsonl").write_text("\n\n")
    rc, out, _ = cli.run("data", "check", tmp_path)
    assert rc == 1
    assert "a_good.jsonl: 1 samples" in out and "problems: 0" in out
    assert f"no samples in {tmp_path / 'b_empty.jsonl'}" in out


# ---- unknown keys, duplicate ids, text encoding --------------------------------------------------

@pytest.mark.parametrize("key, hint", [("msk", "mask"), ("txt", "text"), ("imgae", "image"), ("masks", "mask"),
                                       ("score", None), ("Image", "image")])
def test_unknown_keys_are_errors_naming_the_key_and_the_known_keys(split, key, hint):
    path = split([GOOD, {**GOOD, key: "m.png"}])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: unknown field '{key}'")
    assert ("did you mean" not in msg) if hint is None else (f"did you mean '{hint}'?" in msg)
    assert msg.endswith("known fields: " + ", ".join(KNOWN_KEYS))


def test_unknown_keys_can_be_allowed_explicitly(split):
    path = split([{**GOOD, "msk": "x.png", "score": 3}])
    (s,) = read_jsonl(path, allow_unknown_keys=True)
    assert s.text == "the thing" and s.mask.name == "m.png"


def test_several_unknown_keys_are_all_named(split):
    path = split([{**GOOD, "msk": 1, "zzz": 2}])
    with pytest.raises(DataError, match=r"d.jsonl:1: unknown fields 'msk' \(did you mean 'mask'\?\), 'zzz';"):
        read_jsonl(path)


def test_data_check_reports_unknown_keys_and_duplicate_ids(cli, split):
    path = split([{**GOOD, "id": "a"}, {**GOOD, "msk": "m.png"}, {**GOOD, "id": "a"}])
    rc, out, _ = cli.run("data", "check", path)
    assert rc == 1
    assert f"{path}:2: unknown field 'msk'" in out
    assert f"{path}:3: field 'id': duplicate id 'a' (first used on line 1)" in out
    assert "problems: 2" in out and f"{path}: 1 samples" in out


def test_duplicate_ids_are_errors_in_reading(split):
    path = split([{**GOOD, "id": 7}, GOOD, {**GOOD, "id": "7"}])  # 7 and "7" are the same id
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'id': duplicate id '7' \(first used on line 1\)"):
        read_jsonl(path)


def test_a_line_that_is_not_utf8_is_named(tmp_path, split):
    path = split([GOOD])
    path.write_bytes(path.read_bytes() + b'{"image": "im.png", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 text \(byte 33 of the line\)"):
        read_jsonl(path)
    assert [s.text for s in read_jsonl(path, skip_bad=True)] == ["the thing"]


def test_a_byte_order_mark_is_accepted(split):
    path = split([GOOD])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [s.text for s in read_jsonl(path)] == ["the thing"]


# ---- masks: one rule per mode, pixel for pixel ---------------------------------------------------

def _palette_mask(idx: np.ndarray) -> Image.Image:
    im = Image.frombytes("P", (idx.shape[1], idx.shape[0]), idx.astype(np.uint8).tobytes())
    # index 0 is drawn white, 1 black, 2 dark red: the index decides, never the colour
    im.putpalette([255, 255, 255, 0, 0, 0, 1, 0, 0] + [0, 0, 0] * 253)
    return im


def _mode_case(mode: str) -> tuple[Image.Image, str, np.ndarray]:
    """(image, file extension, expected foreground) for one mask mode."""
    if mode == "1":
        fg = np.array([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]], bool)
        return Image.fromarray(fg), ".png", fg
    if mode == "L":
        a = np.array([[0, 1, 128, 255], [0, 0, 2, 0], [255, 0, 0, 0]], np.uint8)
        return Image.fromarray(a), ".png", a != 0
    if mode == "P":
        idx = np.array([[0, 1, 2, 0], [1, 0, 0, 2], [0, 0, 1, 1]], np.uint8)
        return _palette_mask(idx), ".png", idx != 0
    if mode == "RGB":
        a = np.zeros((3, 4, 3), np.uint8)
        a[0, 1] = (1, 0, 0)  # dark red
        a[1, 2] = (0, 0, 1)  # dark blue
        a[2, 3] = (255, 255, 255)
        a[2, 0] = (0, 3, 0)
        return Image.fromarray(a), ".png", a.any(axis=2)
    if mode == "RGBA":
        a = np.zeros((3, 4, 4), np.uint8)
        a[..., 3] = 255  # opaque black background
        a[0, 0] = (255, 255, 255, 0)  # transparent: background whatever its colour
        a[0, 1] = (1, 0, 0, 255)  # dark red: foreground
        a[1, 1] = (0, 0, 9, 1)  # nearly transparent but visible: foreground
        a[2, 2] = (200, 10, 10, 255)
        fg = np.zeros((3, 4), bool)
        fg[0, 1] = fg[1, 1] = fg[2, 2] = True
        return Image.fromarray(a), ".png", fg
    if mode == "LA":
        a = np.zeros((3, 4, 2), np.uint8)
        a[..., 1] = 255
        a[0, 0] = (7, 0)  # transparent
        a[0, 1] = (7, 255)
        a[2, 3] = (1, 40)
        fg = np.zeros((3, 4), bool)
        fg[0, 1] = fg[2, 3] = True
        return Image.merge("LA", [Image.fromarray(a[..., 0]), Image.fromarray(a[..., 1])]), ".png", fg
    if mode == "I;16":
        a = np.array([[0, 1, 256, 65535], [0, 0, 0, 2], [300, 0, 0, 0]], np.uint16)
        return Image.fromarray(a), ".png", a != 0
    if mode == "I":
        a = np.array([[0, -5, 70000, 0], [1, 0, 0, 0], [0, 0, 2**30, 0]], np.int32)
        return Image.fromarray(a), ".tif", a != 0
    if mode == "F":
        a = np.array([[0.0, -0.5, 1e-7, 0.0], [3.0, 0.0, 0.0, np.inf], [0.0, 0.0, 0.0, 0.0]], np.float32)
        return Image.fromarray(a), ".tif", a != 0
    raise AssertionError(mode)


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F"]


@pytest.mark.parametrize("mode", MODES)
def test_each_mask_mode_reads_by_its_rule_pixel_for_pixel(tmp_path, mode):
    im, ext, expected = _mode_case(mode)
    path = tmp_path / f"mask{ext}"
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == mode  # the file really is of that mode
    got = read_mask(path)
    assert got.dtype == bool and got.shape == expected.shape
    assert np.array_equal(got, expected), (mode, got.astype(int), expected.astype(int))


def test_a_palette_mask_is_read_by_index_not_colour(tmp_path):
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    _palette_mask(idx).save(tmp_path / "p.png")  # index 0 white, index 1 black
    assert np.array_equal(read_mask(tmp_path / "p.png"), np.array([[False, True], [True, False]]))


@pytest.mark.parametrize("pixel, fg", [((0, 0), False), ((0, 255), False), ((1, 0), False), ((1, 255), True),
                                       ((2, 1), True)])
def test_palette_with_alpha_pixels(pixel, fg):
    im = Image.new("PA", (1, 1))
    im.putpixel((0, 0), pixel)
    mask, _ = _mask_pixels(im, "mask")
    assert mask.tolist() == [[fg]]


def test_a_nan_in_a_float_mask_is_an_error(tmp_path):
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"mask .*f.tif: a float mask holds NaN values"):
        read_mask(tmp_path / "f.tif")


@pytest.mark.parametrize("mode, name", [("CMYK", "m.tif"), ("CMYK", "m.jpg"), ("LAB", "m.tif")])
def test_masks_of_other_modes_are_refused(tmp_path, mode, name):
    Image.new(mode, (4, 3)).save(tmp_path / name)
    with pytest.raises(DataError, match=f"mask .*{name}: masks of mode {mode} are not supported"):
        read_mask(tmp_path / name)


BINARY = {
    "L_0_255": (np.array([[0, 255], [255, 0]], np.uint8), 0),
    "L_0_1": (np.array([[0, 1], [1, 0]], np.uint8), 0),
    "L_three_levels": (np.array([[0, 128], [255, 0]], np.uint8), 2),
    "L_all_levels": (np.arange(256, dtype=np.uint8).reshape(16, 16), 255),
    "RGB_one_colour": (np.array([[[0, 0, 0], [9, 0, 0]], [[9, 0, 0], [0, 0, 0]]], np.uint8), 0),
    "RGB_two_colours": (np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 0]]], np.uint8), 2),
    "16bit_two_levels": (np.array([[0, 1000], [65535, 0]], np.uint16), 2),
}


@pytest.mark.parametrize("name", BINARY)
def test_non_binary_masks_are_reported(tmp_path, name):
    arr, levels = BINARY[name]
    path = tmp_path / "m.png"
    Image.fromarray(arr).save(path)
    notes: list[str] = []
    assert np.array_equal(read_mask(path, problems=notes), arr.any(axis=2) if arr.ndim == 3 else arr != 0)
    if levels == 0:
        assert notes == []
    else:
        assert len(notes) == 1
        assert notes[0].startswith(f"mask {path} is not binary: its foreground holds {levels} different ")


def test_non_binary_palette_mask_is_reported(tmp_path):
    _palette_mask(np.array([[0, 1], [2, 0]], np.uint8)).save(tmp_path / "p.png")
    notes: list[str] = []
    read_mask(tmp_path / "p.png", problems=notes)
    assert len(notes) == 1 and "2 different P values (1, 2)" in notes[0]


def test_data_check_warns_about_a_jpeg_mask(cli, split, tmp_path):
    sharp = rect((2, 10, 3, 20), 30, 20).astype(np.uint8) * 255
    Image.fromarray(sharp).save(tmp_path / "m.jpg", quality=60)
    path = split([GOOD, {**GOOD, "mask": "m.jpg"}])
    rc, out, _ = cli.run("data", "check", path)
    assert rc == 1 and "problems: 1" in out
    assert f"{path}:2: field 'mask': mask {tmp_path / 'm.jpg'} is not binary" in out
    assert len(validate(read_jsonl(path))) == 1


def test_data_check_is_clean_on_binary_masks(cli, split):
    rc, out, _ = cli.run("data", "check", split([GOOD, {**GOOD, "ignore": "m.png", "id": "x"}]))
    assert rc == 0 and "problems: 0" in out


# ---- RefCOCO family: polygons and RLE checked before pycocotools ---------------------------------

def _set_segmentation(root, ann_id: int, seg) -> None:
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    for ann in data["annotations"]:
        if ann["id"] == ann_id:
            if seg is KeyError:
                del ann["segmentation"]
            else:
                ann["segmentation"] = seg
    path.write_text(json.dumps(data))


_GOOD_STRING = mask_utils.encode(np.asfortranarray(rect((1, 5, 2, 9)).astype(np.uint8)))["counts"].decode()
_OTHER_SIZE = mask_utils.encode(np.asfortranarray(np.ones((H + 1, W), np.uint8)))["counts"].decode()

BAD_SEGMENTATIONS = {  # name: (ann id, segmentation, what the error says)
    "polygon_odd": (101, [[2, 2, 10, 2, 10]], "polygon 0 has 5 coordinates; a polygon needs an even number"),
    "polygon_two_points": (101, [[2, 2, 10, 2]], "no polygon of at least 3 points"),
    "polygon_empty": (101, [[]], "no polygon of at least 3 points"),
    "no_polygons": (101, [], "an empty list of polygons"),
    "polygon_nan": (101, [[2, 2, float("nan"), 2, 10, 10]], "polygon 0 has a non-finite coordinate"),
    "polygon_inf": (101, [[2, 2, 10, 2, 10, float("inf")]], "polygon 0 has a non-finite coordinate"),
    "polygon_huge": (101, [[2, 2, 1e12, 2, 10, 10]], "has the coordinate 1e+12, far outside the 40x30 image"),
    "polygon_just_outside": (101, [[2, 2, 161, 2, 10, 10]], "has the coordinate 161"),
    "polygon_negative_far": (101, [[2, -161, 10, 2, 10, 10]], "has the coordinate 161"),
    "polygon_strings": (101, [["2", "2", "10", "2", "10", "10"]], "polygon 0: expected a list of numbers"),
    "polygon_bools": (101, [[True, 2, 10, 2, 10, 10]], "polygon 0: expected a list of numbers"),
    "second_polygon_bad": (101, [[2, 2, 10, 2, 10, 10], [1, 1, 2]], "polygon 1 has 3 coordinates"),
    "polygon_not_a_list": (101, [{"x": 1}], "polygon 0: expected a list of numbers"),
    "rle_counts_short": (103, {"size": [H, W], "counts": [5, 3]},
                         "'counts' sum to 8 pixels, but the 40x30 image has 1,200"),
    "rle_counts_long": (103, {"size": [H, W], "counts": [0, 1000, 1000]}, "'counts' sum to 2,000 pixels"),
    "rle_negative": (103, {"size": [H, W], "counts": [1300, -100]}, "holds a negative run length (-100)"),
    "rle_floats": (103, {"size": [H, W], "counts": [600.0, 600.0]}, "'counts' must be whole numbers"),
    "rle_bools": (103, {"size": [H, W], "counts": [True, 1199]}, "'counts' must be whole numbers"),
    "rle_wrong_size": (103, {"size": [W, H], "counts": [1200]}, "RLE 'size' is [40, 30], expected the image's"),
    "rle_no_size": (103, {"counts": [1200]}, "RLE 'size' is None"),
    "rle_counts_dict": (103, {"size": [H, W], "counts": {"a": 1}}, "'counts' must be a string or a list"),
    "string_bad_char": (102, {"size": [H, W], "counts": "0" + chr(127) + "1"}, "holds the character '\\x7f' at 1"),
    "string_space": (102, {"size": [H, W], "counts": "a b"}, "holds the character ' ' at 1"),
    "string_unterminated": (102, {"size": [H, W], "counts": "0P"}, "ends in the middle of a number"),
    "string_other_image": (102, {"size": [H, W], "counts": _OTHER_SIZE}, "'counts' sum to 1,240 pixels"),
    "string_truncated": (102, {"size": [H, W], "counts": _GOOD_STRING[:-2]}, "compressed RLE 'counts'"),
    "string_too_long": (102, {"size": [H, W], "counts": "0" * 10_000}, "10,000 characters long, too long"),
    "missing": (101, KeyError, "unknown segmentation format: None"),
    "a_number": (101, 5, "unknown segmentation format: 5"),
}


@pytest.mark.parametrize("name", BAD_SEGMENTATIONS)
def test_bad_segmentations_are_errors_naming_ref_and_annotation(tmp_path, name):
    ann_id, seg, says = BAD_SEGMENTATIONS[name]
    root = write_refcoco(tmp_path)
    _set_segmentation(root, ann_id, seg)
    ref_id = {101: 1, 102: 2, 103: 3}[ann_id]
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_refer(root, "refcoco", "val")
    assert time.monotonic() - start < 10  # never handed to pycocotools (which hangs on NaN)
    msg = str(e.value)
    assert f"refs(unc).p: ref_id {ref_id}: ann_id {ann_id}: " in msg
    assert says in msg, msg


def test_a_bad_segmentation_is_one_cli_line(cli, tmp_path):
    root = write_refcoco(tmp_path)
    _set_segmentation(root, 101, [[2, 2, float("nan"), 2, 10, 10]])
    err = cli.error("data", "check", f"refcoco:unc:val@{root}")
    assert "ref_id 1: ann_id 101: segmentation polygon 0 has a non-finite coordinate" in err


def test_an_unused_bad_annotation_does_not_stop_a_split(tmp_path):
    root = write_refcoco(tmp_path)
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 999, "image_id": 7, "segmentation": [[1, 2]]})
    path.write_text(json.dumps(data))
    assert len(load_refer(root, "refcoco", "val")) == 4


@pytest.mark.parametrize("seed", range(6))
def test_the_rle_string_parser_agrees_with_pycocotools(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 50, 2))
    m = rng.random((h, w)) < rng.random()
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = _rle_string_counts(rle["counts"].decode())
    assert sum(counts) == h * w and min(counts) >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert np.array_equal(decode_segmentation({"size": [h, w], "counts": rle["counts"]}, h, w), m)
    check_segmentation({"size": [h, w], "counts": counts}, h, w)  # the same runs, uncompressed


def test_a_two_point_part_beside_a_real_polygon_adds_nothing():
    """Real COCO annotations have a few degenerate parts next to real ones: no area, no error."""
    from self1e.data.refer import decode_segmentation

    square = [2, 2, 10, 2, 10, 10, 2, 10]
    with_sliver = decode_segmentation([square, [20, 20, 30, 20]], 30, 40)
    assert np.array_equal(with_sliver, decode_segmentation([square], 30, 40)) and with_sliver.sum() > 0


def test_valid_polygons_at_the_bound_still_decode():
    m = decode_segmentation([[0, 0, 160, 0, 160, 120, 0, 120]], H, W)  # |v| <= 4 x 40
    assert m.all()


def _write_refs(root, refs) -> None:
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


@pytest.mark.parametrize("junk, index", [("a string", 4), (42, 0), (None, 2), ([1, 2], 4)])
def test_non_dict_refs_are_errors_naming_their_index(tmp_path, junk, index):
    root = write_refcoco(tmp_path)
    refs = list(REFS)
    refs.insert(index, junk)
    _write_refs(root, refs)
    with pytest.raises(DataError, match=rf"refs\(unc\).p: entry {index}: expected a ref \(a dict\), "
                                        rf"got {type(junk).__name__}"):
        load_refer(root, "refcoco", "val")


@pytest.mark.parametrize("sentences, says", [
    ("left thing", "field 'sentences': expected a non-empty list"),
    (None, "field 'sentences': expected a non-empty list"),
    ([], "field 'sentences': expected a non-empty list"),
    (["left thing"], "field 'sentences': entry 0: expected a sentence object"),
    ([{"sent_id": 10, "sent": 5}], "sentence 10: field 'sent': expected a string"),
    ([{"sent_id": 10, "sent": ["left"]}], "sentence 10: field 'sent': expected a string"),
    ([{"sent_id": 10, "sent": "  "}], "sentence 10 has an empty 'sent'"),
])
def test_sentences_of_the_wrong_type_are_errors(tmp_path, sentences, says):
    root = write_refcoco(tmp_path)
    refs = [dict(r) for r in REFS]
    refs[0]["sentences"] = sentences
    _write_refs(root, refs)
    with pytest.raises(DataError) as e:
        load_refer(root, "refcoco", "val")
    assert "ref_id 1: " + says in str(e.value)


@pytest.mark.parametrize("field, value", [("height", "30"), ("width", 0), ("height", -3), ("width", True)])
def test_bad_image_sizes_in_instances_are_errors(tmp_path, field, value):
    root = write_refcoco(tmp_path)
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["images"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="ref_id 1: image 7 in instances.json has height .*expected positive whole"):
        load_refer(root, "refcoco", "val")


def test_an_annotation_of_another_image_is_an_error(tmp_path):
    root = write_refcoco(tmp_path)
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["image_id"] = 8
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="ref_id 2: ann_id 102 belongs to image 8, not to the ref's image 7"):
        load_refer(root, "refcoco", "val")


# ---- LLaVA conversations ---------------------------------------------------------------------------

def _llava(tmp_path, conversations, image="a.jpg"):
    entries = [{"id": "ok", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                                {"from": "gpt", "value": "A."}]},
               {"id": "bad", "image": image, "conversations": conversations}]
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    return tmp_path / "llava.json"


Q, A = {"from": "human", "value": "What?"}, {"from": "gpt", "value": "That."}
BAD_TURNS = {
    "turn_a_string": ([Q, "That."], "entry 1: turn 1: expected an object with 'from' and 'value'"),
    "turn_null": ([None, A], "entry 1: turn 0: expected an object"),
    "two_humans": ([Q, Q], "entry 1: turn 1: field 'from': expected 'gpt'"),
    "gpt_first": ([A, Q], "entry 1: turn 0: field 'from': expected 'human'"),
    "no_from": ([{"value": "What?"}, A], "entry 1: turn 0: field 'from': expected 'human'"),
    "value_number": ([Q, {"from": "gpt", "value": 3}], "entry 1: turn 1: field 'value': expected a string"),
    "value_missing": ([Q, {"from": "gpt"}], "entry 1: turn 1: field 'value': expected a string"),
    "unpaired_last_turn": ([Q, A, Q], "entry 1: field 'conversations': 3 turns"),
    "no_turns": ([], "entry 1: field 'conversations': 0 turns"),
    "empty_question": ([{"from": "human", "value": "<image>\n "}, A], "entry 1: turn 0: empty question"),
    "empty_answer": ([Q, {"from": "gpt", "value": "  "}], "entry 1: turn 1: empty answer"),
    "later_turn_bad": ([Q, A, Q, {"from": "human", "value": "x"}], "entry 1: turn 3: field 'from': expected 'gpt'"),
}


@pytest.mark.parametrize("name", BAD_TURNS)
def test_malformed_llava_turns_are_errors_naming_entry_and_turn(tmp_path, name):
    conversations, says = BAD_TURNS[name]
    path = _llava(tmp_path, conversations)
    with pytest.raises(DataError) as e:
        load_llava(path, tmp_path)
    assert str(e.value).startswith(f"{path}: {says}"), str(e.value)


def test_a_llava_image_that_is_not_a_path_is_an_error(tmp_path):
    path = _llava(tmp_path, [Q, A], image=["a.jpg"])
    with pytest.raises(DataError, match=r"entry 1: field 'image': expected a file path string"):
        load_llava(path, tmp_path)


def test_well_formed_llava_still_loads(tmp_path):
    samples = load_llava(_llava(tmp_path, [Q, A, Q, A]), tmp_path)
    assert [(s.id, s.question, s.answer) for s in samples] == [
        ("ok_0", "Q?", "A."), ("bad_0", "What?", "That."), ("bad_1", "What?", "That.")]


# ---- RefShapes sizes -------------------------------------------------------------------------------

def test_the_refshapes_limit_is_the_documented_one():
    assert MAX_REFSHAPES_SAMPLES == 10_000_000


@pytest.mark.parametrize("spec, n", [("refshapes:train:10000001", 10_000_001),
                                     ("refshapes-vqa:val:99999999999:1", 99_999_999_999),
                                     ("refshapes-multi:test:1000000000000000:0:64", 10**15),
                                     ("refshapes:train:0", 0), ("refshapes:train:-5", -5)])
def test_absurd_refshapes_sizes_fail_fast(spec, n):
    start = time.monotonic()
    with pytest.raises(DataError) as e:
        load_dataset(spec)
    assert time.monotonic() - start < 1.0
    assert str(e.value) == (f"bad dataset spec {spec!r}: N must be between 1 and 10,000,000 (MAX_REFSHAPES_SAMPLES), "
                            f"got {n:,}")


def test_an_absurd_refshapes_size_is_one_cli_line(cli, tmp_path):
    err = cli.error("eval", "--model", "tiny:tiny", "--data", "refshapes:val:50000000", "--out", tmp_path / "r.json")
    assert err.endswith("N must be between 1 and 10,000,000 (MAX_REFSHAPES_SAMPLES), got 50,000,000")
