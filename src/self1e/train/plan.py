"""``self1e data plan``: what a training config's mix holds, before a long run is started.

For every dataset of the config: the samples and images found on disk, what is kept after
``max_images``, its units per epoch (images x up to K expressions, times its group's repeat
factor in repeat mode) and its share of the epoch; per group the same; and the optimiser steps per
epoch at the configured global batch. A dataset that is missing or empty is listed with its error.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from self1e.common.errors import DataError
from self1e.data.datasets import load_dataset
from self1e.train.batching import BatchPlan, image_key
from self1e.train.config import TrainConfig
from self1e.train.setup import load_source, mix_repeats


def _images(samples) -> int:
    return len({image_key(s) for s in samples})


def data_plan(cfg: TrainConfig, processes: int = 1) -> dict[str, Any]:
    """The plan as plain data (see the module docstring); ``processes`` sets the global batch."""
    rows, sources = [], []
    for i, d in enumerate(cfg.data):
        row: dict[str, Any] = {"spec": d.spec, "group": d.group, "ratio": d.ratio, "max_images": d.max_images}
        try:
            samples = load_dataset(d.spec, kinds=d.kinds)
            source = load_source(cfg, i, samples)
        except (DataError, OSError) as e:
            rows.append({**row, "error": str(e).splitlines()[0]})
            continue
        kept = source.samples
        row.update(samples_found=len(samples), images_found=_images(samples), samples_kept=len(kept),
                   images_kept=_images(kept), vqa_samples_kept=sum(s.is_vqa for s in kept))
        rows.append(row)
        sources.append((row, source))
    out: dict[str, Any] = {"mix": cfg.mix.mode, "datasets": rows, "missing": [r["spec"] for r in rows if "error" in r]}
    global_batch = cfg.batch_size * cfg.grad_accum * processes
    out.update(batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, processes=processes, global_batch=global_batch,
               expressions_per_image=cfg.expressions_per_image)
    if not sources:
        return out
    plan = BatchPlan([s for _, s in sources], cfg.batch_size, cfg.expressions_per_image, cfg.seed, processes,
                     mix_repeats(cfg))
    units = plan.counts.sum(1)
    total = max(int(units.sum()), 1)
    groups: dict[str, int] = defaultdict(int)
    for (row, src), n in zip(sources, units):
        row["units_per_epoch"] = int(n)
        row["share"] = (src.ratio / sum(s.ratio for _, s in sources)) if cfg.mix.mode == "ratio" else int(n) / total
        groups[str(src.group)] += int(n)
    out["groups"] = {g: {"units_per_epoch": n, "share": n / total} for g, n in groups.items()}
    out["units_per_epoch"] = int(units.sum())
    out["micro_batches_per_epoch"] = plan.length
    out["steps_per_epoch"] = plan.length // (processes * cfg.grad_accum)
    if plan.length == 0:
        out["problems"] = [f"{plan.units} units are fewer than one micro-batch of {cfg.batch_size} per process x "
                           f"{processes} processes: training would refuse to start"]
    return out


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a table for people."""
    lines = [f"mix: {plan['mix']}; global batch {plan['global_batch']} = {plan['batch_size']} images x "
             f"{plan['grad_accum']} accumulation x {plan['processes']} processes (up to "
             f"{plan['expressions_per_image']} expressions per image)", ""]
    w = max([len("dataset")] + [len(r["spec"]) for r in plan["datasets"]])
    head = f"{'dataset':<{w}} {'group':<11} {'found':>9} {'images':>8} {'kept':>9} {'units/epoch':>12} {'share':>7}"
    lines += [head, "-" * len(head)]
    for r in plan["datasets"]:
        if "error" in r:
            lines.append(f"{r['spec']:<{w}} {str(r['group']):<11} MISSING: {r['error']}")
            continue
        lines.append(f"{r['spec']:<{w}} {str(r['group']):<11} {r['samples_found']:>9,} {r['images_found']:>8,} "
                     f"{r['samples_kept']:>9,} {r.get('units_per_epoch', 0):>12,} {r.get('share', 0):>7.1%}")
    if "groups" in plan:
        lines += ["", "groups: " + ", ".join(f"{g} {v['share']:.1%} ({v['units_per_epoch']:,} units)"
                                            for g, v in plan["groups"].items())]
        lines.append(f"per epoch: {plan['units_per_epoch']:,} units, {plan['micro_batches_per_epoch']:,} "
                     f"micro-batches, {plan['steps_per_epoch']:,} optimiser steps")
    for problem in plan.get("problems", []):
        lines += ["", f"problem: {problem}"]
    if plan["missing"]:
        lines += ["", f"{len(plan['missing'])} dataset(s) missing or empty: " + ", ".join(plan["missing"])]
    return "\n".join(lines)
