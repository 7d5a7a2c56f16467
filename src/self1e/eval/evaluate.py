"""The evaluation loop: masks from a source (a predictor, or a folder of PNGs) against a dataset.

Predictions are compared with the ground truth at the original image size. Under
``torch.distributed`` (``torchrun`` / ``accelerate launch``) each rank takes samples
``rank::world_size`` and the exact integer accumulators are gathered and merged, so the result
equals a one-process run bit for bit.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from self1e.common.distributed import rank_world
from self1e.common.errors import DataError
from self1e.common.images import image_size, read_mask, write_mask_png
from self1e.common.overlay import overlay
from self1e.data.sample import Sample
from self1e.eval.metrics import IoUAccumulator

logger = logging.getLogger(__name__)


def mask_filename(sample_id: str) -> str:
    """``<id>.png``, the name of a saved or supplied prediction; path separators become ``_``."""
    return str(sample_id).replace("/", "_").replace("\\", "_") + ".png"


@dataclass
class EvalItem:
    """One sample in a batch: its global ``index`` (position in the evaluated list), the sample,
    its original ``size`` = (width, height) and, when the source asked for it, the RGB image."""

    index: int
    sample: Sample
    size: tuple[int, int]
    image: Image.Image | None = None


class PredictionSource(Protocol):
    """Where predicted masks come from. ``predict`` returns one bool (H, W) mask per item, at the
    item's original size; ``needs_images`` says whether items must carry their decoded image."""

    needs_images: bool

    def predict(self, items: Sequence[EvalItem]) -> list[np.ndarray]: ...


class PredictorSource:
    """Masks from a model: anything with ``predict_many(images, texts)`` returning results with a
    ``.mask`` (bool numpy at the original image size; the predictor resizes the logits bilinearly to
    that size and thresholds them at 0). Used as-is for ``Self1ePredictor``."""

    needs_images = True

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def predict(self, items: Sequence[EvalItem]) -> list[np.ndarray]:
        images = [it.image for it in items]
        texts = [it.sample.text for it in items]
        results = self.predictor.predict_many(images, texts)
        if len(results) != len(items):
            raise RuntimeError(f"predictor returned {len(results)} results for {len(items)} inputs")
        masks = []
        for it, res in zip(items, results):
            mask = np.asarray(res.mask)
            if mask.shape != (it.size[1], it.size[0]):
                raise RuntimeError(
                    f"predictor returned a {mask.shape} mask for {it.sample.where or it.sample.id}, whose "
                    f"image is {it.size[1]}x{it.size[0]} (height x width): masks must be at original size"
                )
            masks.append(mask != 0 if mask.dtype != bool else mask)
        return masks


class FolderSource:
    """Masks from ``DIR/<id>.png`` (any mode; non-zero = foreground). A missing file counts as an
    empty prediction (and is counted in ``missing``); a file of the wrong size is an error naming it."""

    needs_images = False

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"predictions folder not found: {self.folder}")
        self.missing = 0

    def predict(self, items: Sequence[EvalItem]) -> list[np.ndarray]:
        masks = []
        for it in items:
            path = self.folder / mask_filename(it.sample.id)
            if not path.exists():
                self.missing += 1
                masks.append(np.zeros((it.size[1], it.size[0]), dtype=bool))
                continue
            mask = read_mask(path)
            if mask.shape != (it.size[1], it.size[0]):
                raise DataError(
                    f"prediction {path} is {mask.shape[1]}x{mask.shape[0]} but the image of sample "
                    f"{it.sample.id!r} is {it.size[0]}x{it.size[1]} (width x height)"
                )
            masks.append(mask)
        return masks


@dataclass
class EvalResult:
    """The merged accumulator over all ranks plus bookkeeping. ``metrics`` is
    :meth:`IoUAccumulator.result`; ``seconds`` is the slowest rank's loop time."""

    accumulator: IoUAccumulator
    seconds: float
    world_size: int = 1
    missing_predictions: int = 0
    skipped_vqa: int = 0

    @property
    def n(self) -> int:
        return self.accumulator.n

    @property
    def samples_per_s(self) -> float | None:
        return self.n / self.seconds if self.n and self.seconds > 0 else None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.accumulator.result()


def _image_size(sample: Sample) -> tuple[int, int]:
    """(width, height) of a sample's image, reading only the header when it is a file."""
    if isinstance(sample.image, (str, Path)):
        try:
            return image_size(sample.image)
        except DataError as e:
            raise DataError(f"{sample.where or sample.id}: {e}") from None
    return sample.load_image().size


def _check_unique_ids(samples: Sequence[Sample]) -> None:
    seen: dict[str, Sample] = {}
    for s in samples:
        name = mask_filename(s.id)
        if name in seen:
            raise DataError(
                f"two samples map to the same mask file {name!r} ({seen[name].where or seen[name].id} and "
                f"{s.where or s.id}); give them distinct ids"
            )
        seen[name] = s


def evaluate(
    source: PredictionSource,
    samples: Sequence[Sample],
    *,
    batch_size: int = 8,
    limit: int | None = None,
    save_masks: str | Path | None = None,
    overlays: int = 0,
    overlay_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> EvalResult:
    """Evaluate ``source`` on ``samples`` and return the merged :class:`EvalResult`.

    VQA samples (no ``text``) have no mask to evaluate: they are skipped and counted. ``limit``
    keeps the first N remaining samples. ``save_masks`` writes ``<id>.png`` (0/255) per sample;
    ``overlays`` draws the first N samples (prediction in red, truth outlined in green, the text
    above) into ``overlay_dir`` as ``<index>_<id>.png``. Under ``torch.distributed`` each rank
    evaluates ``rank::world_size`` and writes the mask and overlay files of its own samples (distinct
    file names, so the output folder is the same as a one-process run's); report files are the
    caller's, on rank 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rank, world = rank_world()
    evaluable = [s for s in samples if s.text is not None]
    skipped_vqa = len(samples) - len(evaluable)
    if skipped_vqa and rank == 0:
        logger.info("%s: skipped %d VQA samples (no mask to evaluate)", desc, skipped_vqa)
    evaluable = evaluable[:limit] if limit is not None else evaluable
    if save_masks is not None or isinstance(source, FolderSource):
        _check_unique_ids(evaluable)
    save_dir = Path(save_masks) if save_masks is not None else None
    draw_dir = Path(overlay_dir) if overlays > 0 and overlay_dir is not None else None
    if overlays > 0 and draw_dir is None:
        raise ValueError("overlays requested but no overlay_dir given")
    for d in (save_dir, draw_dir):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)

    missing_before = getattr(source, "missing", 0)
    acc = IoUAccumulator()
    start = time.perf_counter()
    error: Exception | None = None
    try:
        _run_shard(source, evaluable, range(rank, len(evaluable), world), acc, batch_size=batch_size,
                   save_dir=save_dir, draw_dir=draw_dir, overlays=overlays,
                   progress=progress and rank == 0, desc=desc)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have been told
        if world == 1:
            raise
        error = e
    seconds = time.perf_counter() - start
    missing = getattr(source, "missing", 0) - missing_before
    if world > 1:
        acc, seconds, missing = _reduce_across_ranks(acc, seconds, missing, error)
    if missing and rank == 0:
        logger.warning("%s: %d of %d predictions missing, counted as empty masks", desc, missing, acc.n)
    return EvalResult(acc, seconds, world, missing, skipped_vqa)


def _run_shard(
    source: PredictionSource,
    samples: Sequence[Sample],
    indices: Sequence[int],
    acc: IoUAccumulator,
    *,
    batch_size: int,
    save_dir: Path | None,
    draw_dir: Path | None,
    overlays: int,
    progress: bool,
    desc: str,
) -> None:
    """Predict, score and (optionally) save/draw ``samples[i]`` for i in ``indices``, in batches."""
    bar = tqdm(total=len(indices), desc=desc, unit="sample", disable=not progress)
    for b in range(0, len(indices), batch_size):
        items = []
        for i in indices[b : b + batch_size]:
            s = samples[i]
            want_image = source.needs_images or (draw_dir is not None and i < overlays)
            image = s.load_image() if want_image else None
            items.append(EvalItem(i, s, image.size if image is not None else _image_size(s), image))
        preds = source.predict(items)
        for it, pred in zip(items, preds):
            s = it.sample
            gt = s.load_mask(it.size)
            acc.update(pred, gt, s.load_ignore(it.size), s.kind)
            if save_dir is not None:
                write_mask_png(pred, save_dir / mask_filename(s.id))
            if draw_dir is not None and it.index < overlays:
                image = it.image if it.image is not None else s.load_image()
                overlay(image, pred, s.text, gt=gt).save(draw_dir / f"{it.index:05d}_{mask_filename(s.id)}")
        bar.update(len(items))
        if acc.ciou is not None:
            bar.set_postfix(cIoU=f"{100 * acc.ciou:.2f}")
    bar.close()


def _reduce_across_ranks(
    acc: IoUAccumulator, seconds: float, missing: int, error: Exception | None
) -> tuple[IoUAccumulator, float, int]:
    """Gather every rank's exact state and merge them (on every rank). The accumulator's sums are
    integers, so the merged result does not depend on the shard layout or the merge order.

    A rank that failed still joins the gather (carrying its error), so no rank waits forever: the
    failed rank re-raises its own exception, the others raise a ValueError naming it.
    """
    import torch.distributed as dist

    payload = {"state": acc.state_dict(), "seconds": seconds, "missing": missing,
               "error": None if error is None else f"{type(error).__name__}: {error}"}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    if error is not None:
        raise error
    failed = [(r, p["error"]) for r, p in enumerate(gathered) if p["error"] is not None]
    if failed:
        raise ValueError(f"evaluation failed on rank {failed[0][0]}: {failed[0][1]}")
    total = IoUAccumulator()
    for part in gathered:  # rank order
        total.merge(IoUAccumulator.from_state_dict(part["state"]))
    return total, max(p["seconds"] for p in gathered), sum(p["missing"] for p in gathered)
