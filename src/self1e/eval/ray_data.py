"""Batch inference and evaluation as a Ray Data pipeline (``self1e eval --ray``, ``self1e batch``; the ``ray`` extra).

The pipeline, one row per model batch::

    read    ray.data.from_items: one row per batch of samples (``--batch-size`` of them, pickled: paths
            or the recipe of an in-memory image, not pixels)
    decode  .map(decode_images): each sample's image decoded in Ray's workers; a sample that cannot be
            read carries its exception instead of an image (the job goes on)
    predict .map_batches(PredictorActor, ActorPoolStrategy(size=actors)): a pool of predictor actors, each
            holding one model (``gpus_per_actor`` GPUs, ``cpus_per_actor`` CPUs); Ray Data restarts an
            actor that dies and retries its batch there
    gather  the driver reads the results in order

``self1e eval --ray`` scores them with the same code as ``self1e eval`` (:func:`self1e.eval.evaluate.evaluate`
over a :class:`RayDataSource`): the same batches (so the same float rounding), the same accumulators,
saved masks, overlays and report; a sample that could not be read raises, at its place in the order,
the very exception ``self1e eval`` raises for it. ``self1e batch`` writes one COCO RLE result per
(image, expression) to JSONL, and one error record (its id and the message) per sample that could
not be read or answered.

Only ``--ray`` paths import this module (it imports Ray).
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from PIL import Image

from self1e.data.sample import Sample
from self1e.eval.evaluate import EvalItem, PredictorSource, evaluable_samples, sample_image
from self1e.inference.predictor import Self1ePredictor
from self1e.inference.results import result_json

EMISSION_KEYS = ("requests", "objects", "seg_emitted", "right_count")


@dataclass(frozen=True)
class PoolOptions:
    """The predictor actors: the model as ``Self1ePredictor.from_pretrained`` takes it, how many
    actors, and what each reserves. ``decode_cpus``: CPUs reserved per decoding task."""

    model: str
    device: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    quantize: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    decode_cpus: float = 0.5
    progress: bool = False


def _pickled_error(e: Exception) -> bytes:
    """The exception itself, to be raised again by the driver; its type and message if it cannot travel."""
    try:
        data = pickle.dumps(e)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - any exception that does not survive a round trip
        return pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))


def decode_images(row: dict[str, Any]) -> dict[str, Any]:
    """The decode stage: every sample's image as an RGB array, or the exception reading it raised."""
    work = pickle.loads(row["payload"])
    images, errors = [], []
    for sample in work["samples"]:
        try:
            images.append(np.asarray(sample_image(sample)))
            errors.append(None)
        except Exception as e:  # noqa: BLE001 - carried to the driver, which reports it like self1e eval
            images.append(None)
            errors.append(_pickled_error(e))
    work["images"], work["errors"] = images, errors
    return {"batch": row["batch"], "payload": pickle.dumps(work)}


def pack(mask: np.ndarray) -> tuple[tuple[int, int], bytes]:
    return mask.shape, np.packbits(mask.astype(bool)).tobytes()


def unpack(packed: tuple[tuple[int, int], bytes]) -> np.ndarray:
    shape, data = packed
    return np.unpackbits(np.frombuffer(data, np.uint8), count=shape[0] * shape[1]).reshape(shape).astype(bool)


class PredictorActor:
    """One predictor in the actor pool; called with a batch of pipeline rows (``batch_size=1``: one
    model batch at a time), it answers each row's ``result`` (pickled)."""

    def __init__(self, options: PoolOptions) -> None:
        self.predictor = Self1ePredictor.from_pretrained(options.model, device=options.device,
                                                         config=dict(options.config) or None,
                                                         threads=options.threads, quantize=options.quantize)
        self.source = PredictorSource(self.predictor)
        self.info = {"device": str(self.predictor.device), "self1e": self.predictor.model.config.to_dict()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for payload in batch["payload"]:
            work = pickle.loads(payload)
            run = self.evaluate if work["kind"] == "eval" else self.segment
            results.append(pickle.dumps({"info": self.info, **run(work)}))
        return {"batch": batch["batch"], "result": np.array(results, dtype=object)}

    def evaluate(self, work: dict[str, Any]) -> dict[str, Any]:
        """Masks of one eval batch, as :class:`PredictorSource` gives them in ``self1e eval``: the
        single-object samples in one ``predict_many`` call, each multi-object request on its own (with
        its ``[SEG]`` emission counts)."""
        items = [EvalItem(i, s, (im.shape[1], im.shape[0]), Image.fromarray(im))
                 for i, s, im, err in zip(work["indices"], work["samples"], work["images"], work["errors"])
                 if err is None]
        masks, emission = {}, {}
        singles = [it for it in items if not it.sample.is_multi_object]
        for it, mask in zip(singles, self.source.predict(singles) if singles else []):
            masks[it.index] = [pack(mask)]
        for it in items:
            if it.sample.is_multi_object:
                before = dict(self.source.emission)
                masks[it.index] = [pack(m) for m in self.source.predict([it])[0]]
                emission[it.index] = {k: self.source.emission[k] - before[k] for k in EMISSION_KEYS}
        errors = {i: err for i, err in zip(work["indices"], work["errors"]) if err is not None}
        sizes = {it.index: it.size for it in items}
        return {"masks": masks, "emission": emission, "errors": errors, "sizes": sizes}

    def segment(self, work: dict[str, Any]) -> dict[str, Any]:
        """Results of one ``self1e batch`` batch: each image with all its expressions in one
        ``predict_images`` call (each image encoded once); a group that fails alone gets error records."""
        records: dict[int, list[dict]] = {}
        groups = []
        for k, (group, im, err) in enumerate(zip(work["groups"], work["images"], work["errors"])):
            if err is None:
                groups.append((k, group, Image.fromarray(im)))
            else:
                records[k] = [_error_record(item, pickle.loads(err)) for item in group["items"]]
        try:
            records.update(self._segment(groups))
        except Exception:  # noqa: BLE001 - then each image alone, so one bad group fails only itself
            for k, group, im in groups:
                try:
                    records.update(self._segment([(k, group, im)]))
                except Exception as e:  # noqa: BLE001 - answered as that group's error records
                    records[k] = [_error_record(item, e) for item in group["items"]]
        return {"records": [r for k in sorted(records) for r in records[k]]}

    def _segment(self, groups: list[tuple[int, dict, Image.Image]]) -> dict[int, list[dict]]:
        if not groups:
            return {}
        results = self.predictor.predict_images([im for _, _, im in groups],
                                                [[item["text"] for item in g["items"]] for _, g, _ in groups])
        return {k: [{"id": item["id"], "image": g["image"], "width": im.size[0], "height": im.size[1],
                     **result_json(r.text, r.mask, r.score)} for item, r in zip(g["items"], res)]
                for (k, g, im), res in zip(groups, results)}


def _error_record(item: dict, e: Exception) -> dict:
    return {"id": item["id"], "image": item["image"], "text": item["text"], "error": str(e)}


def run_pipeline(rows: list[dict[str, Any]], options: PoolOptions,
                 actor_cls: type = PredictorActor) -> Iterator[tuple[int, dict[str, Any]]]:
    """(batch number, result) of every row, in the rows' order, through decode and the actor pool.
    ``actor_cls``: the actor class (tests inject failures with a subclass)."""
    if options.actors < 1:
        raise ValueError(f"need at least 1 actor, got {options.actors}")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = options.progress
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map(decode_images, num_cpus=options.decode_cpus)
    ds = ds.map_batches(actor_cls, fn_constructor_kwargs={"options": options}, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=options.actors), num_cpus=options.cpus_per_actor,
                        num_gpus=options.gpus_per_actor or None)
    for row in ds.iter_rows():
        yield int(row["batch"]), pickle.loads(row["result"])


class RayDataSource:
    """A :class:`~self1e.eval.evaluate.PredictionSource` whose masks come from the Ray Data pipeline,
    started on first use over the samples :func:`~self1e.eval.evaluate.evaluate` scores, in its batches
    (``batch_size`` and ``limit`` must be the ones given to it), and read as a stream in that order (a
    batch's result is dropped once the evaluation has moved past it, so memory does not grow with the
    dataset). ``emission`` grows as the evaluation takes the predictions, as a :class:`PredictorSource`'s
    does; ``info`` is what the actors loaded (device and SELF1E settings), once the first result came.
    Items are loaded in step with the predictions (``read_ahead = False``): the stream is read in order,
    and the pipeline already runs ahead of the evaluation."""

    needs_images = False
    read_ahead = False

    def __init__(self, samples: Sequence[Sample], options: PoolOptions, *, batch_size: int = 8,
                 limit: int | None = None, actor_cls: type = PredictorActor) -> None:
        self.samples = evaluable_samples(samples, limit)
        self.options, self.batch_size, self.actor_cls = options, batch_size, actor_cls
        self.emission = dict.fromkeys(EMISSION_KEYS, 0)
        self.info: dict[str, Any] | None = None
        self._stream: Iterator[tuple[int, dict[str, Any]]] | None = None
        self._ended = False
        self._batches: dict[int, dict[str, Any]] = {}

    def _rows(self) -> list[dict[str, Any]]:
        n, size = len(self.samples), self.batch_size
        return [{"batch": k, "payload": pickle.dumps({"kind": "eval", "indices": list(range(b, min(b + size, n))),
                                                      "samples": self.samples[b: b + size]})}
                for k, b in enumerate(range(0, n, size))]

    def _result(self, index: int) -> dict[str, Any]:
        """The result of the batch holding sample ``index``, read from the pipeline's stream."""
        k = index // self.batch_size
        while k not in self._batches:
            if self._stream is None:
                if self._ended:
                    raise RuntimeError(f"batch {k} was asked for after the Ray Data pipeline's stream was closed")
                self._stream = run_pipeline(self._rows(), self.options, self.actor_cls)
            try:
                n, result = next(self._stream)
            except StopIteration:
                raise RuntimeError(f"the Ray Data pipeline ended without batch {k}") from None
            self.info = self.info or result["info"]
            self._batches[n] = result
        if k == (len(self.samples) - 1) // self.batch_size:
            self.close(keep=k)  # the last batch: end the stream while Ray is surely up
        for done in [b for b in self._batches if b < k]:
            del self._batches[done]
        return self._batches[k]

    def close(self, keep: int | None = None) -> None:
        """Stop the pipeline's stream now, while Ray is up (a stream left to the garbage collector is
        closed later, perhaps after Ray has shut down, and Ray then logs a traceback from wherever the
        collector ran), and drop the results read, except batch ``keep``'s."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._ended = True
        self._batches = {k: v for k, v in self._batches.items() if k == keep}

    def load_item(self, index: int, sample: Sample, want_image: bool) -> EvalItem:
        result = self._result(index)
        if index in result["errors"]:
            raise pickle.loads(result["errors"][index])
        return EvalItem(index, sample, tuple(result["sizes"][index]), sample_image(sample) if want_image else None)

    def predict(self, items: Sequence[EvalItem]) -> list[np.ndarray | list[np.ndarray]]:
        out = []
        for it in items:
            result = self._result(it.index)
            masks = [unpack(p) for p in result["masks"][it.index]]
            out.append(masks if it.sample.is_multi_object else masks[0])
            for k, v in result["emission"].get(it.index, {}).items():
                self.emission[k] += v
        return out


# ---- self1e batch ---------------------------------------------------------------------------------------------------
def image_groups(samples: Sequence[Sample]) -> list[tuple[Sample, list[dict]]]:
    """Samples grouped by image, in first-appearance order: (a sample to load the image from, its
    expressions as ``{"id", "image", "text"}``), so that each image is decoded and encoded once."""
    groups: dict[Any, tuple[Sample, list[dict]]] = {}
    for s in samples:
        key = str(s.image) if isinstance(s.image, (str, Path)) else s.image
        where = str(s.image) if isinstance(s.image, (str, Path)) else (s.where or s.id)
        groups.setdefault(key, (s, []))[1].append({"id": s.id, "image": where, "text": s.text})
    return list(groups.values())


def batch_predict(samples: Sequence[Sample], out: str | Path, options: PoolOptions, *, batch_size: int = 8,
                  actor_cls: type = PredictorActor) -> dict[str, int]:
    """``self1e batch``: one JSON line per (image, expression) in ``out``, in the samples' order:
    ``{"id", "image", "width", "height", "text", "score", "empty", "pixels", "bbox", "rle"}`` (COCO RLE at
    the image's size), or ``{"id", "image", "text", "error"}`` for one that could not be read or
    answered. ``batch_size`` images per model call. Returns the counts of results and errors."""
    groups = [(s, items) for s, items in image_groups([s for s in samples if s.text is not None])]
    rows = []
    for k, b in enumerate(range(0, len(groups), batch_size)):
        chunk = groups[b: b + batch_size]
        rows.append({"batch": k, "payload": pickle.dumps({"kind": "batch", "samples": [s for s, _ in chunk],
                                                          "groups": [{"image": items[0]["image"], "items": items}
                                                                     for _, items in chunk]})})
    counts = {"results": 0, "errors": 0, "images": len(groups)}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for _, result in run_pipeline(rows, options, actor_cls):
            for record in result["records"]:
                counts["errors" if "error" in record else "results"] += 1
                f.write(json.dumps(record) + "\n")
    partial.replace(path)
    return counts
