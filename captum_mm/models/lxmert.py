"""LXMERT: a language stream, an object-relationship stream and cross-modality layers.

Schedule (docs/METHOD.md): language self-attentions, then the r-layers' image
self-attentions, then each x-layer as [text->image, image->text] (in parallel,
from one pre-layer state), language self-attention, visual self-attention. The
last x-layer contributes only its text->image cross-attention and language
self-attention: its visual side never reaches the answer head, which reads the
language ``[CLS]`` row.

Capture: every attention probability map passes through the ``dropout`` module
of an ``LxmertAttention``; its forward hook sees the live map. The
cross-attention module is shared by both directions, so its first call in a
layer is text->image and its second image->text.
"""

import re
from typing import Any, Dict, List, Tuple, cast

from types import MappingProxyType

import torch
from torch import Tensor
from transformers import LxmertForQuestionAnswering, LxmertModel
from transformers.models.lxmert.modeling_lxmert import GeLU, LxmertAttention, LxmertAttentionOutput, LxmertOutput

from captum_mm.lrp.composite import LRPStructure

from captum_mm.models.base import (
    TEXT_ARGUMENTS,
    ArchitectureAdapter,
    TargetSelection,
    bert_like_lrp_structure,
    check_batch_sizes,
    check_rank,
    check_text_arguments,
    require,
    text_tokens,
    token_mask,
)
from captum_mm.models.capture import AttentionRecord, AttentionSite
from captum_mm.models.registry import register_adapter
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule

TEXT, IMAGE = "text", "image"


def _probabilities(output: Tensor) -> Tensor:
    return output


@register_adapter
class LxmertAdapter(ArchitectureAdapter):
    model_classes = (LxmertModel, LxmertForQuestionAnswering)
    argument_outputs = MappingProxyType({**TEXT_ARGUMENTS, "visual_feats": "image", "visual_pos": "image"})
    logit_fields = ("question_answering_score", "logits")

    def sites(self) -> List[AttentionSite]:
        encoder = cast(LxmertModel, getattr(self.model, "lxmert", self.model)).encoder
        suffixes = (".attention.self.dropout", ".visual_attention.att.dropout", "_self_att.self.dropout")
        return self.named_sites(encoder, [(suffix, _probabilities) for suffix in suffixes])

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        check_text_arguments(arguments, "LXMERT")
        for name in ("visual_feats", "visual_pos"):
            require(arguments.get(name) is not None, f"LXMERT needs {name} [batch, regions, features].")
            check_rank(arguments, name, 3, "[batch, regions, features]")
        check_rank(arguments, "visual_attention_mask", 2, "[batch, regions]")
        check_batch_sizes(arguments, ("input_ids", "inputs_embeds", "attention_mask", "visual_feats", "visual_pos", "visual_attention_mask"))

    def lrp_structure(self) -> LRPStructure:
        return bert_like_lrp_structure(self.model, LxmertAttention, (LxmertAttentionOutput, LxmertOutput), (GeLU,))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        language, relational, cross_layers = self._events(record)
        steps: List[Tuple[AttentionEvent, ...]] = [(event,) for event in language + relational]
        for position, layer in enumerate(cross_layers):
            if position < len(cross_layers) - 1:
                steps += [(layer["text->image"], layer["image->text"]), (layer["text"],), (layer["image"],)]
            else:
                steps += [(layer["text->image"],), (layer["text"],)]

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
        )

    @staticmethod
    def _events(record: AttentionRecord) -> Tuple[List[AttentionEvent], List[AttentionEvent], List[Dict[str, AttentionEvent]]]:
        language: List[AttentionEvent] = []
        relational: List[AttentionEvent] = []
        cross: Dict[int, Dict[str, AttentionEvent]] = {}
        for index, call in enumerate(record.calls):
            site = call.site.split("encoder.", 1)[-1]
            x_layer = re.match(r"x_layers\.(\d+)\.", site)
            if x_layer is None:
                stream = relational if site.startswith("r_layers.") else language
                modality = IMAGE if stream is relational else TEXT
                stream.append(AttentionEvent(index, modality, modality, site))
                continue
            layer = cross.setdefault(int(x_layer.group(1)), {})
            if ".visual_attention." in site:
                query, key = (TEXT, IMAGE) if call.count == 0 else (IMAGE, TEXT)
                role = f"{query}->{key}"
            else:
                query = key = role = TEXT if ".lang_self_att." in site else IMAGE
            layer[role] = AttentionEvent(index, query, key, f"x_layers.{x_layer.group(1)} {role}")
        return language, relational, [cross[j] for j in sorted(cross)]
