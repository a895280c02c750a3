"""BERT: self-attention over text tokens (post-norm layers).

Schedule (docs/METHOD.md, self-attention-only models): Eq. 6 for every layer; readout the
``[CLS]`` row (what the pooler and the sequence-classification head read) without
its own entry. Capture: the attention modules return the probabilities second under
eager attention.
"""

from types import MappingProxyType
from typing import List, Tuple

import torch
from transformers import BertForNextSentencePrediction, BertForSequenceClassification, BertModel
from transformers.models.bert.modeling_bert import BertCrossAttention, BertOutput, BertSelfAttention, BertSelfOutput

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import TOKENS, Argument, text_arguments, text_tokens, token_mask
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, qkv_parts
from captum_mm.models.structure import forward_order_schedule, post_norm_residuals
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, self_attention

TEXT = "text"


@register_adapter
class BertAdapter(ArchitectureAdapter):
    model_classes = (BertModel, BertForSequenceClassification, BertForNextSentencePrediction)
    attention_functions = MappingProxyType({BertSelfAttention: False, BertCrossAttention: False})
    arguments = MappingProxyType({**text_arguments("BERT"), "token_type_ids": Argument(2, TOKENS)})
    outputs = (TEXT,)
    #: A family with BERT's layout under other class names (RoBERTa) changes only these.
    attention_classes: Tuple[type, ...] = (BertSelfAttention,)
    output_classes: Tuple[type, ...] = (BertSelfOutput, BertOutput)

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, self.attention_classes, self_attention(TEXT), qkv_parts)

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        arguments = record.arguments
        text = text_tokens(arguments)
        mask = token_mask(arguments.get("attention_mask"), text.shape[0], text.shape[1], text.device)
        readout = {TEXT: Readout(TEXT, torch.zeros_like(selection.sample), TEXT)}
        return forward_order_schedule(record, selection, {TEXT: mask}, readout)

    def lrp_structure(self) -> LRPStructure:
        return post_norm_residuals(self.model, self.output_classes)
