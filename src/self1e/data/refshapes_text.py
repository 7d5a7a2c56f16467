"""RefShapes language: vocabulary, structured expressions, the resolver and the English phrasings.

An expression is first built in structured form (``Expr``: an operator, a noun phrase ``NP`` and
arguments), then ``resolve`` computes the set of scene objects it denotes, and only expressions whose
denotation is well defined (``resolve`` does not return None) are phrased in English by ``realise``.
Spatial and size words count as true only with a clear margin, so every emitted text is unambiguous.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "large")
NOUNS = {"circle": ("circle", "ball"), "square": ("square", "box"), "triangle": ("triangle",),
         "diamond": ("diamond",), "star": ("star",), "cross": ("cross",)}
GENERIC = ("one", "shape", "object")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")

MARGIN = 0.12          # a spatial word is true when the offset is >= 12 % of the canvas ...
CLEARLY_NOT = 0.03     # ... false when <= 3 %; anything in between makes the expression ambiguous
SIZE_RATIO = 1.3       # "larger"/"largest" need radii that differ by at least this factor
REFER_MIN_VISIBLE = 0.5  # an object more than half hidden is never referred to by itself

# Direction -> the coordinate that grows in that direction (x grows right, y grows down).
_AXIS = {"left": (0, -1.0), "right": (0, 1.0), "top": (1, -1.0), "bottom": (1, 1.0)}
REL_WORDS = {"left": ("left of", "to the left of", "on the left of"),
             "right": ("right of", "to the right of", "on the right of"),
             "top": ("above", "over"), "bottom": ("below", "under", "beneath")}
MULTI_COUNTS = {"all": (2, 6), "every": (2, 6), "both": (2, 2), "two": (2, 2), "three": (3, 3)}

# Every phrasing, keyed by (operator, argument). "{n}" is a noun phrase, "{p}" its plural and "{a}"
# the anchor noun phrase of a relation.
TEMPLATES: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("the", None): ("the {n}",),
    ("compare", "larger"): ("the larger {n}", "the bigger {n}"),
    ("compare", "smaller"): ("the smaller {n}",),
    ("superlative", "larger"): ("the largest {n}", "the biggest {n}"),
    ("superlative", "smaller"): ("the smallest {n}",),
    ("pos2", "left"): ("the {n} on the left", "the {n} to the left", "the left {n}"),
    ("pos2", "right"): ("the {n} on the right", "the {n} to the right", "the right {n}"),
    ("pos2", "top"): ("the {n} on top", "the upper {n}", "the top {n}", "the {n} at the top"),
    ("pos2", "bottom"): ("the lower {n}", "the bottom {n}", "the {n} at the bottom"),
    ("posmost", "left"): ("the leftmost {n}", "the {n} on the far left",
                          "the {n} furthest to the left"),
    ("posmost", "right"): ("the rightmost {n}", "the {n} on the far right",
                           "the {n} furthest to the right"),
    ("posmost", "top"): ("the topmost {n}", "the highest {n}", "the {n} at the very top"),
    ("posmost", "bottom"): ("the bottommost {n}", "the lowest {n}", "the {n} at the very bottom"),
    **{("rel", d): tuple(f"the {{n}} {w} the {{a}}" for w in words) for d, words in REL_WORDS.items()},
    ("multi", "all"): ("all {p}", "all the {p}"),
    ("multi", "every"): ("every {n}",),
    ("multi", "both"): ("both {p}",),
    ("multi", "two"): ("the two {p}",),
    ("multi", "three"): ("the three {p}",),
}
COLOUR_QUESTIONS = ("What color is the {s}?", "What colour is the {s}?")
_PRENOMINAL = ("the left ", "the right ", "the upper ", "the top ", "the lower ", "the bottom ")


@dataclass(frozen=True)
class Obj:
    """What the language knows of one object; x, y (centre) and r (radius) are fractions of the canvas."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    r: float
    visible: float  # visible fraction of the object's area


@dataclass(frozen=True)
class NP:
    """A noun phrase: each attribute given restricts the objects it matches."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None

    def matches(self, o: Obj) -> bool:
        return ((self.colour is None or o.colour == self.colour)
                and (self.shape is None or o.shape == self.shape)
                and (self.size is None or o.size == self.size))


@dataclass(frozen=True)
class Expr:
    """A structured expression: ``op`` in TEMPLATES' operators, ``arg`` its argument."""

    kind: str
    op: str
    np: NP
    arg: str | None = None
    anchor: NP | None = None


@dataclass(frozen=True)
class Phrase:
    """An expression in English, with the template it came from and the objects it denotes."""

    expr: Expr
    text: str
    template: str
    target: frozenset[int] = field(default_factory=frozenset)


def _coord(o: Obj, direction: str) -> float:
    axis, sign = _AXIS[direction]
    return sign * (o.x if axis == 0 else o.y)


def _perp(a: Obj, b: Obj, direction: str) -> float:
    return abs(a.y - b.y) if _AXIS[direction][0] == 0 else abs(a.x - b.x)


def rel_truth(c: Obj, a: Obj, direction: str) -> bool | None:
    """Is ``c`` clearly ``direction`` of ``a`` (True), clearly not (False), or unclear (None)?"""
    d = _coord(c, direction) - _coord(a, direction)
    if d >= MARGIN and d >= 0.5 * _perp(c, a, direction):
        return True
    if d <= CLEARLY_NOT:
        return False
    return None


def _single(objs: list[Obj], idx: list[int]) -> frozenset[int] | None:
    if len(idx) > 1 or any(objs[i].visible < REFER_MIN_VISIBLE for i in idx):
        return None
    return frozenset(idx)


def resolve(objs: list[Obj], e: Expr) -> frozenset[int] | None:
    """The set of object indices ``e`` denotes, or None when ``e`` is ambiguous or ill-formed here.

    The empty set is a valid answer only for ``the {n}`` (a "no target" expression).
    """
    cand = [i for i, o in enumerate(objs) if e.np.matches(o)]
    if e.op == "the":
        return _single(objs, cand)
    if e.op == "multi":
        lo, hi = MULTI_COUNTS[e.arg]
        return frozenset(cand) if lo <= len(cand) <= hi else None
    if e.op in ("compare", "superlative"):
        if len(cand) < 2 or (e.op == "compare" and len(cand) != 2):
            return None
        ranked = sorted(cand, key=lambda i: objs[i].r, reverse=e.arg == "larger")
        r0, r1 = objs[ranked[0]].r, objs[ranked[1]].r
        return _single(objs, ranked[:1]) if max(r0, r1) >= SIZE_RATIO * min(r0, r1) else None
    if e.op in ("pos2", "posmost"):
        if len(cand) < 2 or (e.op == "pos2" and len(cand) != 2):
            return None
        ranked = sorted(cand, key=lambda i: _coord(objs[i], e.arg), reverse=True)
        first, second = objs[ranked[0]], objs[ranked[1]]
        d = _coord(first, e.arg) - _coord(second, e.arg)
        if d < MARGIN or (e.op == "pos2" and d < 0.5 * _perp(first, second, e.arg)):
            return None
        return _single(objs, ranked[:1])
    if e.op == "rel":
        anchors = [i for i, o in enumerate(objs) if e.anchor.matches(o)]
        if _single(objs, anchors) is None or not anchors:
            return None
        hits = []
        for c in cand:
            if c == anchors[0]:
                continue
            truth = rel_truth(objs[c], objs[anchors[0]], e.arg)
            if truth is None:
                return None
            if truth:
                hits.append(c)
        return _single(objs, hits) if len(hits) == 1 else None
    raise ValueError(f"unknown operator {e.op!r}")


# ---- English -----------------------------------------------------------------------------------

def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("x", "s")) else "s")


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def np_text(p: NP, rng: np.random.Generator, plural_form: bool = False, bare_one: bool = False) -> str:
    """English for a noun phrase: [size] [colour] noun. ``bare_one`` allows "one" without adjectives."""
    if p.shape is not None:
        noun = _pick(rng, NOUNS[p.shape])
    else:
        ok = GENERIC if (p.colour or p.size or bare_one) else GENERIC[1:]
        noun = _pick(rng, ok)
    words = [w for w in (p.size, p.colour) if w] + [plural(noun) if plural_form else noun]
    return " ".join(words)


def realise(e: Expr, rng: np.random.Generator, target: frozenset[int]) -> Phrase:
    """Phrase ``e`` in English, choosing one of its templates at random."""
    templates = TEMPLATES[(e.op, e.arg if e.op != "the" else None)]
    if e.op == "pos2" and e.np.size:  # "the left small circle" reads badly: keep the size after
        templates = tuple(t for t in templates if not t.startswith(_PRENOMINAL))
    template = _pick(rng, templates)
    bare_one = e.op not in ("the", "multi")
    text = template.format(
        n=np_text(e.np, rng, bare_one=bare_one),
        p=np_text(e.np, rng, plural_form=True) if "{p}" in template else "",
        a=np_text(e.anchor, rng) if e.anchor is not None else "",
    )
    return Phrase(e, text, template, target)


# ---- proposing true, unambiguous expressions ----------------------------------------------------

def _nps(o: Obj, with_size: bool | None) -> list[NP]:
    """Noun phrases describing ``o``: every subset of its colour and shape (and size when asked)."""
    sizes = {None: (None, o.size), True: (o.size,), False: (None,)}[with_size]
    return [NP(c, s, z) for c in (o.colour, None) for s in (o.shape, None) for z in sizes]


def _candidates(objs: list[Obj], kind: str, t: int, rng: np.random.Generator) -> list[Expr]:
    o = objs[t]
    if kind == "attribute":
        return [Expr(kind, "the", p) for p in _nps(o, False)]
    if kind == "size":
        out = [Expr(kind, "the", p) for p in _nps(o, True)
               if resolve(objs, Expr("", "the", NP(p.colour, p.shape))) is None]  # size word needed
        out += [Expr(kind, op, p, arg) for p in _nps(o, False) for op in ("compare", "superlative")
                for arg in ("larger", "smaller")]
        return out
    if kind == "position":
        return [Expr(kind, op, p, d) for p in _nps(o, None) for op in ("pos2", "posmost")
                for d in _AXIS]
    if kind == "relation":
        out = []
        for a, ao in enumerate(objs):
            if a == t or ao.visible < REFER_MIN_VISIBLE:
                continue
            dirs = [d for d in _AXIS if rel_truth(o, ao, d)]
            anchors = [p for p in _nps(ao, None) if resolve(objs, Expr("", "the", p)) == {a}]
            if dirs and anchors:
                out += [Expr(kind, "rel", p, _pick(rng, dirs), _pick(rng, anchors))
                        for p in _nps(o, None)]
        return out
    raise ValueError(f"unknown kind {kind!r}")


def propose(objs: list[Obj], kind: str, rng: np.random.Generator,
            pair_ok: Callable[[str, str], bool]) -> Phrase | None:
    """A random true and unambiguous phrase of ``kind`` for the scene, or None if there is none.

    ``pair_ok(colour, shape)`` says which colour-shape pairs may be mentioned though absent (the
    held-out pairs of the compositional split). Single-target kinds pick a target first and accept
    only an expression whose denotation is exactly that target.
    """
    if kind == "multi":
        nps = list(dict.fromkeys(p for o in objs for p in _nps(o, None)))
        cands = [Expr(kind, "multi", p, arg) for p in nps for arg in MULTI_COUNTS]
        for i in rng.permutation(len(cands)):
            target = resolve(objs, cands[i])
            if target is not None:
                return realise(cands[i], rng, target)
        return None
    if kind == "none":
        return _propose_none(objs, rng, pair_ok)
    targets = [i for i, o in enumerate(objs) if o.visible >= REFER_MIN_VISIBLE]
    for t in rng.permutation(targets):
        cands = _candidates(objs, kind, int(t), rng)
        for i in rng.permutation(len(cands)):
            if resolve(objs, cands[i]) == {int(t)}:
                return realise(cands[i], rng, frozenset({int(t)}))
    return None


def _propose_none(objs: list[Obj], rng: np.random.Generator,
                  pair_ok: Callable[[str, str], bool]) -> Phrase | None:
    present = {(o.colour, o.shape) for o in objs}
    pairs = [NP(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present and pair_ok(c, s)]
    shapes = [NP(shape=s) for s in SHAPES if all(o.shape != s for o in objs)]
    colours = [NP(colour=c) for c in COLOURS if all(o.colour != c for o in objs)]
    pools = [p for p in (pairs, pairs, pairs, shapes, colours) if p]
    if not pools:
        return None
    e = Expr("none", "the", _pick(rng, _pick(rng, pools)))
    assert resolve(objs, e) == frozenset()
    return realise(e, rng, frozenset())


def propose_vqa(objs: list[Obj], rng: np.random.Generator,
                pair_ok: Callable[[str, str], bool]) -> tuple[str, str, str] | None:
    """A (question, answer, kind) about the scene; the kinds (the samples' ``kind``): ``vqa-colour``
    (the colour of a unique shape), ``vqa-count`` (how many of a shape, or of a coloured shape) and
    ``vqa-exists`` (is there a coloured shape), chosen with equal chance."""
    choice = int(rng.integers(3))
    if choice == 0:
        unique = [o for o in objs if o.visible >= REFER_MIN_VISIBLE
                  and sum(p.shape == o.shape for p in objs) == 1]
        if unique:
            o = _pick(rng, unique)
            template = _pick(rng, COLOUR_QUESTIONS)
            return template.format(s=_pick(rng, NOUNS[o.shape])), o.colour.capitalize() + ".", "vqa-colour"
        choice = 1
    if choice == 1:
        if rng.random() < 0.75:  # mostly about what is there, so "Zero." does not dominate
            o = _pick(rng, objs)
            shape, colour = o.shape, (o.colour if rng.random() < 0.5 else None)
        else:
            shape = _pick(rng, SHAPES)
            colour = _pick(rng, (None,) + COLOURS) if rng.random() < 0.5 else None
        if colour is not None and not pair_ok(colour, shape) and \
                all((o.colour, o.shape) != (colour, shape) for o in objs):
            colour = None
        count = sum(NP(colour, shape).matches(o) for o in objs)
        noun = np_text(NP(colour, shape), rng, plural_form=True)
        return f"How many {noun} are there?", NUMBERS[count].capitalize() + ".", "vqa-count"
    o = _pick(rng, objs)
    colour, shape = o.colour, o.shape
    if rng.random() < 0.5:  # ask about an absent pair half of the time
        absent = [(c, s) for c in COLOURS for s in SHAPES
                  if pair_ok(c, s) and all((p.colour, p.shape) != (c, s) for p in objs)]
        if absent:
            colour, shape = _pick(rng, absent)
    present = any((p.colour, p.shape) == (colour, shape) for p in objs)
    article = "an" if colour[0] in "aeiou" else "a"
    q = f"Is there {article} {colour} {_pick(rng, NOUNS[shape])}?"
    return q, "Yes." if present else "No.", "vqa-exists"
