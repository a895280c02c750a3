"""Phi-3: the partial rotary embedding LRP crosses, and a user's Phi-3 explained through explain and attribute with no
adapter code. Raw attention against the eager maps, the fused split's operands and Captum's LLM API: test_moe.py;
schedule, padding, causality, lean capture, half precision and conservation: the shared suites (LANGUAGE_MODELS)."""

import torch
from helpers import language_model, prompt_batch
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

from captum_mm.attr import GenericAttention, TransformerAttribution
from captum_mm.lrp.attention import rotary, rotary_transposed
from captum_mm.models import adapter_for


def test_partial_rotary_is_phi3s_and_its_transpose_crosses_it():
    """Half of each head rotates (partial_rotary_factor 0.5): LRP's rotary equals Phi-3's, and rotary_transposed is
    its transpose (<rotary(x), g> = <x, rotary_transposed(g)>), so relevance crosses it conserved."""
    model = language_model("phi3").double()
    x, g = torch.randn(2, 4, 5, 8, dtype=torch.float64), torch.randn(2, 4, 5, 8, dtype=torch.float64)
    cos, sin = model.model.rotary_emb(x, torch.arange(5)[None].expand(2, -1))
    assert cos.shape[-1] == 4  # the rotated features
    torch.testing.assert_close(rotary(x, cos, sin), apply_rotary_pos_emb(x, x, cos, sin)[0])
    torch.testing.assert_close((rotary(x, cos, sin) * g).sum(), (x * rotary_transposed(g, cos, sin)).sum())


def test_a_users_phi3_explains_with_no_adapter_code():
    model = language_model("phi3")
    assert type(adapter_for(model)).__name__ == "Phi3Adapter"
    ids, mask = prompt_batch(batch=2)
    text = TransformerAttribution(model).attribute(ids, additional_forward_args=(mask,))
    assert text.shape == ids.shape and text[1, :2].abs().sum() == 0 and text[0].abs().sum() > 0
    explanation = GenericAttention(model).explain({"input_ids": ids, "attention_mask": mask}, continuation=[[5], [6]])
    assert explanation.text.shape == (2, 1, 6) and torch.isfinite(explanation.text).all()
