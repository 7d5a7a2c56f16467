"""Quantized inference: int8 on the CPU (torch's dynamic quantization), 8-bit and 4-bit NF4 on CUDA
(bitsandbytes through transformers' ``BitsAndBytesConfig``). Modes: :mod:`self1e.common.quantization`.

What is quantized, in every mode and for every backbone family: the ``nn.Linear`` layers of the
vision tower's layers (attention and MLP; the adapter's ``vision_path``) and of the language model
(q/k/v/o projections and the MLP; ``language_path``), which hold nearly all of the compute and of
the Linear weights. What stays in float (float32 for ``int8``, the load dtype, bf16 by default, for
the bitsandbytes modes):

- the mask head (``head``: RFA / RFR, ``g``, the [SEG] transform): small, and its dot product and
  depth-to-space decide every mask pixel;
- the compression (the adapter's ``float_paths()``: InternVL's multi-modal projector, Qwen-VL's patch
  merger, and Qwen3-VL's deepstack mergers, SmolVLM's connector): its output is the head's
  full-resolution feature map ``F_V1`` / ``F_V1^HQ``, and self-replication folds it (with its
  LayerNorm, where it has one) into float weight matrices
  (:func:`self1e.model.pixel_shuffle.fold_replicated`);
- the LM head (whose argmax decides every generated token, ``[SEG]`` included) and the embeddings
  (not Linear layers), as transformers' bitsandbytes loading does by default;
- the ViT's patch embedding (a convolution) and every norm.

``int8-vit`` quantizes the vision tower's Linear layers only (the language model stays float32).

``int8`` keeps the weights of each Linear as int8 per output channel; activations are quantized per
call (dynamic quantization, torch's fbgemm / oneDNN kernels). A quantized model is for inference:
``model.train()`` raises.
"""
from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from self1e.common.quantization import CPU_MODES, GPU_MODES, QUANTIZE_MODES, parse_quantize

__all__ = ["QUANTIZE_MODES", "bnb_config", "bnb_skip_modules", "check_bnb_environment", "check_target",
           "count_parameters", "float_parts", "parse_quantize", "quantize_int8", "quantized_modules",
           "quantized_parts", "weight_bytes"]


def quantized_parts(backbone, mode: str = "int8") -> tuple[str, ...]:
    """Submodules (of Self1eModel) whose nn.Linear layers ``mode`` quantizes: the ViT's layers and the
    language model (``int8-vit``: the ViT's only; the bitsandbytes modes: as ``int8``)."""
    vit, llm = f"base.{backbone.vision_path}", f"base.{backbone.language_path}"
    return (vit,) if mode == "int8-vit" else (vit, llm)


def float_parts(backbone) -> tuple[str, ...]:
    """Submodules (of Self1eModel) that stay float in every mode: the head, the compression, the LM head."""
    return ("head", *(f"base.{p}" for p in backbone.float_paths()), "base.lm_head")


def bnb_skip_modules(backbone) -> tuple[str, ...]:
    """The float parts as transformers' bitsandbytes skip patterns, relative to the base model (a
    pattern matches a module name from its start up to a dot). The head is not part of the base."""
    return ("lm_head", *backbone.float_paths())


BNB_DESCRIPTION = {"bnb8": "LLM.int8() 8-bit", "nf4": "4-bit NF4"}
# Class names of bitsandbytes' quantized Linear modules (bitsandbytes is not imported to recognise them).
BNB_CLASSES = {"Linear8bitLt": "bnb8", "Linear4bit": "nf4"}


def _is_dynamic_linear(module: nn.Module) -> bool:
    return type(module).__name__ == "Linear" and type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def quantized_modules(model: nn.Module) -> dict[str, str]:
    """Every quantized Linear of ``model``: its qualified name -> the mode (``int8``, ``bnb8``, ``nf4``)."""
    out = {}
    for name, module in model.named_modules():
        if _is_dynamic_linear(module):
            out[name] = "int8"
        elif type(module).__name__ in BNB_CLASSES:
            out[name] = BNB_CLASSES[type(module).__name__]
    return out


def check_bnb_environment(mode: str) -> None:
    """ValueError naming everything a bitsandbytes mode lacks here: the package, accelerate (transformers
    loads bitsandbytes models through it) and a CUDA GPU."""
    problems = []
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append("bitsandbytes is not installed (pip install bitsandbytes, or pip install 'self1e[gpu-quant]')")
    if importlib.util.find_spec("accelerate") is None:
        problems.append("accelerate is not installed (pip install accelerate; transformers loads bitsandbytes "
                        "models through it)")
    if not torch.cuda.is_available():
        problems.append("it needs a CUDA GPU, and CUDA is not available here (torch.cuda.is_available() is False)")
    if problems:
        raise ValueError(f"quantize={mode!r} (bitsandbytes {BNB_DESCRIPTION[mode]}) cannot run here: "
                         + "; ".join(problems) + ". On the CPU, use quantize='int8'")


def check_target(mode: str | None, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
    """Refuse, before anything loads, a quantization that does not apply to ``device`` / ``dtype``:
    ``int8`` runs on the CPU in float32 only; ``bnb8`` / ``nf4`` need bitsandbytes and a CUDA device."""
    if mode is None:
        return
    dev = torch.device(device if device is not None else "cuda" if mode in GPU_MODES else "cpu")
    if mode in CPU_MODES:
        if dev.type != "cpu":
            raise ValueError(f"quantize={mode!r} is CPU dynamic quantization (torch's int8 kernels) and does not run "
                             f"on {dev}: on CUDA use quantize='bnb8' or 'nf4' (bitsandbytes), or no quantization")
        if dtype is not None and dtype != torch.float32:
            raise ValueError(f"quantize={mode!r} computes in float32 around its int8 weights; got dtype "
                             f"{str(dtype).removeprefix('torch.')} (leave the dtype unset)")
        return
    if mode not in GPU_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}: choose one of {', '.join(QUANTIZE_MODES)}")
    check_bnb_environment(mode)
    if dev.type != "cuda":
        raise ValueError(f"quantize={mode!r} (bitsandbytes) runs on a CUDA device, not on {dev}: use --device cuda, "
                         "or quantize='int8' on the CPU")


def bnb_config(mode: str, backbone, dtype: torch.dtype | None = None):
    """transformers' ``BitsAndBytesConfig`` for ``bnb8`` / ``nf4`` on a ``backbone`` family (an adapter
    class): the Linear layers of the ViT and the LLM quantized, the compression and the LM head
    skipped (see the module docstring); NF4 computes in ``dtype`` (bf16 by default) with double
    quantization of its scales."""
    from transformers import BitsAndBytesConfig

    skip = list(bnb_skip_modules(backbone))
    if mode == "bnb8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype or torch.bfloat16, llm_int8_skip_modules=skip)
    raise ValueError(f"quantize={mode!r} is not a bitsandbytes mode ({', '.join(GPU_MODES)})")


def _dynamic_quantization():
    """torch's eager dynamic quantization (``torch.ao.quantization``), imported without its
    deprecation notice; a torch without it gets a clear error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torch.ao import quantization
        except ImportError as e:  # a future torch may drop it
            raise ValueError(f"quantize='int8' needs torch.ao.quantization, which this torch ({torch.__version__}) "
                             f"does not have ({e}); use quantize='none'") from None
    if not hasattr(quantization, "quantize_dynamic"):
        raise ValueError(f"quantize='int8' needs torch.ao.quantization.quantize_dynamic, missing in torch "
                         f"{torch.__version__}; use quantize='none'")
    return quantization


def quantize_int8(model: nn.Module, mode: str = "int8") -> dict[str, str]:
    """Quantize, in place, the ``nn.Linear`` layers under :func:`quantized_parts` (``int8``: the ViT's
    layers and the language model; ``int8-vit``: the ViT's) of a float32 CPU
    :class:`~self1e.model.Self1eModel` of any family to int8 weights (per output channel where the
    engine allows, activations quantized per call). Returns :func:`quantized_modules`. Everything
    else (:func:`float_parts`) is untouched."""
    if mode not in CPU_MODES:
        raise ValueError(f"quantize_int8: mode must be one of {', '.join(CPU_MODES)}, got {mode!r}")
    if getattr(model, "quantization", None) is not None:
        raise ValueError(f"the model is already quantized ({model.quantization})")
    weight = model.head.g.net[0].weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"quantize='int8' needs a float32 model on the CPU, got {weight.dtype} on {weight.device}")
    ao = _dynamic_quantization()
    engine = torch.backends.quantized.engine
    if engine not in torch.backends.quantized.supported_engines or engine == "none":
        raise ValueError(f"quantize='int8': this torch has no quantized CPU engine (engine {engine!r}, supported "
                         f"{torch.backends.quantized.supported_engines})")
    qconfig = ao.default_dynamic_qconfig if engine == "qnnpack" else ao.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel)", category=UserWarning)
        for part in quantized_parts(model.backbone, mode):
            ao.quantize_dynamic(model.get_submodule(part), {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    model.quantization = mode
    return quantized_modules(model)


def _dynamic_linear_sizes(module: nn.Module) -> tuple[int, int]:
    """(parameters, bytes) of a dynamic int8 Linear: int8 weights, per-channel (or one) scale and zero
    point, and the float bias."""
    w, b = module.weight(), module.bias()
    nbytes = w.numel() * w.element_size()
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scales, zeros = w.q_per_channel_scales(), w.q_per_channel_zero_points()
        nbytes += scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
    else:
        nbytes += 16  # one float64 scale and one int64 zero point
    n = w.numel()
    if b is not None:
        n += b.numel()
        nbytes += b.numel() * b.element_size()
    return n, nbytes


def count_parameters(model: nn.Module) -> int:
    """The number of weights of ``model`` as a float model has them, also once int8 layers hold some
    of them outside ``parameters()`` (shared tensors counted once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n + sum(_dynamic_linear_sizes(m)[0] for m in model.modules() if _is_dynamic_linear(m))


def weight_bytes(model: nn.Module) -> int:
    """Bytes the weights of ``model`` take in memory: parameters and buffers (shared tensors once) plus the
    packed int8 layers' weights, scales, zero points and biases."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total + sum(_dynamic_linear_sizes(m)[1] for m in model.modules() if _is_dynamic_linear(m))
