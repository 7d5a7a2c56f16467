"""Arguments that several sub-commands share, defined once so that one idea has one flag everywhere."""
from __future__ import annotations

import argparse


def add_model(p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None = "default",
              required: bool = False) -> None:
    p.add_argument("--model", default=default, required=required, metavar="NAME_OR_DIR",
                   help="a self1e checkpoint folder, a plain InternVL -hf folder, 'default' (the shipped "
                        "RefShapes model), tiny:NAME (random init) or random:CONFIG_DIR (random weights at the "
                        "shapes of CONFIG_DIR/config.json)" + (" (default: %(default)s)" if default else ""))


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: 1 for a small model such as the shipped one, every CPU for a "
                        "large one; 0 = torch's default; also $SELF1E_THREADS)")


def add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the model's SELF1E settings, e.g. seg_attention=causal (the "
                        "self1e. prefix is optional); repeatable. Default: the checkpoint's own settings")


def add_quantize(p: argparse.ArgumentParser) -> None:
    from self1e.common.quantization import QUANTIZE_MODES

    p.add_argument("--quantize", default="none", choices=QUANTIZE_MODES,
                   help="quantized inference: int8 = int8 Linear layers of the ViT and the LLM on the CPU (the "
                        "default device then is cpu); int8-vit = the ViT's only (for small LLMs); bnb8 / nf4 = "
                        "bitsandbytes 8-bit / 4-bit NF4 on CUDA (pip install 'self1e[gpu-quant]'); the mask head "
                        "stays in float (default: %(default)s)")


def quantize_from(args: argparse.Namespace) -> str | None:
    """``--quantize`` as ``from_pretrained(quantize=...)`` takes it: None for none (also for a command
    without the option)."""
    from self1e.common.quantization import parse_quantize

    return parse_quantize(getattr(args, "quantize", None))


def settings_from(args: argparse.Namespace) -> dict:
    """The ``--set`` overrides as a mapping for ``load_model(config=...)``."""
    from self1e.model.config import Self1eConfig

    return Self1eConfig.parse_overrides(args.settings)
