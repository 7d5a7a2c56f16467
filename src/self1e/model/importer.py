"""Import the SELF1E authors' released checkpoint (InternVL remote-code layout) as a self1e checkpoint.

The source folder holds an ``InternVLChatModel`` config.json (``vision_config`` + ``llm_config``),
safetensors weights under the original key names (fused ViT ``qkv``, ``mlp1``, the three
``combine_decode_proj*`` heads) and a Qwen2 tokenizer that already has ``[SEG]`` (and an unused
``[SEGT]``). Weights are renamed shard by shard into a staging ``-hf`` folder, loaded strictly through
transformers, and written with :meth:`Self1eModel.save_pretrained`. Pickle weights are refused.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken

from self1e.model.config import AUTHORS_PROMPT, Self1eConfig
from self1e.model.processing import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START
from self1e.model.self1e import Self1eModel
from self1e.model.weights import PICKLE_SUFFIXES, load_base

log = logging.getLogger(__name__)

SOURCE_ARCHITECTURES = ("InternVLChatModel", "InternVL3SELF1E")  # the base class and the authors' subclass
SUPPORTED_LLMS = ("Qwen2ForCausalLM",)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
IMPORTED_CONFIG = Self1eConfig(mask_head="rfa", seg_attention="bidirectional", use_thumbnail=False,
                               prompt=AUTHORS_PROMPT)
"""The paper's setting, prompted as the authors train and evaluate (their system turn, question and
lower-casing; no thumbnail tile)."""

# The authors' head name -> ours. Each is Linear -> GELU -> Linear with parameters at .0 and .2 (ours at
# net.0 / net.2). Their depth-to-space puts channel block k of a 4C output at sub-pixel
# (row k // 2, column k % 2), which is exactly our pixel_unshuffle's order: no row permutation is needed.
HEADS = {"combine_decode_proj_all": "f_pus_llm", "combine_decode_proj_ori": "f_pus", "combine_decode_proj": "g"}
_HEAD_KEY = re.compile(r"^(?:.*\.)?(combine_decode_proj(?:_all|_ori)?)\.([02])\.(weight|bias)$")
HEAD_PARAMS = tuple(f"{h}.{i}.{p}" for h in HEADS for i in ("0", "2") for p in ("weight", "bias"))

# Original remote-code names -> transformers' InternVL -hf names (as its saved files spell them).
# Applied in order to every ``vision_model.*`` key; the fused ``attn.qkv`` is split separately.
_VISION_RENAMES = (
    (r"^vision_model\.", "vision_tower."),
    (r"\.encoder\.layers\.(\d+)\.", r".encoder.layer.\1."),
    (r"\.embeddings\.class_embedding$", ".embeddings.cls_token"),
    (r"\.embeddings\.position_embedding$", ".embeddings.position_embeddings"),
    (r"\.embeddings\.patch_embedding\.", ".embeddings.patch_embeddings.projection."),
    (r"\.ls1$", ".lambda_1"),
    (r"\.ls2$", ".lambda_2"),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.q_norm\.", ".attention.q_norm."),
    (r"\.attn\.k_norm\.", ".attention.k_norm."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
)
_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_PROJECTOR = {"mlp1.0.": "multi_modal_projector.layer_norm.", "mlp1.1.": "multi_modal_projector.linear_1.",
              "mlp1.3.": "multi_modal_projector.linear_2."}
_EMBED, _LM_HEAD = "language_model.model.embed_tokens.weight", "language_model.lm_head.weight"

# Qwen2 settings carried over from llm_config; everything else there is remote-code or generation noise.
_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
              "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "attention_dropout",
              "rope_theta", "rope_scaling", "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id")
_TEXT_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
_VISION_REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "image_size",
                    "patch_size")


def rename_key(key: str) -> str | None:
    """The -hf name of one original (non-qkv, non-head) key, or None if the key is not InternVL's."""
    if key.startswith("vision_model."):
        for pattern, repl in _VISION_RENAMES:
            key = re.sub(pattern, repl, key)
        return key
    for old, new in _PROJECTOR.items():
        if key.startswith(old):
            return new + key[len(old):]
    if key.startswith(("language_model.model.", "language_model.lm_head.")):
        return key  # the -hf files keep these names
    return None


def convert_tensor(key: str, tensor: torch.Tensor, vision_hidden: int) -> dict[str, torch.Tensor]:
    """One original tensor -> its -hf tensors (the fused ViT qkv, rows q | k | v, becomes three)."""
    m = _QKV.match(key)
    if m is None:
        new = rename_key(key)
        assert new is not None, key  # callers only pass InternVL keys
        return {new: tensor}
    if tensor.shape[0] != 3 * vision_hidden:
        raise ValueError(f"{key} has {tensor.shape[0]} rows, expected 3 x vision hidden_size = {3 * vision_hidden}")
    layer, param = m.groups()
    prefix = f"vision_tower.encoder.layer.{layer}.attention"
    q, k, v = tensor.split(vision_hidden)
    return {f"{prefix}.q_proj.{param}": q.clone(), f"{prefix}.k_proj.{param}": k.clone(),
            f"{prefix}.v_proj.{param}": v.clone()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_source_config(src: Path) -> dict:
    """The source config.json, checked to be an InternVL remote-code model we can convert."""
    if not src.is_dir():
        raise ValueError(f"source checkpoint folder not found: {src}")
    path = src / "config.json"
    if not path.is_file():
        raise ValueError(f"{src} is not a checkpoint folder: config.json is missing")
    cfg = _read_json(path)
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") == "internvl":
        raise ValueError(f"{path} is already a transformers -hf InternVL config (model_type 'internvl'); "
                         "load it with Self1eModel.from_pretrained instead of importing it")
    if not any(a in SOURCE_ARCHITECTURES for a in archs):
        raise ValueError(f"{path}: architectures is {archs}, expected one of {list(SOURCE_ARCHITECTURES)} "
                         "(the InternVL remote-code layout of the authors' checkpoint)")
    for field in ("vision_config", "llm_config"):
        if not isinstance(cfg.get(field), dict):
            raise ValueError(f"{path}: the {field!r} section is missing")
    llm_archs = cfg["llm_config"].get("architectures") or ["(none given)"]
    if llm_archs[0] not in SUPPORTED_LLMS:
        raise ValueError(f"{path}: llm_config.architectures is {llm_archs}; only {list(SUPPORTED_LLMS)} language "
                         f"models can be imported (InternVL 2.5 / 3 on Qwen2 or Qwen2.5), not {llm_archs[0]}")
    if cfg.get("ps_version", "v1") != "v2":
        raise ValueError(f"{path}: ps_version is {cfg.get('ps_version', 'v1 (the default)')!r}; only 'v2' pixel "
                         "shuffle (InternVL 2 and later) is supported")
    if cfg.get("downsample_ratio", 0.5) != 0.5:
        raise ValueError(f"{path}: downsample_ratio is {cfg['downsample_ratio']}, expected 0.5 (2x2 pixel shuffle)")
    for section, required in (("vision_config", _VISION_REQUIRED), ("llm_config", _TEXT_REQUIRED)):
        missing = [k for k in required if k not in cfg[section]]
        if missing:
            raise ValueError(f"{path}: {section} lacks {missing}")
    size = cfg["vision_config"]["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    if cfg.get("force_image_size") not in (None, size):
        raise ValueError(f"{path}: force_image_size {cfg['force_image_size']} differs from vision_config.image_size "
                         f"{size}; only checkpoints run at their ViT's own size are supported")
    return cfg


def build_internvl_config(cfg: dict, vocab_size: int, image_token_id: int):
    """transformers' InternVLConfig for an original config dict. Field names are mapped explicitly:
    InternVLConfig accepts unknown names silently (the weights would then go missing)."""
    from transformers import InternVLConfig, Qwen2Config
    from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

    v = cfg["vision_config"]

    def as_pair(x):
        return list(x) if isinstance(x, (list, tuple)) else [x, x]

    norm_type = v.get("norm_type", "rms_norm")  # the remote-code defaults (InternViT-6B's), not transformers'
    if norm_type not in ("layer_norm", "rms_norm"):
        raise ValueError(f"vision_config.norm_type is {norm_type!r}, expected 'layer_norm' or 'rms_norm'")
    vision = InternVLVisionConfig(
        hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
        num_attention_heads=v["num_attention_heads"], num_hidden_layers=v["num_hidden_layers"],
        image_size=as_pair(v["image_size"]), patch_size=as_pair(v["patch_size"]), num_channels=v.get("num_channels", 3),
        attention_bias=v.get("qkv_bias", False), use_qk_norm=v.get("qk_normalization", True), norm_type=norm_type,
        layer_norm_eps=v.get("layer_norm_eps", 1e-6), hidden_act=v.get("hidden_act", "gelu"),
        attention_dropout=v.get("attention_dropout", 0.0), projection_dropout=v.get("dropout", 0.0),
        initializer_range=v.get("initializer_range", 0.02),
        use_absolute_position_embeddings=True, use_mean_pooling=True,  # InternViT has no final norm
    )
    text_args = {k: cfg["llm_config"][k] for k in _TEXT_KEYS if k in cfg["llm_config"]}
    text_args.update(vocab_size=vocab_size, tie_word_embeddings=False, use_cache=True)
    text = Qwen2Config(**text_args)
    grid = vision.image_size[0] // vision.patch_size[0] // 2
    return InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=image_token_id, image_seq_length=grid * grid,
        downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=cfg.get("select_layer", -1),
        vision_feature_select_strategy="default", tie_word_embeddings=False,  # it defaults to True
    )


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of a source folder (one file, or the shards named by its index)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' of tensor names to shard files")
        files = [src / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index} names weight shards that are missing from {src}: {missing}")
        return files
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    pickled = sorted(p.name for p in src.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise ValueError(f"{src} has only pickle weights {pickled[:3]}; they are never unpickled here. Convert them to "
                         "safetensors first (model.safetensors, or shards with model.safetensors.index.json)")
    raise ValueError(f"no weights in {src}: expected model.safetensors or model.safetensors.index.json with its shards")


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file, maybe truncated or corrupt ({e})") from None


def scan_weights(files: list[Path]) -> dict[str, Path]:
    """Every tensor name -> its file, with the head parameters checked and unknown keys refused."""
    where: dict[str, Path] = {}
    for f in files:
        with _open(f) as st:
            for key in st.keys():
                if key in where:
                    raise ValueError(f"tensor {key!r} is stored twice: in {where[key].name} and {f.name}")
                where[key] = f
    heads = {}
    for key in where:
        m = _HEAD_KEY.match(key)
        if m:
            name = ".".join(m.groups())
            if name in heads:
                raise ValueError(f"two copies of the head parameter {name}: {heads[name]!r} and {key!r}")
            heads[name] = key
    missing = [h for h in HEAD_PARAMS if h not in heads]
    if missing:
        raise ValueError(f"the weights in {files[0].parent} lack the SELF1E mask-head parameters {missing} "
                         f"(expected {list(HEADS)}, each with .0 and .2 weight and bias); is this a SELF1E checkpoint?")
    others = [k for k in where if k not in heads.values() and rename_key(k) is None]
    if others:
        hint = " (unmerged LoRA weights: merge them first)" if any("lora_" in k for k in others) else ""
        raise ValueError(f"the weights in {files[0].parent} hold {len(others)} tensors that are neither InternVL's nor "
                         f"the mask heads', e.g. {others[:5]}{hint}")
    if _EMBED not in where:
        raise ValueError(f"the weights in {files[0].parent} lack the token embeddings {_EMBED!r}")
    return where


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
SEG_TOKENS = ("[SEG]", "[SEGT]")  # the authors add these two, in this order, after the InternVL3 vocabulary


def load_source_tokenizer(src: Path, tokenizer_dir: str | Path | None):
    """The tokenizer to import with: ``tokenizer_dir`` (an InternVL3 checkpoint folder, remote-code or
    ``-hf``) if given, else the release's own folder, which usually has none."""
    from transformers import AutoTokenizer, Qwen2Config

    folder = Path(tokenizer_dir) if tokenizer_dir is not None else src
    if not folder.is_dir():
        raise ValueError(f"tokenizer folder not found: {folder}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        if tokenizer_dir is not None:
            raise ValueError(f"--tokenizer {folder} has no tokenizer files (expected one of {list(TOKENIZER_FILES)})")
        raise ValueError(f"{src} has no tokenizer files (the authors' training script saves none). Pass --tokenizer "
                         "DIR: the folder of the InternVL3 checkpoint the release was trained from (InternVL3-2B for "
                         "SELF1E-2B; its original remote-code folder or its -hf version); [SEG] and [SEGT] are added "
                         "to it and checked against the release's embedding rows")
    try:  # config= keeps it from reading a remote-code config.json (and from offering to run its code)
        return AutoTokenizer.from_pretrained(folder, config=Qwen2Config(), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer in {folder}: {e}") from None


def row_sources(tokenizer, rows: int, where: str) -> list[int | None]:
    """For every id of ``tokenizer``, the embedding row of the release it takes (None: a fresh row).

    The release has ``rows`` = B + 2 rows: the B ids of the InternVL3 vocabulary, then [SEG] (row B)
    and [SEGT] (row B + 1). [SEG] and [SEGT] are added to the tokenizer when missing, in that order.
    When the tokenizer carries extra tokens of its own (an ``-hf`` tokenizer's ``<video>`` at id B),
    [SEG] lands on another id: its trained row B is moved there (and [SEGT]'s likewise), and the
    extra tokens get fresh rows (the mean of the vocabulary's), so the id that "[SEG]" encodes to is
    always the row the authors trained as [SEG]. Anything else that cannot line up is refused."""
    vocab = tokenizer.get_vocab()
    for token in (IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT):
        if token not in vocab:
            raise ValueError(f"the tokenizer in {where} lacks InternVL's {token!r}: pass --tokenizer with the "
                             "InternVL3 checkpoint the release was trained from")
    base = rows - len(SEG_TOKENS)
    missing = [t for t in SEG_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    seg, segt = (tokenizer.convert_tokens_to_ids(t) for t in SEG_TOKENS)
    for token, token_id in ((IM_START, vocab[IM_START]), (IMG_CONTEXT, vocab[IMG_CONTEXT])):
        if token_id >= base:
            raise ValueError(f"{token!r} is id {token_id} in the tokenizer of {where}, past the release's "
                             f"{base}-token vocabulary (+ [SEG], [SEGT]): this tokenizer does not belong to it")
    if seg < base or segt < base:
        raise ValueError(f"[SEG] / [SEGT] are ids {seg} / {segt} in the tokenizer of {where}, inside the release's "
                         f"{base}-token vocabulary; they must come after it (rows {base} and {base + 1})")
    sources: list[int | None] = [i if i < base else None for i in range(len(tokenizer))]
    sources[seg], sources[segt] = base, base + 1
    extra = [tokenizer.convert_ids_to_tokens(i) for i, v in enumerate(sources) if v is None]
    if seg != base:
        log.warning("the tokenizer has %d token(s) of its own after the InternVL3 vocabulary (%s): [SEG] is id %d "
                    "here, so the release's trained [SEG] row %d is moved to it ([SEGT] to %d); the extra tokens "
                    "get fresh rows", len(extra), ", ".join(map(str, extra[:5])), seg, base, segt)
    return sources


def remap_rows(tensor: torch.Tensor, sources: list[int | None]) -> torch.Tensor:
    """The embedding (or LM head) matrix in the tokenizer's id order: row i is ``tensor[sources[i]]``,
    or the mean of the vocabulary's rows where ``sources[i]`` is None."""
    if sources == list(range(tensor.shape[0])):
        return tensor
    base = tensor.shape[0] - len(SEG_TOKENS)
    out = tensor[torch.tensor([0 if v is None else v for v in sources])].clone()
    fresh = [i for i, v in enumerate(sources) if v is None]
    if fresh:
        out[fresh] = tensor[:base].float().mean(0).to(tensor.dtype)
    return out


def _stored_dtype(where: dict[str, Path]) -> torch.dtype:
    with _open(where[_EMBED]) as st:
        name = st.get_slice(_EMBED).get_dtype()
    if name not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{where[_EMBED]}: {_EMBED} is stored as {name}; expected BF16, F16 or F32")
    return _SAFETENSORS_DTYPES[name]


def _shape(where: dict[str, Path], key: str) -> list[int]:
    with _open(where[key]) as st:
        return list(st.get_slice(key).get_shape())


def write_staging(files: list[Path], where: dict[str, Path], cfg: dict, staging: Path,
                  sources: list[int | None] | None = None) -> None:
    """Rename every InternVL tensor shard by shard into ``staging`` (-hf names, same dtype); the
    embedding and LM-head rows follow the tokenizer's ids (``sources``, see :func:`row_sources`)."""
    vision_hidden = cfg["vision_config"]["hidden_size"]
    tied = _LM_HEAD not in where
    if tied and not cfg["llm_config"].get("tie_word_embeddings", False):
        raise ValueError(f"the weights in {files[0].parent} lack {_LM_HEAD!r} and llm_config does not tie it to the "
                         "embeddings")
    weight_map = {}
    for i, f in enumerate(files):
        log.info("converting %s (%d/%d)", f.name, i + 1, len(files))
        out = {}
        with _open(f) as st:
            for key in st.keys():
                if _HEAD_KEY.match(key):
                    continue
                try:
                    tensor = st.get_tensor(key)
                except (SafetensorError, OSError) as e:
                    raise ValueError(f"{f}: cannot read tensor {key!r} ({e})") from None
                if key in (_EMBED, _LM_HEAD) and sources is not None:
                    tensor = remap_rows(tensor, sources)
                out.update(convert_tensor(key, tensor, vision_hidden))
                if key == _EMBED and tied:  # a tied source: keep an untied copy, as InternVL3 itself is untied
                    out[_LM_HEAD] = tensor.clone()
        name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        save_file(out, staging / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, name))
    (staging / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def read_heads(where: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The three mask heads as our ``MaskHead`` state dict (``f_pus_llm.net.0.weight``, ...)."""
    state = {}
    for key, f in where.items():
        m = _HEAD_KEY.match(key)
        if m:
            head, index, param = m.groups()
            with _open(f) as st:
                state[f"{HEADS[head]}.net.{index}.{param}"] = st.get_tensor(key)
    return state


def import_authors_checkpoint(src: str | Path, out: str | Path, dtype: torch.dtype | str | None = None,
                              tokenizer: str | Path | None = None) -> Path:
    """Convert the authors' released SELF1E checkpoint in ``src`` into a self1e checkpoint in ``out``.

    ``dtype``: the weights' dtype in ``out`` (a torch dtype or one of ``DTYPES``); default: as stored.
    ``tokenizer``: the folder to take the tokenizer from (an InternVL3 checkpoint, remote-code or
    ``-hf``) when ``src`` has none; [SEG] and [SEGT] are added and lined up with the trained rows.
    The result loads with ``Self1eModel.from_pretrained(out)`` (mask_head 'rfa', bidirectional
    segmentation attention). Raises ValueError naming the file and what was expected on bad input.
    """

    src, out = Path(src), Path(out)
    cfg = read_source_config(src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output folder {out} already exists and is not empty; choose a new folder")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    files = weight_files(src)
    where = scan_weights(files)
    rows = _shape(where, _EMBED)[0]
    if _LM_HEAD in where and _shape(where, _LM_HEAD)[0] != rows:
        raise ValueError(f"{where[_LM_HEAD]}: {_LM_HEAD} has {_shape(where, _LM_HEAD)[0]} rows but the embeddings "
                         f"have {rows}")
    tokenizer_dir = tokenizer
    tokenizer = load_source_tokenizer(src, tokenizer_dir)
    sources = row_sources(tokenizer, rows, str(tokenizer_dir or src))
    if cfg["llm_config"].get("vocab_size", rows) != rows:
        log.info("llm_config.vocab_size is %s; using the %d embedding rows stored",
                 cfg["llm_config"]["vocab_size"], rows)
    config = build_internvl_config(cfg, len(sources), tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
    dtype = dtype or _stored_dtype(where)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        write_staging(files, where, cfg, staging, sources)
        config.save_pretrained(staging)
        try:
            base = load_base(staging, dtype, "sdpa")
        except ValueError as e:
            raise ValueError(f"the weights converted from {src} do not fit the InternVL model described by its "
                             f"config.json: {e}") from None
        model = Self1eModel(base, tokenizer, IMPORTED_CONFIG)
        assert base.get_input_embeddings().num_embeddings == len(sources), "one row per tokenizer id"
        try:
            model.head.load_state_dict(read_heads(where), strict=True)
        except RuntimeError as e:
            raise ValueError(f"the mask heads in {src} do not fit the LLM hidden size "
                             f"{config.text_config.hidden_size}: {e}") from None
        model.save_pretrained(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("imported %s -> %s ([SEG] id %d = trained row %d, %d vocabulary rows, %s)", src, out,
             model.seg_token_id, sources[model.seg_token_id], len(sources), dtype)
    return out
