"""Self1eModel: SELF1E around a transformers-native MLLM (InternVL, Qwen2.5-VL, Qwen3-VL, SmolVLM).

The base model is used through its own submodules (vision tower, compression, language model, LM
head), reached through its backbone adapter (:mod:`self1e.model.backbones`); we only re-run its
image-feature path to keep the full-resolution ViT features, and pass a custom 4D attention mask
to the language model.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from torch import nn
from transformers import DynamicCache

from self1e.model import weights
from self1e.model.attention import last_index, seg_attention_mask
from self1e.model.backbones import backbone_for
from self1e.model.config import Self1eConfig
from self1e.model.head import MaskHead
from self1e.model.losses import mask_loss
from self1e.model.processing import IGNORE_INDEX, Batch, Self1eProcessor

log = logging.getLogger(__name__)



@dataclass
class ImageFeatures:
    """What the vision side computes for I images; reusable across forward passes.

    Per image: tokens (n, C) the LLM inputs at its image tokens; grids: its layout's grid (InternVL:
    tiles; native resolution: patches); f_v1 (H1, W1, C) the compressed features on the LLM's token
    grid (tiled layouts: stitched over the tiles, thumbnail excluded), f_v1_hq (f*H1, f*W1, C) the
    self-replicated full-resolution projection (None when the head does not use it); extras: the
    language model's other image inputs (Qwen3-VL's deepstack features), or None.
    """

    tokens: list[torch.Tensor]
    grids: list[tuple[int, int]]
    f_v1: list[torch.Tensor]
    f_v1_hq: list[torch.Tensor | None]
    extras: list[list[torch.Tensor]] | None = None


@dataclass
class Self1eOutput:
    """loss terms (None without targets); lm_logits: (B, L, V) or None; mask_logits: one (H, W)
    tensor per row that contains [SEG] (rows listed in seg_rows); aux_logits likewise or None."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    mask_loss: torch.Tensor | None
    lm_logits: torch.Tensor | None
    mask_logits: list[torch.Tensor]
    aux_logits: list[torch.Tensor] | None
    seg_rows: torch.Tensor


@dataclass
class PrefixCache:
    """The language model's state for tokens that every row of a batch starts with (the prompt up to
    and including one image), from :meth:`Self1eModel.encode_prefix`, for reuse by
    ``forward(batch, prefix=...)``. Only under ``seg_attention="causal"``: no prefix token then
    attends to anything after it, so its keys, values and outputs do not depend on the expression.

    input_ids: (P,) the prefix; image_index: the image (in the ``ImageFeatures`` it was computed
    with) whose tokens it holds; key_values: per LLM layer (keys, values), each (1, kv_heads, P, d),
    at positions 0 .. P-1; hidden: (1, P, C) the LLM's final-norm outputs at those positions (the
    head reads the image tokens' ones)."""

    input_ids: torch.Tensor
    image_index: int
    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    hidden: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    def matches(self, batch: Batch) -> bool:
        """Every row of ``batch`` starts with this prefix (no padding in it), on this image, and has
        at least one token after it."""
        ids, p = batch.input_ids, self.length
        return (ids.shape[1] > p and bool((batch.image_index == self.image_index).all())
                and bool(batch.attention_mask[:, :p].bool().all())
                and torch.equal(ids[:, :p], self.input_ids.to(ids.device).expand(ids.shape[0], -1)))

    def expand(self, rows: int, config) -> DynamicCache:
        """A fresh cache holding the prefix's keys and values for ``rows`` rows (the LLM's forward
        appends to the cache it is given, so each pass needs its own)."""
        cache = DynamicCache(config=config)
        for layer, (keys, values) in enumerate(self.key_values):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
        return cache


def _cache_kwarg(language_model: nn.Module) -> str:
    """The name under which this transformers version's language model takes a cache (``cache``
    since transformers 5.x renamed it; ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"


def add_seg_token(tokenizer, seg_token: str) -> int:
    """Add ``seg_token`` as one special token if missing; check it encodes to exactly one id."""
    if seg_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(seg_token, special=True, normalized=False)], special_tokens=True)
    seg_id = tokenizer.convert_tokens_to_ids(seg_token)
    for probe in (seg_token, f"Sure, it is {seg_token}."):
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        if ids.count(seg_id) != 1 or (probe == seg_token and ids != [seg_id]):
            raise ValueError(f"{seg_token!r} does not encode to exactly one token id in {probe!r}: {ids}")
    return seg_id


def resolve_settings(saved: Self1eConfig | None, config: Self1eConfig | Mapping[str, Any] | None) -> Self1eConfig:
    """The SELF1E settings a model is built with: a full ``config`` as given; otherwise the saved
    settings (the defaults when there are none) with the fields of a ``config`` mapping replaced."""
    if isinstance(config, Self1eConfig):
        return config
    base = saved or Self1eConfig()
    if not config:
        return base
    over = dict(config)
    if isinstance(over.get("prompt"), Mapping):  # prompt fields replace those of the saved format
        over["prompt"] = {**asdict(base.prompt), **over["prompt"]}
    return Self1eConfig.from_dict({**base.to_dict(), **over})


class Self1eModel(nn.Module):
    """An MLLM (InternVL, Qwen2.5-VL, Qwen3-VL, SmolVLM) + the SELF1E mask head. Build with
    :meth:`from_pretrained` or :meth:`from_base`; ``backbone`` is the family's adapter."""

    def __init__(self, base: nn.Module, tokenizer, config: Self1eConfig) -> None:
        super().__init__()
        self.base = base
        self.backbone = backbone_for(base)
        self.tokenizer = tokenizer
        self.config = config
        self.seg_token_id = add_seg_token(tokenizer, config.seg_token)
        emb = base.get_input_embeddings()
        if self.seg_token_id >= emb.num_embeddings:
            old = emb.num_embeddings
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():  # new rows (in and out) start at the mean of the old ones
                for matrix in (base.get_input_embeddings().weight, base.get_output_embeddings().weight):
                    matrix[old:] = matrix[:old].mean(0)
        self.image_token_id = self.backbone.image_token_id
        # None, or the quantize mode the weights were loaded / converted with (self1e.model.quantize)
        self.quantization: str | None = None
        self.head = MaskHead(base.config.text_config.hidden_size, config.mask_head, self.backbone.factor)
        self.head.to(device=emb.weight.device, dtype=emb.weight.dtype)
        self._make_processor()

    def _make_processor(self) -> None:
        c = self.config
        self.processor = Self1eProcessor(self.tokenizer, seg_token=c.seg_token, loss_short_side=c.loss_short_side,
                                         prompt_format=c.prompt, layout=self.backbone.layout(c))

    def train(self, mode: bool = True) -> Self1eModel:
        """As ``nn.Module.train``; a quantized model (``quantization`` set) refuses training mode."""
        if mode and self.quantization is not None:
            raise ValueError(f"this model is quantized ({self.quantization}) for inference only and cannot be "
                             "trained: load it without quantize= to train or fine-tune it")
        return super().train(mode)

    def set_image_size(self, size: int) -> None:
        """InternVL: move the ViT to ``size`` x ``size`` tiles (its absolute position embeddings
        resampled, bicubic, class token kept, to the new patch grid); native-resolution backbones:
        resize images to about ``size`` x ``size`` pixels. The configs and processor follow, so a
        checkpoint trained at one resolution starts fine-tuning at another."""
        self.backbone.set_image_size(size)
        self._make_processor()

    def add_llm_layers(self, n: int, seed: int = 0) -> None:
        """Append ``n`` decoder layers to the language model, each starting as the identity: its
        attention output and MLP down projections are zero, so every output of the model is unchanged
        until training moves them (the rest initialised as the model's own init does, from ``seed``).
        A trained small model then continues with more depth; the configs follow (saved with it)."""
        if n < 1:
            raise ValueError(f"add_llm_layers: n must be >= 1, got {n}")
        lm = self.backbone.language_model
        text = self.base.config.text_config
        types = list(getattr(text, "layer_types", None) or [])
        if types and any(t != "full_attention" for t in types):
            raise ValueError(f"add_llm_layers: only language models with full attention in every layer, got {types}")
        ref = lm.layers[-1]
        text.num_hidden_layers = len(lm.layers) + n
        if types:
            text.layer_types = types + ["full_attention"] * n
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for _ in range(n):
                layer = type(ref)(text, layer_idx=len(lm.layers))
                for module in layer.modules():
                    self.base._init_weights(module)
                nn.init.zeros_(layer.self_attn.o_proj.weight)
                nn.init.zeros_(layer.mlp.down_proj.weight)
                lm.layers.append(layer.to(ref.input_layernorm.weight.device, ref.input_layernorm.weight.dtype))

    def add_vit_layers(self, n: int, seed: int = 0) -> None:
        """Append ``n`` vision-encoder layers, each the identity at first (InternVL; the vision side of
        :meth:`add_llm_layers`: every output is unchanged until training moves them)."""
        if n < 1:
            raise ValueError(f"add_vit_layers: n must be >= 1, got {n}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.backbone.add_vit_layers(n)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_base(cls, base, tokenizer, config: Self1eConfig | None = None) -> Self1eModel:
        """Wrap an in-memory base model (a family of :mod:`self1e.model.backbones`); adds [SEG] and
        fresh mask heads."""
        return cls(base, tokenizer, config or Self1eConfig())

    @classmethod
    def from_pretrained(cls, path: str | Path, config: Self1eConfig | Mapping[str, Any] | None = None,
                        dtype: torch.dtype | None = None, attn_implementation: str = "sdpa",
                        device: str | torch.device | None = None, new_head: bool = False,
                        quantization_config=None) -> Self1eModel:
        """Load a self1e checkpoint folder (or ``"default"``): everything restored; or a plain ``-hf``
        folder of a supported family: [SEG] added, embeddings resized, fresh heads attached.

        ``config``: None keeps the checkpoint's own SELF1E settings (the defaults for a plain folder);
        a mapping overrides single fields on top of them (``{"seg_attention": "causal"}``); a full
        :class:`Self1eConfig` replaces them. ``quantization_config`` (a transformers ``BitsAndBytesConfig``,
        see :mod:`self1e.model.quantize`) loads the base quantized straight onto ``device``."""
        path = weights.resolve_model_path(path)
        saved = weights.saved_settings(path)
        settings = resolve_settings(saved, config)
        base = weights.load_base(path, dtype, attn_implementation, quantization_config=quantization_config,
                                 device=device)
        model = cls(base, weights.load_tokenizer(path), settings)
        if saved is not None and new_head:  # e.g. a warm start of another ablation rung
            log.info("%s: its backbone and LLM with a fresh %s mask head (new_head)", path, settings.mask_head)
        elif saved is not None:
            weights.load_head(model.head, path, settings.mask_head)
        else:
            log.info("loaded a plain %s checkpoint from %s: added %s and fresh mask heads",
                     model.backbone.model_type, path, settings.seg_token)
        if device is not None and quantization_config is None:  # a quantized base is loaded onto its device
            model.to(device)
        return model.eval()

    def save_pretrained(self, directory: str | Path) -> None:
        """safetensors weights + the base model's config + tokenizer + our config (no pickle anywhere)."""
        weights.save_folder(self.base, self.tokenizer, self.head, self.config, Path(directory))

    @property
    def device(self) -> torch.device:
        return self.head.g.net[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.g.net[0].weight.dtype

    # ---- features -------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, grids: list[tuple[int, int]]) -> ImageFeatures:
        """The vision side for the images whose layout grids are ``grids``: their LLM tokens and the
        maps the head reads. pixel_values: the images' :class:`ImageInput` pixel values, concatenated."""
        out = self.backbone.encode(pixel_values.to(self.dtype), list(grids), self.processor.image_layout,
                                   self.head.needs_full_resolution)
        return ImageFeatures(out.tokens, list(grids), out.f_v1, out.f_v1_hq, out.extras)

    def embed(self, input_ids: torch.Tensor, feats: ImageFeatures, image_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each row's image tokens replaced by its image's features.
        input_ids: (B, L); image_index: (B,) image of each row in ``feats`` -> (B, L, C)."""
        embeds = self.base.get_input_embeddings()(input_ids)
        rows = [feats.tokens[i] for i in image_index.tolist()]
        image_pos = input_ids == self.image_token_id
        counts = image_pos.sum(1).tolist()
        for r, (row, c) in enumerate(zip(rows, counts)):
            if row.shape[0] != c:
                raise ValueError(f"row {r} has {c} image tokens but its image gives {row.shape[0]} features")
        return embeds.masked_scatter(image_pos[..., None], torch.cat(rows).to(embeds.dtype))

    def _llm(self, embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             feats: ImageFeatures, image_index: torch.Tensor, bidirectional: bool, prefix: PrefixCache | None = None,
             answer_start: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The LLM's final-norm outputs (B, L, C). With ``prefix`` only the tokens after it run, on
        its cached keys and values; the mask and positions are the uncached pass's rows for them.
        ``positions``: the backbone's (1D, or M-RoPE over the image's grid), computed when not given.
        ``answer_start``: isolate the objects of each answer (see :func:`seg_attention_mask`)."""
        mask = seg_attention_mask(input_ids, attention_mask, self.image_token_id, self.seg_token_id, embeds.dtype,
                                  bidirectional, answer_start)
        if positions is None:
            positions = self.backbone.positions(input_ids, attention_mask, feats.grids, image_index)
        lm = self.backbone.language_model
        if prefix is None:
            extra = self.backbone.llm_inputs(input_ids, feats.extras, image_index)
            return lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                      **extra).last_hidden_state
        p, rows = prefix.length, embeds.shape[0]
        extra = self.backbone.llm_inputs(input_ids[:, p:], feats.extras, image_index)
        out = lm(inputs_embeds=embeds[:, p:], attention_mask=mask[:, :, p:], position_ids=positions[..., p:],
                 use_cache=True, **{_cache_kwarg(lm): prefix.expand(rows, lm.config)}, **extra)
        return torch.cat([prefix.hidden.expand(rows, -1, -1), out.last_hidden_state], 1)

    @property
    def supports_prefix_cache(self) -> bool:
        """Whether a prompt prefix's LLM state can be computed once and reused (:meth:`encode_prefix`):
        only under ``seg_attention="causal"``. Under the bidirectional mask image tokens attend to the
        row's ``[SEG]``, so their states depend on the expression. (And only with full attention in
        every layer, which InternVL's language models have.)"""
        types = getattr(self.base.config.text_config, "layer_types", None) or ["full_attention"]
        return self.config.seg_attention == "causal" and all(t == "full_attention" for t in types)

    def encode_prefix(self, input_ids: torch.Tensor, feats: ImageFeatures, image_index: int = 0) -> PrefixCache:
        """Run the LLM once over ``input_ids`` (P,), a prompt prefix that holds the whole image
        ``image_index`` of ``feats`` (e.g. up to and including ``</img>``), under the causal mask, and
        keep its keys, values and outputs for ``forward(batch, prefix=...)``. ValueError unless
        :attr:`supports_prefix_cache`."""
        if not self.supports_prefix_cache:
            raise ValueError(f"a prompt prefix can be reused only under seg_attention='causal' (this model uses "
                             f"{self.config.seg_attention!r}: image tokens attend to [SEG], so they depend on the "
                             "expression)")
        ids = input_ids.reshape(1, -1).to(self.device)
        ones = torch.ones_like(ids)
        index = torch.tensor([image_index], device=self.device)
        embeds = self.embed(ids, feats, index)
        mask = seg_attention_mask(ids, ones, self.image_token_id, self.seg_token_id, embeds.dtype, False)
        lm = self.backbone.language_model
        cache = DynamicCache(config=lm.config)
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=self.backbone.positions(ids, ones, feats.grids,
                                                                                                 index),
                 use_cache=True, **{_cache_kwarg(lm): cache}, **self.backbone.llm_inputs(ids, feats.extras, index))
        key_values = tuple((layer.keys, layer.values) for layer in cache.layers)
        return PrefixCache(ids[0], int(image_index), key_values, out.last_hidden_state)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, batch: Batch, image_features: ImageFeatures | None = None, return_lm_logits: bool = False,
                with_aux: bool | None = None, prefix: PrefixCache | None = None) -> Self1eOutput:
        """One teacher-forced pass. Losses are computed when ``batch.labels`` has answer tokens
        (LM loss) and ``batch.mask_targets`` has targets (mask loss). ``image_features`` (from
        :meth:`encode_images`) replace ``batch.pixel_values``, so one image encoding serves many
        passes; ``batch.image_index`` then indexes its images.

        LM logits (``return_lm_logits``) and the LM loss come from the same pass, with or without
        labels: under the bidirectional mask with ``causal_lm_loss`` (the default) a second, plain
        causal pass, so they never see an answer token through the image tokens (and match what
        generation sees); otherwise the segmentation pass, except that it never isolates the objects
        of an answer (``isolate_objects``: a second pass then, without it). Each row containing
        ``[SEG]`` gives one mask, for its last ``[SEG]``, read from the state before it.

        ``prefix`` (from :meth:`encode_prefix` on the same ``image_features``; causal models only):
        every row starts with it, and the LLM runs only on what follows, on its cached keys and values.
        ValueError when a row does not start with it."""
        if prefix is not None and not (self.supports_prefix_cache and prefix.matches(batch)):
            raise ValueError("prefix: reusable only under seg_attention='causal', by rows that all start with its "
                             "tokens on its image and go on after it")
        with_aux = self.training if with_aux is None else with_aux
        feats = image_features if image_features is not None else self.encode_images(batch.pixel_values, batch.grids)
        embeds = self.embed(batch.input_ids, feats, batch.image_index)
        bidirectional = self.config.seg_attention == "bidirectional"
        isolate = batch.answer_start if self.config.isolate_objects else None
        positions = self.backbone.positions(batch.input_ids, batch.attention_mask, feats.grids, batch.image_index)
        hidden = self._llm(embeds, batch.input_ids, batch.attention_mask, feats, batch.image_index, bidirectional,
                           prefix, isolate, positions)

        has_labels = bool((batch.labels != IGNORE_INDEX).any())
        lm_logits = lm_loss = None
        if return_lm_logits or has_labels:
            # A causal pass for the LM loss, so predicting [SEG] cannot peek at [SEG] through the image;
            # and never isolated objects, so an answer's words are predicted from the whole answer.
            lm_bidirectional = bidirectional and not self.config.causal_lm_loss
            own_pass = lm_bidirectional != bidirectional or isolate is not None
            lm_hidden = self._llm(embeds, batch.input_ids, batch.attention_mask, feats, batch.image_index,
                                  lm_bidirectional, prefix, positions=positions) if own_pass else hidden
            if return_lm_logits:
                lm_logits = self.base.lm_head(lm_hidden)
            if has_labels:  # the LM head only where a label is (exact; avoids B x L x V logits)
                keep = batch.labels[:, 1:] != IGNORE_INDEX
                if lm_logits is not None:
                    scored = lm_logits[:, :-1][keep]
                else:
                    scored = self.base.lm_head(lm_hidden[:, :-1][keep])
                lm_loss = F.cross_entropy(scored.float(), batch.labels[:, 1:][keep])

        seg_rows, mask_logits, aux_logits = self._masks(hidden, batch, feats, with_aux)
        m_loss = self._mask_loss(seg_rows, mask_logits, aux_logits, batch)
        losses = [x for x in ((lm_loss, self.config.ce_weight), (m_loss, 1.0)) if x[0] is not None]
        loss = sum(v * w for v, w in losses) if losses else None
        return Self1eOutput(loss, lm_loss, m_loss, lm_logits if return_lm_logits else None, mask_logits,
                            aux_logits if with_aux else None, seg_rows)

    def _masks(self, hidden: torch.Tensor, batch: Batch, feats: ImageFeatures, with_aux: bool):
        is_seg = batch.input_ids == self.seg_token_id
        seg_rows = is_seg.any(1).nonzero()[:, 0]
        if len(seg_rows) == 0:
            return seg_rows, [], []
        seg_pos = last_index(is_seg[seg_rows])  # a row answers its last [SEG] (see seg_attention_mask)
        h_seg = hidden[seg_rows, seg_pos - 1]  # the state that predicts [SEG]
        image_pos = batch.input_ids == self.image_token_id
        f_img, f_v1, f_hq, grids = [], [], [], []
        for r in seg_rows.tolist():
            i = int(batch.image_index[r])
            grid = feats.grids[i]
            f_img.append(self.processor.image_layout.token_map(hidden[r][image_pos[r]], grid))
            f_v1.append(feats.f_v1[i])
            f_hq.append(feats.f_v1_hq[i])
            grids.append(grid)
        if len(set(grids)) == 1:  # one batched head call
            stack = lambda xs: None if xs[0] is None else torch.stack(xs)  # noqa: E731
            out = self.head(torch.stack(f_img), h_seg, stack(f_v1), stack(f_hq), with_aux)
            mask_logits = list(out.logits)
            aux = list(out.aux_logits) if out.aux_logits is not None else []
        else:
            outs = [self.head(f_img[k][None], h_seg[k:k + 1], f_v1[k][None],
                              None if f_hq[k] is None else f_hq[k][None], with_aux) for k in range(len(grids))]
            mask_logits = [o.logits[0] for o in outs]
            aux = [o.aux_logits[0] for o in outs if o.aux_logits is not None]
        return seg_rows, mask_logits, aux

    def _mask_loss(self, seg_rows, mask_logits, aux_logits, batch: Batch) -> torch.Tensor | None:
        """Mean over supervised [SEG] rows of (BCE + Dice), main head plus weighted auxiliary head."""
        if batch.mask_targets is None:
            return None
        keep = [k for k, r in enumerate(seg_rows.tolist()) if batch.mask_targets[r] is not None]
        if not keep:
            return None
        cfg = self.config
        targets = [batch.mask_targets[int(seg_rows[k])] for k in keep]
        heads = [(mask_logits, 1.0)] + ([(aux_logits, cfg.aux_weight)] if aux_logits else [])
        if len({tuple(t.shape) for t in targets}) == 1:  # batched: per-row means average the same way
            stacked = torch.stack(targets)
            return sum(w * mask_loss(torch.stack([lg[k] for k in keep]), stacked, cfg.bce_weight, cfg.dice_weight)
                       for lg, w in heads)
        return sum(w * mask_loss(lg[k][None], t[None], cfg.bce_weight, cfg.dice_weight)
                   for lg, w in heads for k, t in zip(keep, targets)) / len(keep)
