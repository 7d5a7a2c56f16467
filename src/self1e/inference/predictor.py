"""Self1ePredictor: segment images from Python, one or many expressions per image, and chat.

As segment-anything's predictor: :meth:`Self1ePredictor.set_image` runs the vision side (ViT, pixel
shuffle, projector, the replicated full-resolution projection) once and caches it; every
``predict`` / ``predict_batch`` / ``predict_torch`` / ``chat`` on that image runs only the language
model and the head. Segmentation is one teacher-forced pass (prompt + "[SEG].") with no decoding.

Under ``seg_attention="causal"`` the language model's keys and values for the prompt up to and
including the image are also computed once per image (on the first segmentation call after
``set_image``) and reused by every later call, expanded over its expressions: only the question
and the answer run. Under the bidirectional mask (the default) image tokens attend to ``[SEG]``, so
that prefix depends on the expression and every call runs the whole prompt.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from self1e.common.images import ImageLike
from self1e.common.quantization import CPU_MODES, parse_quantize
from self1e.common.threads import apply_threads
from self1e.model import ImageFeatures, Self1eConfig, Self1eModel, load_model
from self1e.model.losses import resize_logits
from self1e.model.processing import IGNORE_INDEX, IM_END, Batch, ImageInput, check_text, multi_answer
from self1e.model.quantize import check_target, count_parameters
from self1e.model.self1e import PrefixCache


@dataclass
class SegmentationResult:
    """mask: bool (H, W) at the original image size; logits: float32 (H, W) (mask = logits > 0);
    score: mean sigmoid probability inside the mask (0 for an empty mask)."""

    text: str
    mask: np.ndarray
    logits: np.ndarray
    score: float

    @property
    def empty(self) -> bool:
        return not self.mask.any()


@dataclass
class ChatResponse:
    """One chat turn. text: the answer as the model wrote it (``[SEG]`` kept); segments: one result
    per ``[SEG]`` in the answer, in order, whose ``text`` is the phrase it answers where the answer
    names one (else the message); history: the conversation including this turn, to pass back as
    ``history=`` for the next; token_ids: the generated ids (the closing stop token dropped);
    prompt_tokens: the length of the prompt it answered (image tokens and history included)."""

    text: str
    segments: list[SegmentationResult]
    history: list[dict[str, str]]
    token_ids: list[int]
    prompt_tokens: int = 0

    @property
    def masks(self) -> list[np.ndarray]:
        return [s.mask for s in self.segments]


def check_finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` if every value is finite; NaN or inf mask logits (which would threshold to a
    silently empty or full mask) raise ValueError: the model's weights are broken."""
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model produced non-finite mask logits (NaN or inf), so its masks would be meaningless: "
                         "check its weights (e.g. for NaN / inf from a diverged training run)")
    return logits


def to_results(texts: Sequence[str], logits: torch.Tensor) -> list[SegmentationResult]:
    """Full-size logits (N, H, W) of N texts -> N results, threshold 0, each with its mean foreground
    probability as score, all in a few batched operations; non-finite logits raise ValueError
    (:func:`check_finite_logits`)."""
    full = logits.float().cpu()
    flat = full.reshape(len(full), -1)
    if not bool(torch.isfinite(flat.sum())):  # NaN / inf anywhere make the sum so (and so may huge values)
        check_finite_logits(full)
    masks = full > 0
    area = masks.reshape(len(full), -1).sum(1)
    # the foreground's probabilities summed: sigmoid - 1/2 is > 0 exactly where the logit is
    foreground = torch.sigmoid(flat).sub_(0.5).relu_().sum(1) + 0.5 * area
    scores = foreground / area.clamp(min=1)
    full_np, masks_np = full.numpy(), masks.numpy()
    return [SegmentationResult(t, masks_np[k], full_np[k], float(scores[k]) if area[k] else 0.0)
            for k, t in enumerate(texts)]


def results_at_sizes(texts: Sequence[str], logits: Sequence[torch.Tensor],
                     sizes: Sequence[tuple[int, int]]) -> list[SegmentationResult]:
    """Each text's (h, w) mask logits resized to its (H, W) size and made a result; maps of the same
    shape going to the same size are resized and thresholded together."""
    groups: dict[tuple, list[int]] = {}
    for k, (lg, size) in enumerate(zip(logits, sizes)):
        groups.setdefault((tuple(lg.shape), tuple(size)), []).append(k)
    out: list[SegmentationResult | None] = [None] * len(logits)
    for (_, size), ks in groups.items():
        full = resize_logits(torch.stack([logits[k] for k in ks]).float(), size)
        for k, r in zip(ks, to_results([texts[k] for k in ks], full)):
            out[k] = r
    return out


DEVICE_FORMS = "cpu, cuda, cuda:N (N = 0, 1, ...) or mps"


def pick_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: ``None`` -> CUDA when available, else CPU. Anything else must be one of
    :data:`DEVICE_FORMS` and available on this machine; ValueError otherwise (checked once, here,
    before a model loads)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {str(device)!r}: use {DEVICE_FORMS}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for CUDA, but CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} asked for Apple MPS, which is not available on this machine; use cpu")
    return dev


def check_texts(texts: Sequence[str]) -> list[str]:
    """The expressions as a list; an empty one, or one longer than ``MAX_TEXT_CHARS``, raises ValueError."""
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ValueError("empty expression: every text must contain non-space characters")
        check_text(t, "the expression")
    return texts


class Self1ePredictor:
    """``set_image`` once, then ``predict`` / ``predict_batch`` / ``chat`` as often as needed.

    ``reuse_prefix``: under ``seg_attention="causal"``, compute the language model's state for the
    prompt up to and including the image once per image and reuse it for every expression (the same
    masks as without, within float rounding). It never applies under the bidirectional mask, where
    image tokens attend to ``[SEG]`` and so depend on the expression."""

    def __init__(self, model: Self1eModel, reuse_prefix: bool = True) -> None:
        self.model = model.eval()
        self.processor = model.processor
        self.reuse_prefix = reuse_prefix
        self._image: ImageInput | None = None
        self._features: ImageFeatures | None = None
        self._prefix: PrefixCache | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "default", device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None,
                        config: Self1eConfig | Mapping[str, Any] | None = None,
                        threads: int | None = None, quantize: str | None = None) -> Self1ePredictor:
        """Load a model by name or folder (see :func:`self1e.model.load_model`; ``config`` overrides
        its SELF1E settings). On CUDA the default dtype is bf16. On the CPU, ``threads`` sets torch's
        thread count (None: chosen by the model's size, 0: torch's default; see
        :mod:`self1e.common.threads`). ``quantize``: ``"int8"`` (CPU; the default device then is the
        CPU), ``"bnb8"`` or ``"nf4"`` (CUDA, bitsandbytes), None / ``"none"``; see
        :mod:`self1e.model.quantize`."""
        mode = parse_quantize(quantize)
        device = pick_device("cpu" if device is None and mode in CPU_MODES else device)
        check_target(mode, device, dtype)  # a quantization that does not apply fails before the model loads
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        predictor = cls(load_model(name_or_path, config=config, dtype=dtype, device=device, quantize=mode))
        if device.type == "cpu":
            apply_threads(count_parameters(predictor.model), threads)
        return predictor

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- the image ------------------------------------------------------------------------------
    @torch.inference_mode()
    def set_image(self, image: ImageLike) -> None:
        """Preprocess ``image`` and run the vision side once; later calls reuse the result. The
        previous image's cached prompt prefix (causal models) is dropped."""
        self._prefix = None
        self._image = self.processor.image_input(image)
        pixels = self._image.pixel_values.to(self.device, self.model.dtype)
        self._features = self.model.encode_images(pixels, [self._image.grid])

    def reset_image(self) -> None:
        """Forget the current image, its cached features and its cached prompt prefix."""
        self._image = self._features = self._prefix = None

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    @property
    def original_size(self) -> tuple[int, int]:
        """(width, height) of the current image."""
        return self._current()[0].size

    def _current(self) -> tuple[ImageInput, ImageFeatures]:
        if self._image is None or self._features is None:
            raise ValueError("call set_image(image) first")
        return self._image, self._features

    def _prefix_for(self, batch: Batch) -> PrefixCache | None:
        """The current image's cached prompt prefix (the tokens up to and including ``</img>``) for a
        batch on it, computed on first use; None where it does not apply: ``reuse_prefix`` off, a
        bidirectional model, or rows that do not all start with it (they then run uncached)."""
        if not (self.reuse_prefix and self.model.supports_prefix_cache):
            return None
        if self._prefix is None:
            ends = (batch.input_ids[0] == self.processor.img_end_id).nonzero()
            if len(ends) == 0:
                return None
            self._prefix = self.model.encode_prefix(batch.input_ids[0, : int(ends[-1]) + 1], self._current()[1])
        return self._prefix if self._prefix.matches(batch) else None

    # ---- segmentation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_torch(self, texts: Sequence[str], original_size: bool = True) -> torch.Tensor:
        """Mask logits of the current image for each text, one batched pass. (N, H, W) float32 on
        the model's device: at the image's original size (bilinear; mask = logits > 0), or at the
        head's output grid with ``original_size=False``. Non-finite logits raise ValueError."""
        image, feats = self._current()
        texts = check_texts(texts)
        batch = self.processor.segmentation_batch([image], texts, [0] * len(texts)).to(self.device, self.model.dtype)
        out = self.model(batch, image_features=feats, prefix=self._prefix_for(batch))
        logits = check_finite_logits(torch.stack(out.mask_logits).float())
        return resize_logits(logits, (image.size[1], image.size[0])) if original_size else logits

    def predict(self, text: str) -> SegmentationResult:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str]) -> list[SegmentationResult]:
        """Several expressions of the current image in one batched pass."""
        texts = check_texts(texts)
        return to_results(texts, self.predict_torch(texts))

    def predict_many(self, images: Sequence[ImageLike], texts: Sequence[str]) -> list[SegmentationResult]:
        """One expression per image, all in one batch (used by evaluation); the current image is untouched."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        return [r for (r,) in self.predict_images(images, [[t] for t in texts])]

    @torch.inference_mode()
    def predict_images(self, images: Sequence[ImageLike],
                       texts: Sequence[Sequence[str]]) -> list[list[SegmentationResult]]:
        """Several images with several expressions each, in one pass: ``texts[i]`` are the
        expressions of ``images[i]``; each image is encoded once; masks at each image's size. The
        current image is untouched."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} lists of texts")
        flat = check_texts([t for group in texts for t in group])
        if not flat:
            return [[] for _ in images]
        index = [i for i, group in enumerate(texts) for _ in group]
        logits, sizes = self._logits_of(images, flat, index)
        out: list[list[SegmentationResult]] = [[] for _ in images]
        for r, i in zip(results_at_sizes(flat, logits, sizes), index):
            out[i].append(r)
        return out

    @torch.inference_mode()
    def predict_many_logits(self, images: Sequence[ImageLike],
                            texts: Sequence[str]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """:meth:`predict_many` up to the head: each text's mask logits at the head's resolution and
        the (H, W) its image has; :func:`results_at_sizes` turns them into its results. (The
        evaluation does that step in another thread, beside the next batch's forward.)"""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        return self._logits_of(images, check_texts(list(texts)), list(range(len(texts))))

    def _logits_of(self, images: Sequence[ImageLike], texts: list[str],
                   index: list[int]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        inputs = [self.processor.image_input(im) for im in images]
        batch = self.processor.segmentation_batch(inputs, texts, index).to(self.device, self.model.dtype)
        return self.model(batch).mask_logits, [(inputs[i].size[1], inputs[i].size[0]) for i in index]

    @torch.inference_mode()
    def predict_objects(self, request: str, phrases: Sequence[str]) -> list[SegmentationResult]:
        """A multi-object request ("the red circle and the blue star") answered teacher-forced with
        one ``[SEG]`` per phrase: one mask per phrase, in order (one batched pass)."""
        image, feats = self._current()
        check_texts([request, *phrases])
        p = self.processor
        question = p.seg_question(request)
        ids, _ = p.conversation(question, multi_answer(phrases), image.grid, close=False)
        start = len(p.prompt(question, image.grid))
        rows = p.rows_per_seg(ids, [IGNORE_INDEX] * len(ids), start=start)  # no labels: no LM pass
        return self._masks_for_rows(rows, list(phrases), start)

    def _masks_for_rows(self, rows: list[tuple[list[int], list[int]]], texts: list[str],
                        answer_start: int) -> list[SegmentationResult]:
        """One result per row (each ends its answer, which begins at ``answer_start``, at a [SEG]), from
        one pass on the cached image."""
        image, feats = self._current()
        batch = self.processor.collate(rows, [image], [0] * len(rows), answer_starts=[answer_start] * len(rows))
        batch = batch.to(self.device, self.model.dtype)
        out = self.model(batch, image_features=feats, prefix=self._prefix_for(batch))
        logits = torch.stack(out.mask_logits).float()
        full = resize_logits(logits, (image.size[1], image.size[0]))
        return to_results(texts, full)

    # ---- chat -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def chat(self, message: str, history: Sequence[Mapping[str, str]] | None = None, max_new_tokens: int = 64,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             seed: int | None = None) -> ChatResponse:
        """Answer ``message`` about the current image, greedily (or sampled with ``do_sample``). The
        model decides whether to segment: every ``[SEG]`` it writes gets a mask, from one
        teacher-forced pass over the prompt and its answer under the segmentation attention mask
        (one row per ``[SEG]``, see ``Self1eProcessor.rows_per_seg``). ``history`` is the previous
        response's ``history``, for another turn on the same image."""
        image, feats = self._current()
        if not isinstance(message, str) or not message.strip():
            raise ValueError("empty message: type a question or a request")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        p, model = self.processor, self.model
        history = [dict(turn) for turn in (history or [])]
        prompt = p.prompt(message, image.grid, history)
        input_ids = torch.tensor([prompt], device=self.device)
        embeds = model.embed(input_ids, feats, torch.zeros(1, dtype=torch.long, device=self.device))
        stop = [i for i in (p.tokenizer.convert_tokens_to_ids(IM_END), p.tokenizer.eos_token_id) if i is not None]
        sampling = {"do_sample": do_sample}
        if do_sample:
            sampling.update(temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)
        new = model.backbone.generate(input_ids, embeds, image, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                      pad_token_id=p.pad_id, **sampling)
        while new and new[-1] in stop + [p.pad_id]:
            new.pop()
        text = p.tokenizer.decode(new, skip_special_tokens=False).strip()
        segments = []
        if model.seg_token_id in new:
            ids = prompt + new
            rows = p.rows_per_seg(ids, [IGNORE_INDEX] * len(ids), start=len(prompt))
            phrases = seg_phrases(text, p.seg_token)
            segments = self._masks_for_rows(rows, [ph or message for ph in phrases], len(prompt))
        turn = [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return ChatResponse(text, segments, history + turn, new, len(prompt))


_LEADING = re.compile(r"^(?:sure|yes|and|it is|it's|this is|the segmentation result is|here is|here)\b[\s,:;]*", re.I)


def seg_phrases(answer: str, seg_token: str = "[SEG]") -> list[str | None]:
    """The phrase each ``[SEG]`` of an answer stands for, where the answer names one:
    "the red circle is [SEG] and the blue star is [SEG]." -> ["the red circle", "the blue star"];
    "Sure, it is [SEG]." -> [None]."""
    out: list[str | None] = []
    for piece in answer.split(seg_token)[:-1]:
        text = piece.strip(" ,.;:")
        while True:
            shorter = _LEADING.sub("", text).strip(" ,.;:")
            if shorter == text:
                break
            text = shorter
        text = re.sub(r"\s+(?:is|are|=)$", "", text).strip(" ,.;:")
        out.append(text or None)
    return out
