"""Metrics: hand-computed cases, agreement with pycocotools, exact merging."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from self1e.eval.metrics import IoUAccumulator, score_sample


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_hand_computed_two_samples():
    # Sample 1: gt 4x4 = 16 px, pred 4x2 = 8 px inside it -> I 8, U 16, IoU 0.5.
    # Sample 2: gt 2x2 = 4 px, pred 2x4 = 8 px covering it -> I 4, U 8, IoU 0.5.
    # Sample 3: gt 10 px, pred disjoint 10 px -> I 0, U 20.
    acc = IoUAccumulator()
    s1 = acc.update(rect(10, 10, 0, 4, 0, 2), rect(10, 10, 0, 4, 0, 4))
    s2 = acc.update(rect(10, 10, 0, 2, 0, 4), rect(10, 10, 0, 2, 0, 2))
    s3 = acc.update(rect(10, 10, 9, 10, 0, 10), rect(10, 10, 0, 1, 0, 10))
    assert (s1.intersection, s1.union, s1.iou) == (8, 16, 0.5)
    assert (s2.intersection, s2.union) == (4, 8)
    assert (s3.intersection, s3.union, s3.iou) == (0, 20, 0.0)
    r = acc.result()
    assert r["n"] == 3
    assert r["cIoU"] == 12 / 44
    assert r["gIoU"] == pytest.approx(1 / 3, abs=1e-16)
    assert r["P@0.5"] == 2 / 3  # IoU exactly 0.5 counts (>=)
    assert r["P@0.6"] == 0.0
    assert "N_acc" not in r and "T_acc" not in r  # no no-target sample in the split


def test_empty_union_counts_as_one_and_no_target_accuracy():
    h = w = 8
    empty = np.zeros((h, w), dtype=bool)
    acc = IoUAccumulator()
    acc.update(empty, empty)  # no target, predicted empty: IoU 1, adds nothing to cIoU
    acc.update(rect(h, w, 0, 2, 0, 2), empty)  # no target, false positive of 4 px: IoU 0, U += 4
    acc.update(empty, rect(h, w, 0, 4, 0, 4))  # has target, predicted empty: IoU 0, U += 16
    acc.update(rect(h, w, 0, 4, 0, 4), rect(h, w, 0, 4, 0, 4))  # perfect: I 16, U 16
    r = acc.result()
    assert r["cIoU"] == 16 / (4 + 16 + 16)
    assert r["gIoU"] == 0.5  # (1 + 0 + 0 + 1) / 4
    assert r["N_acc"] == 0.5  # 1 of 2 no-target samples predicted empty
    assert r["T_acc"] == 0.5  # 1 of 2 has-target samples predicted non-empty
    assert r["P@0.9"] == 0.5  # over the 2 has-target samples only (ReLA)
    c = acc.counts()
    assert (c["no_target"], c["no_target_pred_empty"], c["has_target"], c["has_target_pred_nonempty"]) == (2, 1, 2, 1)


def test_all_empty_split():
    empty = np.zeros((3, 3), dtype=bool)
    acc = IoUAccumulator()
    acc.update(empty, empty)
    r = acc.result()
    assert r["cIoU"] == 1.0 and r["gIoU"] == 1.0 and r["N_acc"] == 1.0
    assert r["T_acc"] is None and r["P@0.5"] is None
    assert IoUAccumulator().result()["cIoU"] is None


def test_ignore_removed_from_both():
    gt = rect(6, 6, 0, 3, 0, 6)  # 18 px
    pred = rect(6, 6, 0, 6, 0, 3)  # 18 px, overlap 9
    ignore = rect(6, 6, 0, 6, 0, 1)  # column 0: 3 px of overlap, 3 px of pred only
    s = score_sample(pred, gt, ignore)
    # Without column 0: gt 15, pred 12, overlap 6 -> U = 21.
    assert (s.intersection, s.union) == (6, 21)
    assert score_sample(pred, gt).union == 27
    # A prediction entirely inside the ignore region is an empty prediction.
    s2 = score_sample(rect(6, 6, 0, 6, 0, 1), np.zeros((6, 6), bool), ignore)
    assert s2.pred_empty and s2.union == 0 and s2.iou == 1.0


def test_thresholds_are_exact_integer_tests():
    # I/U = 7/10 exactly: float 0.7 rounding must not decide; 10*7 >= 7*10 holds.
    gt = np.zeros((1, 10), bool)
    gt[0, :10] = True
    pred = np.zeros((1, 10), bool)
    pred[0, :7] = True
    acc = IoUAccumulator()
    acc.update(pred, gt)
    r = acc.result()
    assert r["P@0.7"] == 1.0 and r["P@0.8"] == 0.0


def test_non_bool_inputs_and_shape_errors():
    s = score_sample(np.array([[0, 255], [3, 0]], np.uint8), np.array([[0, 1], [0, 0]], np.int64))
    assert (s.intersection, s.union) == (1, 2)
    with pytest.raises(ValueError, match="width x height"):
        score_sample(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        score_sample(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))


def test_agrees_with_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(5, 60, size=2)
        pred = rng.random((h, w)) < rng.random()
        gt = rng.random((h, w)) < rng.random()
        s = score_sample(pred, gt)
        if s.union == 0:
            continue
        rle_p = mask_utils.encode(np.asfortranarray(pred.astype(np.uint8)))
        rle_g = mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
        ref = mask_utils.iou([rle_p], [rle_g], [0])[0, 0]
        assert s.iou == pytest.approx(ref, rel=1e-12, abs=1e-12)
        assert s.intersection == mask_utils.area(mask_utils.merge([rle_p, rle_g], intersect=True))


def _random_stream(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(3, 30, size=2)
        gt = rng.random((h, w)) < 0.3 if rng.random() > 0.2 else np.zeros((h, w), bool)
        pred = rng.random((h, w)) < rng.random()
        ign = rng.random((h, w)) < 0.1 if i % 3 == 0 else None
        yield pred, gt, ign, ["a", "b", "c"][i % 3]


def test_merge_equals_single_accumulation_in_any_order():
    items = list(_random_stream(60, 1))
    whole = IoUAccumulator()
    for p, g, ig, k in items:
        whole.update(p, g, ig, k)
    random.Random(0).shuffle(items)
    parts = [IoUAccumulator() for _ in range(4)]
    for i, (p, g, ig, k) in enumerate(items):
        parts[i % 4].update(p, g, ig, k)
    merged = IoUAccumulator()
    for part in reversed(parts):
        merged.merge(part)
    assert merged.result() == whole.result()  # bit for bit, kinds included
    assert merged.state_dict() == whole.state_dict()
    assert set(whole.result()["kinds"]) == {"a", "b", "c"}


def test_state_dict_round_trip_through_json():
    acc = IoUAccumulator()
    for p, g, ig, k in _random_stream(20, 2):
        acc.update(p, g, ig, k)
    back = IoUAccumulator.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert back.result() == acc.result()


def test_giou_is_the_correctly_rounded_mean():
    from fractions import Fraction

    acc = IoUAccumulator()
    ious = []
    for p, g, ig, _ in _random_stream(40, 3):
        ious.append(acc.update(p, g, ig).iou)
    exact = sum(Fraction(x) for x in ious) / len(ious)
    assert acc.result()["gIoU"] == float(exact)
