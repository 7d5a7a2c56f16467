"""``load_dataset(spec)``: the one entry point that evaluation and training use to get Samples.

A spec that yields no sample at all is an error. A RefShapes ``N`` must be between 1 and
``MAX_REFSHAPES_SAMPLES`` (10,000,000; the samples are held in memory), checked before anything is generated.

Spec grammar (``ROOT`` is the dataset root folder, laid out as docs/data.md describes)::

    PATH.jsonl                                a JSONL file (docs/data.md)
    refcoco[:SPLITBY]:SPLIT@ROOT              e.g. refcoco:unc:val@/data   (SPLITBY default unc)
    refcoco+[:SPLITBY]:SPLIT@ROOT             e.g. refcoco+:unc:testA@/data
    refcocog[:SPLITBY]:SPLIT@ROOT             e.g. refcocog:umd:test@/data (SPLITBY default umd)
    refclef[:SPLITBY]:SPLIT@ROOT              e.g. refclef:unc:val@/data
    grefcoco[:SPLITBY]:SPLIT@ROOT             e.g. grefcoco:unc:testA@/data
    reasonseg:SPLIT[:all]@ROOT                first text per image; ``:all`` = every text
    ade20k:SPLIT@ROOT                         ADE20K under ROOT/ade20k, e.g. ade20k:validation@/data
    semseg:SPLIT@ROOT                         the same as ade20k:SPLIT@ROOT (its older name)
    cocostuff:SPLIT@ROOT                      COCO-Stuff label maps, e.g. cocostuff:train2017@/data
    pascal_part:SPLIT@ROOT                    Pascal-Part (VLPart's JSON), e.g. pascal_part:train@/data
    paco_lvis:SPLIT@ROOT                      PACO-LVIS objects and parts, e.g. paco_lvis:train@/data
    mapillary:SPLIT@ROOT                      Mapillary Vistas v2.0, e.g. mapillary:training@/data
    vqa:LLAVA_JSON@IMAGE_ROOT                 LLaVA-Instruct conversations as VQA samples
    internvl_vqa:NAME[=PATH][:MAX_LINES]@ROOT InternVL fine-tuning VQA, NAME vqav2|okvqa|textvqa|vizwiz|gqa
                                              (ROOT/NAME_train.jsonl; first MAX_LINES lines, default 100000)
    internvl_vqa:PATH.jsonl[:MAX_LINES]@ROOT  an unnamed set in that layout (default: every line)
    internvl_vqa_eval:NAME[=PATH][:MAX_LINES]@ROOT  InternVL VQA evaluation file (ROOT/data/NAME/...),
                                              scored with the set's metric (VQA accuracy, GQA exact match)
    refshapes:SPLIT:N[:SEED[:SIZE[:styled]]]  RefShapes referring expressions generated in memory (no
                                              files); ``styled``: drawn in varied looks and geometry
    refshapes-vqa:SPLIT:N[:SEED[:SIZE[:styled]]]    RefShapes VQA (colour, count, existence)
    refshapes-multi:SPLIT:N[:SEED[:SIZE[:styled]]]  RefShapes multi-object requests (one [SEG] each)
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from self1e.common.errors import DataError
from self1e.data.refer import DATASETS as REFER_DATASETS
from self1e.data.refer import load_refer
from self1e.data.sample import Sample
from self1e.data.semseg_sets import READERS as SEMSEG_SETS
from self1e.data.semseg_sets import load_semseg_set

REFSHAPES = {"refshapes": "refer", "refshapes-vqa": "vqa", "refshapes-multi": "multi"}
MAX_REFSHAPES_SAMPLES = 10_000_000
INTERNVL_VQA = ("internvl_vqa", "internvl_vqa_eval")
NAMES = (*REFER_DATASETS, "reasonseg", *SEMSEG_SETS, "vqa", *INTERNVL_VQA, *REFSHAPES)
GRAMMAR = __doc__.split("::", 1)[1].rstrip()


def _bad(spec: str, why: str) -> DataError:
    return DataError(f"bad dataset spec {spec!r}: {why}\nSpec grammar:{GRAMMAR}")


def _int(spec: str, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _bad(spec, f"{what} must be an integer, got {value!r}") from None


def load_dataset(spec: str, kinds: Sequence[str] | None = None) -> list[Sample]:
    """Load the Samples named by ``spec`` (see the module docstring for the grammar). With ``kinds``,
    keep only the samples whose ``kind`` is listed (an error when none is)."""
    samples = _load(spec)
    if not samples:
        raise DataError(f"no samples in {spec}")
    if kinds is None:
        return samples
    kept = [s for s in samples if s.kind in kinds]
    if not kept:
        found = sorted({str(s.kind) for s in samples})
        raise DataError(f"dataset {spec!r}: no sample of kinds {list(kinds)} (its kinds: {found})")
    return kept


def _load(spec: str) -> list[Sample]:
    name, colon, rest = spec.partition(":")
    if not colon or name not in NAMES:
        path = Path(spec)
        if path.suffix == ".jsonl" or path.is_file():
            from self1e.data.jsonl import read_jsonl
            return read_jsonl(path)
        if colon and "@" in spec:
            raise _bad(spec, f"unknown dataset name {name!r}; known: {', '.join(NAMES)}")
        raise DataError(f"dataset not found: {spec!r} is neither a JSONL file nor a spec like "
                        f"'refcoco:unc:val@ROOT'.\nSpec grammar:{GRAMMAR}")
    if name in REFSHAPES:
        from self1e.data.refshapes import refshapes_samples
        parts = rest.split(":")
        styled = len(parts) == 5 and parts[4] == "styled"
        if not 2 <= len(parts) <= 4 + styled:
            raise _bad(spec, f"expected {name}:SPLIT:N[:SEED[:SIZE[:styled]]]")
        split, n = parts[0], _int(spec, parts[1], "N")
        if not 1 <= n <= MAX_REFSHAPES_SAMPLES:
            raise DataError(f"bad dataset spec {spec!r}: N must be between 1 and {MAX_REFSHAPES_SAMPLES:,} "
                            f"(MAX_REFSHAPES_SAMPLES), got {n:,}")
        seed = _int(spec, parts[2], "SEED") if len(parts) > 2 else 0
        size = _int(spec, parts[3], "SIZE") if len(parts) > 3 else 224
        return list(refshapes_samples(REFSHAPES[name], split, seed, n, size, styled=styled))
    body, at, root = rest.partition("@")
    if not at or not root:
        raise _bad(spec, f"missing '@ROOT' (the folder that holds the {name} data)")
    parts = body.split(":")
    if name == "vqa":
        from self1e.data.vqa import load_llava
        return load_llava(body, root)
    if not Path(root).is_dir():
        raise DataError(f"dataset root folder not found: {root} (from spec {spec!r})")
    if name in INTERNVL_VQA:
        from self1e.data.internvl_vqa import load_spec
        return load_spec(spec, body, root, evaluation=name == "internvl_vqa_eval")
    if name in REFER_DATASETS:
        if len(parts) == 1:
            return load_refer(root, name, parts[0])
        if len(parts) == 2:
            return load_refer(root, name, parts[1], split_by=parts[0])
        raise _bad(spec, f"expected {name}[:SPLITBY]:SPLIT@ROOT")
    if name == "reasonseg":
        from self1e.data.reasonseg import load_reasonseg
        if len(parts) == 2 and parts[1] != "all" or len(parts) > 2:
            raise _bad(spec, "expected reasonseg:SPLIT[:all]@ROOT")
        return load_reasonseg(root, parts[0], all_texts=len(parts) == 2)
    if len(parts) != 1:
        raise _bad(spec, f"expected {name}:SPLIT@ROOT")
    return load_semseg_set(name, root, parts[0])
