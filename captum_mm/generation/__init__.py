"""Generated tokens as explained elements (docs/METHOD.md, "Decoder-only generation", "Encoder-decoder generation").

Everything about generation lives here; an adapter only declares its family's :class:`GenerationConvention`
(:meth:`~captum_mm.models.ArchitectureAdapter.generation_convention`, None for families that do not generate).
A :class:`Continuation` holds the tokens explained after a prompt: given by the user, or produced by
``model.generate`` (:mod:`~captum_mm.generation.generate`). :func:`generation_forward` turns the prompt's forward
arguments into one forward over prompt and continuation (:mod:`~captum_mm.generation.forward`) whose output is the
pre-softmax logit of every continuation token; :mod:`~captum_mm.generation.readout` seeds one backward slot per token
from it and says which relevance row explains each token.
"""

from captum_mm.generation.convention import Continuation, GenerationConvention
from captum_mm.generation.forward import check_generative, generation_forward
from captum_mm.generation.prompt import ContinuationLike, prompt_arguments
from captum_mm.generation.readout import decoder_rows, generated_targets, sequence_readouts, token_targets

__all__ = [
    "Continuation",
    "ContinuationLike",
    "GenerationConvention",
    "check_generative",
    "decoder_rows",
    "generated_targets",
    "generation_forward",
    "prompt_arguments",
    "sequence_readouts",
    "token_targets",
]
