"""Every dataset of the authors' training mix as a tiny tree in its real on-disk format, and the
paper configs pointed at it: what ``self1e data plan`` and the paper-config tests run on."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from data.fixture_tree import write_cocostuff, write_paco_lvis, write_pascal_part
from data.fixture_vqa import write_internvl_vqa
from data_fixtures import write_ade20k, write_reasonseg, write_refcoco

REPO = Path(__file__).resolve().parents[2]
PAPER_CONFIGS = ("configs/self1e_paper_2b.yaml", "configs/self1e_seg_2b.yaml")


def write_paper_tree(root: Path) -> Path:
    """LISA's layout under ``root`` (train splits) plus InternVL's VQA sets under ``root/internvl``."""
    root.mkdir(parents=True, exist_ok=True)
    write_ade20k(root)
    ade = root / "ade20k"
    for sub in ("images", "annotations"):
        shutil.move(ade / sub / "validation", ade / sub / "training")
    write_cocostuff(root)
    write_pascal_part(root)
    write_paco_lvis(root)
    for dataset, split_by in (("refclef", "unc"), ("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        write_refcoco(root, dataset, split_by)
    write_reasonseg(root)
    shutil.move(root / "reason_seg" / "ReasonSeg" / "val", root / "reason_seg" / "ReasonSeg" / "train")
    coco_image = next((root / "coco" / "train2017").glob("*.jpg")).name
    (root / "llava_dataset").mkdir()
    (root / "llava_dataset" / "llava_instruct_150k.json").write_text(json.dumps([
        {"id": "l1", "image": coco_image, "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": "Shapes."}]}]))
    write_internvl_vqa(root / "internvl")
    return root


def paper_config(name: str, root: Path, out: Path) -> Path:
    """The repository's paper config ``name`` with its data paths moved onto ``write_paper_tree(root)``."""
    text = (REPO / name).read_text()
    text = re.sub(r"=/data/internvl/opensource/(\w+)_train\.jsonl:100000@\S+?\"",
                  lambda m: f"=\0ROOT/internvl/{m.group(1)}_train.jsonl:100000@\0ROOT/internvl\"", text)
    text = text.replace("/data/", "\0ROOT/").replace("@/data", "@\0ROOT")
    out.write_text(text.replace("\0ROOT", str(root)))
    return out
