"""Self1eProcessor: the one preprocessing path (images -> tiles, prompts, labels, mask targets).

Training, evaluation, the predictor and the demo all use it, so the model always sees the inputs it
was trained on. Prompts follow the tokenizer's chat template, or InternVL's chat format without one
(``<|im_start|>`` turns); the image is its layout's opening token, N context tokens and its closing
token (InternVL: ``<img>`` + ``<IMG_CONTEXT>`` x N + ``</img>``; see :mod:`self1e.model.layouts`).
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from self1e.common.images import ImageLike, to_rgb
from self1e.model.config import PromptFormat
from self1e.model.layouts import ImageInput, TileLayout

__all__ = ["IGNORE_INDEX", "IGNORE_PIXEL", "Batch", "ImageInput", "Self1eProcessor", "check_text", "multi_answer"]

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT = TileLayout.open_token, TileLayout.close_token, TileLayout.context_token
IGNORE_INDEX = -100
IGNORE_PIXEL = -1.0  # mask-target value of pixels left out of the mask loss (a sample's ignore region)

# A multi-object request is answered with one "<phrase> is [SEG]" per object, joined as in English.
MULTI_ANSWER_PREFIXES = ("", "Sure, ", "Sure: ")

log = logging.getLogger(__name__)
MAX_TEXT_CHARS = 2000
"""The longest user text, in characters (not bytes, not tokens): an expression, a question or a chat
message, and each user turn of a chat history. Longer text raises ValueError naming the limit and
its length, before anything is tokenised. (A user turn may hold an expression wrapped in a question
template, so user turns get the format's ``template_chars`` more.)"""


def template_chars(fmt: PromptFormat) -> int:
    """The most characters a question template of ``fmt`` adds around an expression: a user turn may
    hold an expression of ``MAX_TEXT_CHARS`` in its question, so :meth:`Self1eProcessor.prompt` allows
    ``MAX_TEXT_CHARS + template_chars`` per user turn."""
    return max(len(t.replace("{x}", "")) for t in (*fmt.questions, fmt.sentence_question))


TEMPLATE_CHARS = template_chars(PromptFormat())  # our own format's


def check_text(text: str, what: str = "the text", limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else ValueError naming the limit and its length."""
    if len(text) > limit:
        extra = f" + {limit - MAX_TEXT_CHARS} for a question template" if limit != MAX_TEXT_CHARS else ""
        raise ValueError(f"{what} is {len(text):,} characters long; the limit is {limit:,} characters "
                         f"(MAX_TEXT_CHARS = {MAX_TEXT_CHARS:,}{extra})")
    return text


def _warn_template(problem: str) -> None:
    log.warning("the tokenizer's chat template %s; prompts use InternVL's turn layout instead", problem)


def multi_answer(phrases: Sequence[str], prefix: str = "") -> list[str]:
    """The answer to a multi-object request, as the text pieces around its ``[SEG]`` tokens:
    ``["the red circle is ", " and the blue star is ", "."]`` stands for "the red circle is [SEG] and
    the blue star is [SEG].". Pieces stay plain text, so a phrase can never add a ``[SEG]``."""
    pieces, last = [], len(phrases) - 1
    for k, p in enumerate(phrases):
        joint = prefix if k == 0 else (" and " if k == last else ", ")
        pieces.append(f"{joint}{p.strip()} is ")
    return pieces + ["."]


@dataclass
class Batch:
    """Model inputs. B rows (conversations), I images, T tiles in all.

    input_ids, attention_mask, labels: (B, L); pixel_values: (T, 3, S, S); grids: I x (rows, cols);
    image_index: (B,) image of each row; mask_targets: B entries, (H, W) float or None;
    answer_start: (B,) where each row's answer begins, -1 where no row needs it (see
    :func:`~self1e.model.attention.seg_attention_mask`), or None when no row holds two ``[SEG]``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    grids: list[tuple[int, int]]
    image_index: torch.Tensor
    mask_targets: list[torch.Tensor | None] | None = None
    answer_start: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        pv = self.pixel_values.to(device, dtype) if dtype else self.pixel_values.to(device)
        targets = None if self.mask_targets is None else [t if t is None else t.to(device) for t in self.mask_targets]
        start = None if self.answer_start is None else self.answer_start.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), pv,
                     self.grids, self.image_index.to(device), targets, start)


TOKEN_CACHE_SIZE = 4096  # memoised encodings per processor (cleared when full)


class Self1eProcessor:
    """Turns images and texts into :class:`Batch` objects for one model geometry and tokenizer."""

    def __init__(self, tokenizer, image_size: int = 448, patch_size: int = 14, max_tiles: int = 1,
                 use_thumbnail: bool = True, seg_token: str = "[SEG]", loss_short_side: int = 128,
                 prompt_format: PromptFormat | None = None, layout=None) -> None:
        """``layout`` (see :mod:`self1e.model.layouts`) prepares the images; without one, InternVL's
        tiles of ``image_size`` with ``patch_size`` patches, up to ``max_tiles``."""
        self.tokenizer = tokenizer
        self._token_cache: dict[tuple[bool, int, str], list[int]] = {}
        self._layout_cache: dict[tuple[str, ...], list[str] | None] = {}
        self._image_cache: dict[tuple, list[int]] = {}
        self.format = prompt_format or PromptFormat()
        self.template_chars = template_chars(self.format)
        self.image_layout = layout or TileLayout(image_size, patch_size, max_tiles, use_thumbnail)
        self.seg_token = seg_token
        self.loss_short_side = loss_short_side
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        names = [self.image_layout.open_token, self.image_layout.close_token, self.image_layout.context_token]
        ids = tokenizer.convert_tokens_to_ids(names)
        if tokenizer.unk_token_id in ids or None in ids:
            raise ValueError(f"the tokenizer lacks the image tokens {', '.join(names)} of this backbone")
        self.img_start_id, self.img_end_id, self.img_context_id = ids

    @property
    def image_size(self) -> int:
        """The tile side (InternVL), or the side of a square image after resizing (native resolution)."""
        return self.image_layout.image_size

    @property
    def grid_side(self) -> int:
        """LLM tokens per tile side (tiled layouts only)."""
        return self.image_layout.grid_side

    @property
    def tokens_per_tile(self) -> int:
        return self.image_layout.tokens_per_tile

    # ---- images -------------------------------------------------------------------------------
    def image_input(self, image: ImageLike) -> ImageInput:
        """One image -> its pixel values at the model's size (converted to RGB here, once). An
        :class:`ImageInput` (already prepared, e.g. by a reader thread) is returned as it is."""
        if isinstance(image, ImageInput):
            return image
        return self.image_layout.prepare(to_rgb(image))

    def n_tiles(self, grid: tuple[int, int]) -> int:
        """The image units of an image of this grid (``tokens_per_tile`` LLM tokens each)."""
        return self.image_layout.n_tiles(grid)

    def mask_target(self, mask: np.ndarray, ignore: np.ndarray | None = None) -> torch.Tensor:
        """Ground truth (H, W) bool -> float target with short side ``loss_short_side`` (same aspect):
        1 target, 0 background, ``IGNORE_PIXEL`` where the optional ``ignore`` map is set (no loss there)."""
        h, w = mask.shape
        scale = self.loss_short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))

        def resized(m: np.ndarray) -> np.ndarray:
            return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(size, Image.BILINEAR)) >= 128

        target = resized(mask).astype(np.float32)
        if ignore is not None:
            target[resized(ignore)] = IGNORE_PIXEL
        return torch.from_numpy(target)

    # ---- text ---------------------------------------------------------------------------------
    def seg_question(self, text: str, rng: random.Random | None = None) -> str:
        """A segmentation question for an expression in the checkpoint's prompt format: a random
        template with ``rng`` (training), else the first; full sentences get the sentence template.
        An empty expression or one longer than ``MAX_TEXT_CHARS`` raises ValueError."""
        fmt = self.format
        text = check_text(text, "the expression").strip()
        if not text:
            raise ValueError("the expression is empty")
        if fmt.lowercase:
            text = text.lower()
        if text[-1] in ".?!" and len(text.split()) > 3:
            return fmt.sentence_question.replace("{x}", text)
        template = fmt.questions[rng.randrange(len(fmt.questions))] if rng else fmt.questions[0]
        if "the {x}" in template and text.lower().startswith("the "):  # "segment the the red circle"
            text = text[4:]
        return template.replace("{x}", text)

    def seg_answer(self, rng: random.Random | None = None) -> str:
        answers = self.format.answers
        return answers[rng.randrange(len(answers))] if rng else self.format.inference_answer

    def _tokenize(self, text: str, plain: bool) -> list[int]:
        """Token ids of ``text`` (``plain``: special tokens in it stay text), memoised: the template
        pieces and the answer are the same in every row of a batch. The key holds the vocabulary size,
        so adding a token (``[SEG]``) never serves a stale encoding."""
        key = (plain, len(self.tokenizer), text)
        ids = self._token_cache.get(key)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"]
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            self._token_cache[key] = ids
        return list(ids)

    def _encode(self, text: str) -> list[int]:
        """Our own template text: special tokens in it are special tokens."""
        return self._tokenize(text, plain=False)

    def encode_text(self, text: str) -> list[int]:
        """Text from a user or a dataset: a special token written in it ("[SEG]", "<|im_end|>",
        "<IMG_CONTEXT>", ...) stays plain text and never becomes that token."""
        return self._tokenize(text, plain=True)

    def encode_answer(self, text: str | Sequence[str]) -> list[int]:
        """An assistant answer with ``[SEG]`` as the segmentation token (our templates and the model's
        own answers); every other special token in it stays plain text. A list of pieces (see
        :func:`multi_answer`) has one ``[SEG]`` between each two, and none from the pieces' text."""
        pieces = text.split(self.seg_token) if isinstance(text, str) else list(text)
        ids = self.encode_text(pieces[0]) if pieces[0] else []
        for piece in pieces[1:]:
            ids += [self.seg_token_id] + (self.encode_text(piece) if piece else [])
        return ids

    @property
    def seg_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.seg_token)

    def image_ids(self, image: tuple[int, int] | int) -> list[int]:
        """The token ids of one image in a prompt: its layout's block (:meth:`~self1e.model.layouts.TileLayout.block`)
        for the image's layout ``grid``, or for a number of image units (tiles). The block's special
        tokens are tokens; any other piece of it (SmolVLM's newlines) is text."""
        key = (image, len(self.tokenizer))
        ids = self._image_cache.get(key)
        if ids is None:
            vocab = self.tokenizer.get_vocab()
            ids = []
            for piece in self.image_layout.block(image):
                ids += [vocab[piece]] if piece in vocab else self._encode(piece)
            if len(self._image_cache) >= TOKEN_CACHE_SIZE:  # native resolution: a block per image shape
                self._image_cache.clear()
            self._image_cache[key] = ids
        return list(ids)

    def prompt(self, question: str, image: tuple[int, int] | int,
               history: Sequence[Mapping[str, str]] = ()) -> list[int]:
        """Token ids of a conversation up to the assistant's turn, in the checkpoint's prompt format
        (its system turn, if any): the image sits in the first user turn; ``history`` holds earlier
        turns as ``{"role": "user" | "assistant", "content": str}``. Every user turn is checked
        against ``MAX_TEXT_CHARS`` plus the format's template characters before anything is
        tokenised (ValueError). ``image``: the image's layout grid (``ImageInput.grid``), or its number
        of tiles. See :meth:`layout` for how the turns are laid out."""
        turns = [*history, {"role": "user", "content": question}]
        for k, turn in enumerate(turns):
            if turn["role"] not in ("user", "assistant"):
                raise ValueError(f"history turn {k}: role must be 'user' or 'assistant', got {turn['role']!r}")
            if k == 0 and turn["role"] != "user":
                raise ValueError("the conversation must start with a user turn")
            if turn["role"] == "user":
                what = "the message" if k == len(turns) - 1 else f"history turn {k} (user)"
                check_text(turn["content"], what, MAX_TEXT_CHARS + self.template_chars)
        system = [{"role": "system", "content": self.format.system}] if self.format.system else []
        image_ids = self.image_ids(image)
        ids: list[int] = []
        for kind, value in self.layout([*system, *turns]):
            if kind == "template":
                ids += self._encode(value)
            elif kind == "image":
                ids += image_ids
            else:  # a turn's content: user and system text stay plain text, answers keep [SEG]
                ids += self.encode_answer(value) if kind == "assistant" else self.encode_text(value)
        return ids

    def layout(self, messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
        """A conversation as ``(kind, text)`` pieces: ``"template"`` text of the chat format (its special
        tokens are tokens), ``"image"`` where the image goes, and each message's content under its
        role. With the tokenizer's chat template (when it has one) the format is the template's,
        rendered around placeholders, so the contents are never parsed by it; otherwise InternVL's
        (``<|im_start|>role\n ... <|im_end|>\n`` turns). The image opens the first user turn,
        followed by a newline, and the pieces end with the assistant's header."""
        first_user = next(k for k, m in enumerate(messages) if m["role"] == "user")
        if getattr(self.tokenizer, "chat_template", None):
            pieces = self._template_layout(messages, first_user)
            if pieces is not None:
                return pieces
        pieces: list[tuple[str, str]] = []
        for k, m in enumerate(messages):
            pieces.append(("template", f"{IM_START}{m['role']}\n"))
            if k == first_user:
                pieces += [("image", ""), ("template", "\n")]
            pieces += [(m["role"], m["content"]), ("template", f"{IM_END}\n")]
        return pieces + [("template", f"{IM_START}assistant\n")]

    def _template_layout(self, messages: Sequence[Mapping[str, str]], first_user: int) -> list[tuple[str, str]] | None:
        """:meth:`layout` through the tokenizer's chat template; None (with a warning) when the template
        fails or does not reproduce every message once, in order."""
        roles = tuple(m["role"] for m in messages)  # (they also fix first_user)
        if roles not in self._layout_cache:  # the rendering depends only on the roles: render once per shape
            self._layout_cache[roles] = self._render_placeholders(roles, first_user)
        parts = self._layout_cache[roles]
        if parts is None:
            return None
        pieces: list[tuple[str, str]] = []
        for k, text in enumerate(parts):
            if k % 2 == 0:
                if text:
                    pieces.append(("template", text))
            elif text == "image":
                pieces.append(("image", ""))
            else:
                m = messages[int(text)]
                pieces.append((m["role"], m["content"]))
        return pieces

    def _render_placeholders(self, roles: Sequence[str], first_user: int) -> list[str] | None:
        """The chat template rendered around placeholder messages, split at the placeholders (odd
        items name them: "image" or a message's index); None (with a warning) when it fails."""
        mark = "\ue000{}\ue001"  # private-use characters: no tokenizer's template or text holds them
        image = mark.format("image")
        placeholders = [{"role": role, "content": (image + "\n" if k == first_user else "") + mark.format(k)}
                        for k, role in enumerate(roles)]
        try:
            rendered = self.tokenizer.apply_chat_template(placeholders, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # a template that needs other content types: use InternVL's layout
            _warn_template(f"cannot render plain-text messages ({type(e).__name__}: {e})")
            return None
        order = ["image" if k == first_user and j == 0 else str(k)
                 for k in range(len(roles)) for j in range(1 + (k == first_user))]
        parts = re.split("\ue000(\\w+)\ue001", rendered)
        if parts[1::2] != order:
            _warn_template("does not place every message exactly once, in order")
            return None
        return parts

    def conversation(self, question: str, answer: str | Sequence[str] | None, image: tuple[int, int] | int,
                     close: bool = True,
                     answer_is_text: bool = False) -> tuple[list[int], list[int]]:
        """Token ids and labels for one user turn with the image and an optional assistant answer.
        Labels cover only the answer (and its end-of-turn when ``close``). ``answer_is_text``: the
        answer comes from a dataset (a VQA answer), so even ``[SEG]`` in it stays plain text."""
        prompt = self.prompt(question, image)
        if answer is None:
            return prompt, [IGNORE_INDEX] * len(prompt)
        ans = self.encode_text(answer) if answer_is_text else self.encode_answer(answer)
        ans += self._encode(f"{IM_END}\n") if close else []
        return prompt + ans, [IGNORE_INDEX] * len(prompt) + ans

    def rows_per_seg(self, ids: list[int], labels: list[int], start: int = 0) -> list[tuple[list[int], list[int]]]:
        """One row per ``[SEG]`` at or after ``start``: row k is cut right after the k-th ``[SEG]``
        (the last row keeps the whole sequence) and labels only the tokens since the previous
        ``[SEG]``, so the rows together label every answer token once. Under the segmentation
        attention rule (image tokens see the row's *last* ``[SEG]``) mask k then depends only on the
        tokens up to the k-th ``[SEG]``; with ``start`` given to :meth:`collate` as the rows' answer start,
        only on the prompt and the k-th object's own part of the answer. Without a ``[SEG]``: the row
        as it is."""
        seg = self.seg_token_id
        cuts = [i for i in range(start, len(ids)) if ids[i] == seg]
        if not cuts:
            return [(ids, labels)]
        rows, begin = [], 0
        for k, pos in enumerate(cuts):
            end = len(ids) if k == len(cuts) - 1 else pos + 1
            lab = [IGNORE_INDEX] * begin + labels[begin:end]
            rows.append((ids[:end], lab))
            begin = pos + 1
        return rows

    def collate(self, rows: Sequence[tuple[list[int], list[int]]], images: Sequence[ImageInput],
                image_index: Sequence[int], mask_targets: Sequence[torch.Tensor | None] | None = None,
                answer_starts: Sequence[int] | None = None) -> Batch:
        """Right-pad rows into a batch. Padding is marked by the attention mask only (labels -100).
        ``answer_starts``: where each row's answer begins (-1: not given), required for a row holding
        more than one ``[SEG]`` (ValueError), so that its objects are isolated from each other."""
        seg = self.seg_token_id
        starts = list(answer_starts) if answer_starts is not None else [-1] * len(rows)
        if len(starts) != len(rows):
            raise ValueError(f"{len(starts)} answer starts for {len(rows)} rows")
        multi = [i for i, (ids, _) in enumerate(rows) if ids.count(seg) > 1]
        if any(starts[i] < 0 for i in multi):
            raise ValueError("a row with several [SEG] needs its answer start (collate(answer_starts=...), the "
                             "start given to rows_per_seg)")
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(ids)] = 1
        return Batch(input_ids, attention, labels, torch.cat([im.pixel_values for im in images]),
                     [im.grid for im in images], torch.tensor(list(image_index), dtype=torch.long),
                     None if mask_targets is None else list(mask_targets),
                     torch.tensor(starts, dtype=torch.long) if multi else None)

    def segmentation_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                           image_index: Sequence[int] | None = None) -> Batch:
        """Teacher-forced inference batch: each text asks for a mask of its image, answered "[SEG].".
        Without ``image_index`` the i-th text belongs to the i-th image."""
        image_index = list(range(len(texts))) if image_index is None else list(image_index)
        rows = []
        for t, i in zip(texts, image_index):
            ids, _ = self.conversation(self.seg_question(t), self.format.inference_answer, images[i].grid, close=False)
            rows.append((ids, [IGNORE_INDEX] * len(ids)))  # no LM loss: inference needs neither it nor LM logits
        return self.collate(rows, images, image_index)
