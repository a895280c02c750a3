"""Gemma 3 vision-language (``Gemma3ForConditionalGeneration``): a SigLIP tower (every layer, no class token), a
projector average-pooling the patch grid into ``mm_tokens_per_image`` tokens (then an RMSNorm and a linear map), and
the Gemma 3 text LM (:mod:`captum_mm.adapters.gemma2`: QK-norm, four norms a layer, sliding-window layers).

Schedule and readouts of the VLM base (:mod:`captum_mm.adapters.vision_language`), with the token map ``P`` of the
pooling: each image token spreads its relevance evenly over the ``k x k`` patches it averages (``P[token, patch] =
1 / k^2``, computed by the projector's own pooling). The LM attends bidirectionally among the tokens of one image
(``token_type_ids`` 1, as the processor marks them) and causally otherwise; the recorded maps are the model's, so
Eq. 6 follows them as they are. Generated tokens are text (``token_type_ids`` 0, as ``generate`` gives them).
LRP: the LM's rules are Gemma 3's; the projector's pooling and projection are linear (gradient x input conserves
them), its RMSNorm passes relevance through; the model's logits take no final soft cap (its forward applies none).
"""

from types import MappingProxyType
from typing import Any, Dict, Optional, Tuple, cast

import torch
from torch import Tensor, nn
from transformers import Gemma3ForConditionalGeneration
from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention, Gemma3DecoderLayer, Gemma3MLP, Gemma3RMSNorm
from transformers.models.siglip.modeling_siglip import SiglipAttention, SiglipEncoderLayer

from captum_mm.adapters.gemma2 import Gemma2Adapter
from captum_mm.adapters.vision_language import VisionLanguageAdapter
from captum_mm.models.arguments import TOKENS, Argument
from captum_mm.models.registry import register_adapter


@register_adapter
class Gemma3VisionLanguageAdapter(VisionLanguageAdapter, Gemma2Adapter):
    """Gemma 3 with images: every token of the SigLIP tower's last layer, average-pooled into image tokens read by
    the Gemma 3 LM (whose LRP structure, norms and residuals, are Gemma 2's adapter's).

    Args:
        model (nn.Module): The Gemma 3 vision-language model the adapter serves.
    """

    model_classes = (Gemma3ForConditionalGeneration,)
    model: Gemma3ForConditionalGeneration
    arguments = MappingProxyType(dict(VisionLanguageAdapter.arguments, token_type_ids=Argument(2, TOKENS)))
    generated_token_types = MappingProxyType({"token_type_ids": 0})  # generated tokens are text
    attention_classes = (Gemma3Attention,)
    layer_classes = (Gemma3DecoderLayer,)
    mlp_classes = (Gemma3MLP,)
    norm_classes = (Gemma3RMSNorm,)  # the projector's soft-embedding norm too
    qk_norm_classes = (Gemma3RMSNorm,)
    vision_attention_classes = (SiglipAttention,)
    vision_layer_classes = (SiglipEncoderLayer,)
    attention_functions = MappingProxyType({Gemma3Attention: True, SiglipAttention: True})

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def _features_per_image(self, pixels: Tensor, arguments: Dict[str, Any]) -> int:
        return int(cast(Any, self.model.config).mm_tokens_per_image)

    def token_grid(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        side = int(self._projector().tokens_per_side)
        return side, side

    def token_map(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """The projector's own pooling applied to each patch's indicator: which patches each token averages."""
        cells = grid[0] * grid[1]
        indicators = torch.eye(cells, dtype=torch.float64).reshape(cells, 1, *grid)
        return self._projector().avg_pool(indicators).flatten(1).T.contiguous()

    def _projector(self) -> Any:
        return self.model.model.multi_modal_projector

