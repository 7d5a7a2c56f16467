"""The one sample type every data source produces (JSONL, RefShapes, RefCOCO family, ReasonSeg, ...).

Images and masks are loaded lazily so that a dataset of 100k samples costs only its metadata.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from self1e.common.errors import DataError
from self1e.common.images import open_image, read_mask

# A mask is either an image path (read by self1e.common.images.read_mask: non-zero = foreground) or a
# function that draws it.
MaskSource = str | Path | Callable[[], np.ndarray]


def read_json(path: Path, what: str):
    """Parse a JSON file; a missing file or invalid JSON raises DataError naming it."""
    import json

    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None


@dataclass(frozen=True)
class Sample:
    """One sample. Referring samples have ``text``; VQA samples have ``question`` and ``answer``.

    ``mask`` None means "no target" (the ground truth is an empty mask).
    ``where`` names the origin for error messages, e.g. ``"data/val.jsonl:12"``.
    ``instances`` (optional) holds one mask per target object of a multi-target expression.
    A multi-object request ("the red circle and the blue star") also has ``phrases``: one phrase
    per object, answered with one ``[SEG]`` each, and ``instances`` then holds one mask per phrase
    (None for an object that is absent); ``mask`` is their union.
    """

    id: str
    image: str | Path | Callable[[], Image.Image]
    text: str | None = None
    mask: MaskSource | None = None
    ignore: MaskSource | None = None
    kind: str | None = None
    question: str | None = None
    answer: str | None = None
    where: str = ""
    # Optional per-instance masks whose union is ``mask`` (multi-target expressions), or, with
    # ``phrases``, one mask (None: absent) per object of a multi-object request.
    instances: tuple[MaskSource | None, ...] | None = None
    phrases: tuple[str, ...] | None = None
    # Whether the image file's EXIF orientation applies: yes for your own data (JSONL), no for the
    # field's datasets, whose annotations are in stored pixel order.
    exif: bool = True

    def __post_init__(self) -> None:
        if self.phrases is not None and (self.instances is None or len(self.instances) != len(self.phrases)):
            raise DataError(f"{self.where or self.id}: a multi-object sample needs one 'instances' entry "
                            f"per phrase ({len(self.phrases)} phrases)")

    @property
    def is_multi_object(self) -> bool:
        return self.phrases is not None

    @property
    def is_vqa(self) -> bool:
        return self.text is None and self.question is not None

    def load_image(self) -> Image.Image:
        """The image as RGB."""
        return self.image() if callable(self.image) else open_image(self.image, exif=self.exif)

    def _load(self, src: MaskSource, size: tuple[int, int], field: str,
              problems: list[str] | None = None) -> np.ndarray:
        """Mask ``src`` as bool (H, W), checked against the image ``size``; with ``problems``, notes
        about a file mask that is not binary are appended (naming the sample and field)."""
        if callable(src):
            arr = np.asarray(src(), dtype=bool)
        else:
            notes: list[str] | None = None if problems is None else []
            arr = read_mask(src, problems=notes)
            if notes:
                problems.extend(f"{self.where or self.id}: field '{field}': {n}" for n in notes)
        if arr.shape != (size[1], size[0]):
            raise DataError(
                f"{self.where or self.id}: {field} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                f"{size[0]}x{size[1]} (width x height); masks must match their image exactly"
            )
        return arr

    def load_mask(self, size: tuple[int, int], problems: list[str] | None = None) -> np.ndarray:
        """Ground truth as bool (H, W) for an image of ``size`` = (width, height); ``problems``: see
        :meth:`_load`."""
        if self.mask is None:
            return np.zeros((size[1], size[0]), dtype=bool)
        return self._load(self.mask, size, "mask", problems)

    def load_instance(self, k: int, size: tuple[int, int], problems: list[str] | None = None) -> np.ndarray:
        """Mask ``k`` of ``instances`` as bool (H, W); an absent object's (None) is empty."""
        assert self.instances is not None
        src = self.instances[k]
        return (np.zeros((size[1], size[0]), dtype=bool) if src is None
                else self._load(src, size, "instances", problems))

    def load_ignore(self, size: tuple[int, int], problems: list[str] | None = None) -> np.ndarray | None:
        """Ignore region as bool (H, W), or None."""
        return None if self.ignore is None else self._load(self.ignore, size, "ignore", problems)
