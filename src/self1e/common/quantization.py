"""The names of the quantized-inference modes, without torch (the command line's choices come from here).

- ``none``: the weights as stored (float32 on the CPU, bf16 on CUDA by default).
- ``int8``: CPU only. The ``nn.Linear`` layers of the ViT and of the language model get int8 weights
  (per output channel) with activations quantized on the fly, through torch's dynamic quantization;
  the mask head, the projector, the LM head and the embeddings stay float32. See
  :mod:`self1e.model.quantize`.
- ``int8-vit``: CPU only, as ``int8`` on the ViT's Linear layers alone; the language model stays float32.
  For small language models, whose narrow layers int8 hurts most (the shipped model's is 96 wide).
- ``bnb8`` / ``nf4``: CUDA only, through bitsandbytes (``pip install 'self1e[gpu-quant]'``): the same
  Linear layers as LLM.int8() 8-bit or 4-bit NF4 weights, loaded by transformers' ``BitsAndBytesConfig``;
  the mask head, the projector and the LM head stay bf16.
"""
from __future__ import annotations

QUANTIZE_MODES = ("none", "int8", "int8-vit", "bnb8", "nf4")
CPU_MODES = ("int8", "int8-vit")
GPU_MODES = ("bnb8", "nf4")


def parse_quantize(value: str | None) -> str | None:
    """``value`` as a quantization mode: None for ``None`` / ``"none"``, else one of ``int8``, ``int8-vit``,
    ``bnb8``, ``nf4``; ValueError naming the choices for anything else."""
    if value is None:
        return None
    mode = value.strip().lower() if isinstance(value, str) else value
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {value!r}: choose one of {', '.join(QUANTIZE_MODES)}")
    return None if mode == "none" else mode
