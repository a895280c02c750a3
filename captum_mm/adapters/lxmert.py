"""LXMERT: a language stream, an object-relationship stream and cross-modality layers.

Schedule (docs/METHOD.md): language self-attentions, then the r-layers' image
self-attentions, then each x-layer as [text->image, image->text] (in parallel,
from one pre-layer state), language self-attention, visual self-attention. The
last x-layer contributes only its text->image cross-attention and language
self-attention: its visual side never reaches the answer head, which reads the
language ``[CLS]`` row.

Capture: every attention probability map passes through the ``dropout`` module
of an ``LxmertAttention``; its forward hook sees the live map. The roles follow
from where each module sits (language layers, r-layers, x-layers), except that
HF shares one cross-attention module between both directions: its roles are
told apart by counting calls, the first in a layer text->image, the second
image->text (as ``LxmertXLayer.cross_att`` calls it).
"""

from types import MappingProxyType
from typing import Any, Dict, List, Tuple, cast

import torch
from transformers import LxmertForQuestionAnswering, LxmertModel
from transformers.models.lxmert.modeling_lxmert import GeLU, LxmertAttention, LxmertAttentionOutput, LxmertOutput

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import REGIONS, Argument, text_arguments, text_tokens, token_mask
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import dropout_probabilities, qkv_parts
from captum_mm.models.structure import post_norm_residuals
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule
from captum_mm.spec import AttentionSpec, module_names, self_attention

TEXT, IMAGE = "text", "image"
CROSS = ((TEXT, IMAGE), (IMAGE, TEXT))


@register_adapter
class LxmertAdapter(ArchitectureAdapter):
    model_classes = (LxmertModel, LxmertForQuestionAnswering)
    arguments = MappingProxyType({
        **text_arguments("LXMERT"),
        **{name: Argument(3, REGIONS, IMAGE, f"LXMERT needs {name} {REGIONS}.") for name in ("visual_feats", "visual_pos")},
        "visual_attention_mask": Argument(2, "[batch, regions]"),
    })
    logit_fields = ("question_answering_score", "logits")

    def attention_specs(self) -> List[AttentionSpec]:
        encoder: Any = cast(LxmertModel, getattr(self.model, "lxmert", self.model)).encoder
        names = module_names(self.model)

        def spec(module: LxmertAttention, roles: Tuple[Tuple[str, str], ...], layer: str = "") -> AttentionSpec:
            return AttentionSpec(names[module], module, dropout_probabilities(module), roles, layer, qkv_parts(module))

        specs = [spec(layer.attention.self, self_attention(TEXT)) for layer in encoder.layer]
        specs += [spec(layer.attention.self, self_attention(IMAGE)) for layer in encoder.r_layers]
        for j, layer in enumerate(encoder.x_layers):
            specs += [spec(layer.visual_attention.att, CROSS, f"x_layers.{j}"),
                      spec(layer.lang_self_att.self, self_attention(TEXT), f"x_layers.{j}"),
                      spec(layer.visn_self_att.self, self_attention(IMAGE), f"x_layers.{j}")]
        return specs

    def lrp_structure(self) -> LRPStructure:
        return post_norm_residuals(self.model, (LxmertAttentionOutput, LxmertOutput), (GeLU,))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        steps: List[Tuple[AttentionEvent, ...]] = []
        cross_layers: Dict[str, Dict[Tuple[str, str], AttentionEvent]] = {}
        for event, call in zip(record.events(), record.calls):
            if call.spec.layer:
                cross_layers.setdefault(call.spec.layer, {})[call.roles] = event
            else:  # language and relational layers, in forward order
                steps.append((event,))
        for position, layer in enumerate(cross_layers.values()):
            if position < len(cross_layers) - 1:  # both directions from one pre-layer state
                steps += [(layer[CROSS[0]], layer[CROSS[1]]), (layer[TEXT, TEXT],), (layer[IMAGE, IMAGE],)]
            else:
                steps += [(layer[CROSS[0]],), (layer[TEXT, TEXT],)]

        arguments = record.arguments
        text = text_tokens(arguments)
        batch_size, text_length = text.shape[:2]
        region_count, device = arguments["visual_feats"].shape[1], arguments["visual_feats"].device
        masks = {
            TEXT: token_mask(arguments.get("attention_mask"), batch_size, text_length, device),
            IMAGE: token_mask(arguments.get("visual_attention_mask"), batch_size, region_count, device),
        }
        cls = torch.zeros_like(selection.sample)
        return Schedule(
            sizes={TEXT: text_length, IMAGE: region_count},
            masks={name: mask[selection.sample] for name, mask in masks.items()},
            steps=steps,
            outputs={TEXT: Readout(TEXT, cls, TEXT), IMAGE: Readout(TEXT, cls, IMAGE)},
            element_sample=selection.sample,
            # the last x-layer's image->text attention is left out but exists: Eq. 11 of its text->image applies
            unscheduled_attentions=frozenset({CROSS[1]}) if cross_layers else frozenset(),
        )
