"""Shared by the robustness tests: run the CLI and take its one error line; write small pictures."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from self1e.cli import main


class Cli:
    """Runs ``self1e`` in this process and returns what it printed."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys

    def run(self, *argv: str | Path) -> tuple[int, str, list[str]]:
        """(exit code, stdout, stderr lines)."""
        self.capsys.readouterr()
        rc = main([str(a) for a in argv])
        captured = self.capsys.readouterr()
        return rc, captured.out, captured.err.strip().splitlines()

    def error(self, *argv: str | Path) -> str:
        """The one error line of a failing command: exit code 2 and a single ``self1e <cmd>: error: ...``
        line on stderr, no traceback."""
        rc, _, err = self.run(*argv)
        assert rc == 2, (rc, err)
        assert len(err) == 1, err
        assert err[0].startswith(f"self1e {argv[0]}: error: "), err
        return err[0]


@pytest.fixture
def cli(capsys) -> Cli:
    return Cli(capsys)


@pytest.fixture
def picture(tmp_path) -> Callable[..., Path]:
    """``picture("name.png", w, h)``: a random RGB image file (any extension Pillow writes)."""

    def write(name: str = "im.png", w: int = 30, h: int = 20, seed: int = 0) -> Path:
        path = tmp_path / name
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        return path

    return write
