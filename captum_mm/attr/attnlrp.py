"""AttnLRP (Achtibat et al., ICML 2024) and CP-LRP: LRP through the whole network, relevance read at the inputs."""

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_mm._precision import exact
from captum_mm.attr._checks import check_connected
from captum_mm.attr._base import AttentionAttribution, AttentionBundle, Explanation, Needs
from captum_mm.attr._inputs import DECODER_EMBEDDINGS, PIXELS, KeptInputs, keep_inputs, read_inputs
from captum_mm.attr.engine import ForwardPass
from captum_mm.generation.readout import GENERATED
from captum_mm.lrp.attention import score_scale
from captum_mm.lrp.attnlrp import attnlrp_rules
from captum_mm.lrp.canonizers import FunctionalActivation, GatedProduct, PositionEmbeddingInput
from captum_mm.lrp.mixture import SparseMixture
from captum_mm.models import ArchitectureAdapter
from captum_mm.relevance.propagation import Matrices
from captum_mm.relevance.schedule import AttentionEvent, Schedule


class AttnLRP(AttentionAttribution):
    r"""
    AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance
    Propagation for Transformers", ICML 2024, https://arxiv.org/abs/2402.05602;
    reference code LXT): one LRP backward from the explained logit through the
    whole model (:func:`~captum_mm.lrp.attnlrp.attnlrp_rules`: uniform rule on the
    attention products and gated products, the softmax's rule at its input,
    normalisations with their scale held constant, the epsilon rule on linear
    layers, the z-rule on residual additions), the relevance read at the inputs:
    each token's ``sum_d x * R_x / x`` at its word embedding (or ``inputs_embeds``,
    region features), an image's pixels' summed over each cell of its patch grid
    (tiles, flattened patches and several images a prompt pooled by the adapter,
    ``pixel_pooling``, onto the vision tokens its image output places),
    Whisper's ``input_features``' summed over the mel bins (``audio``, per time step)
    and over each frame's two steps (``frames``).
    The relevance is signed and sums, over every input, to the explained logit less
    what biases, position embeddings and the softmax's bias term absorb.

    ``constant_attention=True`` gives CP-LRP (Ali et al., "XAI for Transformers:
    Better Explanations through Conservative Propagation", ICML 2022): attention
    maps and MLP gates are constants, the values take the whole relevance.

    A generated token's relevance includes its own row token (the one predicting
    it): nothing is zeroed but padding. One forward and one LRP backward per
    explained slot; ``max_memory`` does not apply (no buffers but the inputs'
    relevance). ``attribute`` spreads a patch's relevance evenly over its pixels,
    as for every method.

    Examples::

        >>> explanation = AttnLRP(model).explain(input_ids, additional_forward_args=(mask,))
        >>> explanation.text  # [B, T], signed
    """

    needs = Needs(probabilities=False, relevance=True)

    def __init__(self, forward_func: Callable, model: Optional[nn.Module] = None, epsilon: float = 0.0,
                 constant_attention: bool = False) -> None:
        r"""
        Args:
            forward_func (Callable or torch.nn.Module): The HuggingFace model, or a
                        callable running it and returning its logits.
            model (torch.nn.Module, optional): The model to explain when
                        ``forward_func`` is not the model. Default: None
            epsilon (float, optional): The linear layers' epsilon (0: the exact
                        gradient, as LXT's efficient mode). Default: 0
            constant_attention (bool, optional): CP-LRP instead of AttnLRP. Default: False
        """
        super().__init__(forward_func, model)
        check_supported(self.adapter)
        self.epsilon, self.constant_attention = epsilon, constant_attention
        self.rules = attnlrp_rules(epsilon, constant_attention)
        self._kept = KeptInputs()

    def events(self, schedule: Schedule) -> List[AttentionEvent]:
        """None: AttnLRP reads no attention map (its relevance is read at the inputs)."""
        return []

    def fuse(self, bundle: AttentionBundle) -> Tensor:
        """Not used: AttnLRP fuses no attention map (:meth:`events` is empty)."""
        raise RuntimeError("AttnLRP reads its relevance at the inputs, not at attention maps.")

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        """Not used: AttnLRP builds no relevance matrix (its relevance is read at the inputs)."""
        raise RuntimeError("AttnLRP reads its relevance at the inputs, not from relevance matrices.")

    def _explain(self, inputs: Tuple[Tensor, ...], target: Any, additional_forward_args: Any,
                 forward_func: Optional[Callable] = None, **kwargs: Any) -> Tuple[Explanation, Dict[str, Any]]:
        with keep_inputs(self.model) as self._kept:
            return super()._explain(inputs, target, additional_forward_args, forward_func, **kwargs)

    def _outputs_in_groups(self, forward: ForwardPass, max_memory: Any, streaming: bool) -> Dict[str, Tensor]:
        # no map is propagated: nothing to stream
        """Every element's outputs: one LRP backward a slot, its elements' inputs' relevance read out."""
        selection, batch = forward.selection, forward.logits.shape[0]
        pooling = self.adapter.pixel_pooling(forward.record.arguments)
        kept = {name: t for name, t in self._kept.tensors.items()  # several images a prompt: pooled by the adapter
                if t.shape[0] == batch or (name == PIXELS and pooling is not None)}
        check_connected(forward.logits, forward.method)
        if not kept or self._kept.embedding_calls > 1:
            raise TypeError(f"AttnLRP reads relevance at a model's floating inputs and at its word embeddings, each used "
                            f"by one token stream (an encoder-decoder's encoder and decoder apart): this "
                            f"{type(self.model).__name__} has no such input, or embeds several streams with the same "
                            "embeddings, which AttnLRP does not support yet.")
        relevance: Dict[str, Tensor] = {}
        pooled: Dict[str, Tensor] = {}  # the outputs the adapter pools from the pixels
        assert forward.lrp is not None
        for slot in range(selection.grad_outputs.shape[0]):
            starts, seeds = self.adapter.value_lrp_start(forward.lrp, forward.logits, selection.grad_outputs[slot : slot + 1])
            with forward.lrp.relevance_mode():
                grads = torch.autograd.grad(starts, list(kept.values()), grad_outputs=tuple(seed[0] for seed in seeds),
                                            retain_graph=True, allow_unused=True)
            members = (selection.slot == slot).nonzero()[:, 0]
            for name, tensor, grad in zip(kept, kept.values(), grads):
                values = exact(tensor) * exact(grad) if grad is not None else torch.zeros_like(exact(tensor))
                into, read = (pooled, pooling(values)) if name == PIXELS and pooling else (relevance, {name: values})
                for key, value in read.items():  # [B, ...] -> the slot's elements
                    into.setdefault(key, value.new_zeros(selection.num_elements, *value.shape[1:]))[members] = (
                        value[selection.sample[members]])
        # an encoder-decoder's decoder ids carry the generated tokens (the adapter checks them as no output of its own)
        carried = {**self.adapter.argument_outputs, **({"decoder_input_ids": GENERATED} if DECODER_EMBEDDINGS in kept else {})}
        return read_inputs(forward.schedule, relevance, carried, pooled)


def check_supported(adapter: ArchitectureAdapter) -> None:
    """Raise ``TypeError`` for a family AttnLRP's rules do not cover: LRP started elsewhere than at the logits without
    a start of AttnLRP's (:meth:`~captum_mm.models.ArchitectureAdapter.value_lrp_start`), blocks with LRP rules of
    their own but gated products, functional activations, mixtures of experts and position embeddings added to
    projections' inputs, attention scores without a known ``Q K^T`` factor.

    Args:
        adapter (ArchitectureAdapter): The model's adapter.
    """
    family = type(adapter).__name__
    reasons = []
    own = lambda name: getattr(type(adapter), name) is not getattr(ArchitectureAdapter, name)  # noqa: E731
    if own("lrp_start") and not own("value_lrp_start"):
        reasons.append("its LRP starts elsewhere than at the logits, with no start for AttnLRP's relevance")
    try:
        canonizers = adapter.lrp_structure().canonizers
    except NotImplementedError:
        canonizers, reasons = (), [*reasons, "it declares no LRP structure"]
    known = (GatedProduct, FunctionalActivation, PositionEmbeddingInput, SparseMixture)
    other = sorted({type(c).__name__ for c in canonizers if not isinstance(c, known)})
    if other:
        reasons.append(f"its blocks {other} have LRP rules of their own")
    for spec in adapter.attention_specs():
        if score_scale(spec.module) is None:
            reasons.append(f"the scores of {type(spec.module).__name__} are no scaled Q K^T plus a bias")
            break
    if reasons:
        raise TypeError(f"AttnLRP cannot explain this model ({family}): {'; '.join(reasons)}. Use a method without "
                        "AttnLRP's rules (GenericAttention, TransformerAttribution, AttentionRollout).")
