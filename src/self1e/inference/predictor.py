"""Self1ePredictor: segment images from Python, one or many expressions per image, and chat.

As segment-anything's predictor: :meth:`Self1ePredictor.set_image` runs the vision side (ViT, pixel
shuffle, projector, the replicated full-resolution projection) once and caches it; every
``predict`` / ``predict_batch`` / ``predict_torch`` / ``chat`` on that image runs only the language
model and the head. Segmentation is one teacher-forced pass (prompt + "[SEG].") with no decoding.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from self1e.common.images import ImageLike
from self1e.model import ImageFeatures, Self1eConfig, Self1eModel, load_model
from self1e.model.losses import resize_logits
from self1e.model.processing import IGNORE_INDEX, ImageInput


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


def to_result(text: str, logits: torch.Tensor) -> SegmentationResult:
    """Full-size logits (H, W) -> a result, threshold 0."""
    full = logits.float().cpu().numpy()
    mask = full > 0
    score = float(torch.sigmoid(torch.from_numpy(full[mask])).mean()) if mask.any() else 0.0
    return SegmentationResult(text, mask, full, score)


def pick_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ValueError("empty expression: every text must contain non-space characters")
    return texts


class Self1ePredictor:
    """``set_image`` once, then ``predict`` / ``predict_batch`` / ``chat`` as often as needed."""

    def __init__(self, model: Self1eModel) -> None:
        self.model = model.eval()
        self.processor = model.processor
        self._image: ImageInput | None = None
        self._features: ImageFeatures | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "default", device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None,
                        config: Self1eConfig | Mapping[str, Any] | None = None) -> Self1ePredictor:
        """Load a model by name or folder (see :func:`self1e.model.load_model`; ``config`` overrides
        its SELF1E settings). On CUDA the default dtype is bf16."""
        device = pick_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return cls(load_model(name_or_path, config=config, dtype=dtype, device=device))

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---- the image ------------------------------------------------------------------------------
    @torch.inference_mode()
    def set_image(self, image: ImageLike) -> None:
        """Preprocess ``image`` and run the vision side once; later calls reuse the result."""
        self._image = self.processor.image_input(image)
        pixels = self._image.pixel_values.to(self.device, self.model.dtype)
        self._features = self.model.encode_images(pixels, [self._image.grid])

    def reset_image(self) -> None:
        """Forget the current image and its cached features."""
        self._image = self._features = None

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

    # ---- segmentation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_torch(self, texts: Sequence[str], original_size: bool = True) -> torch.Tensor:
        """Mask logits of the current image for each text, one batched pass. (N, H, W) float32 on
        the model's device: at the image's original size (bilinear; mask = logits > 0), or at the
        head's output grid with ``original_size=False``."""
        image, feats = self._current()
        texts = check_texts(texts)
        batch = self.processor.segmentation_batch([image], texts, [0] * len(texts)).to(self.device, self.model.dtype)
        logits = torch.stack(self.model(batch, image_features=feats).mask_logits).float()
        return resize_logits(logits, (image.size[1], image.size[0])) if original_size else logits

    def predict(self, text: str) -> SegmentationResult:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str]) -> list[SegmentationResult]:
        """Several expressions of the current image in one batched pass."""
        texts = check_texts(texts)
        return [to_result(t, lg) for t, lg in zip(texts, self.predict_torch(texts))]

    @torch.inference_mode()
    def predict_many(self, images: Sequence[ImageLike], texts: Sequence[str]) -> list[SegmentationResult]:
        """One expression per image, all in one batch (used by evaluation); the current image is untouched."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        texts = check_texts(texts)
        inputs = [self.processor.image_input(im) for im in images]
        batch = self.processor.segmentation_batch(inputs, texts).to(self.device, self.model.dtype)
        out = self.model(batch)
        return [to_result(t, resize_logits(lg[None].float(), (im.size[1], im.size[0]))[0])
                for t, lg, im in zip(texts, out.mask_logits, inputs)]

    # ---- chat -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def chat(self, question: str, max_new_tokens: int = 64) -> tuple[str, SegmentationResult | None]:
        """Free-form answer about the current image (greedy). If the answer contains [SEG], the mask
        comes from one teacher-forced pass over the prompt and the answer; otherwise None."""
        image, feats = self._current()
        if not question.strip():
            raise ValueError("empty question")
        p, model = self.processor, self.model
        ids, _ = p.conversation(question, None, p.n_tiles(image.grid))
        input_ids = torch.tensor([ids], device=self.device)
        embeds = model.embed(input_ids, feats, torch.zeros(1, dtype=torch.long, device=self.device))
        gen = model.base.generate(
            inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=p.tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=p.pad_id)
        new = gen[0].tolist()  # with inputs_embeds, generate returns only the new tokens
        answer = p.tokenizer.decode(new, skip_special_tokens=False).replace("<|im_end|>", "").strip()
        if model.seg_token_id not in new:
            return answer, None
        cut = new.index(model.seg_token_id) + 1
        rows = [(ids + new[:cut], [IGNORE_INDEX] * (len(ids) + cut))]
        batch = p.collate(rows, [image], [0]).to(self.device, model.dtype)
        logits = model(batch, image_features=feats).mask_logits[0]
        return answer, to_result(question, resize_logits(logits[None].float(), (image.size[1], image.size[0]))[0])
