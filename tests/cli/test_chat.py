"""`self1e chat`: one-shot and piped turns, overlays and masks per [SEG], bad input."""
import numpy as np
from PIL import Image

from self1e.cli import main
from self1e.data.datasets import load_dataset


def test_chat_command_writes_a_mask_per_seg(tmp_path, capsys):
    sample = load_dataset("refshapes:test:1:4")[0]
    sample.load_image().save(tmp_path / "scene.png")
    rc = main(["chat", "--model", "default", "--image", str(tmp_path / "scene.png"), "--device", "cpu",
               "--message", "Can you segment the red circle in this image?", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "assistant:" in out and "[SEG]" in out  # the shipped model segments when asked to
    mask = np.asarray(Image.open(tmp_path / "out" / "turn1_1_mask.png"))
    assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "turn1_1.png").is_file()


def test_chat_command_reads_turns_from_stdin(tmp_path, capsys, monkeypatch):
    import io

    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "im.png")
    monkeypatch.setattr("sys.stdin", io.StringIO("What color is the star?\n/reset\n\n/quit\nnever asked\n"))
    rc = main(["chat", "--model", "default", "--image", str(tmp_path / "im.png"), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("assistant:") == 1 and "conversation reset" in out


def test_chat_command_bad_image_is_one_line(tmp_path, capsys):
    rc = main(["chat", "--model", "default", "--image", str(tmp_path / "missing.png"), "--message", "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.png" in err and "Traceback" not in err
