"""Causality: the relevance of generated token ``k`` never depends on the tokens after it, for every method and
every generative family (docs/METHOD.md, "Causality of generated tokens"). Float64 (the LRP-based methods are
ill-conditioned in float32)."""

from functools import lru_cache
from typing import Dict, Tuple

import pytest
import torch
from torch import Tensor, nn

from captum_mm.attr import Explanation, PartialLRP
from captum_mm.attr.catalog import PAPER_METHODS, REFERENCE_DETR
from captum_mm.relevance.schedule import Readout, seen_positions
from helpers import (
    LANGUAGE_MODELS,
    VLMS,
    blip2,
    blip_questions,
    blip_vqa,
    encoder_decoder_model,
    family_prompts,
    language_model,
    prompt_batch,
    vlm_prompts,
)

FAMILIES = [*LANGUAGE_MODELS, "t5", "bart", *VLMS, "blip2-llama", "blip2-opt", "blip2-t5", "blip"]
#: The paper's methods, and "ours" dropping an element's Eq. 10 update at a zero row among the tokens it sees.
METHODS = {**PAPER_METHODS, **REFERENCE_DETR}
#: Tokens 0 and 1 explained after a continuation, then after one whose later tokens differ (token 2) and go on.
SHORT, LONGER = [5, 6, 7], [5, 6, 9, 10, 11]
EXPLAINED = (0, 1)
#: Float64 rounding (the softmax too is float64: docs/METHOD.md, "Precision"), amplified by LRP's divisions and
#: Grad-CAM's cancelling heads (1e-13 seen). The causality failures this guards against were 1e-2 to 0.4 of the maximum.
FLOAT64 = 1e-10


@lru_cache(maxsize=None)
def family_case(family: str) -> Tuple[nn.Module, Dict[str, Tensor]]:
    """The family's tiny model in float64 (its language model of 2 layers) and one prompt (no padding)."""
    torch.manual_seed(0)
    if family in LANGUAGE_MODELS or family in ("t5", "bart"):
        ids, mask = prompt_batch(batch=1, tokens=5)
        model = language_model(family) if family in LANGUAGE_MODELS else encoder_decoder_model(family)
        prompt = {"input_ids": ids, "attention_mask": mask}
    elif family in VLMS:  # one vision layer read (LLaVA reads the one before the last): the stage is not causal
        model, prompt = VLMS[family](vision_layers=2 if family in ("llava", "llava_next") else 1), family_prompts(family, batch=1)
    elif family == "blip":
        model, prompt = blip_vqa(vision_layers=1), blip_questions(batch=1, pad=False)
    else:
        model, prompt = blip2(vision_layers=1, qformer_layers=1, language=family.split("-")[1]), vlm_prompts(batch=1)
    return model.double(), {name: value.double() if value.is_floating_point() else value for name, value in prompt.items()}


def assert_same(earlier: Tensor, later: Tensor, tolerance: float, what: str) -> None:
    scale = float(earlier.abs().max()) if earlier.numel() and earlier.any() else 1.0
    torch.testing.assert_close(later, earlier, rtol=0.0, atol=tolerance * scale, msg=lambda m: f"{what}: {m}")


def assert_tokens_unchanged(short: Explanation, longer: Explanation, tolerance: float) -> None:
    """Tokens :data:`EXPLAINED` after :data:`SHORT` as after :data:`LONGER`, over every output; nothing on a
    generated token itself or after it."""
    for k in EXPLAINED:
        for name, value in short.outputs().items():
            reference, compared = value[0, k], longer.outputs()[name][0, k]
            if name == "generated":
                assert reference[k:].abs().sum() == 0 and compared[k:].abs().sum() == 0
                reference, compared = reference[:k], compared[:k]
            assert_same(reference, compared, tolerance, f"token {k} {name}")


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_generated_tokens_relevance_ignores_later_tokens(family, method):
    model, prompt = family_case(family)
    short, longer = (METHODS[method](model).explain(prompt, continuation=[tokens]) for tokens in (SHORT, LONGER))
    assert_tokens_unchanged(short, longer, FLOAT64)


@pytest.mark.parametrize("family", ["llama", "t5", "llava"])
def test_partial_lrp_scales_over_what_the_explained_logit_sees(family):
    """Min-max scaling over the entries up to the explained row: 0 on the token itself and after it (the scaling
    used to lift those zeros to a constant), in [0, 1] before, not all equal."""
    model, prompt = family_case(family)
    explanation = PartialLRP(model).explain(prompt, continuation=[SHORT])
    generated = explanation.generated[0]
    assert torch.equal(generated.triu(), torch.zeros_like(generated))
    for k in range(len(SHORT)):
        seen = torch.cat([explanation.text[0, k], generated[k, :k]])
        assert seen.min() >= 0 and seen.max() <= 1 and seen.max() > seen.min()


def test_each_element_sees_a_causal_stream_up_to_its_readout_row():
    outputs = {"text": Readout("sequence", torch.tensor([2, 4]), "sequence", slice(0, 3)),
               "image": Readout("vision", torch.tensor([0, 0]), "vision")}
    assert seen_positions(outputs, "sequence", 6).int().tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
    with pytest.raises(ValueError, match="No output is read from a row of the causal modality 'target'"):
        seen_positions(outputs, "target", 6)
