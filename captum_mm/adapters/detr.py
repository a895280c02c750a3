"""DETR: a CNN backbone, a self-attention encoder over the ``h x w`` feature map,
and a decoder whose object queries attend to each other and to the image.

Schedule (docs/METHOD.md): encoder self-attentions (Eq. 6 on ``R^{ii}``), then per
decoder layer the query self-attention (Eq. 6/7 on ``R^{qq}``, ``R^{qi}``) and the
cross-attention (Eq. 10 on ``R^{qi}``; Eq. 11 adds nothing, image tokens never
attend to queries). Readout: row ``R^{qi}[query]`` as an ``h x w`` map. Target:
the logit ``(query, argmax class excluding "no object")``; every explained query
gets its own gradient, all from one batched backward.

Capture: DETR's attention modules use HF's attention interface; inside the
capture context the model runs eager attention, whose modules return the live
probabilities as their second output. The backbone's output gives the feature
map's size and its padding mask.
"""

from types import MappingProxyType
from typing import Any, Dict, List, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import DetrForObjectDetection, DetrModel
from transformers.models.detr.modeling_detr import DetrCrossAttention, DetrDecoderLayer, DetrEncoderLayer, DetrSelfAttention

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.canonizers import PositionEmbeddingInput
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.lrp.rules import AlphaBeta, RuleSet
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import PIXELS, Argument, require
from captum_mm.models.registry import register_adapter
from captum_mm.models.structure import forward_order_schedule
from captum_mm.models.targets import TargetOptions, TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, module_names

IMAGE, QUERY = "image", "query"


def _spec(names: Dict[nn.Module, str], module: DetrSelfAttention | DetrCrossAttention, query: str, key: str) -> AttentionSpec:
    parts = AttentionParts(module.q_proj, module.k_proj, module.v_proj, module.q_proj.out_features // module.head_dim, module.o_proj)
    return AttentionSpec(names[module], module, TensorSource(module, index=1), ((query, key),), parts=parts)


def _position_inputs(module: DetrSelfAttention | DetrCrossAttention) -> List[PositionEmbeddingInput]:
    """Q and K take ``input + position embedding``: the position embedding receives no relevance."""
    keys = "key_value_states" if isinstance(module, DetrCrossAttention) else "hidden_states"
    return [PositionEmbeddingInput(module.q_proj, TensorSource(module, "hidden_states")),
            PositionEmbeddingInput(module.k_proj, TensorSource(module, keys))]


def _query_lists(target: Any, batch_size: int) -> List[List[int]]:
    if isinstance(target, Tensor):
        target = target.tolist() if target.dim() else int(target)
    if isinstance(target, int):
        return [[target]] * batch_size
    if isinstance(target, list) and len(target) == batch_size:
        if all(isinstance(t, int) for t in target):
            return [[t] for t in target]
        if all(isinstance(t, (list, tuple)) and all(isinstance(q, int) for q in t) for t in target):
            return [list(t) for t in target]
    raise ValueError(
        f"Unsupported DETR target {target!r} for {batch_size} images: pass None (queries above the "
        "threshold), a query index, one query index per image, or a list of query-index lists per image."
    )


@register_adapter
class DetrAdapter(ArchitectureAdapter):
    model_classes = (DetrModel, DetrForObjectDetection)
    attention_functions = MappingProxyType({DetrSelfAttention: False, DetrCrossAttention: False})
    arguments = MappingProxyType({
        "pixel_values": Argument(4, PIXELS, IMAGE, f"DETR is explained from pixel_values {PIXELS}; inputs_embeds are not supported."),
        "pixel_mask": Argument(3, "[batch, height, width]"),
    })
    outputs = ("image",)

    def _detr(self) -> DetrModel:
        return cast(DetrModel, getattr(self.model, "model", self.model))

    def attention_specs(self) -> List[AttentionSpec]:
        detr: Any = self._detr()
        names = module_names(self.model)
        specs = [_spec(names, layer.self_attn, IMAGE, IMAGE) for layer in detr.encoder.layers]
        for layer in detr.decoder.layers:
            specs += [_spec(names, layer.self_attn, QUERY, QUERY), _spec(names, layer.encoder_attn, QUERY, IMAGE)]
        return specs

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        def keep_feature_mask(module: nn.Module, args: Tuple[Any, ...], output: List[Tuple[Tensor, Tensor]]) -> None:
            record.extras["feature_mask"] = output[-1][1]

        return [self._detr().backbone.register_forward_hook(keep_feature_mask)]

    def gradient_free_modules(self) -> Tuple[nn.Module, ...]:
        return (self._detr().backbone,)

    def lrp_structure(self) -> LRPStructure:
        detr: Any = self._detr()
        layers = [*detr.encoder.layers, *detr.decoder.layers]
        attention = [module for module in detr.modules() if isinstance(module, (DetrSelfAttention, DetrCrossAttention))]
        canonizers = [canonizer for module in attention for canonizer in _position_inputs(module)]
        return LRPStructure([site for layer in layers for site in _layer_residuals(layer)], canonizers=canonizers)

    def default_rules(self) -> RuleSet:
        # the reference's DETR linear layers rescale their input relevance to the output total
        return RuleSet(linear=AlphaBeta(conserve=True))

    def select_targets(self, logits: Tensor, target: Any, options: TargetOptions = TargetOptions()) -> TargetSelection:
        """Queries to explain: explicit indices, or those whose best class beats ``options.threshold``.

        With ``options.single`` and ``target=None`` the most confident query of each image is taken.
        """
        require(logits.dim() == 3, f"Expected DETR logits [batch, queries, classes + 1], got {tuple(logits.shape)}.")
        threshold, single = options.threshold, options.single
        batch_size, num_queries, _ = logits.shape
        scores, classes = logits.detach().softmax(-1)[..., :-1].max(-1)
        if target is not None:
            queries = _query_lists(target, batch_size)
        elif single:
            queries = [[int(q)] for q in scores.argmax(-1)]
        else:
            queries = [torch.nonzero(row > threshold).flatten().tolist() for row in scores]
        require(
            not single or all(len(row) <= 1 for row in queries),
            "attribute() returns one attribution per input, so it explains one query per image; for several "
            "queries per image call explain(), which returns image relevance [batch, queries, h, w].",
        )
        flat = [(b, k, q) for b, row in enumerate(queries) for k, q in enumerate(row)]
        for _, _, q in flat:
            require(0 <= q < num_queries, f"query index {q} out of range: the model has {num_queries} queries (0..{num_queries - 1}).")
        slots = max((len(row) for row in queries), default=0)
        grad_outputs = logits.new_zeros(slots, *logits.shape)
        sample, slot, query = (torch.tensor([item[i] for item in flat], dtype=torch.long, device=logits.device) for i in range(3))
        explained = classes[sample, query]
        grad_outputs[slot, sample, query, explained] = 1.0
        return TargetSelection(grad_outputs, sample, slot, explained, scores[sample, query], queries=query)

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        feature_mask: Tensor = record.extras["feature_mask"]
        height, width = feature_mask.shape[-2:]
        masks = {IMAGE: feature_mask.flatten(1), QUERY: feature_mask.new_ones(feature_mask.shape[0], self._detr().config.num_queries)}
        outputs = {IMAGE: Readout(QUERY, cast(Tensor, selection.queries), IMAGE, grid=(height, width))}
        return forward_order_schedule(record, selection, masks, outputs)


def _layer_residuals(layer: DetrEncoderLayer | DetrDecoderLayer) -> List[ResidualRuleSite]:
    """``norm(block(x) + x)`` for each block of a DETR layer, ``x`` the previous norm's output."""
    blocks: List[Tuple[nn.Module, nn.LayerNorm]] = [(layer.self_attn, layer.self_attn_layer_norm)]
    if isinstance(layer, DetrDecoderLayer):
        blocks.append((layer.encoder_attn, layer.encoder_attn_layer_norm))
    sites, skip = [], TensorSource(layer, "hidden_states")
    for block, norm in blocks:
        sites.append(ResidualRuleSite(TensorSource(norm, "input"), TensorSource(block, index=0), skip))
        skip = TensorSource(norm)
    sites.append(ResidualRuleSite(TensorSource(layer.final_layer_norm, "input"), TensorSource(layer.mlp), skip))
    return sites
