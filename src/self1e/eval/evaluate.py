"""The evaluation loop: masks from a source (a predictor, or a folder of PNGs) against a dataset.

Predictions are compared with the ground truth at the original image size. Under
``torch.distributed`` (``torchrun`` / ``accelerate launch``) each rank takes samples
``rank::world_size`` and the exact integer accumulators are gathered and merged, so the result
equals a one-process run bit for bit.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from self1e.common.distributed import gather_checked, rank_world
from self1e.common.errors import DataError
from self1e.common.images import image_size, read_mask, save_image, write_mask_png
from self1e.common.overlay import overlay
from self1e.data.sample import Sample
from self1e.eval.metrics import IoUAccumulator, score_sample

logger = logging.getLogger(__name__)


def mask_filename(sample_id: str, k: int | None = None) -> str:
    """``<id>.png`` (``<id>_<k>.png`` for object k of a multi-object request), the name of a saved
    or supplied prediction; path separators become ``_``."""
    stem = str(sample_id).replace("/", "_").replace("\\", "_")
    return f"{stem}.png" if k is None else f"{stem}_{k}.png"


@dataclass
class EvalItem:
    """One sample in a batch: its global ``index`` (position in the evaluated list), the sample,
    its original ``size`` = (width, height) and, when the source asked for it, the RGB image."""

    index: int
    sample: Sample
    size: tuple[int, int]
    image: Image.Image | None = None
    prepared: Any = None  # the model's input for ``image``, when the source prepares it ahead (``prepare``)


def multi_object_kind(kind: str, k: int) -> str:
    """The kind object ``k`` (from 0) of a multi-object request is scored under: ``multi-object #1``, ..."""
    return f"{kind} #{k + 1}"


Prediction = np.ndarray | list[np.ndarray]  # one mask, or one per object of a multi-object request


class PredictionSource(Protocol):
    """Where predicted masks come from. ``predict`` returns, per item, one bool (H, W) mask at the
    item's original size, or for a multi-object request one mask per phrase; ``needs_images`` says
    whether items must carry their decoded image. A source may also define
    ``load_item(index, sample, want_image) -> EvalItem`` to build the items itself (one whose images
    were decoded elsewhere, e.g. by Ray Data workers); it raises what :func:`load_item` would.
    ``read_ahead`` (default true) lets the evaluation load the next batches' items in a thread while
    ``predict`` runs; a source whose items must be loaded in step with its predictions sets it false.
    A source may split ``predict`` into ``begin(items)`` (the model) and ``finish(items, begun)`` (the
    masks): the evaluation then runs ``finish`` in its scorer thread."""

    needs_images: bool
    read_ahead: bool

    def predict(self, items: Sequence[EvalItem]) -> list[Prediction]: ...


@dataclass
class _Logits:
    """A prediction not yet made a mask: head-resolution logits and its image's (H, W)."""

    logits: Any
    size: tuple[int, int]


class PredictorSource:
    """Masks from a model: anything with ``predict_many(images, texts)`` returning results with a
    ``.mask`` (bool numpy at the original image size; the predictor resizes the logits bilinearly to
    that size and thresholds them at 0). Used as-is for ``Self1ePredictor``.

    A multi-object request is answered teacher-forced with one ``[SEG]`` per phrase
    (``predict_objects``); with ``count_emission`` the model is also asked it freely (greedy chat)
    and the ``[SEG]`` it writes are counted against the objects asked for (``emission``)."""

    needs_images = True

    def __init__(self, predictor: Any, count_emission: bool = True) -> None:
        self.predictor = predictor
        self.count_emission = count_emission
        self.emission = {"requests": 0, "objects": 0, "seg_emitted": 0, "right_count": 0}

    def prepare(self, item: EvalItem) -> Any:
        """The model's input for the item's image (tiles, resized and normalised), for a predictor
        with a ``processor`` (None otherwise: ``predict`` passes the image): run by the reader thread,
        ahead of ``predict``."""
        image_input = getattr(getattr(self.predictor, "processor", None), "image_input", None)
        return image_input(item.image) if image_input is not None else None

    def predict(self, items: Sequence[EvalItem]) -> list[Prediction]:
        """The items' masks: :meth:`begin`, then :meth:`finish`."""
        return self.finish(items, self.begin(items))

    def begin(self, items: Sequence[EvalItem]) -> list[Prediction | _Logits]:
        """The model's part of :meth:`predict`: for a predictor with ``predict_many_logits`` the
        single-object items' predictions stay head-resolution logits, which :meth:`finish` makes masks
        (the evaluation runs it in its scorer thread, beside the next batch's forward)."""
        single = [it for it in items if not it.sample.is_multi_object]
        images = [it.prepared if it.prepared is not None else it.image for it in single]
        texts = [it.sample.text for it in single]
        deferred = hasattr(self.predictor, "predict_many_logits")
        if not single:
            results = iter([])
        elif deferred:
            results = iter([_Logits(lg, size) for lg, size in zip(*self.predictor.predict_many_logits(images, texts))])
        else:
            results = iter(self.predictor.predict_many(images, texts))
        out: list[Prediction | _Logits] = []
        for it in items:
            if it.sample.is_multi_object:
                out.append([self._checked(it, r.mask) for r in self._objects(it)])
            else:
                res = next(results, None)
                if res is None:
                    raise RuntimeError(f"predictor returned fewer results than the {len(single)} inputs")
                out.append(res if deferred else self._checked(it, res.mask))
        return out

    def finish(self, items: Sequence[EvalItem], preds: Sequence[Prediction | _Logits]) -> list[Prediction]:
        """``predict``'s output as masks: logits resized to their image's size and thresholded at 0,
        all of a batch together (as ``predict_many`` does)."""
        from self1e.inference.predictor import results_at_sizes

        todo = [k for k, p in enumerate(preds) if isinstance(p, _Logits)]
        out = list(preds)
        results = results_at_sizes([items[k].sample.text for k in todo], [preds[k].logits for k in todo],
                                   [preds[k].size for k in todo])
        for k, r in zip(todo, results):
            out[k] = self._checked(items[k], r.mask)
        return out

    def _objects(self, it: EvalItem) -> list:
        s, predictor = it.sample, self.predictor
        predictor.set_image(it.image)
        results = predictor.predict_objects(s.text, s.phrases)
        if self.count_emission:
            answer = predictor.chat(predictor.processor.seg_question(s.text), max_new_tokens=16 * len(s.phrases))
            emitted = answer.text.count(predictor.processor.seg_token)
            self.emission["requests"] += 1
            self.emission["objects"] += len(s.phrases)
            self.emission["seg_emitted"] += emitted
            self.emission["right_count"] += emitted == len(s.phrases)
        return results

    @staticmethod
    def _checked(it: EvalItem, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != (it.size[1], it.size[0]):
            raise RuntimeError(
                f"predictor returned a {mask.shape} mask for {it.sample.where or it.sample.id}, whose "
                f"image is {it.size[1]}x{it.size[0]} (height x width): masks must be at original size"
            )
        return mask != 0 if mask.dtype != bool else mask


class FolderSource:
    """Masks from ``DIR/<id>.png`` (any mode; non-zero = foreground), and ``DIR/<id>_<k>.png`` for
    object k of a multi-object request. A missing file counts as an empty prediction (and is
    counted in ``missing``); a file of the wrong size is an error naming it."""

    needs_images = False

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"predictions folder not found: {self.folder}")
        self.missing = 0

    def predict(self, items: Sequence[EvalItem]) -> list[Prediction]:
        out: list[Prediction] = []
        for it in items:
            s = it.sample
            if s.is_multi_object:
                out.append([self._read(it, mask_filename(s.id, k)) for k in range(len(s.phrases))])
            else:
                out.append(self._read(it, mask_filename(s.id)))
        return out

    def _read(self, it: EvalItem, name: str) -> np.ndarray:
        path = self.folder / name
        if not path.exists():
            self.missing += 1
            return np.zeros((it.size[1], it.size[0]), dtype=bool)
        mask = read_mask(path)
        if mask.shape != (it.size[1], it.size[0]):
            raise DataError(
                f"prediction {path} is {mask.shape[1]}x{mask.shape[0]} but the image of sample "
                f"{it.sample.id!r} is {it.size[0]}x{it.size[1]} (width x height)"
            )
        return mask


@dataclass
class EvalResult:
    """The merged accumulator over all ranks plus bookkeeping. ``metrics`` is
    :meth:`IoUAccumulator.result`; ``seconds`` is the slowest rank's loop time."""

    accumulator: IoUAccumulator
    seconds: float
    world_size: int = 1
    missing_predictions: int = 0
    skipped_vqa: int = 0
    emission: dict[str, int] | None = None  # multi-object requests: [SEG] written freely vs objects asked

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
            return image_size(sample.image, exif=sample.exif)
        except DataError as e:
            raise DataError(f"{sample.where or sample.id}: {e}") from None
    return sample.load_image().size


def evaluable_samples(samples: Sequence[Sample], limit: int | None = None) -> list[Sample]:
    """The samples :func:`evaluate` scores, in its order: those with a text (VQA samples have no mask),
    the first ``limit`` of them."""
    evaluable = [s for s in samples if s.text is not None]
    return evaluable[:limit] if limit is not None else evaluable


def sample_image(sample: Sample) -> Image.Image:
    """The sample's image; one that cannot be read raises DataError naming the sample (where it
    comes from and its id) and the reason."""
    try:
        return sample.load_image()
    except DataError as e:
        who = f"{sample.where} (id {sample.id!r})" if sample.where else f"sample {sample.id!r}"
        raise DataError(f"{who}: {e}") from None


def load_item(index: int, sample: Sample, want_image: bool) -> EvalItem:
    """The item of ``sample``: its image decoded when wanted, else only its size (a file's header)."""
    image = sample_image(sample) if want_image else None
    return EvalItem(index, sample, image.size if image is not None else _image_size(sample), image)


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
    prefetch: int = 1,
) -> EvalResult:
    """Evaluate ``source`` on ``samples`` and return the merged :class:`EvalResult`.

    VQA samples (no ``text``) have no mask to evaluate: they are skipped and counted. Each object
    of a multi-object request is scored as a sample of its own (kind ``multi-object #k``, k its place in
    the request, so the per-kind table shows how later objects fare against the first). ``limit``
    keeps the first N remaining samples. ``save_masks`` writes ``<id>.png`` (0/255) per sample
    (``<id>_<k>.png`` per object of a multi-object request);
    ``overlays`` draws the first N samples (prediction in red, truth outlined in green, the text
    above) into ``overlay_dir`` as ``<index>_<id>.png``. Under ``torch.distributed`` each rank
    evaluates ``rank::world_size`` and writes the mask and overlay files of its own samples (distinct
    file names, so the output folder is the same as a one-process run's); report files are the
    caller's, on rank 0. ``prefetch`` batches are read (images, ground truth, the model's input) by
    a reader thread while the model runs on the current one, and each batch is scored and written
    by a scorer thread while the model runs on the next (0: everything in line); results are the same.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rank, world = rank_world()
    skipped_vqa = sum(s.text is None for s in samples)
    if skipped_vqa and rank == 0:
        logger.info("%s: skipped %d VQA samples (no mask to evaluate)", desc, skipped_vqa)
    evaluable = evaluable_samples(samples, limit)
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
    emission_before = dict(getattr(source, "emission", None) or {})
    acc = IoUAccumulator()
    start = time.perf_counter()
    error: Exception | None = None
    try:
        _run_shard(source, evaluable, range(rank, len(evaluable), world), acc, batch_size=batch_size,
                   save_dir=save_dir, draw_dir=draw_dir, overlays=overlays,
                   progress=progress and rank == 0, desc=desc, prefetch=prefetch)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have been told
        if world == 1:
            raise
        error = e
    seconds = time.perf_counter() - start
    missing = getattr(source, "missing", 0) - missing_before
    emission = {k: v - emission_before.get(k, 0) for k, v in (getattr(source, "emission", None) or {}).items()}
    if world > 1:
        acc, seconds, missing, emission = _reduce_across_ranks(acc, seconds, missing, emission, error)
    if missing and rank == 0:
        logger.warning("%s: %d of %d predictions missing, counted as empty masks", desc, missing, acc.n)
    return EvalResult(acc, seconds, world, missing, skipped_vqa, emission if emission.get("requests") else None)


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
    prefetch: int = 1,
) -> None:
    """Predict, score and (optionally) save/draw ``samples[i]`` for i in ``indices``, in batches,
    reading ``prefetch`` batches ahead and scoring one behind in threads (see :func:`evaluate`)."""
    bar = tqdm(total=len(indices), desc=desc, unit="sample", disable=not progress)
    load = getattr(source, "load_item", load_item)

    prepare = getattr(source, "prepare", None)
    # a source that splits predict into begin (the model) and finish (masks) finishes in the scorer
    split = hasattr(source, "begin") and hasattr(source, "finish")

    def read(batch: Sequence[int]) -> list[tuple[EvalItem, np.ndarray | None, list[np.ndarray]]]:
        """Each item (with its prepared model input) with its ignore map and its ground truth (one
        mask, or one per object)."""
        out = []
        for i in batch:
            it = load(i, samples[i], source.needs_images or (draw_dir is not None and i < overlays))
            s = it.sample
            if prepare is not None and it.image is not None and not s.is_multi_object:
                it.prepared = prepare(it)
            truths = ([s.load_instance(k, it.size) for k in range(len(s.phrases))] if s.is_multi_object
                      else [s.load_mask(it.size)])
            out.append((it, s.load_ignore(it.size), truths))
        return out

    def score(loaded: list, preds: list[Prediction]) -> None:
        """Metrics, mask files and overlays of one predicted batch (in batch order)."""
        if split:
            preds = source.finish([it for it, _, _ in loaded], preds)
        for (it, ignore, truths), pred in zip(loaded, preds):
            s = it.sample
            if s.is_multi_object:
                if len(pred) != len(s.phrases):
                    raise RuntimeError(f"{s.where or s.id}: {len(pred)} masks for {len(s.phrases)} objects")
                for k, (mask, truth) in enumerate(zip(pred, truths)):
                    acc.update(mask, truth, ignore, multi_object_kind(s.kind, k))
                    if save_dir is not None:
                        write_mask_png(mask, save_dir / mask_filename(s.id, k))
                pred = np.logical_or.reduce(pred)  # drawn as one picture
            else:
                acc.update(pred, truths[0], ignore, s.kind)
                if save_dir is not None:
                    write_mask_png(pred, save_dir / mask_filename(s.id))
            if draw_dir is not None and it.index < overlays:
                image = it.image if it.image is not None else s.load_image()
                gt = s.load_mask(it.size)
                caption = f"{s.text}  (IoU {score_sample(pred, gt, ignore).iou:.2f})"
                save_image(overlay(image, pred, caption, gt=gt), draw_dir / f"{it.index:05d}_{mask_filename(s.id)}")
        bar.update(len(loaded))
        if acc.ciou is not None:
            bar.set_postfix(cIoU=f"{100 * acc.ciou:.2f}")

    # Three stages: a reader thread (files, decoding, the model's input) runs ``prefetch`` batches
    # ahead, the model runs here, a scorer thread (metrics, mask files) one batch behind. With
    # prefetch=0 all three run in line.
    batches = [indices[b : b + batch_size] for b in range(0, len(indices), batch_size)]
    threaded = prefetch > 0 and getattr(source, "read_ahead", True)
    with (ThreadPoolExecutor(1) if threaded else contextlib.nullcontext()) as reader, \
            (ThreadPoolExecutor(1) if threaded else contextlib.nullcontext()) as scorer:
        pending = [reader.submit(read, b) for b in batches[:prefetch]] if threaded else []
        scored = None
        for n, batch in enumerate(batches):
            if threaded:
                if n + prefetch < len(batches):
                    pending.append(reader.submit(read, batches[n + prefetch]))
                loaded = pending.pop(0).result()
            else:
                loaded = read(batch)
            preds = (source.begin if split else source.predict)([it for it, _, _ in loaded])
            if threaded:
                if scored is not None:
                    scored.result()  # the previous batch's errors surface here, in order
                scored = scorer.submit(score, loaded, preds)
            else:
                score(loaded, preds)
        if scored is not None:
            scored.result()
    bar.close()


def _reduce_across_ranks(
    acc: IoUAccumulator, seconds: float, missing: int, emission: dict[str, int], error: Exception | None
) -> tuple[IoUAccumulator, float, int, dict[str, int]]:
    """Gather every rank's exact state and merge them (on every rank). The accumulator's sums are
    integers, so the merged result does not depend on the shard layout or the merge order.

    A rank that failed still joins the gather (carrying its error), so no rank waits forever: the
    failed rank re-raises its own exception, the others raise a ValueError naming it.
    """
    gathered = gather_checked({"state": acc.state_dict(), "seconds": seconds, "missing": missing,
                               "emission": emission}, error, "evaluation")
    total = IoUAccumulator()
    for part in gathered:  # rank order
        total.merge(IoUAccumulator.from_state_dict(part["state"]))
    merged = {k: sum(p["emission"].get(k, 0) for p in gathered) for k in emission}
    return total, max(p["seconds"] for p in gathered), sum(p["missing"] for p in gathered), merged
