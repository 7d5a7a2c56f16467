"""Referring-segmentation metrics: the one implementation (cIoU, gIoU, P@X, N-acc, T-acc).

Everything is accumulated as exact integers, so accumulators computed on shards of a split and
merged give bit for bit the same result as one pass over the whole split, whatever the order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Precision thresholds as integer tenths, so that "IoU >= 0.7" is the exact test 10 * I >= 7 * U.
THRESHOLD_TENTHS: tuple[int, ...] = (5, 6, 7, 8, 9)
THRESHOLD_NAMES: tuple[str, ...] = tuple(f"P@0.{t}" for t in THRESHOLD_TENTHS)

# Every float64 in [0, 1] is an integer multiple of 2**-1074 (the smallest subnormal), so the sum
# of per-sample IoUs can be kept exactly as a Python integer in units of 2**-1074.
_FIXED_BITS = 1074


def _to_fixed(x: float) -> int:
    """The float64 ``x`` in [0, 1] as an exact integer in units of 2**-1074."""
    num, den = float(x).as_integer_ratio()  # den is a power of two
    return num << (_FIXED_BITS - (den.bit_length() - 1))


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (height, width) mask, got shape {arr.shape}")
    return arr if arr.dtype == bool else arr != 0


@dataclass(frozen=True)
class SampleScore:
    """The counts of one sample, after removing its ignore region from prediction and truth.

    ``iou`` is ``intersection / union`` rounded to float64, and 1.0 when the union is empty
    (empty prediction on an empty truth: a correct "no target" answer).
    """

    intersection: int
    union: int
    pred_empty: bool
    gt_empty: bool

    @property
    def iou(self) -> float:
        return 1.0 if self.union == 0 else self.intersection / self.union


def score_sample(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> SampleScore:
    """Intersection and union of one (H, W) prediction against its (H, W) truth.

    Any non-zero value is foreground. Pixels where ``ignore`` is non-zero are removed from both the
    prediction and the truth before counting (ReasonSeg's ignore regions), so they count neither
    in the intersection nor in the union; emptiness of prediction and truth is also judged on the
    remaining pixels. Raises ValueError when the shapes differ.
    """
    pred = _as_bool(pred, "prediction")
    gt = _as_bool(gt, "ground truth")
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
            f"{gt.shape[1]}x{gt.shape[0]} (width x height); compare at the original image size"
        )
    if ignore is not None:
        ignore = _as_bool(ignore, "ignore")
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore mask shape {ignore.shape} differs from ground truth {gt.shape}")
        keep = ~ignore
        pred = pred & keep
        gt = gt & keep
    inter = int(np.count_nonzero(pred & gt))
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    return SampleScore(inter, n_pred + n_gt - inter, n_pred == 0, n_gt == 0)


class IoUAccumulator:
    """Exact running sums over a split, with an optional breakdown by sample ``kind``.

    Definitions (ReLA / GSVA conventions for generalised referring segmentation):

    - ``cIoU`` = total intersection / total union over all samples. A no-target sample adds its
      prediction area to the union (0 when predicted empty). If the total union is 0 (every sample
      is a correctly empty no-target answer) cIoU is 1.0, like a single empty-union sample.
    - ``gIoU`` = mean of per-sample IoU; a sample with an empty union counts as 1. Each per-sample
      IoU is rounded to float64, and their sum is kept exactly (fixed point), so the mean is
      correctly rounded once and does not depend on order or sharding.
    - ``P@0.5`` .. ``P@0.9`` = share of **has-target** samples with IoU >= the threshold (ReLA
      divides by the has-target count; on RefCOCO every sample has a target). The test is done in
      integers (10 I >= t U), so no rounding can move a sample across a threshold.
    - ``N_acc`` = share of no-target samples (empty truth) predicted empty (ReLA's TP / (TP + FN));
      ``T_acc`` = share of has-target samples predicted non-empty (TN / (TN + FP)). No smoothing
      term. "Predicted empty" means no foreground pixel outside the ignore region: SELF1E has no
      separate no-target classifier, the mask itself is the answer. Both are reported only when the
      split holds at least one no-target sample.

    Metric values are fractions in [0, 1] (reports multiply by 100 for display only).
    """

    def __init__(self, with_kinds: bool = True) -> None:
        self.n = 0
        self.intersection = 0
        self.union = 0
        self.iou_sum_fixed = 0  # sum of per-sample float64 IoUs, in units of 2**-1074
        self.hits = [0] * len(THRESHOLD_TENTHS)  # has-target samples with IoU >= each threshold
        self.no_target = 0
        self.no_target_pred_empty = 0
        self.has_target = 0
        self.has_target_pred_nonempty = 0
        self.kinds: dict[str, IoUAccumulator] | None = {} if with_kinds else None

    # -- accumulation ---------------------------------------------------------------------------
    def update(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        ignore: np.ndarray | None = None,
        kind: str | None = None,
    ) -> SampleScore:
        """Score one (H, W) prediction against its truth (see :func:`score_sample`) and add it."""
        score = score_sample(pred, gt, ignore)
        self.add(score, kind)
        return score

    def add(self, score: SampleScore, kind: str | None = None) -> None:
        """Add an already computed :class:`SampleScore`, also to the ``kind`` sub-accumulator."""
        self._add(score)
        if kind is not None and self.kinds is not None:
            self.kinds.setdefault(str(kind), IoUAccumulator(with_kinds=False))._add(score)

    def _add(self, s: SampleScore) -> None:
        self.n += 1
        self.intersection += s.intersection
        self.union += s.union
        self.iou_sum_fixed += _to_fixed(s.iou)
        if s.gt_empty:
            self.no_target += 1
            self.no_target_pred_empty += int(s.pred_empty)
        else:
            self.has_target += 1
            self.has_target_pred_nonempty += int(not s.pred_empty)
            for j, t in enumerate(THRESHOLD_TENTHS):
                self.hits[j] += int(10 * s.intersection >= t * s.union)

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        """Add ``other``'s sums into this accumulator (exact; order does not matter). Returns self."""
        self._merge_counts(other)
        if self.kinds is not None and other.kinds is not None:
            for kind, sub in other.kinds.items():
                self.kinds.setdefault(kind, IoUAccumulator(with_kinds=False))._merge_counts(sub)
        return self

    def _merge_counts(self, o: IoUAccumulator) -> None:
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.hits = [a + b for a, b in zip(self.hits, o.hits)]

    # -- serialisation (for distributed reduction and for saving) -------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python ints, lists and dicts (picklable, JSON-serialisable); exact."""
        state: dict[str, Any] = {name: getattr(self, name) for name in _COUNT_FIELDS}
        state["hits"] = list(self.hits)
        if self.kinds is not None:
            state["kinds"] = {k: v.state_dict() for k, v in sorted(self.kinds.items())}
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> IoUAccumulator:
        """Rebuild an accumulator saved with :meth:`state_dict`."""
        acc = cls(with_kinds="kinds" in state)
        for name in _COUNT_FIELDS:
            setattr(acc, name, int(state[name]))
        acc.hits = [int(h) for h in state["hits"]]
        if len(acc.hits) != len(THRESHOLD_TENTHS):
            raise ValueError(f"state has {len(acc.hits)} precision counts, expected {len(THRESHOLD_TENTHS)}")
        if acc.kinds is not None:
            acc.kinds = {k: cls.from_state_dict(v) for k, v in state["kinds"].items()}
        return acc

    # -- results --------------------------------------------------------------------------------
    @property
    def ciou(self) -> float | None:
        """Running cIoU (None before the first sample)."""
        if self.n == 0:
            return None
        return 1.0 if self.union == 0 else self.intersection / self.union

    def counts(self) -> dict[str, int]:
        """The raw integer counts behind :meth:`result` (for reports and audits)."""
        out = {name: getattr(self, name) for name in _COUNT_FIELDS if name != "iou_sum_fixed"}
        out.update({f"hits_{name}": h for name, h in zip(THRESHOLD_NAMES, self.hits)})
        return out

    def result(self) -> dict[str, Any]:
        """``n``, ``cIoU``, ``gIoU``, ``P@0.5`` .. ``P@0.9``, ``N_acc`` / ``T_acc`` (only when the
        split has no-target samples) and ``kinds`` (the same metrics per kind, sorted by name).

        Values are fractions in [0, 1]; None where undefined (no sample; P@X with no has-target
        sample). Python's int / int division is correctly rounded, so results are reproducible.
        """
        res: dict[str, Any] = {"n": self.n, "cIoU": self.ciou, "gIoU": None}
        if self.n:
            res["gIoU"] = self.iou_sum_fixed / (self.n << _FIXED_BITS)
        for name, h in zip(THRESHOLD_NAMES, self.hits):
            res[name] = h / self.has_target if self.has_target else None
        if self.no_target:
            res["N_acc"] = self.no_target_pred_empty / self.no_target
            res["T_acc"] = (self.has_target_pred_nonempty / self.has_target) if self.has_target else None
        if self.kinds:
            res["kinds"] = {k: v.result() for k, v in sorted(self.kinds.items())}
        return res


_COUNT_FIELDS: tuple[str, ...] = (
    "n",
    "intersection",
    "union",
    "iou_sum_fixed",
    "no_target",
    "no_target_pred_empty",
    "has_target",
    "has_target_pred_nonempty",
)
