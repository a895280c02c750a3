"""ViLT: one self-attention stream over ``[text | image class token + patches]`` (pre-norm layers).

Schedule: Eq. 6 for every layer on one joint relevance matrix, like VisualBERT.
Readout: the text ``[CLS]`` row (what the pooler reads), without its own entry; text
relevance from the text columns, image relevance from the patch columns, put back on
the patch grid. ViLT draws its patches in a random order at every forward
(``ViltEmbeddings.visual_embed``); the capture replays that draw from the same
random state to learn where each patch came from, and restores the state.

Capture: hand-written attention, whose probabilities pass through a ``dropout`` module.
"""

from typing import Any, Dict, List, Tuple, cast

from types import MappingProxyType

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle
from transformers import ViltForImageAndTextRetrieval, ViltForQuestionAnswering, ViltModel
from transformers.models.vilt.modeling_vilt import ViltEmbeddings, ViltLayer, ViltSelfAttention

from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.base import (
    TEXT_ARGUMENTS,
    ArchitectureAdapter,
    TargetSelection,
    attention_specs_in,
    check_batch_sizes,
    check_rank,
    dropout_probabilities,
    forward_order_schedule,
    pre_norm_structure,
    qkv_parts,
    require,
)
from captum_mm.models.capture import AttentionRecord
from captum_mm.models.registry import register_adapter
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, TensorSource, self_attention

JOINT = "joint"


def _embeddings_hooks(embeddings: ViltEmbeddings, record: AttentionRecord) -> List[RemovableHandle]:
    """Keep the joint token mask and, replaying the patch draw, each image token's grid cell."""

    def before(module: ViltEmbeddings, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        record.extras["random_state"] = torch.get_rng_state()

    def after(module: ViltEmbeddings, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Tuple[Tensor, Tensor]) -> None:
        bound = dict(zip(("input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask"), args)) | kwargs
        state_after = torch.get_rng_state()
        torch.set_rng_state(record.extras.pop("random_state"))
        try:
            with torch.no_grad():
                _, _, (patch_index, grid) = module.visual_embed(
                    bound["pixel_values"], bound["pixel_mask"], max_image_length=module.config.max_image_length
                )
        finally:
            torch.set_rng_state(state_after)
        record.extras.update(joint_mask=output[1].bool(), patch_cells=patch_index[..., 0] * grid[1] + patch_index[..., 1], grid=grid)

    return [
        embeddings.register_forward_pre_hook(before, with_kwargs=True),
        embeddings.register_forward_hook(after, with_kwargs=True),
    ]


@register_adapter
class ViltAdapter(ArchitectureAdapter):
    model_classes = (ViltModel, ViltForQuestionAnswering, ViltForImageAndTextRetrieval)
    argument_outputs = MappingProxyType({**TEXT_ARGUMENTS, "pixel_values": "image"})

    def _vilt(self) -> ViltModel:
        return cast(ViltModel, getattr(self.model, "vilt", self.model))

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, ViltSelfAttention, self_attention(JOINT), qkv_parts, dropout_probabilities)

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        return _embeddings_hooks(self._vilt().embeddings, record)

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        require(arguments.get("input_ids") is not None, "ViLT needs input_ids [batch, tokens].")
        require(
            arguments.get("pixel_values") is not None,
            "ViLT is explained from pixel_values [batch, channels, height, width] (not image_embeds): "
            "image relevance is returned on the patch grid.",
        )
        check_rank(arguments, "input_ids", 2, "[batch, tokens]")
        check_rank(arguments, "attention_mask", 2, "[batch, tokens]")
        check_rank(arguments, "pixel_values", 4, "[batch, channels, height, width]")
        check_rank(arguments, "pixel_mask", 3, "[batch, height, width]")
        check_batch_sizes(arguments, ("input_ids", "attention_mask", "pixel_values", "pixel_mask"))

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        text_length = record.arguments["input_ids"].shape[1]
        cells = record.extras["patch_cells"]
        cls = torch.zeros_like(selection.sample)
        image = slice(text_length + 1, text_length + 1 + cells.shape[1])
        outputs = {
            "text": Readout(JOINT, cls, JOINT, slice(0, text_length)),
            "image": Readout(JOINT, cls, JOINT, image, record.extras["grid"], cells[selection.sample]),
        }
        return forward_order_schedule(record, selection, {JOINT: record.extras["joint_mask"]}, outputs)

    def lrp_structure(self) -> LRPStructure:  # pre-norm; the MLP's addition is ViltOutput's
        return pre_norm_structure(
            self.model, ViltLayer, "layernorm_after", "attention", lambda layer: (TensorSource(layer.output), TensorSource(layer.output.dropout))
        )
