"""AttnLRP's rules on hand-computed examples, conservation in float64, and the families it refuses."""

import pytest
import torch
from torch import nn

from dataclasses import replace

from captum_mm.adapters.llama import LlamaAdapter
from captum_mm.attr import AttnLRP, GenericAttention
from captum_mm.attr._inputs import _pooled
from captum_mm.attr.engine import forward_pass
from captum_mm.attr._pass import Needs
from captum_mm.lrp import attention_relevance
from captum_mm.lrp.canonizers import Canonizer
from captum_mm.lrp.attnlrp import DetachedNorm, PlainLinear, UniformAttention, ZResidual, attnlrp_rules, soft_cap_ratio
from captum_mm.lrp.mixture import SparseMixture
from helpers import CASES, LANGUAGE_MODELS, detr, encoder_decoder_model

# One head, two tokens, d = 1: Q = [1, 2], K = [1, 0], V = [2, 4], A = [[.5, .5], [.75, .25]], only token 0's
# context explained (g = [1, 0]), scores' factor 0.5.
Q, K, V = (torch.tensor([[[[a], [b]]]], dtype=torch.float64) for a, b in ((1, 2), (1, 0), (2, 4)))
A = torch.tensor([[[[0.5, 0.5], [0.75, 0.25]]]], dtype=torch.float64)
G = torch.tensor([[[[1.0], [0.0]]]], dtype=torch.float64)


def test_uniform_attention_by_hand():
    g_q, g_k, g_v, relevance = UniformAttention().gradients(Q, K, V, A, G, 0.5)
    # g_A = g V^T / 2 = [[1, 2], [0, 0]]; R_A = A g_A; g_V = A^T g / 2
    assert torch.equal(relevance[0, 0], torch.tensor([[0.5, 1.0], [0.0, 0.0]], dtype=torch.float64))
    assert torch.equal(g_v[0, 0, :, 0], torch.tensor([0.25, 0.25], dtype=torch.float64))
    # g_S = R_A - A sum(R_A) = [[-.25, .25], [0, 0]]; g_P = g_S * 0.5 / 2; g_Q = g_P K, g_K = g_P^T Q
    assert torch.equal(g_q[0, 0, :, 0], torch.tensor([-0.0625, 0.0], dtype=torch.float64))
    assert torch.equal(g_k[0, 0, :, 0], torch.tensor([-0.0625, 0.0625], dtype=torch.float64))
    # R_A + R_V = context . g = 3; Q and K share the scores' relevance 0.5 * P . g_S = -0.125
    assert (relevance.sum() + (V * g_v).sum()).item() == 3.0
    assert ((Q * g_q).sum() + (K * g_k).sum()).item() == -0.125


def test_constant_attention_by_hand():
    g_q, g_k, g_v, relevance = UniformAttention(constant_attention=True).gradients(Q, K, V, A, G, None)
    assert not g_q.any() and not g_k.any()
    assert torch.equal(g_v[0, 0, :, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.equal(relevance[0, 0], torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64))


def test_soft_capped_scores_take_the_identity_rule_by_hand():
    """u = 0.5 Q K^T = [[.5, 0], [1, 0]] capped at c = 0.5: c tanh(u / c) = [[.5 tanh 1, 0], [.5 tanh 2, 0]]; g_S as
    uncapped, [[-.25, .25], [0, 0]], times c tanh(u / c) / u = [[tanh 1, 1], [tanh 2 / 2, 1]]."""
    t1 = torch.tanh(torch.tensor(1.0, dtype=torch.float64))
    g_q, g_k, _, _ = UniformAttention().gradients(Q, K, V, A, G, 0.5, cap=0.5)
    # g_P = g_u * 0.5 / 2 = [[-.0625 tanh 1, .0625], [0, 0]]; g_Q = g_P K, g_K = g_P^T Q
    assert torch.allclose(g_q[0, 0, :, 0], torch.stack([-0.0625 * t1, t1 * 0]), rtol=1e-15, atol=0)
    assert torch.allclose(g_k[0, 0, :, 0], torch.stack([-0.0625 * t1, t1 * 0 + 0.0625]), rtol=1e-15, atol=0)
    # Q and K share the capped scores' relevance c tanh(u / c) . g_S = -.125 tanh 1 (uncapped: -.125)
    assert torch.allclose((Q * g_q).sum() + (K * g_k).sum(), -0.125 * t1, rtol=1e-15, atol=0)
    assert soft_cap_ratio(torch.zeros(1), 0.5).item() == 1.0


def test_router_weights_take_the_softmax_rule_by_hand():
    """A router's weights' relevance R = [1, 0, 2] (experts 0 and 2 selected) to its logits by the softmax's rule at its
    input, g_l = R - q sum(R): renormalised weights [.25, .75] give q = [.25, 0, .75], g_l = [.25, 0, -.25] (the
    gradient of softmax([l0, l2]) times g_w = R / w = [4, 8 / 3]); not renormalised, q = softmax([0, 0, 0])."""
    router, half = nn.Module(), torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    mixture, indices = SparseMixture(nn.Identity(), router, nn.Identity(), softmax_router=True), torch.tensor([[0, 2]])
    weights = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    assert torch.equal(mixture._router_gradient(torch.zeros(1, 3), weights, indices, half),
                       torch.tensor([[0.25, 0.0, -0.25]], dtype=torch.float64))
    router.norm_topk_prob = False
    assert torch.allclose(mixture._router_gradient(torch.zeros(1, 3), weights, indices, half),
                          torch.tensor([[0.0, -1.0, 1.0]], dtype=torch.float64), rtol=0, atol=1e-15)


def test_uniform_attention_needs_the_scores_factor():
    with pytest.raises(ValueError, match="factor of Q K"):
        UniformAttention().gradients(Q, K, V, A, G, None)


def test_detached_layer_norm_by_hand():
    norm = nn.LayerNorm(2, eps=0.0).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0]))
        norm.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([1.0, 3.0], dtype=torch.float64)  # mean 2, sigma 1: y = [-1.5, 1]
    g = DetachedNorm().module_gradient(norm, x, norm(x), torch.ones(2, dtype=torch.float64))
    # u = w g / sigma = [2, 1], centred: [.5, -.5]; R_x = [.5, -1.5] = y . g - b . g
    assert torch.equal(g, torch.tensor([0.5, -0.5], dtype=torch.float64))


def test_rms_norm_and_activations_take_the_identity_rule():
    x, out = torch.tensor([2.0, -4.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(DetachedNorm().module_gradient(nn.SiLU(), x, out, torch.tensor([4.0, 2.0])), torch.tensor([2.0, -0.5]))


def test_z_residual_and_plain_linear_by_hand():
    g = torch.tensor([0.5, 2.0])
    assert all(torch.equal(t, g) for t in ZResidual().branch_gradients(torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), g))
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    g_x = PlainLinear().input_gradient(linear, torch.ones(2), linear(torch.ones(2)), torch.tensor([1.0, -1.0]))
    assert torch.equal(g_x, torch.tensor([-2.0, -2.0]))


def _llama(zero_scores: bool = False, family: str = "llama") -> nn.Module:
    """A float64 LM with weights scaled up (attention far from uniform) and biases drawn (HF initialises them to
    zero); Gemma 2's final soft cap 0.5 binds."""
    torch.manual_seed(0)
    model = LANGUAGE_MODELS[family]().double().eval()
    if family == "gemma2":
        model.config.final_logit_softcapping = 0.5
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.mul_(5.0)
            elif name.endswith("bias"):
                parameter.normal_()
        for name, parameter in model.named_parameters() if zero_scores else ():
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                parameter.zero_()
            elif name.endswith("qkv_proj.weight"):  # Phi-3's fused projection: the queries' rows first
                parameter[:model.config.hidden_size].zero_()
    return model


def _absorbs(name: str) -> bool:
    """Whether an LM's parameter absorbs CP-LRP's relevance: a bias but the queries' and keys' (the scores are held
    constant), OPT's learned positions."""
    return name.endswith("bias") and not name.endswith(("q_proj.bias", "k_proj.bias")) or "embed_positions" in name


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "mixtral", "qwen3-moe", "qwen2", "mistral", "gemma", "opt",
                                    "phi3", "qwen3"])
def test_cp_lrp_conserves_the_logit_of_a_bias_free_lm(family):
    """With the absorbing biases and positions zeroed nothing absorbs relevance: the tokens' relevance sums to the
    explained logit (up to the 1e-9 stabiliser of the identity rule at RMSNorm and the activation); Qwen2's and OPT's
    query and key biases, drawn, take nothing. Gemma: RMSNorm's (1 + w) and the embeddings'
    scale are linear, the final soft cap (binding, 0.5) passes relevance by the identity rule, so the sum is the capped
    logit; the scores' cap is not crossed (Q, K constant). Mixtures: the router weights constant, the experts linear."""
    model, ids = _llama(family=family), torch.randint(3, 40, (2, 7))
    with torch.no_grad():
        for parameter in (p for name, p in model.named_parameters() if _absorbs(name)):
            parameter.zero_()
    explanation = AttnLRP(model, constant_attention=True).explain(ids)
    logits = model(ids).logits[:, -1].gather(1, explanation.target[:, None])[:, 0]
    assert torch.allclose(explanation.text.sum(-1), logits, rtol=1e-6, atol=0)  # the pass-through rules' 1e-9 stabiliser
    if family != "llama":  # ours w/ AttnLRP runs there too
        assert GenericAttention(model, head_weighting="attnlrp").explain(ids).text.abs().sum() > 0


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "qwen2", "mistral", "gemma", "opt", "phi3", "qwen3"])
def test_attnlrp_conserves_the_logit_less_the_softmax_bias_terms(family):
    """With zero queries every score is 0: the softmax's rule at its input (``x (R - s sum R)``) gives the scores
    nothing, so its bias term absorbs each map's whole relevance ``R_A``, read at the probes (Gemma 2: the scores' cap,
    at 0, passes nothing; the final cap binds, its identity rule giving the logit before it the capped logit); the
    other absorbing biases and positions zeroed. Not the mixtures: their routers' softmax bias terms absorb too."""
    model, ids = _llama(zero_scores=True, family=family), torch.randint(3, 40, (2, 7))
    with torch.no_grad():
        for parameter in (p for name, p in model.named_parameters() if _absorbs(name)):
            parameter.zero_()
    explanation = AttnLRP(model).explain(ids)
    needs, target = Needs(probabilities=False, relevance=True), explanation.target
    with forward_pass(model, model, (ids,), needs=needs, rules=attnlrp_rules(), target=target) as forward:
        starts = forward.adapter.value_lrp_start(forward.lrp, forward.logits, forward.selection.grad_outputs)
        maps = attention_relevance(forward.lrp, list(forward.record.calls), *starts)
    absorbed = sum(values[0].flatten(1).sum(-1) for values in maps)
    logits = model(ids).logits[:, -1].gather(1, target[:, None])[:, 0]
    assert absorbed.abs().min() > 1e-3
    assert torch.allclose(explanation.text.sum(-1) + absorbed, logits, rtol=1e-6, atol=0)


def test_batched_generation_equals_one_by_one():
    model = _llama()
    prompt, continuation = torch.randint(3, 40, (2, 5)), torch.randint(3, 40, (2, 3))
    batched = AttnLRP(model).explain(prompt, continuation=continuation)
    for index in range(2):
        alone = AttnLRP(model).explain(prompt[index:index + 1], continuation=continuation[index:index + 1])
        assert torch.allclose(batched.text[index], alone.text[0], rtol=1e-9, atol=1e-12)
        assert torch.allclose(batched.generated[index], alone.generated[0], rtol=1e-9, atol=1e-12)
    assert batched.text[:, 0].abs().sum() > 0  # nothing but padding is zeroed


class _StartsElsewhere(LlamaAdapter):
    def lrp_start(self, state, logits, seeds):  # LRP entered elsewhere, with no start of AttnLRP's
        return super().lrp_start(state, logits, seeds)


class _OwnBlock(LlamaAdapter):
    def lrp_structure(self):  # a block with a rule AttnLRP does not know
        return replace(super().lrp_structure(), canonizers=[Canonizer()])


@pytest.mark.parametrize("adapter, reason", [(_StartsElsewhere, "starts elsewhere"), (_OwnBlock, "rules of their own")])
def test_unsupported_families_are_refused(adapter, reason, monkeypatch):
    """No family of the package is refused by AttnLRP's rules: a family of one's own is, where its LRP starts
    elsewhere than at the logits without a start for AttnLRP, or it has blocks with rules of their own."""
    monkeypatch.setattr("captum_mm.attr._base.adapter_for", adapter)
    for method in (AttnLRP, lambda model: GenericAttention(model, head_weighting="attnlrp")):
        with pytest.raises(TypeError, match=reason):
            method(LANGUAGE_MODELS["llama"]())


def test_ours_with_attnlrp_heads_weights_them_by_attnlrps_relevance():
    """Eq. 13 with R_A from AttnLRP's rules: the same pipeline as "ours w/ LRP", other rules, other maps."""
    case = CASES["bert"]()
    explain = lambda weighting: GenericAttention(case.model, head_weighting=weighting).explain(  # noqa: E731
        case.inputs, None, case.additional).text
    ours, reference = explain("attnlrp"), explain("lrp")
    assert torch.isfinite(ours).all() and (ours >= 0).all() and ours.abs().sum() > 0
    assert not torch.allclose(ours, reference)


def test_cp_lrp_conserves_the_logit_through_layer_norms_without_biases():
    """GPT-2 (LayerNorm, Conv1D, fused c_attn) with every bias and the position embeddings zeroed: nothing absorbs
    relevance, so LayerNorm's centering (linear, sigma constant) must conserve it."""
    torch.manual_seed(0)
    model = LANGUAGE_MODELS["gpt2"]().double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "wpe" in name:
                parameter.zero_()
    ids = torch.randint(3, 40, (2, 7))
    explanation = AttnLRP(model, constant_attention=True).explain(ids)
    logits = model(ids).logits[:, -1].gather(1, explanation.target[:, None])[:, 0]
    assert torch.allclose(explanation.text.sum(-1), logits, rtol=1e-6, atol=0)


def test_cp_lrp_conserves_clips_similarity_half_in_each_tower():
    """CLIP's logit ``scale * x_hat . y_hat``: the norms held constant, the product split uniformly, each tower's
    inputs (text embeddings; pixels through the patch convolution) get half. Biases and the position and class
    embeddings zeroed, nothing else absorbs relevance (LayerNorms by their rule with sigma constant)."""
    case = CASES["clip"]()
    model = case.model.double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "position_embedding" in name or "class_embedding" in name:
                parameter.zero_()
    (ids, pixels), (mask,) = case.inputs, case.additional
    explanation = AttnLRP(case.forward, model, constant_attention=True).explain((ids, pixels.double()), None, (mask,))
    half = case.forward(ids, pixels.double(), mask).diagonal() / 2
    assert torch.allclose(explanation.text.sum(-1), half, rtol=1e-6, atol=0)
    assert torch.allclose(explanation.image.flatten(1).sum(-1), half, rtol=1e-6, atol=0)


def test_cp_lrp_conserves_a_detr_query_logit_at_the_pixels():
    """DETR's class logit of a query, through the decoder, the encoder and the ResNet backbone to ``pixel_values``,
    pooled on the feature grid. Biases and the frozen batch norms' means zeroed: the queries' and the sine position
    embeddings enter Q and K only, which CP-LRP holds constant, so the pixels take the whole logit."""
    torch.manual_seed(0)
    model = detr().double()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("bias", "running_mean")):
                tensor.zero_()
    pixels, queries = torch.randn(2, 3, 64, 96, dtype=torch.float64), [[0, 3], [1]]
    explanation = AttnLRP(model, constant_attention=True).explain((pixels,), queries)
    logits = model(pixel_values=pixels).logits
    explained = torch.stack([logits[b, q, explanation.target[b, k]] for b, row in enumerate(queries) for k, q in enumerate(row)])
    assert torch.allclose(explanation.image[[0, 0, 1], [0, 1, 0]].flatten(1).sum(-1), explained, rtol=1e-6, atol=0)


def test_pixels_pool_onto_a_grid_as_nearest_upsampling_spreads_it():
    """Pixel row r in cell row floor(r h / H): 5 rows on 2 cells: rows 0-2 and 3-4 (2 columns on 1 cell)."""
    pixels = torch.arange(10.0).reshape(1, 1, 5, 2)
    assert torch.equal(_pooled(pixels, (2, 1)), torch.tensor([[[0.0 + 1 + 2 + 3 + 4 + 5], [6.0 + 7 + 8 + 9]]]))


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_cp_lrp_conserves_an_encoder_decoders_logit(family):
    """The encoder's and the decoder's embeddings read apart (T5 shares one module: by call order). Biases and BART's
    position embeddings zeroed (T5 has none), the decoder's start token embedded as zeros (its relevance is no output):
    the prompt's and the generated tokens' relevance sums to each explained logit."""
    torch.manual_seed(0)
    model = encoder_decoder_model(family, layers=2).double()
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "embed_positions" in name:
                parameter.zero_()
        model.get_decoder().get_input_embeddings().weight[start] = 0
    prompt, continuation = torch.randint(3, 40, (2, 6)), torch.randint(3, 40, (2, 3))
    explanation = AttnLRP(model, constant_attention=True).explain({"input_ids": prompt}, continuation=continuation)
    decoder_ids = torch.cat([torch.full((2, 1), start), continuation], 1)
    logits = model(input_ids=prompt, decoder_input_ids=decoder_ids).logits[:, :-1].gather(-1, continuation[..., None])[..., 0]
    assert explanation.text.abs().sum() > 0 and explanation.generated[:, 1:].abs().sum() > 0
    assert torch.allclose(explanation.text.sum(-1) + explanation.generated.sum(-1), logits, rtol=1e-6, atol=0)
