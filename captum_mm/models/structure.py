"""Builders for the usual layer layouts: LRP residual structures and the forward-order schedule."""

import inspect
from typing import Any, Callable, Dict, List, Tuple

from torch import Tensor, nn

from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPStructure, ResidualRuleSite
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import AttentionEvent, Readout, Schedule, seen_positions
from captum_mm.spec import TensorSource


def post_norm_residuals(model: nn.Module, output_classes: Tuple[type, ...], pass_through_types: Tuple[type, ...] = ()) -> LRPStructure:
    """Residual sites of post-norm BERT-style layers: output modules computing
    ``LayerNorm(dropout(dense(hidden_states)) + input_tensor)``."""
    residuals = [
        ResidualRuleSite(TensorSource(m.LayerNorm, "input"), TensorSource(m.dropout), TensorSource(m, "input_tensor"))
        for m in _modules_of(model, output_classes)
    ]
    return LRPStructure(residuals, pass_through_types)


def _modules_of(model: nn.Module, classes: type | Tuple[type, ...]) -> List[Any]:
    """The modules of ``model`` of these classes; their parts are then read by name (duck-typed)."""
    return [m for m in model.modules() if isinstance(m, classes)]


def mlp_output(layer: Any) -> Tuple[TensorSource, TensorSource]:
    """The MLP addition of ViT-style layers: the layer's output, the ``mlp``'s output its branch."""
    return TensorSource(layer), TensorSource(layer.mlp)


def pre_norm_structure(
    model: nn.Module,
    layer_class: type | Tuple[type, ...],
    second_norm: str,
    attention: str,
    mlp_addition: Callable[[Any], Tuple[TensorSource, TensorSource]] = mlp_output,
) -> LRPStructure:
    """The two residual additions of every pre-norm layer (ViT, CLIP, ViLT, LLaMA-style LMs):
    ``middle = attention(norm1(x)) + x``, seen as the input of the layer's ``second_norm``, and
    ``total = branch + middle``, where ``mlp_addition(layer)`` gives ``(total, branch)``."""
    residuals = []
    for layer in _modules_of(model, layer_class):
        norm = getattr(layer, second_norm)
        middle, (total, branch) = TensorSource(norm, first_argument(norm)), mlp_addition(layer)
        residuals += [
            ResidualRuleSite(middle, TensorSource(getattr(layer, attention), index=0), TensorSource(layer, "hidden_states")),
            ResidualRuleSite(total, branch, middle),
        ]
    return LRPStructure(residuals)


def first_argument(module: nn.Module) -> str:
    """The name of ``module.forward``'s first argument (``input`` for ``nn.LayerNorm``, ``hidden_states`` for HF's RMSNorms)."""
    return next(iter(inspect.signature(module.forward).parameters))


def forward_order_schedule(
    record: AttentionRecord, selection: TargetSelection, masks: Dict[str, Tensor], outputs: Dict[str, Readout],
    causal: Tuple[str, ...] = (),
) -> Schedule:
    """Every recorded call one step, in forward order, with its declared roles.

    Args:
        record (AttentionRecord): The captured calls.
        selection (TargetSelection): The explained elements.
        masks (dict[str, Tensor]): ``[B, N]`` real tokens per modality.
        outputs (dict[str, Readout]): Where each output is read.
        causal (tuple[str, ...], optional): The modalities whose tokens see only earlier ones (a decoder's):
                    each element's mask of them ends at its readout row. Default: ()

    Returns:
        *Schedule*
    """
    steps: List[Tuple[AttentionEvent, ...]] = [(event,) for event in record.events()]
    element_masks = {name: mask[selection.sample] for name, mask in masks.items()}
    for modality in causal:
        element_masks[modality] = element_masks[modality] & seen_positions(outputs, modality, masks[modality].shape[1])
    return Schedule(
        sizes={name: mask.shape[1] for name, mask in masks.items()},
        masks=element_masks, steps=steps, outputs=outputs, element_sample=selection.sample, causal=frozenset(causal),
    )
