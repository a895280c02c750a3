"""The architecture-adapter interface: what one model family declares and implements."""

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from torch import Tensor, nn

from captum_mm.capture.eager import NO_ATTENTION_FUNCTIONS, AttentionFunctions
from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp.composite import LRPState, LRPStructure, relevance_seed
from captum_mm.lrp.rules import RuleSet
from captum_mm.models.arguments import Argument, check_declared, outputs_of
from captum_mm.models.pixels import PixelPooling
from captum_mm.models.targets import TargetOptions, TargetSelection, select_class_targets
from captum_mm.relevance.schedule import Schedule
from captum_mm.spec import AttentionSpec

if TYPE_CHECKING:  # captum_mm.generation reads adapters
    from captum_mm.generation.convention import GenerationConvention


class ArchitectureAdapter:
    """Knows one model family: where attention happens and in which order the rules apply.

    Subclasses declare the HF classes they serve in ``model_classes`` and the forward
    ``arguments``, and implement :meth:`attention_specs` and :meth:`schedule` (and, for LRP,
    :meth:`lrp_structure`). They never import methods.

    Args:
        model (nn.Module): The HuggingFace model the adapter serves.
    """

    model_classes: Tuple[type, ...] = ()
    #: Output fields tried, in order, when ``forward_func`` returns a HF ``ModelOutput``.
    logit_fields: Tuple[str, ...] = ("logits",)
    #: Output names of :class:`~captum_mm.attr.Explanation` this family fills.
    outputs: Tuple[str, ...] = ("text", "image")
    #: The forward arguments checked before the model runs, and the output each carries.
    arguments: Mapping[str, Argument] = MappingProxyType({})
    #: The attention classes (exact types) lean capture serves: their family's eager function takes the softmax in
    #: float32 (True) or the model's dtype (:data:`~captum_mm.capture.eager.AttentionFunctions`).
    attention_functions: AttentionFunctions = NO_ATTENTION_FUNCTIONS

    @property
    def argument_outputs(self) -> Mapping[str, str]:
        """The output each forward argument carries (``attribute`` spreads it over that input)."""
        return outputs_of(self.arguments)

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    def for_model(cls, model: nn.Module) -> "ArchitectureAdapter":
        """The adapter serving ``model`` (a family whose models differ in layout returns its variant's)."""
        return cls(model)

    def attention_specs(self) -> List[AttentionSpec]:
        """One spec per attention module: capture, schedule roles and LRP sites derive from it."""
        raise NotImplementedError

    def check_arguments(self, arguments: Dict[str, Any]) -> None:
        """Raise ``ValueError`` if the model's forward arguments cannot be explained (by default:
        as :attr:`arguments` declares them)."""
        check_declared(arguments, self.arguments)

    def extra_hooks(self, record: AttentionRecord) -> List[Any]:
        """Hooks the family needs on the model while it is explained (e.g. BLIP's decoder logits); their handles."""
        return []

    def gradient_free_modules(self) -> Tuple[nn.Module, ...]:
        """Modules no attention map depends on: their parameters are not made to require grad."""
        return ()

    def generation_convention(self) -> Optional["GenerationConvention"]:
        """How the family's models hold generated tokens (:mod:`captum_mm.generation`); None: they do not generate."""
        return None

    def lay_out_maps(self, record: AttentionRecord) -> None:
        """After the forward: express maps the modules computed over other units than the tokens (Swin's windows) in
        token positions (:meth:`~captum_mm.capture.record.AttentionCall.lay_out`); by default every map already is.

        Args:
            record (AttentionRecord): The forward's calls.
        """

    def schedule(self, record: AttentionRecord, selection: TargetSelection) -> Schedule:
        """The :class:`Schedule` of one captured forward pass: modalities, padding masks, steps and readouts."""
        raise NotImplementedError

    def lrp_structure(self) -> LRPStructure:
        """Residual sites and pass-through modules for LRP (see :mod:`captum_mm.lrp.composite`)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its LRP structure.")

    def pixel_pooling(self, arguments: Dict[str, Any]) -> Optional[PixelPooling]:
        """How AttnLRP reads an image output at ``pixel_values`` given otherwise than one ``[B, C, H, W]`` image a
        prompt (tiles, crops, flattened patches): pooled onto the vision tokens the output's readout reads, which
        then places them as for every method. None (the default): pixels are read only as one ``[B, C, H, W]``
        image a prompt, summed over channels and each cell of the output's grid.

        Args:
            arguments (dict): The forward's arguments.

        Returns:
            *PixelPooling or None*: See :data:`~captum_mm.models.pixels.PixelPooling`.
        """
        return None

    def default_rules(self) -> RuleSet:
        """The reference implementation's LRP rules for this family."""
        return RuleSet()

    def lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """Where the LRP backward starts and its modified gradients there, ``[K, *shape]`` for the
        ``K`` slots of ``seeds``: by default the logits, each target's relevance set to 1."""
        return (logits,), (relevance_seed(logits, seeds),)

    def value_lrp_start(self, state: LRPState, logits: Tensor, seeds: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        """Where an LRP backward whose relevance at each explained output is the output's value (AttnLRP's) starts,
        and its modified gradients there, ``[K, *shape]`` for the ``K`` slots of ``seeds``: by default the logits,
        seeded with ``seeds`` (gradient 1 at each target: relevance its logit). A family overriding :meth:`lrp_start`
        overrides this too, or AttnLRP refuses it.

        Args:
            state (LRPState): The installed rules' state.
            logits (Tensor): The model's logits.
            seeds (Tensor): ``[K, *logits.shape]``, 1 at each slot's targets.

        Returns:
            *tuple*: The tensors the backward starts at, and their modified gradients.
        """
        return (logits,), (seeds,)

    def logits(self, output: Any) -> Tensor:
        """The logits tensor inside whatever ``forward_func`` returned."""
        if isinstance(output, Tensor):
            return output
        for name in self.logit_fields:
            value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
            if isinstance(value, Tensor):
                return value
        raise TypeError(
            f"forward_func returned a {type(output).__name__} without logits (looked for "
            f"{', '.join(self.logit_fields)}); make forward_func return the logits tensor."
        )

    def select_targets(self, logits: Tensor, target: Any, options: TargetOptions = TargetOptions()) -> TargetSelection:
        """The elements explained for ``target`` (None: each sample's prediction), as seeds over ``logits``; ``options``
        (DETR's ``threshold``, ``single``) for families whose targets have options."""
        return select_class_targets(logits, target)

    def per_sample_outputs(self, logits: Tensor) -> Tensor:
        """``[B, ...]``: the outputs each sample's explanation depends on (checked to be finite)."""
        return logits
