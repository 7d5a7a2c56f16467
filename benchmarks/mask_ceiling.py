"""The cIoU a perfect model could reach on RefShapes when its mask logits live on an S x S grid.

The ground truth of each sample is area-averaged onto the grid, shifted by -0.5 (so "more than half
covered" is positive), resized to the image bilinearly and thresholded at 0: the same resize and
threshold the predictor applies to a model's logits. A model can place edges more finely than this
(logits need not be area averages), so the ceiling is indicative, not strict.

    python benchmarks/mask_ceiling.py [--data refshapes:test:500:0] [--grids 16 32]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from self1e.data.datasets import load_dataset
from self1e.model.losses import resize_logits


def ceilings(samples, grids) -> dict[int, float]:
    """cIoU ceiling (%) per grid side over ``samples`` (samples with an empty target add nothing)."""
    totals = {g: [0, 0] for g in grids}
    for s in samples:
        gt = s.load_mask(s.load_image().size)
        if not gt.any():
            continue
        area = torch.from_numpy(gt.astype(np.float32))[None, None]
        for g in grids:
            logits = F.adaptive_avg_pool2d(area, g)[0] - 0.5
            pred = resize_logits(logits, gt.shape)[0].numpy() > 0
            totals[g][0] += int((pred & gt).sum())
            totals[g][1] += int((pred | gt).sum())
    return {g: 100 * inter / union for g, (inter, union) in totals.items()}


def main(argv: list[str] | None = None) -> dict[int, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="refshapes:test:500:0")
    ap.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    args = ap.parse_args(argv)
    result = ceilings(load_dataset(args.data), args.grids)
    for g, value in result.items():
        print(f"{args.data}: mask grid {g}x{g}: cIoU ceiling {value:.2f}")
    return result


if __name__ == "__main__":
    main()
