"""RefShapes: every expression is true and unambiguous, every phrasing occurs, files are reproducible.

The checker below re-reads each English text with its own small grammar and its own (simpler,
strict) semantics, independently of the generator's resolver.
"""
from __future__ import annotations

import filecmp
import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from self1e.data.jsonl import read_jsonl, validate
from self1e.data.refshapes import HELD_OUT_PAIRS, SPLITS, generate, iter_samples, iter_scenes, make_scene, render

COLOURS = "red green blue yellow purple orange white black".split()
NOUN = {"circle": "circle", "ball": "circle", "square": "square", "box": "square",
        "triangle": "triangle", "diamond": "diamond", "star": "star", "cross": "cross",
        "one": None, "shape": None, "object": None}
PLURAL = {"circles": "circle", "balls": "circle", "squares": "square", "boxes": "square",
          "triangles": "triangle", "diamonds": "diamond", "stars": "star", "crosses": "cross",
          "ones": None, "shapes": None, "objects": None}
_N = rf"(?:(small|large) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(NOUN)})"
_P = rf"(?:(small|large) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(PLURAL)})"
DIRS = {"left": ("x", -1), "right": ("x", 1), "top": ("y", -1), "bottom": ("y", 1)}
POS_WORDS = {  # phrase -> (direction, among exactly two?)
    "left": ("left", True), "right": ("right", True), "upper": ("top", True), "top": ("top", True),
    "lower": ("bottom", True), "bottom": ("bottom", True), "leftmost": ("left", False),
    "rightmost": ("right", False), "topmost": ("top", False), "highest": ("top", False),
    "bottommost": ("bottom", False), "lowest": ("bottom", False),
    "on the left": ("left", True), "to the left": ("left", True), "on the right": ("right", True),
    "to the right": ("right", True), "on top": ("top", True), "at the top": ("top", True),
    "at the bottom": ("bottom", True), "on the far left": ("left", False),
    "furthest to the left": ("left", False), "on the far right": ("right", False),
    "furthest to the right": ("right", False), "at the very top": ("top", False),
    "at the very bottom": ("bottom", False)}
REL = {"left of": "left", "to the left of": "left", "on the left of": "left", "right of": "right",
       "to the right of": "right", "on the right of": "right", "above": "top", "over": "top",
       "below": "bottom", "under": "bottom", "beneath": "bottom"}
POST = "|".join(sorted((k for k in POS_WORDS if " " in k), key=len, reverse=True))
PRE = "|".join(k for k in POS_WORDS if " " not in k)
REL_RE = "|".join(sorted(REL, key=len, reverse=True))

# The minimum inventory of docs/data.md, written out literally.
MINIMUM = [
    "the {n}", "the larger {n}", "the bigger {n}", "the smaller {n}", "the largest {n}",
    "the biggest {n}", "the smallest {n}",
    "the {n} on the left", "the {n} to the left", "the left {n}", "the {n} on the right",
    "the {n} to the right", "the right {n}", "the {n} on top", "the upper {n}", "the top {n}",
    "the {n} at the top", "the lower {n}", "the bottom {n}", "the {n} at the bottom",
    "the leftmost {n}", "the {n} on the far left", "the {n} furthest to the left",
    "the rightmost {n}", "the {n} on the far right", "the {n} furthest to the right",
    "the topmost {n}", "the highest {n}", "the {n} at the very top", "the bottommost {n}",
    "the lowest {n}", "the {n} at the very bottom",
    *[f"the {{n}} {r} the {{a}}" for r in REL],
    "all {p}", "all the {p}", "every {n}", "both {p}", "the two {p}", "the three {p}",
]


def _match(objs, size, colour, noun, table):
    shape = table[noun]
    return {i for i, o in enumerate(objs) if (size is None or o.size == size)
            and (colour is None or o.colour == colour) and (shape is None or o.shape == shape)}


def _coord(o, direction):
    axis, sign = DIRS[direction]
    return sign * (o.x if axis == "x" else o.y)


def check_phrase(objs, text, kind, target):
    """Independently re-resolve ``text`` in the scene and compare with ``target``."""
    if m := re.fullmatch(rf"the {_N} ({REL_RE}) the {_N}", text):
        cands = _match(objs, *m.group(1, 2, 3), NOUN)
        anchors = _match(objs, *m.group(5, 6, 7), NOUN)
        assert len(anchors) == 1 and kind == "relation", text
        (a,) = anchors
        d = {c: _coord(objs[c], REL[m.group(4)]) - _coord(objs[a], REL[m.group(4)]) for c in cands - {a}}
        hits = {c for c, v in d.items() if v > 0.1}
        assert hits == set(target) and all(v <= 0.05 for c, v in d.items() if c not in hits), text
        return
    if (m := re.fullmatch(rf"the {_N} ({POST})", text)) or (m2 := re.fullmatch(rf"the ({PRE}) {_N}", text)):
        size, colour, noun, word = m.group(1, 2, 3, 4) if m else (*m2.group(2, 3, 4), m2.group(1))
        direction, two = POS_WORDS[word]
        cands = _match(objs, size, colour, noun, NOUN)
        assert (len(cands) == 2 if two else len(cands) >= 2) and kind == "position", text
        best = max(cands, key=lambda i: _coord(objs[i], direction))
        assert {best} == set(target), text
        return
    if m := re.fullmatch(rf"the (larger|bigger|smaller|largest|biggest|smallest) {_N}", text):
        cands = _match(objs, *m.group(2, 3, 4), NOUN)
        assert (len(cands) == 2 if m.group(1).endswith("er") else len(cands) >= 2), text
        pick = min if m.group(1).startswith("small") else max
        assert {pick(cands, key=lambda i: objs[i].r)} == set(target) and kind == "size", text
        return
    if m := re.fullmatch(rf"(all|all the|both|the two|the three) {_P}|every {_N}", text):
        det = m.group(1) or "every"
        groups = m.group(2, 3, 4) if m.group(1) else m.group(5, 6, 7)
        cands = _match(objs, *groups, PLURAL if m.group(1) else NOUN)
        need = {"both": 2, "the two": 2, "the three": 3}.get(det)
        assert (len(cands) == need if need else len(cands) >= 2) and kind == "multi", text
        assert cands == set(target), text
        return
    m = re.fullmatch(rf"the {_N}", text)
    assert m, f"unparsed expression: {text!r}"
    cands = _match(objs, *m.group(1, 2, 3), NOUN)
    if kind == "none":
        assert not target and not _match(objs, None, *m.group(2, 3), NOUN), text
    else:
        assert cands == set(target) and len(cands) == 1, text
        assert kind == ("size" if m.group(1) else "attribute"), text


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**20), split=st.sampled_from(SPLITS), size=st.sampled_from([64, 96]))
def test_every_expression_is_true_and_unambiguous(seed, split, size):
    for item in iter_scenes(split, seed, 12, size):
        objs = item.scene.objects
        image = np.asarray(render(item.scene))
        labels = item.scene.ids >> 1
        for i in range(len(objs)):  # the mask shows exactly the object's fill and outline colours
            colours = {tuple(c) for c in image[labels == i + 1]}
            fill = item.scene.fills[i]
            assert colours <= {fill, tuple(int(v * 0.55) for v in fill)}
        for ph in item.phrases:
            check_phrase(objs, ph.text, ph.expr.kind, ph.target)
            mask = item.scene.mask(ph.target)
            assert mask.any() == (ph.expr.kind != "none")
            if len(ph.target) == 1:
                assert objs[next(iter(ph.target))].visible >= 0.5  # never refer to a hidden object
            union = np.zeros_like(mask)
            for t in ph.target:
                union |= labels == t + 1
            np.testing.assert_array_equal(mask, union)


@pytest.fixture(scope="module")
def many():
    items = list(iter_scenes("train", 0, 3000, 64, vqa=True))
    return [ph for it in items for ph in it.phrases], [q for it in items for q in it.vqa], items


def test_every_minimum_phrasing_appears(many):
    phrases, vqa, _ = many
    used = Counter(ph.template for ph in phrases)
    assert [t for t in MINIMUM if used[t] == 0] == []
    words = Counter(w for ph in phrases for w in ph.text.split())
    for w in ("ball", "box", "one", "shape", "object", "balls", "boxes", "crosses", "ones",
              "shapes", "objects", "small", "large"):
        assert words[w] > 0, w
    questions = " | ".join(q for q, _, _ in vqa)
    for needle in ("What color is the", "What colour is the", "How many", "Is there a ",
                   "Is there an "):
        assert needle in questions
    answers = {a for _, a, _ in vqa}
    assert {"Yes.", "No.", "Zero.", "One.", "Two."} <= answers
    assert any(a in answers for a in ("Red.", "Blue.", "Green."))


def test_kind_mix(many):
    phrases, _, items = many
    assert len(phrases) == 3000
    frac = {k: v / len(phrases) for k, v in Counter(ph.expr.kind for ph in phrases).items()}
    assert 0.07 <= frac["multi"] <= 0.13 and 0.07 <= frac["none"] <= 0.13
    assert all(0.15 <= frac[k] <= 0.25 for k in ("attribute", "size", "position", "relation"))
    assert all(len({ph.text for ph in it.phrases}) == len(it.phrases) for it in items)


def _mentions(text):
    toks = text.lower().rstrip("?.").split()
    pairs = {(a, NOUN.get(b) or PLURAL.get(b)) for a, b in zip(toks, toks[1:]) if a in COLOURS}
    return {p for p in pairs if p[1] is not None}  # "the red one" names no colour-shape pair


def test_compositional_split_is_held_out(many):
    phrases, vqa, items = many
    for it in items:
        assert not {(o.colour, o.shape) for o in it.scene.objects} & HELD_OUT_PAIRS
    for text in [ph.text for ph in phrases] + [q for q, _, _ in vqa]:
        assert not _mentions(text) & HELD_OUT_PAIRS, text
    comp = list(iter_scenes("test-compositional", 0, 200, 64, vqa=True))
    for it in comp:
        assert {(o.colour, o.shape) for o in it.scene.objects} <= HELD_OUT_PAIRS
        for text in [ph.text for ph in it.phrases] + [q for q, _, _ in it.vqa]:
            assert _mentions(text) <= HELD_OUT_PAIRS, text


def test_none_expressions_name_absent_things(many):
    phrases, _, items = many
    for it in items:
        for ph in it.phrases:
            if ph.expr.kind == "none":
                m = re.fullmatch(rf"the {_N}", ph.text)
                assert m and m.group(1) is None
                assert not _match(it.scene.objects, None, *m.group(2, 3), NOUN)


def test_generate_files_deterministic_and_valid(tmp_path):
    a = generate(tmp_path / "a", "val", 30, seed=5, size=64, vqa=True, progress=False)
    b = generate(tmp_path / "b", "val", 30, seed=5, size=64, vqa=True, progress=False)
    c = generate(tmp_path / "c", "val", 30, seed=6, size=64, vqa=True, progress=False)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    cmp = filecmp.dircmp(tmp_path / "a" / "val", tmp_path / "b" / "val")
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (tmp_path / "a" / "val" / sub).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a/val" / sub, tmp_path / "b/val" / sub,
                                                   names, shallow=False)
        assert mismatch == [] and errors == [] and len(match) == len(names) > 0
    assert not cmp.left_only and not cmp.right_only
    samples = read_jsonl(a)
    assert sum(not s.is_vqa for s in samples) == 30 and any(s.is_vqa for s in samples)
    assert validate(samples) == []
    recs = [json.loads(line) for line in a.read_text().splitlines()]
    assert len({r["image"] for r in recs}) < len(recs)  # images are shared by several samples
    for r in recs:
        if r["kind"] == "none":
            assert r["mask"] is None
        if r["kind"] == "multi":
            assert len(r["instances"]) >= 2


def test_in_memory_samples_match_scenes():
    samples = list(iter_samples("test", 3, 10, 64))
    assert len(samples) == 10 and len({s.id for s in samples}) == 10
    for s in samples:
        img = s.load_image()
        assert img.size == (64, 64)
        assert s.load_mask(img.size).any() == (s.kind != "none")


def test_scene_size_limits():
    with pytest.raises(ValueError, match="between 64 and 1024"):
        make_scene(np.random.default_rng(0), size=32)
    with pytest.raises(ValueError, match="unknown RefShapes split"):
        next(iter_scenes("dev", 0, 1))


def test_in_memory_samples_redraw_exactly_the_generated_scenes():
    samples = list(iter_samples("val", 3, 24, 96))
    k = 0
    for item in iter_scenes("val", 3, 24, 96):
        image = np.asarray(render(item.scene))
        for ph in item.phrases:
            s = samples[k]
            assert np.array_equal(np.asarray(s.load_image()), image)
            expected = item.scene.mask(ph.target) if ph.target else np.zeros((96, 96), bool)
            assert np.array_equal(s.load_mask((96, 96)), expected)
            k += 1
        # all expressions of a scene share one image object, so training can group them by image
        assert len({id(samples[j].image) for j in range(k - len(item.phrases), k)}) <= 1
    assert k == len(samples)
