"""Bad and unusual images: decompression bombs, the pixel limit, 16-bit / 32-bit / float values, EXIF orientation.

Every case is generated here and checked for its exact outcome: a DataError whose message names the
file (or the array), its size and the limit, or the right pixels.
"""
from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from self1e.common import images
from self1e.common.errors import DataError
from self1e.common.images import MAX_IMAGE_PIXELS, PIXEL_LIMIT_ENV, image_size, open_image, read_mask, to_rgb

# ---- decompression bombs: headers that promise far more pixels than the file holds ----------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(w: int, h: int) -> bytes:
    """A valid PNG header (8-bit greyscale, w x h) followed by a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def _small(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB" if fmt != "GIF" else "P", (8, 8), 0).save(buf, format=fmt)
    return buf.getvalue()


def jpeg_bomb(w: int, h: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) is patched to claim w x h."""
    data = bytearray(_small("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def gif_bomb(w: int, h: int) -> bytes:
    """A small GIF whose logical screen is patched to w x h."""
    data = bytearray(_small("GIF"))
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def bmp_bomb(w: int, h: int) -> bytes:
    """A small BMP whose info header is patched to w x h."""
    data = bytearray(_small("BMP"))
    data[18:26] = struct.pack("<ii", w, h)
    return bytes(data)


BOMBS = {"png": png_bomb, "jpg": jpeg_bomb, "gif": gif_bomb, "bmp": bmp_bomb}
READERS = {"open_image": open_image, "to_rgb": to_rgb, "image_size": image_size, "read_mask": read_mask}


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data is decoded."""

    def load(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not escape either
@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("fmt", BOMBS)
@pytest.mark.parametrize("side", [10_000, 50_000])  # Pillow warns at 89 M pixels and refuses at 179 M
def test_bombs_are_refused_from_the_header_naming_file_size_and_limit(tmp_path, no_decoding, reader, fmt, side):
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(BOMBS[fmt](side, side))
    with pytest.raises(DataError) as e:
        READERS[reader](path)
    msg = str(e.value)
    assert str(path) in msg and f"{side}x{side}" in msg and f"{side * side:,} pixels" in msg
    assert f"limit of {MAX_IMAGE_PIXELS:,} pixels" in msg and PIXEL_LIMIT_ENV in msg
    assert not isinstance(e.value, Image.DecompressionBombError)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("side", [10_000, 15_000])
def test_a_limit_above_pillows_own_is_honoured_without_its_warning(tmp_path, side):
    path = tmp_path / "big.png"
    path.write_bytes(png_bomb(side, side))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert image_size(path, max_pixels=300_000_000) == (side, side)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # lifted only while the header was read


@pytest.mark.parametrize("w, h, allowed", [(40, 25, True), (41, 25, False), (1000, 1, True), (1, 1001, False)])
@pytest.mark.parametrize("source", ["argument", "environment"])
def test_the_limit_is_exact_and_configurable(tmp_path, monkeypatch, w, h, allowed, source):
    path = tmp_path / "im.png"
    Image.new("RGB", (w, h), (1, 2, 3)).save(path)
    kwargs = {"max_pixels": 1000} if source == "argument" else {}
    if source == "environment":
        monkeypatch.setenv(PIXEL_LIMIT_ENV, "1_000")
    if allowed:
        assert to_rgb(path, **kwargs).size == (w, h) and read_mask(path, **kwargs).shape == (h, w)
    else:
        for reader in READERS.values():
            with pytest.raises(DataError, match=rf"im\.png is {w}x{h} = {w * h:,} pixels, over the limit of 1,000"):
                reader(path, **kwargs)


def test_the_argument_wins_over_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "im.png"
    Image.new("L", (50, 40)).save(path)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "10")
    assert to_rgb(path, max_pixels=2000).size == (50, 40)
    with pytest.raises(DataError, match="limit of 10 pixels"):
        to_rgb(path)


@pytest.mark.parametrize("raw", ["abc", "1.5", "0", "-3", "1e9"])
def test_a_bad_limit_in_the_environment_is_named(tmp_path, monkeypatch, raw):
    Image.new("L", (4, 4)).save(tmp_path / "im.png")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, raw)
    with pytest.raises(ValueError, match=PIXEL_LIMIT_ENV):
        open_image(tmp_path / "im.png")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "100"])
def test_a_bad_limit_argument_is_refused(bad):
    with pytest.raises(ValueError, match="max_pixels must be a positive whole number"):
        to_rgb(np.zeros((2, 2), np.uint8), max_pixels=bad)


@pytest.mark.parametrize("kind", ["pil_rgb", "pil_16bit", "array_uint8", "array_float", "array_view"])
def test_pil_images_and_arrays_are_limited_too(kind):
    if kind == "array_view":  # 81 M pixels that take no memory: refused before any conversion
        image, limit = np.broadcast_to(np.zeros(1, np.uint8), (9000, 9000, 3)), None
    else:
        image = {"pil_rgb": lambda: Image.new("RGB", (50, 40)), "pil_16bit": lambda: Image.new("I;16", (50, 40)),
                 "array_uint8": lambda: np.zeros((40, 50, 3), np.uint8),
                 "array_float": lambda: np.zeros((40, 50), np.float32)}[kind]()
        limit = 1999
    with pytest.raises(DataError) as e:
        to_rgb(image, max_pixels=limit)
    w, h = (9000, 9000) if kind == "array_view" else (50, 40)
    expected_limit = MAX_IMAGE_PIXELS if limit is None else limit
    assert f"{w}x{h} = {w * h:,} pixels, over the limit of {expected_limit:,}" in str(e.value)
    assert ("PIL image" if kind.startswith("pil") else f"image array of shape {image.shape}") in str(e.value)
    if kind != "array_view":
        assert to_rgb(image, max_pixels=w * h).size == (w, h)  # at the limit: fine


def test_segment_refuses_a_bomb_with_one_line(tmp_path, cli, tiny_model_dir):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(30_000, 30_000))
    line = cli.error("segment", "--model", tiny_model_dir, "--image", path, "--text", "the circle",
                     "--out", tmp_path / "m.png")
    assert str(path) in line and "30000x30000" in line and "64,000,000" in line
    assert not (tmp_path / "m.png").exists()


# ---- values: 16-bit, 32-bit and float images become the right 8-bit levels ------------------------

RAMP16 = np.linspace(0, 65535, 64 * 4).round().astype(np.uint16).reshape(4, 64)
RAMP_UNIT = np.linspace(0, 1, 64 * 4, dtype=np.float32).reshape(4, 64)


def _pil(kind: str) -> tuple[Image.Image, np.ndarray]:
    """(image, the expected 8-bit grey levels) for each kind of deep image."""
    if kind == "I;16":
        return Image.fromarray(RAMP16), RAMP16 / 257
    if kind in ("I;16B", "I;16L"):
        dtype = ">u2" if kind == "I;16B" else "<u2"
        return Image.frombytes(kind, (64, 4), RAMP16.astype(dtype).tobytes()), RAMP16 / 257
    if kind == "I":
        return Image.fromarray(RAMP16.astype(np.int32)), RAMP16 / 257
    if kind == "I_wide":  # 32-bit values past 65535: scaled by their maximum
        values = (RAMP16.astype(np.int64) * 30).astype(np.int32)
        return Image.fromarray(values), values * 255 / values.max()
    if kind == "I_negative":
        values = RAMP16.astype(np.int32) - 30000
        return Image.fromarray(values), np.clip(values, 0, None) / 257
    if kind == "F_unit":
        return Image.fromarray(RAMP_UNIT), RAMP_UNIT * 255
    if kind == "F_levels":  # floats already in 0..255
        return Image.fromarray(RAMP_UNIT * 255), RAMP_UNIT * 255
    if kind == "F_outside":  # clipped to [0, 255]
        values = RAMP_UNIT * 600 - 100
        return Image.fromarray(values), np.clip(values, 0, 255)
    raise AssertionError(kind)


def assert_grey(out: Image.Image, expected: np.ndarray) -> None:
    arr = np.asarray(out).astype(int)
    assert out.mode == "RGB" and arr.shape == (*expected.shape, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert np.abs(arr[..., 0] - expected).max() <= 1, np.abs(arr[..., 0] - expected).max()


@pytest.mark.parametrize("kind", ["I;16", "I;16B", "I;16L", "I", "I_wide", "I_negative", "F_unit", "F_levels",
                                  "F_outside"])
def test_deep_pil_images_become_the_right_8bit_values(kind):
    image, expected = _pil(kind)
    assert image.mode == kind.split("_")[0]
    assert_grey(to_rgb(image), expected)
    assert np.asarray(to_rgb(image))[0, -1, 0] == round(float(expected[0, -1]))  # the top of the ramp


@pytest.mark.parametrize("kind, fmt", [("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF"), ("F_unit", "TIFF"),
                                       ("F_levels", "TIFF")])
def test_deep_image_files_become_the_right_8bit_values(tmp_path, kind, fmt):
    image, expected = _pil(kind)
    path = tmp_path / f"deep.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as stored:
        assert stored.mode in ("I;16", "I;16B", "I", "F")  # really a deep file
    assert_grey(to_rgb(path), expected)
    assert_grey(open_image(path), expected)


def test_a_16bit_mask_keeps_every_nonzero_pixel(tmp_path):
    values = np.zeros((4, 6), np.uint16)
    values[1, 2], values[2, 3] = 1, 65535  # a level of 1 in 65535 is still foreground
    Image.fromarray(values).save(tmp_path / "m16.png")
    floats = np.zeros((4, 6), np.float32)
    floats[3, 5] = 0.25
    Image.fromarray(floats).save(tmp_path / "mf.tif")
    assert np.array_equal(read_mask(tmp_path / "m16.png"), values != 0)
    assert np.array_equal(read_mask(tmp_path / "mf.tif"), floats != 0)


ARRAYS = {
    "uint16": (RAMP16, RAMP16 / 257),
    "uint16_hwc1": (RAMP16[..., None], RAMP16 / 257),
    "float32_unit": (RAMP_UNIT, RAMP_UNIT * 255),
    "float64_unit": (RAMP_UNIT.astype(np.float64), RAMP_UNIT * 255),
    "float16_unit": (RAMP_UNIT.astype(np.float16), RAMP_UNIT.astype(np.float16).astype(np.float64) * 255),
    "float_levels": (RAMP_UNIT * 255, RAMP_UNIT * 255),
    "float_outside": (RAMP_UNIT * 600 - 100, np.clip(RAMP_UNIT * 600 - 100, 0, 255)),
    "float_unit_slightly_negative": (RAMP_UNIT - 0.01, np.clip(RAMP_UNIT - 0.01, 0, 1) * 255),
    "int64_levels": ((RAMP_UNIT * 255).round().astype(np.int64), (RAMP_UNIT * 255).round()),
    "int32_outside": (np.arange(-100, 156).reshape(4, 64).astype(np.int32) * 2,
                      np.clip(np.arange(-100, 156).reshape(4, 64) * 2, 0, 255)),
    "bool": (RAMP_UNIT > 0.5, (RAMP_UNIT > 0.5) * 255.0),
    "int_0_1": ((RAMP_UNIT > 0.5).astype(np.int16), (RAMP_UNIT > 0.5) * 255.0),
}


@pytest.mark.parametrize("kind", ARRAYS)
def test_arrays_become_the_right_8bit_values(kind):
    arr, expected = ARRAYS[kind]
    assert_grey(to_rgb(arr), expected)


def test_nan_and_infinity_in_float_arrays():
    arr = np.array([[np.nan, -np.inf, np.inf, 0.5, 1.0]], np.float32)
    assert np.asarray(to_rgb(arr))[0, :, 0].tolist() == [0, 0, 255, 128, 255]


def test_float_rgb_array_keeps_its_channels():
    arr = np.zeros((2, 3, 3), np.float32)
    arr[..., 0], arr[..., 1], arr[..., 2] = 1.0, 0.5, 0.0
    assert np.asarray(to_rgb(arr))[0, 0].tolist() == [255, 128, 0]


def test_unsupported_array_dtype_is_named():
    with pytest.raises(ValueError, match="complex64"):
        to_rgb(np.zeros((2, 2), np.complex64))


# ---- EXIF orientation -------------------------------------------------------------------------------

STORED = np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8)  # 30 wide, 20 high
DISPLAY = {  # EXIF orientation -> the displayed picture from the stored one (the EXIF specification)
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # turned 180 degrees
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),  # turned 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),  # turned 90 degrees anticlockwise
}


def oriented(path, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    Image.fromarray(STORED).save(path, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == orientation
        return np.asarray(im.convert("RGB"))  # the stored pixels as decoded, not turned


@pytest.mark.parametrize("orientation", DISPLAY)
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_user_images_follow_exif_orientation(tmp_path, ext, orientation):
    path = tmp_path / f"photo.{ext}"
    stored = oriented(path, orientation)
    displayed = DISPLAY[orientation](stored)
    size = (displayed.shape[1], displayed.shape[0])
    for out in (to_rgb(path), open_image(path), to_rgb(to_rgb(path))):  # upright once, never twice
        assert out.size == size and np.array_equal(np.asarray(out), displayed)
    assert image_size(path) == size
    with Image.open(path) as lazy:  # a PIL image the caller opened: turned the same way, and left as it was
        assert np.array_equal(np.asarray(to_rgb(lazy)), displayed) and lazy.size == (30, 20)
    mask = read_mask(path)  # masks stay in stored pixel order
    assert mask.shape == (20, 30) and np.array_equal(mask, np.asarray(Image.fromarray(stored).convert("L")) != 0)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own note when it opens the file
def test_a_broken_exif_block_counts_as_upright(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.fromarray(STORED).save(path, exif=b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff")
    assert to_rgb(path).size == (30, 20) and image_size(path) == (30, 20)


@pytest.mark.parametrize("orientation, shape", [(6, (30, 20)), (3, (20, 30))])
def test_segment_writes_masks_at_the_displayed_size(tmp_path, cli, tiny_model_dir, orientation, shape):
    path = tmp_path / "photo.jpg"
    oriented(path, orientation)
    rc, _, _ = cli.run("segment", "--model", tiny_model_dir, "--image", path, "--text", "the circle",
                       "--out", tmp_path / "m.png", "--json", tmp_path / "r.json", "--overlay", tmp_path / "o.jpg")
    assert rc == 0
    with Image.open(tmp_path / "m.png") as m:
        assert (m.height, m.width) == shape
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["height"], report["width"]) == shape
    assert report["results"][0]["segmentation"]["size"] == list(shape)
    with Image.open(tmp_path / "o.jpg") as o:
        assert o.width == shape[1]


def test_the_predictor_gives_masks_at_the_displayed_size(tmp_path, tiny_model_dir):
    from self1e.inference import Self1ePredictor

    path = tmp_path / "photo.png"
    oriented(path, 8)
    predictor = Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")
    predictor.set_image(path)
    assert predictor.original_size == (20, 30)
    assert predictor.predict("the circle").mask.shape == (30, 20)


def test_module_constants_are_the_documented_ones():
    assert images.MAX_IMAGE_PIXELS == 64_000_000 and images.PIXEL_LIMIT_ENV == "SELF1E_MAX_IMAGE_PIXELS"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images.max_image_pixels() == 64_000_000


def test_field_datasets_ignore_exif_but_your_own_jsonl_follows_it(tmp_path):
    """A COCO-style image with an EXIF rotation keeps its stored pixel order in the field's readers
    (their polygons were drawn on it), while a JSONL line follows the orientation unless it says
    "exif": false; `data convert` writes that flag."""
    from PIL import Image as PILImage

    from self1e.common.images import image_size as size_of
    from self1e.data.jsonl import read_jsonl, sample_to_record
    from self1e.data.sample import Sample

    im = PILImage.new("RGB", (40, 20), (200, 10, 10))
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    im.save(tmp_path / "photo.jpg", exif=exif.tobytes())
    stored = Sample(id="a", image=tmp_path / "photo.jpg", text="x", exif=False)
    assert stored.load_image().size == (40, 20) and size_of(tmp_path / "photo.jpg", exif=False) == (40, 20)
    (tmp_path / "d.jsonl").write_text('{"image": "photo.jpg", "text": "x"}\n'
                                      '{"image": "photo.jpg", "text": "y", "exif": false}\n')
    own, flagged = read_jsonl(tmp_path / "d.jsonl")
    assert own.load_image().size == (20, 40) and flagged.load_image().size == (40, 20)
    assert sample_to_record(flagged, tmp_path)["exif"] is False and "exif" not in sample_to_record(own, tmp_path)
