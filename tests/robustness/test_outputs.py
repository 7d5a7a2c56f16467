"""Outputs and options: an output never overwrites an input, files are written all or nothing, masks
are PNG only, a bad --device is one clear line, missing folders are made and read-only ones named."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from eval_testdata import write_dataset
from self1e.common import files
from self1e.common.files import atomic_write, check_outputs, same_file, write_text_atomic
from self1e.common.images import image_format, read_mask, save_image, write_mask_png
from self1e.eval.report import report_paths, write_report
from self1e.inference.predictor import pick_device

MASK = np.eye(6, 8, dtype=bool)
REPORT = {"date": "2025-01-31T12:00:00+00:00", "model": "m", "datasets": {"val": {"n": 1, "cIoU": 0.5, "gIoU": 0.5}}}


def leftovers(folder) -> list[str]:
    """Temporary files of atomic_write still in ``folder``."""
    return sorted(p.name for p in pathlib.Path(folder).iterdir() if p.name.endswith(".tmp"))


# ---- an output never overwrites an input ------------------------------------------------------------


def _segment_case(case: str, tmp_path, image) -> tuple[list, list[str]]:
    """(extra segment arguments, what the error names) for each way an output can hit the input."""
    d = tmp_path
    if case == "out_is_image":
        return ["--out", image], ["--out", "--image"]
    if case == "overlay_is_image":
        return ["--out", d / "m.png", "--overlay", image], ["--overlay", "--image"]
    if case == "json_is_image":
        return ["--out", d / "m.png", "--json", image], ["--json", "--image"]
    if case == "out_is_a_symlink_to_image":
        (d / "link.png").symlink_to(image)
        return ["--out", d / "link.png"], ["--out", "--image"]
    if case == "out_through_a_symlinked_folder":
        (d / "alias").symlink_to(image.parent, target_is_directory=True)
        return ["--out", d / "alias" / image.name], ["--out", "--image"]
    if case == "out_with_dotdot":
        (d / "sub").mkdir()
        return ["--out", d / "sub" / ".." / image.parent.name / image.name], ["--out", "--image"]
    if case == "out_is_a_hard_link_to_image":
        os.link(image, d / "hard.png")
        return ["--out", d / "hard.png"], ["--out", "--image"]
    if case == "overlay_is_out":
        return ["--out", d / "m.png", "--overlay", d / "m.png"], ["--out", "--overlay"]
    if case == "json_is_out":
        return ["--out", d / "m.png", "--json", d / "m.png"], ["--out", "--json"]
    if case == "several_texts_out_folder_holds_image":
        return ["--text", "the box", "--out", image.parent], ["--out", "--image"]
    if case == "several_texts_overlay_folder_is_out_folder":
        return ["--text", "the box", "--out", d / "many", "--overlay", d / "many" / "1.png"], ["--out", "--overlay"]
    raise AssertionError(case)


SEGMENT_CASES = ["out_is_image", "overlay_is_image", "json_is_image", "out_is_a_symlink_to_image",
                 "out_through_a_symlinked_folder", "out_with_dotdot", "out_is_a_hard_link_to_image", "overlay_is_out",
                 "json_is_out", "several_texts_out_folder_holds_image", "several_texts_overlay_folder_is_out_folder"]


@pytest.mark.parametrize("case", SEGMENT_CASES)
def test_segment_never_overwrites_its_image(tmp_path, cli, tiny_model_dir, case):
    folder = tmp_path / "in"
    folder.mkdir()
    image = folder / ("0.png" if case.startswith("several") else "photo.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(image)
    before = image.read_bytes()
    extra, names = _segment_case(case, tmp_path, image)
    files_before = sorted(tmp_path.rglob("*"))
    line = cli.error("segment", "--model", tiny_model_dir, "--image", image, "--text", "the circle", *extra)
    assert all(n in line for n in names) and "same file" in line, line
    assert image.read_bytes() == before
    assert sorted(tmp_path.rglob("*")) == files_before  # nothing was written at all


@pytest.mark.parametrize("case", ["out_is_data", "out_is_a_symlink_to_data", "out_is_the_second_data",
                                  "report_md_is_data"])
def test_eval_never_overwrites_its_data(tmp_path, cli, case):
    a = write_dataset(tmp_path / "a", [{"id": "s0", "text": "the box", "gt": (0, 5, 0, 10)}])
    b = write_dataset(tmp_path / "b", [{"id": "s1", "text": "the bar", "gt": (0, 10, 0, 4)}], name="test")
    data, out = [a], a
    if case == "out_is_a_symlink_to_data":
        out = tmp_path / "link.json"
        out.symlink_to(a)
    elif case == "out_is_the_second_data":
        data, out = [a, b], b
    elif case == "report_md_is_data":
        md = tmp_path / "a" / "val.md"
        md.write_bytes(a.read_bytes())
        data, out = [md], tmp_path / "a" / "val.json"
    before = {p: p.read_bytes() for p in data}
    argv = ["eval", "--predictions", tmp_path / "preds", "--no-progress", "--out", out]
    for d in data:
        argv += ["--data", d]
    line = cli.error(*argv)
    assert "--out" in line and "--data" in line and "same file" in line
    assert {p: p.read_bytes() for p in data} == before


def test_same_file_and_check_outputs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"a")
    assert same_file(tmp_path / "a.png", tmp_path / "x" / ".." / "a.png")
    assert not same_file(tmp_path / "a.png", tmp_path / "b.png")
    check_outputs({"--out": [tmp_path / "b.png", None]}, {"--image": [tmp_path / "a.png"]})  # fine
    with pytest.raises(ValueError, match="refusing to overwrite an input"):
        check_outputs({"--out": [tmp_path / "a.png"]}, {"--image": [tmp_path / "a.png"]})


# ---- all or nothing ---------------------------------------------------------------------------------


def _fail_half_way(monkeypatch, owner, name: str, error: BaseException) -> None:
    """Make the writer ``owner.name`` (``Image.save(path)`` or ``Path.write_text``) write a few bytes
    into its file, then raise ``error``."""

    def broken(self, *args, **kwargs):
        target = self if isinstance(self, pathlib.Path) else args[0]
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise error

    monkeypatch.setattr(owner, name, broken)


WRITES = {
    "write_mask_png": (Image.Image, "save", lambda p: write_mask_png(MASK, p), "m.png"),
    "save_image": (Image.Image, "save", lambda p: save_image(Image.new("RGB", (8, 6)), p), "o.jpg"),
    "write_text_atomic": (pathlib.Path, "write_text", lambda p: write_text_atomic(p, "{}"), "r.json"),
    "write_report_json": (pathlib.Path, "write_text", lambda p: write_report(REPORT, p), "report.json"),
}


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("writer bug"),
                                   KeyboardInterrupt()], ids=["disk_full", "exception", "interrupt"])
@pytest.mark.parametrize("write", WRITES)
def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path, monkeypatch, write, error):
    owner, name, do, filename = WRITES[write]
    path = tmp_path / filename
    path.write_bytes(b"the old content")
    others = report_paths(path)[1] if write == "write_report_json" else None
    if others:
        others.write_bytes(b"the old table")
    _fail_half_way(monkeypatch, owner, name, error)
    with pytest.raises(type(error)) as e:
        do(path)
    assert path.read_bytes() == b"the old content" and leftovers(tmp_path) == []
    if others:
        assert others.read_bytes() == b"the old table"
    if isinstance(error, OSError):
        assert str(e.value) == f"cannot write {path}: No space left on device"


def test_write_report_second_file_failing_keeps_the_old_table(tmp_path, monkeypatch):
    path, md = report_paths(tmp_path / "report.json")
    md.write_text("old table")
    real = pathlib.Path.write_text

    def write_text(self, text, *a, **k):
        if self.name.startswith(".report.md."):
            raise OSError(28, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(OSError, match="report.md"):
        write_report(REPORT, path)
    assert json.loads(path.read_text())["model"] == "m"  # the JSON is complete (new)
    assert md.read_text() == "old table" and leftovers(tmp_path) == []


def test_segment_json_that_fails_half_way_keeps_the_old_file(tmp_path, cli, picture, tiny_model_dir, monkeypatch):
    (tmp_path / "r.json").write_text("old")
    _fail_half_way(monkeypatch, pathlib.Path, "write_text", OSError(28, "No space left on device"))
    line = cli.error("segment", "--model", tiny_model_dir, "--image", picture(), "--text", "the circle",
                     "--out", tmp_path / "m.png", "--json", tmp_path / "r.json")
    assert line.endswith(f"cannot write {tmp_path / 'r.json'}: No space left on device")
    assert (tmp_path / "r.json").read_text() == "old" and leftovers(tmp_path) == []
    assert read_mask(tmp_path / "m.png").shape == (20, 30)  # the mask was written before


def test_atomic_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    for path in (write_mask_png(MASK, tmp_path / "m.png"), write_text_atomic(tmp_path / "t.txt", "x")):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_replaces_and_refuses_a_folder(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("old")
    assert atomic_write(path, lambda tmp: tmp.write_text("new")).read_text() == "new"
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(IsADirectoryError, match="dir.png: it is a folder"):
        write_mask_png(MASK, tmp_path / "dir.png")


# ---- masks are PNG only; overlays any format Pillow writes -----------------------------------------


@pytest.mark.parametrize("name", ["m.jpg", "m.jpeg", "m.JPG", "m.webp", "m.bmp", "m.tif", "m.gif", "mask"])
def test_masks_refuse_other_extensions(tmp_path, name):
    with pytest.raises(ValueError) as e:
        write_mask_png(MASK, tmp_path / name)
    suffix = pathlib.Path(name).suffix
    assert (repr(suffix) if suffix else "no extension") in str(e.value) and "PNG only" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["m.png", "m.PNG"])
def test_masks_round_trip_as_png(tmp_path, name):
    path = write_mask_png(MASK, tmp_path / name)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L"
    assert np.array_equal(read_mask(path), MASK)


@pytest.mark.parametrize("name", ["m.jpg", "m.webp"])
def test_segment_refuses_a_lossy_mask_before_the_model_loads(tmp_path, cli, picture, name):
    line = cli.error("segment", "--model", tmp_path / "no_model", "--image", picture(), "--text", "the circle",
                     "--out", tmp_path / name)
    assert repr(pathlib.Path(name).suffix) in line and "PNG only" in line and "no_model" not in line


@pytest.mark.parametrize("name, fmt", [("o.png", "PNG"), ("o.jpg", "JPEG"), ("o.jpeg", "JPEG"), ("o.webp", "WEBP"),
                                       ("o.bmp", "BMP"), ("o.gif", "GIF"), ("o.tif", "TIFF"), ("o.TIFF", "TIFF")])
def test_overlays_take_any_format_pillow_writes(tmp_path, name, fmt):
    path = save_image(Image.new("RGB", (12, 7), (200, 10, 10)), tmp_path / "sub" / name)
    with Image.open(path) as im:
        assert im.format == fmt and im.size == (12, 7)
    assert leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("name", ["o.xyz", "overlay", "o.psd"])  # unknown, none, read-only in Pillow
def test_overlays_refuse_what_pillow_cannot_write(tmp_path, name):
    with pytest.raises(ValueError) as e:
        image_format(tmp_path / name)
    suffix = pathlib.Path(name).suffix
    assert (repr(suffix) if suffix else "no extension") in str(e.value)


def test_segment_refuses_an_unknown_overlay_format_before_the_model_loads(tmp_path, cli, picture):
    line = cli.error("segment", "--model", tmp_path / "no_model", "--image", picture(), "--text", "the circle",
                     "--out", tmp_path / "m.png", "--overlay", tmp_path / "o.xyz")
    assert "'.xyz'" in line and not (tmp_path / "m.png").exists()


# ---- --device ---------------------------------------------------------------------------------------


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("device, expected", [(None, "cpu"), ("cpu", "cpu"), ("cpu:0", "cpu:0"), (" cpu ", "cpu"),
                                              (torch.device("cpu"), "cpu")])
def test_good_devices(no_cuda, device, expected):
    assert pick_device(device) == torch.device(expected)


@pytest.mark.parametrize("device", ["banana", "CPU", "", "cuda:x", "meta", "xpu", "cuda:-1"])
def test_unknown_devices_list_the_valid_forms(device):
    with pytest.raises(ValueError) as e:
        pick_device(device)
    assert f"unknown device {device!r}" in str(e.value) and "cpu, cuda, cuda:N" in str(e.value)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_cuda_says_so(no_cuda, device):
    with pytest.raises(ValueError, match=r"CUDA is not available on this machine \(torch.cuda.is_available\(\)"):
        pick_device(device)


def test_a_cuda_index_past_the_devices_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"'cuda:1': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        pick_device("cuda:1")


def test_mps_without_mps_says_so(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="Apple MPS, which is not available"):
        pick_device("mps")


@pytest.mark.parametrize("device, expected", [("banana", "unknown device 'banana'"),
                                              ("cuda", "CUDA is not available")])
@pytest.mark.parametrize("command", ["segment", "chat", "eval"])
def test_cli_device_errors_are_one_line(tmp_path, cli, picture, tiny_model_dir, no_cuda, command, device, expected):
    image = picture()
    argv = {"segment": ["--image", image, "--text", "the circle", "--out", tmp_path / "m.png"],
            "chat": ["--image", image, "--message", "hi", "--out", tmp_path / "chat"],
            "eval": ["--data", write_dataset(tmp_path / "d", [{"id": "s", "text": "the box", "gt": None}]),
                     "--out", tmp_path / "report.json"]}[command]
    line = cli.error(command, "--model", tiny_model_dir, "--device", device, *argv)
    assert expected in line
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "chat").exists()
    assert not (tmp_path / "report.json").exists()


# ---- folders ----------------------------------------------------------------------------------------

WRITERS = {
    "write_mask_png": lambda p: write_mask_png(MASK, p / "m.png"),
    "save_image": lambda p: save_image(Image.new("RGB", (4, 4)), p / "o.jpg"),
    "write_text_atomic": lambda p: write_text_atomic(p / "r.json", "{}"),
    "write_report": lambda p: write_report(REPORT, p / "report.json")[0],
}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_missing_folder_is_made(tmp_path, writer):
    path = WRITERS[writer](tmp_path / "a" / "b" / "c")
    assert path.is_file() and path.parent == tmp_path / "a" / "b" / "c" and leftovers(path.parent) == []


def test_segment_makes_its_output_folders(tmp_path, cli, picture, tiny_model_dir):
    rc, out, _ = cli.run("segment", "--model", tiny_model_dir, "--image", picture(), "--text", "the circle",
                         "--out", tmp_path / "a" / "m.png", "--overlay", tmp_path / "b" / "c" / "o.webp",
                         "--json", tmp_path / "d" / "r.json")
    assert rc == 0
    assert read_mask(tmp_path / "a" / "m.png").shape == (20, 30)
    with Image.open(tmp_path / "b" / "c" / "o.webp") as im:
        assert im.format == "WEBP" and im.width == 30
    assert json.loads((tmp_path / "d" / "r.json").read_text())["width"] == 30


@pytest.mark.parametrize("writer", WRITERS)
def test_a_read_only_folder_is_a_clear_error(tmp_path, writer):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this process can write a 0o555 folder (running as root); the error is checked by "
                        "test_an_unwritable_folder_names_the_file instead")
        with pytest.raises(PermissionError, match=f"cannot write {folder}"):
            WRITERS[writer](folder)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


@pytest.fixture
def unwritable(tmp_path, monkeypatch):
    """A folder whose files cannot be created (as a read-only folder behaves for a user who is not root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.open

    def refuse(path, *a, **k):
        if pathlib.Path(path).parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(files.os, "open", refuse)
    return folder


@pytest.mark.parametrize("writer", WRITERS)
def test_an_unwritable_folder_names_the_file(unwritable, writer):
    target = {"write_mask_png": "m.png", "save_image": "o.jpg", "write_text_atomic": "r.json",
              "write_report": "report.json"}[writer]
    with pytest.raises(PermissionError) as e:
        WRITERS[writer](unwritable)
    assert str(e.value) == f"cannot write {unwritable / target}: Permission denied (folder {unwritable})"
    assert list(unwritable.iterdir()) == []


def test_segment_into_an_unwritable_folder_is_one_line(unwritable, cli, picture, tiny_model_dir):
    line = cli.error("segment", "--model", tiny_model_dir, "--image", picture(), "--text", "the circle",
                     "--out", unwritable / "m.png")
    expected = f"cannot write {unwritable / 'm.png'}: Permission denied (folder {unwritable})"
    assert line == f"self1e segment: error: {expected}"


@pytest.mark.parametrize("writer", WRITERS)
def test_a_file_in_the_way_of_a_folder_is_named(tmp_path, writer):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(OSError, match=f"cannot create the folder {tmp_path / 'blocker'}"):
        WRITERS[writer](tmp_path / "blocker")
    assert (tmp_path / "blocker").read_text() == "a file"


def test_an_interrupted_overlay_write_in_eval_keeps_the_old_picture(tmp_path, monkeypatch):
    """Eval's overlay pictures go through the atomic writer too: a write that dies half-way leaves
    the picture of an earlier run as it was, and no temporary file behind."""
    from PIL import Image as PILImage

    from self1e.data.datasets import load_dataset
    from self1e.eval.evaluate import FolderSource, evaluate

    samples = load_dataset("refshapes:test:1:3:64")
    preds = tmp_path / "p"
    preds.mkdir()
    draw = tmp_path / "draw"
    evaluate(FolderSource(preds), samples, overlays=1, overlay_dir=draw, progress=False)
    (picture,) = draw.iterdir()
    before = picture.read_bytes()

    def dies(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(PILImage.Image, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        evaluate(FolderSource(preds), samples, overlays=1, overlay_dir=draw, progress=False)
    assert picture.read_bytes() == before and sorted(draw.iterdir()) == [picture]
