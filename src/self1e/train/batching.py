"""The training sampler: samples of every source -> model batches: grouping, mixing, a seeded resumable order, sharding.

A *unit* is up to K samples of one image (the paper trains up to 3 expressions per image per
step); they share one ``pixel_values`` entry and become K rows of the batch. A micro-batch holds
``batch_size`` units with at least one segmentation unit, mixed one of two ways:

- by ratio (the default): every slot draws a source by its ratio;
- by repeat (the SELF1E authors' scheme): each group's units repeated an integer number of times,
  the groups concatenated in order, shuffled, and the first unit of every micro-batch replaced by
  a random segmentation unit.

The order of epoch ``e`` is a pure function of ``(seed, e)``, so the state is just
``(epoch, position)``; rank ``r`` of ``W`` takes micro-batches ``r, r + W, ...`` of that order.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from self1e.data.sample import Sample
from self1e.model.processing import IGNORE_INDEX, MULTI_ANSWER_PREFIXES, Batch, Self1eProcessor, multi_answer

log = logging.getLogger(__name__)

Unit = tuple[int, tuple[int, ...]]  # (source index, indices of samples of one image in that source)
KINDS = ("seg", "vqa")


@dataclass(frozen=True)
class Source:
    """One dataset of a training mix; ``ratio`` is its relative sampling weight (ratio mode),
    ``group`` the mix group it belongs to (repeat mode)."""

    name: str
    samples: Sequence[Sample]
    ratio: float = 1.0
    group: str | None = None


def image_key(sample: Sample) -> object:
    """What identifies a sample's image: its path, or the in-memory callable that draws it."""
    return str(Path(sample.image)) if isinstance(sample.image, (str, Path)) else id(sample.image)


def group_by_image(samples: Sequence[Sample]) -> dict[str, list[list[int]]]:
    """Sample indices per image, separately for segmentation and VQA, in first-appearance order."""
    groups: dict[str, dict[object, list[int]]] = {k: {} for k in KINDS}
    for i, s in enumerate(samples):
        groups["vqa" if s.is_vqa else "seg"].setdefault(image_key(s), []).append(i)
    return {k: list(g.values()) for k, g in groups.items()}


def subsample_images(samples: Sequence[Sample], max_images: int, seed: int) -> list[Sample]:
    """The samples of a random ``max_images`` of the images (all of them when there are no more),
    in their original order; the same ``seed`` picks the same images."""
    keys = list(dict.fromkeys(image_key(s) for s in samples))
    if len(keys) <= max_images:
        return list(samples)
    kept = {keys[i] for i in _rng(seed, 4_000_037).choice(len(keys), max_images, replace=False)}
    return [s for s in samples if image_key(s) in kept]


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


class _Pool:
    """The units of one kind of one source, handed out in a fresh random order each cycle: each
    image's samples are shuffled and chunked into units of at most ``k``; the units are shuffled."""

    def __init__(self, groups: list[list[int]], k: int, seed_parts: tuple[int, ...]) -> None:
        self.groups, self.k, self.seed_parts = groups, k, seed_parts
        self.cycle, self.units, self.cursor = -1, [], 0

    def __len__(self) -> int:
        return sum(-(-len(g) // self.k) for g in self.groups)

    def _refill(self) -> None:
        self.cycle += 1
        rng = _rng(*self.seed_parts, self.cycle)
        units = []
        for g in self.groups:
            members = [g[i] for i in rng.permutation(len(g))]
            units += [tuple(members[j:j + self.k]) for j in range(0, len(members), self.k)]
        self.units = [units[i] for i in rng.permutation(len(units))]
        self.cursor = 0

    def take(self) -> tuple[int, ...]:
        if self.cursor >= len(self.units):
            self._refill()
        self.cursor += 1
        return self.units[self.cursor - 1]


class BatchPlan:
    """The sampling order: epoch ``e`` -> its list of micro-batches (lists of units), the same on
    every rank. An epoch has as many units as the sources hold (each image's samples chunked by
    ``k``), cut to a whole number of micro-batches per rank."""

    def __init__(self, sources: Sequence[Source], batch_size: int, k: int, seed: int, world_size: int = 1,
                 repeats: Mapping[str, int] | None = None) -> None:
        """``repeats`` (group -> whole-number factor, in concatenation order) selects repeat mode."""
        if batch_size < 1 or k < 1 or world_size < 1:
            raise ValueError(f"need batch_size, k and world_size >= 1, got {batch_size}, {k}, {world_size}")
        self.sources, self.batch_size, self.k = list(sources), batch_size, k
        self.seed, self.world_size = seed, world_size
        self.repeats = None if repeats is None else dict(repeats)
        for s in self.sources:
            if not s.ratio > 0:
                raise ValueError(f"dataset {s.name!r}: ratio must be > 0, got {s.ratio}")
            if self.repeats is not None and s.group not in self.repeats:
                raise ValueError(f"dataset {s.name!r}: group {s.group!r} has no repeat factor "
                                 f"(groups: {list(self.repeats)})")
        self.groups = [group_by_image(s.samples) for s in self.sources]
        self.counts = np.array([[len(_Pool(g[kind], k, ())) for kind in KINDS] for g in self.groups])
        if self.repeats is not None:  # units per epoch: each source's units times its group's factor
            factors = np.array([self.repeats[s.group] for s in self.sources])
            self.counts = self.counts * factors[:, None]
        self.vqa_only = self.counts[:, 0].sum() == 0  # a language-only mix (e.g. the VQA-only baseline)
        if self.vqa_only:
            log.warning("the training mix has no segmentation sample: the mask head gets no gradient (and "
                        "DDP would report it unused)")
        units = int(self.counts.sum())
        per_round = batch_size * world_size
        self.units = units
        self.length = (units // per_round) * world_size  # micro-batches per epoch, all ranks together
        self._cache: tuple[int, list[list[Unit]]] | None = None

    def epoch(self, e: int) -> list[list[Unit]]:
        """The micro-batches of epoch ``e`` (cached: the current epoch is asked for repeatedly)."""
        if self._cache is None or self._cache[0] != e:
            self._cache = (e, self._build(e))
        return self._cache[1]

    def _build(self, e: int) -> list[list[Unit]]:
        return self._build_ratio(e) if self.repeats is None else self._build_repeat(e)

    def _build_repeat(self, e: int) -> list[list[Unit]]:
        items: list[Unit] = []
        for group in self.repeats:  # concatenated in group order, each source's units repeated
            for s, src in enumerate(self.sources):
                if src.group == group:
                    for j, kind in enumerate(KINDS):
                        pool = _Pool(self.groups[s][kind], self.k, (self.seed, e, s, j))
                        items += [(s, pool.take()) for _ in range(int(self.counts[s, j]))]
        rng = _rng(self.seed, e, 2_000_003)
        order = rng.permutation(len(items))[: self.length * self.batch_size]
        plan = [[items[i] for i in order[b * self.batch_size:(b + 1) * self.batch_size]] for b in range(self.length)]
        if not self.vqa_only:  # the first unit of each micro-batch: a random segmentation unit
            seg_units = self.counts[:, 0].astype(float)
            pools = [_Pool(self.groups[s]["seg"], self.k, (self.seed, e, s, 2)) for s in range(len(self.sources))]
            for batch, s in zip(plan, rng.choice(len(self.sources), size=len(plan), p=seg_units / seg_units.sum())):
                batch[0] = (int(s), pools[s].take())
        return plan

    def _build_ratio(self, e: int) -> list[list[Unit]]:
        n_src = len(self.sources)
        pools = [[_Pool(self.groups[s][kind], self.k, (self.seed, e, s, j)) for j, kind in enumerate(KINDS)]
                 for s in range(n_src)]
        ratios = np.array([s.ratio for s in self.sources], dtype=float)
        seg_ok = self.counts[:, 0] > 0
        seg_share = self.counts[:, 0] / np.maximum(self.counts.sum(1), 1)  # within a source, by unit count
        rng = _rng(self.seed, e, 1_000_003)
        n_slots = self.length * self.batch_size
        src = rng.choice(n_src, size=n_slots, p=ratios / ratios.sum())
        coin = rng.random(n_slots)
        fallback = None if self.vqa_only else rng.choice(n_src, size=self.length,
                                                         p=(ratios * seg_ok) / (ratios * seg_ok).sum())
        plan: list[list[Unit]] = []
        for b in range(self.length):
            picks = []
            for slot in range(b * self.batch_size, (b + 1) * self.batch_size):
                s = int(src[slot])
                picks.append((s, 0 if coin[slot] < seg_share[s] else 1))
            if fallback is not None and all(kind == 1 for _, kind in picks):  # one segmentation unit per micro-batch
                picks[-1] = (int(fallback[b]), 0)
            plan.append([(s, pools[s][kind].take()) for s, kind in picks])
        return plan


def _identity(x):
    return x


class MicroBatchDataset(torch.utils.data.Dataset):
    """Map-style view of one rank's micro-batches of one epoch (global indices ``start``,
    ``start + W``, ...): index -> Batch.
    Lets a ``DataLoader`` with workers load images in parallel while keeping the order."""

    def __init__(self, batches: TrainBatches, epoch: int, start: int) -> None:
        self.batches, self.epoch = batches, epoch
        plan = batches.plan.epoch(epoch)
        self.indices = list(range(start, len(plan), batches.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Batch:
        return self.batches.make_batch(self.epoch, self.indices[i])


class TrainBatches:
    """Endless, resumable stream of this rank's training batches. ``state_dict`` gives the position
    after the last batch handed out; a new stream with that state continues exactly there."""

    def __init__(self, sources: Sequence[Source], processor: Self1eProcessor, batch_size: int, k: int = 3,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 repeats: Mapping[str, int] | None = None) -> None:
        self.plan = BatchPlan(sources, batch_size, k, seed, world_size, repeats)
        if self.plan.length == 0:
            raise ValueError(f"the training mix has {self.plan.units} units (images x up to {k} expressions), fewer "
                             f"than one micro-batch of {batch_size} per process x {world_size} processes")
        self.sources, self.processor, self.seed = self.plan.sources, processor, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.epoch, self.position = 0, 0  # position: global index of the next micro-batch of the epoch

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank."""
        return self.plan.length // self.world_size

    def units(self, epoch: int, index: int) -> list[Unit]:
        """The units of global micro-batch ``index`` of ``epoch``."""
        return self.plan.epoch(epoch)[index]

    def make_batch(self, epoch: int, index: int) -> Batch:
        """Load and collate one micro-batch. Templates come from an RNG seeded by (seed, epoch,
        index), so a batch is the same whichever process or worker builds it."""
        rng = random.Random(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        p = self.processor
        rows, images, image_index, targets, starts = [], [], [], [], []
        for src, members in self.units(epoch, index):
            samples = [self.sources[src].samples[i] for i in members]
            picture = samples[0].load_image()
            images.append(p.image_input(picture))
            grid = images[-1].grid
            for s in samples:
                for row, target, start in self.sample_rows(s, picture.size, grid, rng):
                    rows.append(row)
                    targets.append(target)
                    starts.append(start)
                    image_index.append(len(images) - 1)
        return p.collate(rows, images, image_index, targets, starts)

    def sample_rows(self, s: Sample, size: tuple[int, int], grid: tuple[int, int], rng: random.Random):
        """The batch rows of one sample as (row, mask target, answer start): a VQA sample one row
        without a target; a referring sample one row with its mask; a multi-object request one row
        per object (see ``Self1eProcessor.rows_per_seg``), each with that object's mask (empty if
        absent). The answer start is given for multi-object rows only (-1 otherwise)."""
        p = self.processor
        if s.is_vqa:
            return [(p.conversation(s.question, s.answer, grid, answer_is_text=True), None, -1)]
        ignore = s.load_ignore(size)
        if not s.is_multi_object:
            row = p.conversation(p.seg_question(s.text, rng), p.seg_answer(rng), grid)
            return [(row, p.mask_target(s.load_mask(size), ignore), -1)]
        answer = multi_answer(s.phrases, MULTI_ANSWER_PREFIXES[rng.randrange(len(MULTI_ANSWER_PREFIXES))])
        ids, labels = p.conversation(p.seg_question(s.text, rng), answer, grid)
        answer_start = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
        rows = p.rows_per_seg(ids, labels, start=answer_start)
        assert len(rows) == len(s.phrases), "multi_answer puts one [SEG] after each phrase"
        return [(row, p.mask_target(s.load_instance(k, size), ignore), answer_start) for k, row in enumerate(rows)]

    def __iter__(self) -> Iterator[Batch]:
        while True:
            ds = MicroBatchDataset(self, self.epoch, self.position + self.rank)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                                 collate_fn=_identity)
            for batch in loader:
                self.position += self.world_size
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "world_size": self.world_size,
                "batch_size": self.plan.batch_size, "k": self.plan.k}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"data state was saved with seed {state['seed']}, this run uses {self.seed}")
        saved = (state.get("world_size"), state.get("batch_size"), state.get("k"))
        if saved != (self.world_size, self.plan.batch_size, self.plan.k):
            log.warning("resuming a data order saved with (processes, batch size, K) = %s under %s: the position "
                        "is kept but the order from here on differs from the original run's", saved,
                        (self.world_size, self.plan.batch_size, self.plan.k))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
