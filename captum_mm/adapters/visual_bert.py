"""VisualBERT: one self-attention stream over ``[text | image]`` tokens.

Schedule (docs/METHOD.md): Eq. 6 for every layer on one joint relevance matrix.
Readout: the row of the token the answer head pools -- for
``VisualBertForQuestionAnswering`` the last question token before ``[SEP]``
(``attention_mask.sum() - 2``, as the HF head gathers it), for pooler-based heads
``[CLS]`` -- with that token's own entry set to 0. Text relevance is read from
the text columns, image relevance from the image columns.

Capture: the probabilities pass through the ``dropout`` module of every
``VisualBertSelfAttention``.
"""

from types import MappingProxyType
from typing import Any, Dict, List

import torch
from transformers import VisualBertForQuestionAnswering, VisualBertForVisualReasoning, VisualBertModel
from transformers.models.visual_bert.modeling_visual_bert import VisualBertOutput, VisualBertSelfAttention, VisualBertSelfOutput

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import REGIONS, Argument, require, text_arguments, text_tokens, token_mask
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, dropout_probabilities, qkv_parts
from captum_mm.models.structure import forward_order_schedule, post_norm_residuals
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, self_attention

JOINT = "joint"


@register_adapter
class VisualBertAdapter(ArchitectureAdapter):
    model_classes = (VisualBertModel, VisualBertForQuestionAnswering, VisualBertForVisualReasoning)
    model: VisualBertModel | VisualBertForQuestionAnswering | VisualBertForVisualReasoning
    arguments = MappingProxyType({
        **text_arguments("VisualBERT"),
        "visual_embeds": Argument(3, REGIONS, "image", f"VisualBERT needs visual_embeds {REGIONS}."),
        "visual_attention_mask": Argument(2, "[batch, regions]"),
    })

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, VisualBertSelfAttention, self_attention(JOINT), qkv_parts, dropout_probabilities)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        require(
            not self.model.config.bypass_transformer,
            "VisualBERT with bypass_transformer=True is not supported: its text-only layers need another schedule.",
        )
        super().check_arguments(arguments)
        if isinstance(self.model, VisualBertForQuestionAnswering):
            require(
                arguments.get("attention_mask") is not None,
                "VisualBertForQuestionAnswering needs attention_mask: its head pools token attention_mask.sum() - 2.",
            )

    def lrp_structure(self) -> LRPStructure:
        return post_norm_residuals(self.model, (VisualBertSelfOutput, VisualBertOutput))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        arguments = record.arguments
        text = text_tokens(arguments)
        batch_size, text_length = text.shape[:2]
        visual = arguments["visual_embeds"]
        region_count = visual.shape[1]
        text_mask = token_mask(arguments.get("attention_mask"), batch_size, text_length, visual.device)
        mask = torch.cat([text_mask, token_mask(arguments.get("visual_attention_mask"), batch_size, region_count, visual.device)], 1)
        if isinstance(self.model, VisualBertForQuestionAnswering):
            rows = text_mask.long().sum(1) - 2
        else:
            rows = torch.zeros(batch_size, dtype=torch.long, device=visual.device)
        outputs = {
            "text": Readout(JOINT, rows[selection.sample], JOINT, slice(0, text_length)),
            "image": Readout(JOINT, rows[selection.sample], JOINT, slice(text_length, text_length + region_count)),
        }
        return forward_order_schedule(record, selection, {JOINT: mask}, outputs)
