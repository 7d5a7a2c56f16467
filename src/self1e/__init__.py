"""SELF1E: an InternVL MLLM as a segmenter with one [SEG] token and no mask decoder."""
__version__ = "0.1.0"
