"""CP-LRP conserves the explained class logit in float64 on the encoder families (BERT, ViT, Swin, ViLT, LXMERT,
VisualBERT) once nothing absorbs relevance: every input's relevance (tokens, pixels on the patch grid, regions) sums to
the logit."""

import pytest
import torch

from captum_mm.attr import AttnLRP
from helpers import CASES

#: What absorbs relevance besides the biases (linear and LayerNorm, zeroed in every family): parameters entering the
#: token stream as constants. BERT/LXMERT/VisualBERT: position and token-type embeddings (VisualBERT's regions' too:
#: ``visual_position_embeddings``, ``visual_token_type_embeddings``); ViT: the class token and position embeddings;
#: ViLT: those, the text's, and the modality type embeddings (``token_type_embeddings``). Swin has none: its relative
#: position tables (random) enter the scores only, which CP-LRP holds constant; its window shifts (permutations), its
#: zero padding and patch merging (a bias-free linear map after a LayerNorm) are no sources of relevance.
ABSORBING = {
    "bert": ("position_embeddings", "token_type_embeddings"),
    "vit": ("position_embeddings", "cls_token"),
    "swin": (),
    "vilt": ("position_embeddings", "token_type_embeddings", "cls_token"),
    "lxmert": ("position_embeddings", "token_type_embeddings"),
    "visual_bert": ("position_embeddings", "token_type_embeddings"),
}
#: Swin on 20 x 20 pixels: a 5 x 5 grid, padded to the 2 x 2 windows and for patch merging.
CASE_ARGUMENTS = {"swin": {"image_size": 20}}


@pytest.mark.parametrize("family", list(ABSORBING))
def test_cp_lrp_conserves_an_encoders_class_logit(family):
    """Every parameter perturbed (HF's init makes biases, LayerNorm weights and class tokens 0 or 1), then what
    absorbs relevance zeroed: the explained (predicted) class's logit is the sum of the text tokens' relevance at the
    word embeddings, the pixels' pooled on the patch grid and the regions'. LXMERT's regions are read at both floating
    inputs, ``visual_feats`` and ``visual_pos`` (the boxes, through ``box_fc``, whose weights are not zeroed: a
    region's relevance includes its box's, and with ``visual_pos`` unread the test fails); VisualBERT's at
    ``visual_embeds``."""
    torch.manual_seed(0)
    case = CASES[family](**CASE_ARGUMENTS.get(family, {}))
    model = case.model.double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
            if name.endswith("bias") or any(part in name for part in ABSORBING[family]):
                parameter.zero_()
    inputs = tuple(t.double() if t.is_floating_point() else t for t in case.inputs)
    explanation = AttnLRP(case.forward, model, constant_attention=True).explain(inputs, None, case.additional)
    output = case.forward(*inputs, *case.additional)
    logits = output if isinstance(output, torch.Tensor) else output[0]  # the logits (LXMERT's answer scores)
    explained = logits.detach().gather(1, explanation.target[:, None])[:, 0]
    outputs = explanation.outputs()
    assert set(outputs) == set(case.outputs) and all(value.abs().sum() > 0 for value in outputs.values())
    total = sum(value.flatten(1).sum(-1) for value in outputs.values())
    assert explained.abs().min() > 1e-3
    torch.testing.assert_close(total, explained, rtol=1e-6, atol=0)
