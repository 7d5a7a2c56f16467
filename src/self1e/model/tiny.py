"""The tiny configuration family: random-init models and an offline tokenizer.

Tests, the demo, the shipped default model and the CPU benchmarks all build from here, so nothing
is downloaded. The tokenizer is a word-level vocabulary covering RefShapes, the prompt templates and
the backbone's special tokens; ``[SEG]`` is *not* in it: loading adds it, as for a real checkpoint.

Names: a geometry of ``TINY_SPECS`` is an InternVL model (``tiny``, ``small``, ``small112``);
``FAMILY`` or ``FAMILY-GEOMETRY`` (``qwen2_5_vl``, ``qwen3_vl-small112``) is another backbone
family at that geometry (default ``tiny``): the same widths and depths, the same LLM tokens per
image (images resized to ``image_size``² pixels, ``patch_size`` patches merged 2 x 2).
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerFast, Qwen2Config
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from self1e.model.processing import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT]

WORDS = """
a an the this that these those it is are there of in on at to with and or any all every both each
can you please segment what which where how many much color colour respond output segmentation mask
result sure yes no not image picture shape shapes object objects one ones thing
circle circles ball balls square squares box boxes triangle triangles diamond diamonds star stars
cross crosses red green blue yellow purple orange white black gray grey pink brown
small smaller smallest large larger largest big bigger biggest little tiny huge
left right top bottom upper lower middle center centre above over below under beneath behind
leftmost rightmost topmost bottommost highest lowest far furthest very most side near next
zero two three four five six seven eight nine ten first second third only other another
find show me give see user assistant system there's
""".split()
PUNCTUATION = list(".,?!:;'\"()-/")


QWEN_SPECIAL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SMOLVLM_SPECIAL_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>",
                          *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]


def build_tokenizer(extra_special: tuple[str, ...] | list[str] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (lower-cased) for the tiny models; unknown words map to ``<unk>``.
    ``extra_special``: more special tokens (another family's image tokens), after all the others."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(WORDS)) + PUNCTUATION + list(extra_special))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token=IM_END, pad_token="<|endoftext|>"
    )
    fast.add_tokens(SPECIAL_TOKENS[1:] + list(extra_special), special_tokens=True)
    return fast


@dataclass(frozen=True)
class TinySpec:
    """Geometry of one tiny model. image_size / patch_size must be a multiple of 2 (pixel shuffle)."""

    image_size: int = 56
    patch_size: int = 7
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2


TINY_SPECS = {
    "tiny": TinySpec(),  # tests: 8x8 patches, 16 LLM image tokens, 32x32 rfa mask
    "small": TinySpec(224, 14, 64, 2, 2, 96, 3, 4, 2),  # 224 px: 16x16 patches, 64 LLM image tokens
    # the same widths at 112 px: the default model's first stages, the CPU ablation
    "small112": TinySpec(112, 14, 64, 2, 2, 96, 3, 4, 2),
}


def tiny_config(name: str = "tiny", vocab_size: int = 256, image_token_id: int = 0) -> InternVLConfig:
    """An InternVLConfig of the named tiny geometry (untied embeddings, like InternVL3)."""
    if name not in TINY_SPECS:
        raise ValueError(f"unknown tiny model {name!r}; choose from {sorted(TINY_SPECS)}")
    s = TINY_SPECS[name]
    vision = InternVLVisionConfig(
        hidden_size=s.vision_hidden, num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
        intermediate_size=4 * s.vision_hidden, image_size=s.image_size, patch_size=s.patch_size,
        attention_bias=True,
    )
    text = Qwen2Config(
        vocab_size=vocab_size, hidden_size=s.text_hidden, intermediate_size=4 * s.text_hidden,
        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads, max_position_embeddings=2048, tie_word_embeddings=False,
    )
    tokens = (s.image_size // s.patch_size // 2) ** 2
    return InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id, image_seq_length=tokens,
        tie_word_embeddings=False,
    )


TINY_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "smolvlm")


def tiny_names() -> list[str]:
    """Every tiny model name (without the ``tiny:`` prefix)."""
    return [*TINY_SPECS, *TINY_FAMILIES, *(f"{f}-{g}" for f in TINY_FAMILIES for g in TINY_SPECS if g != "tiny")]


def qwen_vl_config(family: str, geometry: str, tokenizer):
    """A Qwen2.5-VL or Qwen3-VL config of a tiny geometry (M-RoPE sections for its head size;
    Qwen2.5-VL's windows smaller than the image, so its window reordering is exercised; Qwen3-VL
    with one deepstack layer)."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    s = TINY_SPECS[geometry]
    head_dim = s.text_hidden // s.text_heads
    third = head_dim // 2 // 4
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * third, third, third]}
    text = {"vocab_size": len(tokenizer), "hidden_size": s.text_hidden, "intermediate_size": 4 * s.text_hidden,
            "num_hidden_layers": s.text_layers, "num_attention_heads": s.text_heads,
            "num_key_value_heads": s.text_kv_heads, "max_position_embeddings": 2048, "head_dim": head_dim,
            "tie_word_embeddings": False, "bos_token_id": None, "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END)}
    vision = {"depth": s.vision_layers, "hidden_size": s.vision_hidden, "intermediate_size": 4 * s.vision_hidden,
              "num_heads": s.vision_heads, "patch_size": s.patch_size, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "out_hidden_size": s.text_hidden, "self1e_image_pixels": s.image_size**2}
    if family == "qwen2_5_vl":
        vision.update(window_size=4 * s.patch_size, fullatt_block_indexes=[s.vision_layers - 1])
        return Qwen2_5_VLConfig(vision_config=vision, text_config={**text, "rope_parameters": rope},
                                tie_word_embeddings=False)
    side = s.image_size // s.patch_size
    vision.update(num_position_embeddings=side * side, deepstack_visual_indexes=[0])
    text["rope_parameters"] = {**rope, "mrope_interleaved": True}
    return Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False)


def smolvlm_config(geometry: str, tokenizer):
    """A SmolVLM config of a tiny geometry, pixel shuffle by 4 (alpha = 16, as SmolVLM-256M / 500M):
    the tiny geometry's 8 x 8 patches per sub-image become 2 x 2 LLM tokens, 112 px ones 8 x 8 -> 2 x 2."""
    from transformers import SmolVLMConfig

    s = TINY_SPECS[geometry]
    vision = {"hidden_size": s.vision_hidden, "intermediate_size": 4 * s.vision_hidden,
              "num_hidden_layers": s.vision_layers, "num_attention_heads": s.vision_heads,
              "image_size": s.image_size, "patch_size": s.patch_size}
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": s.text_hidden,
            "intermediate_size": 4 * s.text_hidden, "num_hidden_layers": s.text_layers,
            "num_attention_heads": s.text_heads, "num_key_value_heads": s.text_kv_heads,
            "max_position_embeddings": 2048, "tie_word_embeddings": False, "bos_token_id": None,
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END)}
    return SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=4, tie_word_embeddings=False)


def tokenizer_for(model_type: str) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with the image tokens of a backbone family."""
    extra = {"qwen2_5_vl": QWEN_SPECIAL_TOKENS, "qwen3_vl": QWEN_SPECIAL_TOKENS, "smolvlm": SMOLVLM_SPECIAL_TOKENS}
    return build_tokenizer(extra.get(model_type, ()))


def point_image_tokens(config, tokenizer) -> None:
    """Set a config's image token ids, and its language model's padding id, to the tiny tokenizer's.
    (A real config's ``pad_token_id`` names a row of the real vocabulary; left as it is, the embedding
    layer starts that row at zero, and in the tiny vocabulary that row may be a token every prompt
    holds: SmolVLM2's 2 is the tiny ``<|im_start|>``, whose all-zero state then gave NaN gradients.)"""
    if getattr(config.text_config, "pad_token_id", None) is not None:
        config.text_config.pad_token_id = tokenizer.pad_token_id
    ids = tokenizer.convert_tokens_to_ids
    if config.model_type == "internvl":
        config.image_token_id = ids(IMG_CONTEXT)
    elif config.model_type == "smolvlm":
        config.image_token_id = ids("<image>")
    else:
        for field, token in zip(("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"),
                                QWEN_SPECIAL_TOKENS):
            setattr(config, field, ids(token))


def build_tiny_base(name: str = "tiny", seed: int = 0):
    """A randomly initialised model of a tiny name (see the module docstring) and its tokenizer
    (without ``[SEG]``)."""
    import torch

    if name in TINY_SPECS:
        tokenizer = build_tokenizer()
        image_token = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        config = tiny_config(name, vocab_size=len(tokenizer), image_token_id=image_token)
        torch.manual_seed(seed)
        return InternVLForConditionalGeneration(config).eval(), tokenizer
    family, _, geometry = name.partition("-")
    if family not in TINY_FAMILIES or (geometry or "tiny") not in TINY_SPECS:
        raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(tiny_names())}")
    from self1e.model.backbones import family as backbone_family

    tokenizer = tokenizer_for(family)
    config = smolvlm_config(geometry or "tiny", tokenizer) if family == "smolvlm" else \
        qwen_vl_config(family, geometry or "tiny", tokenizer)
    point_image_tokens(config, tokenizer)
    torch.manual_seed(seed)
    return backbone_family(family).classes()[1](config).eval(), tokenizer
