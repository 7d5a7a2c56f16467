"""Self1ePredictor: segment images from Python, one or many expressions per image, and chat.

Segmentation is one teacher-forced forward pass (prompt + "[SEG].") with no decoding. The vision
features of an image are computed once per :meth:`predict_batch` call, shared by its expressions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .model import Self1eConfig, Self1eModel
from .model.losses import resize_logits
from .processing import IGNORE_INDEX, ImageInput, to_rgb


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


def to_result(text: str, logits: torch.Tensor, size: tuple[int, int]) -> SegmentationResult:
    """Model logits (h, w) -> a result at the original ``size`` = (width, height), threshold 0."""
    full = resize_logits(logits[None].float(), (size[1], size[0]))[0].cpu().numpy()
    mask = full > 0
    score = float(torch.sigmoid(torch.from_numpy(full[mask])).mean()) if mask.any() else 0.0
    return SegmentationResult(text, mask, full, score)


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Self1ePredictor:
    """``set_image`` once, then ``predict`` / ``predict_batch`` as often as needed."""

    def __init__(self, model: Self1eModel) -> None:
        self.model = model.eval()
        self.processor = model.processor
        self._image: ImageInput | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path = "default", device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, config: Self1eConfig | None = None) -> "Self1ePredictor":
        """Load a self1e checkpoint folder (or ``"default"``). On CUDA the default dtype is bf16."""
        device = pick_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return cls(Self1eModel.from_pretrained(path, config=config, dtype=dtype, device=device))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_image(self, image) -> None:
        """Path, PIL image (any mode) or numpy array (HxW or HxWxC)."""
        self._image = self.processor.image_input(to_rgb(image))

    def predict(self, text: str) -> SegmentationResult:
        return self.predict_batch([text])[0]

    def predict_batch(self, texts: Sequence[str]) -> list[SegmentationResult]:
        """Several expressions of the current image in one batched forward pass."""
        if self._image is None:
            raise ValueError("call set_image(image) before predict")
        return self._run([self._image], list(texts), [0] * len(texts))

    def predict_many(self, images: Sequence, texts: Sequence[str]) -> list[SegmentationResult]:
        """One expression per image, all in one batch (used by evaluation)."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        inputs = [self.processor.image_input(to_rgb(im)) for im in images]
        return self._run(inputs, list(texts), list(range(len(texts))))

    @torch.inference_mode()
    def _run(self, images: list[ImageInput], texts: list[str], index: list[int]) -> list[SegmentationResult]:
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError("empty expression: every text must contain non-space characters")
        batch = self.processor.segmentation_batch(images, texts, index).to(self.device, self.model.dtype)
        out = self.model(batch)
        return [to_result(t, out.mask_logits[k], images[index[k]].size) for k, t in enumerate(texts)]

    @torch.inference_mode()
    def chat(self, question: str, max_new_tokens: int = 64) -> tuple[str, SegmentationResult | None]:
        """Free-form answer about the current image (greedy). If the answer contains [SEG], the mask
        comes from one teacher-forced pass over the prompt and the answer; otherwise None."""
        if self._image is None:
            raise ValueError("call set_image(image) before chat")
        if not question.strip():
            raise ValueError("empty question")
        p = self.processor
        ids, _ = p.conversation(question, None, p.n_tiles(self._image.grid))
        input_ids = torch.tensor([ids], device=self.device)
        gen = self.model.base.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            pixel_values=self._image.pixel_values.to(self.device, self.model.dtype),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=p.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=p.pad_id)
        new = gen[0, len(ids):].tolist()
        answer = p.tokenizer.decode(new, skip_special_tokens=False).replace("<|im_end|>", "").strip()
        if self.model.seg_token_id not in new:
            return answer, None
        cut = new.index(self.model.seg_token_id) + 1
        batch = p.collate([(ids + new[:cut], [IGNORE_INDEX] * (len(ids) + cut))], [self._image], [0]).to(self.device, self.model.dtype)
        return answer, to_result(question, self.model(batch).mask_logits[0], self._image.size)
