"""ViLT: one self-attention stream over ``[text | image class token + patches]`` (pre-norm layers).

Schedule: Eq. 6 for every layer on one joint relevance matrix, like VisualBERT.
Readout: the text ``[CLS]`` row (what the pooler reads), without its own entry; text
relevance from the text columns, image relevance from the patch columns, put back on
the patch grid. ViLT draws its patches in a random order at every forward
(``ViltEmbeddings.visual_embed``); the capture replays that draw from the same
random state to learn where each patch came from, and restores the state.

Capture: hand-written attention, whose probabilities pass through a ``dropout`` module.
"""

from types import MappingProxyType
from typing import Any, Callable, Dict, List, Tuple, cast

import torch
from torch import Tensor
from transformers import ViltForImageAndTextRetrieval, ViltForQuestionAnswering, ViltModel
from transformers.models.vilt.modeling_vilt import ViltEmbeddings, ViltLayer, ViltSelfAttention

from captum_mm.capture.record import AttentionRecord
from captum_mm.capture.replay import replay_after_forward
from captum_mm.lrp.composite import LRPStructure
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.arguments import PIXELS, TOKENS, Argument
from captum_mm.models.registry import register_adapter
from captum_mm.models.specs import attention_specs_in, dropout_probabilities, qkv_parts
from captum_mm.models.structure import forward_order_schedule, pre_norm_structure
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Readout, Schedule
from captum_mm.spec import AttentionSpec, TensorSource, self_attention

JOINT = "joint"


def _patch_cells(record: AttentionRecord) -> Callable[[Dict[str, Any], Tuple[Tensor, Tensor]], None]:
    """After ViltEmbeddings: keep the joint token mask and, replaying the patch draw, each image token's grid cell."""

    def replay(arguments: Dict[str, Any], output: Tuple[Tensor, Tensor]) -> None:
        embeddings = cast(ViltEmbeddings, record.extras["embeddings"])
        _, _, (patch_index, grid) = embeddings.visual_embed(
            arguments["pixel_values"], arguments["pixel_mask"], max_image_length=embeddings.config.max_image_length
        )
        record.extras.update(joint_mask=output[1].bool(), patch_cells=patch_index[..., 0] * grid[1] + patch_index[..., 1], grid=grid)

    return replay


@register_adapter
class ViltAdapter(ArchitectureAdapter):
    model_classes = (ViltModel, ViltForQuestionAnswering, ViltForImageAndTextRetrieval)
    arguments = MappingProxyType({
        "input_ids": Argument(2, TOKENS, "text", f"ViLT needs input_ids {TOKENS}."),
        "attention_mask": Argument(2, TOKENS),
        "pixel_values": Argument(4, PIXELS, "image", f"ViLT is explained from pixel_values {PIXELS} (not image_embeds): "
                                 "image relevance is returned on the patch grid."),
        "pixel_mask": Argument(3, "[batch, height, width]"),
    })

    def attention_specs(self) -> List[AttentionSpec]:
        return attention_specs_in(self.model, ViltSelfAttention, self_attention(JOINT), qkv_parts, dropout_probabilities)

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        record.extras["embeddings"] = embeddings = cast(ViltModel, getattr(self.model, "vilt", self.model)).embeddings
        return replay_after_forward(embeddings, _patch_cells(record))

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
