"""Each backbone's recipe at its real shapes, on CPU (InternVL3-2B, Qwen2.5-VL-3B, Qwen3-VL-2B):
random weights built from the config.json shipped in ``configs/models/``, the recipe's LoRA (every
target checked to exist), gradient checkpointing and two training steps in bfloat16. Prints trainable
and total parameters and the peak memory of the process. Not part of ``make test`` (bfloat16 matrix
products on a CPU without native bf16 take many minutes at these shapes): ``make test-realsize`` runs
it and prints them, with the CPU's matrix-product speed in that dtype and in float32.
``SELF1E_REALSIZE_DTYPE=float32`` runs the same steps in float32, for a CPU whose bfloat16 is too slow.
The same recipe steps run in bfloat16 on each family's tiny model in ``make test``, and the recipes'
LoRA targets are checked at the real shapes on the meta device there too."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest
import torch

from self1e.model import load_model
from self1e.train.config import load_config
from self1e.train.setup import build_batches, check_lora_targets, configure_trainable

ROOT = Path(__file__).resolve().parents[2]
DTYPE = getattr(torch, os.environ.get("SELF1E_REALSIZE_DTYPE", "bfloat16"))
# "sgd": plain SGD instead of the recipe's AdamW, without its two float32 moments per trainable weight
# (for a machine whose memory the real shapes plus AdamW's state exceed; the forward, backward, LoRA
# and train_full are the recipe's)
OPTIMIZER = os.environ.get("SELF1E_REALSIZE_OPTIMIZER", "adamw")


def matmul_gflops(dtype: torch.dtype) -> float:
    """This CPU's speed on one (512 x 1536) @ (1536 x 8960) product, InternVL3-2B's MLP shape."""
    a, b = torch.randn(512, 1536, dtype=dtype), torch.randn(1536, 8960, dtype=dtype)
    a @ b
    start = time.perf_counter()
    a @ b
    return 2 * 512 * 1536 * 8960 / (time.perf_counter() - start) / 1e9


# recipe, model geometry folder, (ViT width, ViT layers, LLM width, LLM layers, vocabulary), parameters
# (billions, LoRA adapters included in the two-step test), image size (a tile, or a square image after resizing)
GEOMETRIES = {
    "internvl3-2b": ("internvl3_2b.yaml", "internvl3-2b-hf", (1024, 24, 1536, 28, 151674), (2.0, 2.6), 448),
    "qwen2.5-vl-3b": ("qwen2_5_vl_3b.yaml", "qwen2_5-vl-3b-instruct", (1280, 32, 2048, 36, 151936), (3.5, 4.0), 448),
    "qwen3-vl-2b": ("qwen3_vl_2b.yaml", "qwen3-vl-2b-instruct", (1024, 24, 2048, 28, 151936), (1.9, 2.4), 448),
    "smolvlm2-2.2b": ("smolvlm2_2b.yaml", "smolvlm2-2.2b-instruct", (1152, 27, 2048, 24, 49280), (2.0, 2.7), 384),
}


def vit_depth(vision_config) -> int:
    return getattr(vision_config, "num_hidden_layers", None) or vision_config.depth


def two_lora_steps(recipe: str, model_name: str, dtype: torch.dtype, shapes=None, image_size=None,
                   optimizer_name: str = "adamw"):
    """The recipe's LoRA, gradient checkpointing and two AdamW (or ``"sgd"``) steps on ``model_name``
    in ``dtype``; every LoRA target must adapt a module in every layer. (model, trainable parameters, losses)."""
    cfg = load_config(ROOT / "configs" / recipe,
                      [f"model={model_name}", "data=[refshapes:train:8:0]", "batch_size=1", "expressions_per_image=1",
                       "num_workers=0", "val=null"])
    model = load_model(cfg.model, config=cfg.self1e, dtype=dtype)
    vit, llm = model.base.config.vision_config, model.base.config.text_config
    depths = (vit_depth(vit), llm.num_hidden_layers)
    if shapes is not None:
        assert (vit.hidden_size, depths[0], llm.hidden_size, depths[1], llm.vocab_size) == shapes
        assert model.processor.image_size == image_size
    counts = check_lora_targets(model, cfg.lora)
    assert counts == {**{f"llm_targets.{t}": depths[1] for t in cfg.lora.llm_targets},
                      **{f"vit_targets.{t}": depths[0] for t in cfg.lora.vit_targets}}  # each target in every layer
    model.base.activation_checkpointing_enable({"use_reentrant": False})  # as the loop does
    trainable = configure_trainable(model, cfg.lora)
    model.train()
    batches = iter(build_batches(cfg, model, 0, 1))
    if optimizer_name not in ("adamw", "sgd"):
        raise ValueError(f"SELF1E_REALSIZE_OPTIMIZER: adamw or sgd, not {optimizer_name!r}")
    optimizer = (torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas) if optimizer_name == "adamw"
                 else torch.optim.SGD(trainable, lr=cfg.lr))
    before = [p.detach().clone() for p in trainable[:4]]
    losses = []
    for _ in range(2):
        out = model(next(batches))
        assert out.mask_loss is not None and out.lm_loss is not None
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainable[:4]))  # the step moved weights
    assert all(p.dtype == dtype for p in model.parameters())
    return model, trainable, losses


@pytest.mark.slow
@pytest.mark.realsize
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_recipe_two_lora_steps_at_real_geometry_on_cpu(geometry):
    recipe, folder, shapes, billions, image_size = GEOMETRIES[geometry]
    print(f"\nmatrix products on this CPU: {matmul_gflops(DTYPE):.1f} GFLOP/s in {str(DTYPE)[6:]}, "
          f"{matmul_gflops(torch.float32):.1f} in float32", flush=True)
    start = time.time()
    model, trainable, losses = two_lora_steps(recipe, f"random:{ROOT / 'configs' / 'models' / folder}", DTYPE,
                                              shapes, image_size, OPTIMIZER)
    n_train, n_all = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rank = load_config(ROOT / "configs" / recipe, []).lora.r
    print(f"\n{geometry} geometry, {str(DTYPE)[6:]}, {OPTIMIZER}, LoRA r{rank}: "
          f"{n_train / 1e6:.1f} M trainable of {n_all / 1e6:.1f} M parameters; losses {losses[0]:.3f}, "
          f"{losses[1]:.3f}; peak memory {peak_gib:.1f} GiB; {time.time() - start:.0f} s")
    assert billions[0] * 1e9 < n_all < billions[1] * 1e9 and 0 < n_train < n_all / 2


TINY_OF = {"internvl3-2b": "tiny:small", "qwen2.5-vl-3b": "tiny:qwen2_5_vl", "qwen3-vl-2b": "tiny:qwen3_vl",
           "smolvlm2-2.2b": "tiny:smolvlm"}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_recipe_two_lora_steps_in_bfloat16_at_tiny_geometry(geometry):
    """The same two steps in bfloat16 on the family's tiny model (in ``make test``): the dtype path of
    every recipe (LoRA, train_full, gradient checkpointing, the head and its losses) at tiny widths,
    since this CPU's bfloat16 is too slow for the real shapes."""
    _, trainable, losses = two_lora_steps(GEOMETRIES[geometry][0], TINY_OF[geometry], torch.bfloat16)
    assert trainable and losses[0] > 0


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_recipe_lora_targets_and_train_full_exist_at_real_geometry(geometry):
    """Without weights (the model built on the meta device, seconds): every LoRA target of the recipe
    adapts a module in every layer of the real model, and every train_full module exists."""
    import re

    from self1e.model.backbones import family
    from self1e.model.weights import load_base_config
    from self1e.train.setup import for_backbone, lora_scopes

    recipe, folder, shapes, billions, _ = GEOMETRIES[geometry]
    config = load_base_config(ROOT / "configs" / "models" / folder)
    adapter = family(config.model_type)
    with torch.device("meta"):
        base = adapter.classes()[1](config)
    backbone = adapter(base)
    lora = for_backbone(load_config(ROOT / "configs" / recipe, []).lora, backbone)
    names = [n for n, _ in base.named_modules()]
    for key, scope in lora_scopes(backbone).items():
        layers = shapes[3] if key == "llm_targets" else shapes[1]
        for target in getattr(lora, key):
            pattern = re.compile(scope + f"({target})")
            assert sum(bool(pattern.fullmatch(n)) for n in names) == layers, (key, target)
    assert set(lora.train_full) <= set(names)
    assert billions[0] * 1e9 < sum(p.numel() for p in base.parameters()) < billions[1] * 1e9
