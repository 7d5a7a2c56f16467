"""Inference above the model: the predictor (set an image once, then segment and chat)."""
from self1e.inference.predictor import SegmentationResult, Self1ePredictor

__all__ = ["SegmentationResult", "Self1ePredictor"]
