"""Inference above the model: the predictor (set an image once, then segment and chat)."""
from self1e.inference.predictor import ChatResponse, SegmentationResult, Self1ePredictor, seg_phrases

__all__ = ["ChatResponse", "SegmentationResult", "Self1ePredictor", "seg_phrases"]
