"""``report.json`` and ``report.md``: evaluation results with the protocol and software that made them.

Schema (``schema_version`` 1; metric values are fractions in [0, 1], null where undefined)::

    {
      "format": "self1e-eval-report", "schema_version": 1,
      "date": "2025-01-31T12:00:00+00:00",          # UTC, ISO 8601
      "model": "runs/refshapes" | null,              # --model as given; null with --predictions
      "predictions": "preds/" | null,                # --predictions folder; null with --model
      "device": "cpu" | "cuda:0" | null, "world_size": 1, "batch_size": 8, "limit": null | int,
      "self1e": {"mask_head": "rfa", "seg_attention": ..., ...} | null,  # the model's settings as used
      "protocol": {...},                             # every convention, in words (see PROTOCOL)
      "software": {"self1e": "0.1.0", "torch": ..., "transformers": ..., "numpy": ..., "python": ...},
      "throughput": {"samples": int, "seconds": float, "samples_per_s": float},   # all datasets;
                                                     # loop time (load, predict, score), no model load
      "chat": {...},                                # only from `self1e demo`: see self1e.eval.chat
      "datasets": {
        "<key>": {                                   # short name, see dataset_key()
          "spec": "refcoco:unc:val@/data",           # the --data value
          "n": int, "cIoU": float, "gIoU": float,
          "P@0.5": float, "P@0.6": ..., "P@0.7": ..., "P@0.8": ..., "P@0.9": ...,
          "N_acc": float, "T_acc": float,            # only when the split has no-target samples
          "kinds": {"<kind>": {same metric keys, no "kinds"}},   # only when samples carry a kind
          "counts": {"n", "intersection", "union", "no_target", "no_target_pred_empty",
                     "has_target", "has_target_pred_nonempty", "hits_P@0.5", ... : int},
          "missing_predictions": int, "skipped_vqa": int,
          "seg_emission": {"requests", "objects", "seg_emitted", "right_count": int,   # multi-object
                           "right_count_rate": float},   # requests, model asked freely; else absent
          "seconds": float, "samples_per_s": float,  # slowest rank's loop time
          "save_masks": str | null, "overlays": str | null
        },
        "<key of a VQA evaluation set>": {           # internvl_vqa_eval:... (self1e.eval.vqa_metrics)
          "spec": str, "task": "vqa", "metric": "vqa_accuracy" | "exact_match",
          "n": int, "accuracy": float,               # mean score of the model's greedy answers
          "answered_with_seg_rate": float,           # share of answers holding [SEG]
          "counts": {"n", "score_numerator", "score_denominator", "answered_with_seg": int},
          "seconds": float, "samples_per_s": float
        }
      }
    }
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from self1e.common.files import write_text_atomic
from self1e.eval.evaluate import EvalResult
from self1e.eval.metrics import THRESHOLD_NAMES
from self1e.eval.vqa_metrics import METRIC_NAMES, VQA_MAX_NEW_TOKENS, VqaResult

SCHEMA_VERSION = 1

PROTOCOL: dict[str, Any] = {
    "mask_from_model": "one teacher-forced pass; mask logits resized bilinearly to the original image "
    "size, then thresholded at 0 (mask = logits > 0)",
    "mask_from_predictions": "PNG <id>.png at the original image size, non-zero = foreground; a missing "
    "file is an empty mask",
    "compare_at": "original image size",
    "cIoU": "total intersection / total union over the split (1.0 if the total union is 0)",
    "gIoU": "mean per-sample IoU; a sample with an empty union (empty prediction, empty truth) counts as 1",
    "precision": "P@X = share of has-target samples with IoU >= X (ReLA)",
    "no_target": "N_acc = no-target samples predicted empty / no-target samples; T_acc = has-target "
    "samples predicted non-empty / has-target samples (ReLA/GSVA, no smoothing term); "
    "'predicted empty' = no foreground pixel outside the ignore region",
    "ignore": "ignore-region pixels are removed from both prediction and truth before counting",
    "reasonseg_text": "the first text of each image (the loader's default; a reasonseg:SPLIT:all@ROOT "
    "spec evaluates every text)",
    "vqa_samples": "VQA samples of a segmentation dataset: skipped and counted (skipped_vqa)",
    "vqa_eval": "VQA evaluation sets (internvl_vqa_eval): the model answers each prompted question greedily "
    f"(chat, at most {VQA_MAX_NEW_TOKENS} new tokens); VQAv2, OK-VQA, TextVQA, VizWiz: VQA accuracy (min(#humans "
    "giving the answer / 3, 1), averaged over the 10 leave-one-out sets of 9 of the 10 human answers, after the "
    "official answer normalisation, applied always); GQA: exact match (stripped, trailing periods dropped, "
    "lower-cased)",
    "multi_object": "each object of a multi-object request is a sample (teacher-forced, one [SEG] per "
    "object); seg_emission counts the [SEG] the model writes when asked freely (greedy) against the "
    "objects asked for",
    "values": "fractions in [0, 1]; report.md shows percentages",
}


def software_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    out = {}
    for name in ("self1e", "torch", "transformers", "numpy", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def dataset_key(spec: str, taken: set[str] | None = None) -> str:
    """A short, file-system safe name for a ``--data`` spec, unique among ``taken`` (updated).

    ``refcoco:unc:val@/data`` -> ``refcoco_unc_val``; ``/x/refshapes/val.jsonl`` -> ``val`` (or
    ``refshapes_val`` if ``val`` is taken, then ``val_2``, ...).
    """
    taken = set() if taken is None else taken
    if "@" in spec and not Path(spec).exists():
        candidates = [spec.split("@", 1)[0].replace(":", "_")]
    else:
        p = Path(spec)
        candidates = [p.stem, f"{p.parent.name}_{p.stem}" if p.parent.name else p.stem]
    candidates = [re.sub(r"[^A-Za-z0-9._+-]+", "_", c).strip("._") or "data" for c in candidates]
    key = next((c for c in candidates if c not in taken), None)
    i = 2
    while key is None:
        key = f"{candidates[0]}_{i}" if f"{candidates[0]}_{i}" not in taken else None
        i += 1
    taken.add(key)
    return key


def dataset_entry(
    spec: str,
    result: EvalResult,
    *,
    save_masks: str | Path | None = None,
    overlays: str | Path | None = None,
) -> dict[str, Any]:
    """One ``datasets[<key>]`` entry of the report."""
    entry: dict[str, Any] = {"spec": spec}
    entry.update(result.metrics)
    entry["counts"] = result.accumulator.counts()
    entry["missing_predictions"] = result.missing_predictions
    entry["skipped_vqa"] = result.skipped_vqa
    if result.emission:
        e = result.emission
        entry["seg_emission"] = {**e, "right_count_rate": e["right_count"] / e["requests"]}
    entry["seconds"] = round(result.seconds, 4)
    entry["samples_per_s"] = None if result.samples_per_s is None else round(result.samples_per_s, 3)
    entry["save_masks"] = str(save_masks) if save_masks is not None else None
    entry["overlays"] = str(overlays) if overlays is not None else None
    return entry


def vqa_dataset_entry(spec: str, result: VqaResult) -> dict[str, Any]:
    """One ``datasets[<key>]`` entry of the report for a VQA evaluation set."""
    acc = result.accumulator
    return {"spec": spec, "task": "vqa", "metric": acc.metric, "n": acc.n, "accuracy": acc.accuracy,
            "answered_with_seg_rate": acc.answered_with_seg / acc.n if acc.n else None, "counts": acc.counts(),
            "seconds": round(result.seconds, 4),
            "samples_per_s": None if result.samples_per_s is None else round(result.samples_per_s, 3)}


def build_report(
    datasets: dict[str, dict[str, Any]],
    *,
    model: str | None = None,
    predictions: str | None = None,
    device: str | None = None,
    world_size: int = 1,
    batch_size: int | None = None,
    limit: int | None = None,
    self1e: dict[str, Any] | None = None,
    chat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report (see the module docstring for the schema); ``self1e``: the evaluated
    model's SELF1E settings as they were used."""
    n = sum(d["n"] for d in datasets.values())
    seconds = sum(d["seconds"] for d in datasets.values())
    return {
        "format": "self1e-eval-report",
        "schema_version": SCHEMA_VERSION,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "predictions": predictions,
        "device": device,
        "world_size": world_size,
        "batch_size": batch_size,
        "limit": limit,
        "self1e": self1e,
        "protocol": dict(PROTOCOL),
        "software": software_versions(),
        "throughput": {
            "samples": n,
            "seconds": round(seconds, 4),
            "samples_per_s": round(n / seconds, 3) if seconds > 0 else None,
        },
        "datasets": datasets,
        **({"chat": chat} if chat else {}),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as a markdown table (percentages), one row per dataset and one per kind; VQA
    evaluation sets in a table of their own below it (the only table when there is no other)."""
    datasets = {k: d for k, d in report["datasets"].items() if d.get("task") != "vqa"}
    vqa = {k: d for k, d in report["datasets"].items() if d.get("task") == "vqa"}
    with_nt = any("N_acc" in d for d in datasets.values())
    cols = ["cIoU", "gIoU", *THRESHOLD_NAMES] + (["N_acc", "T_acc"] if with_nt else [])
    source = report.get("model") or f"predictions {report.get('predictions')}"
    lines = [f"Evaluation of {source} ({report['date']}); values in %."]
    if datasets or not vqa:
        lines += ["", "| dataset | n | " + " | ".join(c.replace("_", "-") for c in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
    for key, d in datasets.items():
        rows = [(key, d)] + [(f"{key} / {k}", sub) for k, sub in d.get("kinds", {}).items()]
        for name, m in rows:
            cells = [_pct(m.get(c)) if c in m else "-" for c in cols]
            lines.append(f"| {name} | {m['n']} | " + " | ".join(cells) + " |")
    if vqa:
        lines += ["", "| VQA dataset | n | metric | accuracy |", "|---|---:|---|---:|"]
        lines += [f"| {key} | {d['n']} | {METRIC_NAMES.get(d['metric'], d['metric'])} | {_pct(d['accuracy'])} |"
                  for key, d in vqa.items()]
    if report.get("chat"):
        lines += ["", chat_table(report["chat"]).rstrip()]
    thr = report.get("throughput", {})
    if thr.get("samples_per_s"):
        lines += ["", f"{thr['samples']} samples in {thr['seconds']:.2f} s ({thr['samples_per_s']:.2f} samples/s)."]
    return "\n".join(lines) + "\n"


CHAT_ROWS = (  # (group, measure, count key, label) of the chat table
    ("vqa", "exact_match", "n", "VQA exact match"),
    ("vqa", "answered_without_seg", "n", "VQA answered without [SEG]"),
    ("segmentation", "answered_with_seg", "n", "segmentation requests answered with [SEG]"),
    ("segmentation", "chat_cIoU", "n", "cIoU of the masks chat gives"),
    ("segmentation", "predict_cIoU", "n", "cIoU of predict() on the same samples"),
    ("multi_object", "right_seg_count", "n", "multi-object requests answered with one [SEG] per object"),
    ("multi_object", "per_object_cIoU", "objects", "per-object cIoU, objects asked together"),
    ("multi_object", "one_at_a_time_cIoU", "objects", "per-object cIoU, the same objects one at a time"),
    ("multi_object", "phrases_named", "n", "free multi-object answers naming the requested phrases, in order"),
    ("multi_object", "free_answer_cIoU", "objects", "per-object cIoU of the free answers' masks"),
)


def chat_table(chat: dict[str, Any]) -> str:
    """The measures of :func:`self1e.eval.chat.evaluate_chat` as a markdown table (percentages)."""
    lines = ["| chat | n | % |", "|---|---:|---:|"]
    for group, key, count, label in CHAT_ROWS:
        if key in chat.get(group, {}):  # (measures added later are missing from older reports)
            lines.append(f"| {label} | {chat[group][count]} | {_pct(chat[group][key])} |")
        if (group, key) == ("vqa", "exact_match") and group in chat:
            lines += [f"| VQA exact match, \"{t}\" questions | {v['n']} | {_pct(v['exact_match'])} |"
                      for t, v in chat[group].get("by_question", {}).items()]
    return "\n".join(lines) + "\n"


def report_paths(path: str | Path) -> tuple[Path, Path]:
    """The two files :func:`write_report` writes for ``path``: the JSON itself and the markdown
    table beside it (same stem, ``.md``; ``report.md`` -> ``report.md.md``, so both are kept)."""
    path = Path(path)
    md = path.with_suffix(".md")
    if md == path:
        md = path.with_name(path.name + ".md")
    return path, md


def write_report(report: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (JSON) and the markdown table next to it (:func:`report_paths`), each
    atomically (a failed write leaves an older report as it was); makes the folder."""
    path, md = report_paths(path)
    text, table = json.dumps(report, indent=2) + "\n", markdown_table(report)  # both built before writing
    write_text_atomic(path, text)
    write_text_atomic(md, table)
    return path, md
