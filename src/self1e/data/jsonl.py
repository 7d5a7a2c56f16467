"""Read and write the JSONL segmentation format (docs/data.md).

``read_jsonl`` checks the structure of every line and that every named file exists, but decodes no
image (that would make loading 100k samples slow); ``validate`` decodes everything and checks sizes.
"""
from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from self1e.common.errors import DataError
from self1e.data.sample import Sample

log = logging.getLogger(__name__)

_PATH_FIELDS = ("image", "mask", "ignore")
KNOWN_KEYS = ("image", "text", "mask", "ignore", "instances", "phrases", "id", "kind", "question", "answer", "exif")
"""The fields a JSONL line may have (docs/data.md); any other key is an error unless ``allow_unknown_keys``."""


def _where(path: Path, lineno: int, field: str | None = None) -> str:
    return f"{path}:{lineno}" + (f": field '{field}'" if field else "")


def _file(value: Any, base: Path, path: Path, lineno: int, field: str, required: bool) -> Path | None:
    """Resolve one path field relative to the JSONL folder and check that the file exists."""
    if value is None:
        if required:
            raise DataError(f"{_where(path, lineno, field)}: missing (required)")
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{_where(path, lineno, field)}: expected a file path string, got {value!r}")
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise DataError(f"{_where(path, lineno, field)}: file not found: {p}")
    return p


def _optional_str(obj: Mapping[str, Any], field: str, path: Path, lineno: int) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{_where(path, lineno, field)}: expected a string, got {value!r}")
    return value


def _check_keys(obj: dict[str, Any], path: Path, lineno: int) -> None:
    unknown = [k for k in obj if k not in KNOWN_KEYS]
    if not unknown:
        return
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), KNOWN_KEYS, n=1)
        hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise DataError(f"{_where(path, lineno)}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                    f"known fields: {', '.join(KNOWN_KEYS)}")


def parse_record(obj: Any, base: Path, path: Path, lineno: int, index: int,
                 allow_unknown_keys: bool = False) -> Sample:
    """Turn one decoded JSON line into a Sample; raises DataError naming file, line and field.

    ``lineno`` counts lines from 1 (for messages); ``index`` is the 0-based index among non-blank
    lines (the default id). A key outside :data:`KNOWN_KEYS` (a misspelled ``"msk"``) is an error
    unless ``allow_unknown_keys``, which ignores such keys.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{_where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
    if not allow_unknown_keys:
        _check_keys(obj, path, lineno)
    image = _file(obj.get("image"), base, path, lineno, "image", required=True)
    text = _optional_str(obj, "text", path, lineno)
    question = _optional_str(obj, "question", path, lineno)
    answer = _optional_str(obj, "answer", path, lineno)
    if text is None:
        if question is None and answer is None:
            raise DataError(f"{_where(path, lineno, 'text')}: missing (required unless the line is "
                            "a VQA line with 'question' and 'answer')")
        for field, value in (("question", question), ("answer", answer)):
            if value is None or not value.strip():
                raise DataError(f"{_where(path, lineno, field)}: a VQA line needs a non-empty {field}")
    elif not text.strip():
        raise DataError(f"{_where(path, lineno, 'text')}: empty text")
    mask = _file(obj.get("mask"), base, path, lineno, "mask", required=False)
    ignore = _file(obj.get("ignore"), base, path, lineno, "ignore", required=False)
    phrases = obj.get("phrases")
    if phrases is not None:
        if text is None or not isinstance(phrases, list) or len(phrases) < 1 or \
                not all(isinstance(p, str) and p.strip() for p in phrases):
            raise DataError(f"{_where(path, lineno, 'phrases')}: expected a list of non-empty strings on a line "
                            "with 'text' (a multi-object request)")
        phrases = tuple(p.strip() for p in phrases)
    instances = obj.get("instances")
    inst_paths: tuple[Path | None, ...] | None = None
    if instances is not None:
        if not isinstance(instances, list):
            raise DataError(f"{_where(path, lineno, 'instances')}: expected a list of paths")
        # with phrases, null marks an absent object; otherwise every instance is a file
        inst_paths = tuple(_file(v, base, path, lineno, "instances", required=phrases is None) for v in instances)
    if phrases is not None and (inst_paths is None or len(inst_paths) != len(phrases)):
        raise DataError(f"{_where(path, lineno, 'instances')}: a line with {len(phrases)} phrases needs "
                        f"{len(phrases)} 'instances' entries (a mask path, or null for an absent object)")
    sid = obj.get("id", index)
    if isinstance(sid, bool) or not isinstance(sid, (str, int)) or str(sid) == "":
        raise DataError(f"{_where(path, lineno, 'id')}: expected a non-empty string, got {sid!r}")
    kind = _optional_str(obj, "kind", path, lineno)
    exif = obj.get("exif", True)
    if not isinstance(exif, bool):
        raise DataError(f"{_where(path, lineno, 'exif')}: expected true or false, got {exif!r}")
    return Sample(id=str(sid), image=image, text=text, mask=mask, ignore=ignore, kind=kind,
                  question=question, answer=answer, where=f"{path}:{lineno}", instances=inst_paths,
                  phrases=phrases, exif=exif)


def read_jsonl(path: str | Path, skip_bad: bool = False,
               problems: list[str] | None = None, allow_unknown_keys: bool = False) -> list[Sample]:
    """Read a JSONL split into Samples (paths relative to the file's folder; absolute accepted).

    With ``skip_bad`` a bad line is skipped instead of raising: the count and the reasons are
    logged as a warning and appended to ``problems`` when a list is given. Duplicate ids are errors;
    so are keys outside :data:`KNOWN_KEYS` unless ``allow_unknown_keys``. A file without any
    non-blank line raises DataError ("no samples in FILE"), with or without ``skip_bad``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"JSONL file not found: {path}")
    base = path.parent
    samples: list[Sample] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    index = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{_where(path, lineno)}: not UTF-8 text (byte {e.start + 1} of the "
                                    "line)") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{_where(path, lineno)}: invalid JSON: {e.msg} "
                                    f"(column {e.colno})") from None
                sample = parse_record(obj, base, path, lineno, index, allow_unknown_keys)
                if sample.id in seen:
                    raise DataError(f"{_where(path, lineno, 'id')}: duplicate id {sample.id!r} "
                                    f"(first used on line {seen[sample.id]})")
            except DataError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
            else:
                seen[sample.id] = lineno
                samples.append(sample)
            index += 1
    if index == 0:
        raise DataError(f"no samples in {path}: the file is empty or holds only blank lines")
    if skipped:
        log.warning("%s: skipped %d bad line(s):\n  %s", path, len(skipped), "\n  ".join(skipped))
        if problems is not None:
            problems.extend(skipped)
    return samples


def validate(samples: Iterable[Sample]) -> list[str]:
    """Decode every image and mask; return a list of problems (empty when all is well).

    Checks that images decode, that masks, ignore maps and instance masks decode and match their
    image's size, that mask files are binary (one foreground value: a JPEG mask is not), and that the
    instances' union equals the mask.
    """
    problems: list[str] = []
    for s in samples:
        try:
            size = s.load_image().size
            if s.is_vqa:
                continue
            mask = s.load_mask(size, problems)
            s.load_ignore(size, problems)
            if s.instances:
                union = np.zeros_like(mask)
                for k in range(len(s.instances)):
                    union |= s.load_instance(k, size, problems)
                if not np.array_equal(union, mask):
                    problems.append(f"{s.where or s.id}: the union of 'instances' differs from 'mask'")
        except DataError as e:
            msg = str(e)
            problems.append(msg if (s.where and s.where in msg) else f"{s.where or s.id}: {msg}")
    return problems


def _relative(value: Any, base: Path) -> Any:
    if isinstance(value, Path) or (isinstance(value, str) and Path(value).is_absolute()):
        p = Path(value)
        try:
            return p.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            return str(p)
    return value


def sample_to_record(sample: Sample, base: Path) -> dict[str, Any]:
    """A JSON-ready dict for a Sample whose image and masks are files (paths made relative to base)."""
    for field in ("image", "mask", "ignore"):
        if callable(getattr(sample, field)):
            raise DataError(f"{sample.where or sample.id}: {field} is in memory; save it to a file "
                            "before writing JSONL")
    rec: dict[str, Any] = {"id": sample.id, "image": _relative(sample.image, base)}
    if sample.is_vqa:
        rec.update(question=sample.question, answer=sample.answer)
    else:
        rec.update(text=sample.text, mask=_relative(sample.mask, base))
        if sample.ignore is not None:
            rec["ignore"] = _relative(sample.ignore, base)
        if sample.phrases is not None:
            rec["phrases"] = list(sample.phrases)
        if sample.instances:
            rec["instances"] = [None if p is None else _relative(p, base) for p in sample.instances]
    if sample.kind is not None:
        rec["kind"] = sample.kind
    if not sample.exif:
        rec["exif"] = False
    return rec


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any] | Sample]) -> Path:
    """Write records (dicts or file-backed Samples) as one JSON object per line, UTF-8.

    Path values that are ``Path`` objects or absolute strings under the file's folder are written
    relative to it. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            if isinstance(rec, Sample):
                obj = sample_to_record(rec, base)
            else:
                obj = {k: ([None if v is None else _relative(v, base) for v in val] if k == "instances" and val else
                           _relative(val, base) if k in _PATH_FIELDS else val)
                       for k, val in rec.items()}
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path
