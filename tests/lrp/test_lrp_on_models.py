"""LRP on the real families: conservation across layers, and no trace left on the model."""

import pytest
import torch

from captum_mm.attr.engine import Needs, forward_pass
from captum_mm.lrp import lrp_rules
from captum_mm.models import TargetOptions, adapter_for, capture_attention
from helpers import assert_same_state, detr_case, generation_relevance, lxmert_case, model_state, visual_bert_case

# Float64 models: the rules ignore biases, so relevance is conserved exactly up to the 1e-9
# stabilisers of the divisions (relative error far below this tolerance).
TOLERANCE = 1e-6


def relevance_at_cuts(case, cuts):
    """Per-sample relevance ``sum(x * g)`` at tensors captured by ``cuts`` = {name: (module, argument index)}."""
    model = case.model.double()
    inputs = tuple(t.double() if t.is_floating_point() else t for t in case.inputs)
    tensors, handles = {}, []
    for name, (module, index) in cuts.items():
        if index is None:
            handles.append(module.register_forward_hook(lambda m, a, o, name=name: tensors.__setitem__(name, o[0])))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name, i=index: tensors.__setitem__(name, a[i])))
    try:
        options = TargetOptions(single=True)  # DETR: one query
        needs = Needs(gradients=True, relevance=True)
        with forward_pass(model, case.forward, inputs, case.additional, needs=needs, target_options=options) as forward:
            state = forward.lrp
            starts, seeds = forward.adapter.lrp_start(state, forward.logits, forward.selection.grad_outputs[:1])
            names = list(tensors)
            with state.relevance_mode():
                grads = torch.autograd.grad(starts, [tensors[n] for n in names], [s[0] for s in seeds], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    return {
        name: (tensors[name] * (g if g is not None else 0)).flatten(1).sum(1).detach() for name, g in zip(names, grads)
    }


def test_lxmert_relevance_is_conserved_across_every_cut():
    case = lxmert_case(l_layers=2, r_layers=2, x_layers=2)
    encoder = case.model.lxmert.encoder
    cuts = {f"lang{k}": (layer, 0) for k, layer in enumerate(encoder.layer)}
    cuts |= {f"vis{k}": (layer, 0) for k, layer in enumerate(encoder.r_layers)}
    cuts |= {f"x{j}_lang": (layer, 0) for j, layer in enumerate(encoder.x_layers)}
    cuts |= {f"x{j}_vis": (layer, 2) for j, layer in enumerate(encoder.x_layers)}
    relevance = relevance_at_cuts(case, cuts)
    one = torch.ones(3, dtype=torch.float64)
    for j in range(2):
        assert torch.allclose(relevance[f"x{j}_lang"] + relevance[f"x{j}_vis"], one, atol=TOLERANCE)
    assert torch.allclose(relevance["x0_lang"] + relevance["vis0"], one, atol=TOLERANCE)
    for k in range(2):
        assert torch.allclose(relevance[f"lang{k}"] + relevance["vis0"], one, atol=TOLERANCE)
    assert (relevance["x1_vis"].abs() > 1e-4).all()  # the image stream does receive relevance


def test_visual_bert_relevance_is_conserved_at_every_layer():
    case = visual_bert_case(layers=3)
    cuts = {f"layer{k}": (layer, 0) for k, layer in enumerate(case.model.visual_bert.encoder.layer)}
    relevance = relevance_at_cuts(case, cuts)
    for name in cuts:
        assert torch.allclose(relevance[name], torch.ones(3, dtype=torch.float64), atol=TOLERANCE), name


def test_detr_encoder_conserves_what_reaches_the_memory():
    case = detr_case(encoder_layers=3)
    encoder = case.model.model.encoder
    cuts = {f"encoder{k}": (layer, 0) for k, layer in enumerate(encoder.layers)}
    cuts["memory"] = (encoder, None)
    relevance = relevance_at_cuts(case, cuts)
    assert (relevance["memory"].abs() > 1e-3).all()
    for k in range(3):
        assert torch.allclose(relevance[f"encoder{k}"], relevance["memory"], atol=TOLERANCE)


@pytest.mark.parametrize("make_case", [lxmert_case, visual_bert_case, detr_case], ids=["lxmert", "visual_bert", "detr"])
def test_lrp_context_leaves_no_trace_also_after_an_exception(make_case):
    case = make_case()
    model = case.model
    reference = case.forward(*case.inputs, *case.additional)
    before = model_state(model)
    adapter = adapter_for(model)
    with pytest.raises(RuntimeError, match="inside"):
        specs = adapter.attention_specs()
        with capture_attention(model, specs, adapter.check_arguments, adapter.extra_hooks) as record:
            with lrp_rules(model, adapter.lrp_structure(), adapter.default_rules(), specs, record):
                case.forward(*case.inputs, *case.additional)
                raise RuntimeError("inside the context")
    assert_same_state(before, model_state(model))
    after = case.forward(*case.inputs, *case.additional)
    logits = adapter.logits(reference), adapter.logits(after)
    assert torch.equal(*logits)  # bit-identical outputs


@pytest.mark.parametrize("family", ["vit", "bert", "vilt", "clip", "swin"])
def test_self_attention_families_conserve_relevance_at_every_layer(family):
    """CLIP: in each tower, the L2 normalisation passed through as LayerNorm is. Swin: the windows' maps, the
    relative position bias (a constant), the patch merging (LayerNorm, bias-free reduction) and the pooling."""
    from helpers import bert_case, clip_case, swin_case, vilt_case, vit_case

    case = {"vit": vit_case, "bert": bert_case, "vilt": vilt_case, "clip": clip_case, "swin": swin_case}[family](layers=3)
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.swin.modeling_swin import SwinLayer
    from transformers.models.vilt.modeling_vilt import ViltLayer
    from transformers.models.vit.modeling_vit import ViTLayer

    classes = (BertLayer, ViltLayer, ViTLayer, CLIPEncoderLayer, SwinLayer)
    layers = [m for m in case.model.modules() if isinstance(m, classes)]
    cuts = {f"layer{k}": (layer, 0) for k, layer in enumerate(layers)}
    relevance = relevance_at_cuts(case, cuts)
    for name in cuts:
        assert torch.allclose(relevance[name], torch.ones(3, dtype=torch.float64), atol=TOLERANCE), (family, name)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "gpt2", "opt", "opt-post-norm", "phi3", "mixtral", "qwen3-moe"])
def test_decoder_only_lms_conserve_relevance_at_every_layer(family):
    """LLaMA-style: rotary embeddings and grouped-query heads crossed by their transposes, RMSNorm passed
    through, the gated product halved. GPT-2: Conv1D projections under the linear rules, the fused c_attn
    split into Q, K and V. OPT: the residual rule on flattened tokens, pre- and post-norm. The generated token's relevance 1 reaches every layer's input whole."""
    from helpers import language_model, prompt_batch

    model = language_model(family.removesuffix("-post-norm"), layers=3).double()
    ids, _ = prompt_batch(batch=2)
    if family == "gpt2":
        layers, norm = model.transformer.h, model.transformer.ln_f
    elif family.startswith("opt"):  # OPT's MLP runs on flattened tokens; OPT-350m's layers are post-norm
        for layer in model.model.decoder.layers:
            layer.do_layer_norm_before = family == "opt"
        layers, norm = model.model.decoder.layers, model.model.decoder.final_layer_norm
    else:
        layers, norm = model.model.layers, model.model.norm
    cuts = {f"layer{k}": (layer, "input") for k, layer in enumerate(layers)}
    cuts["final norm"] = (norm, "input")
    for name, relevance in generation_relevance(model, {"input_ids": ids}, [[5], [6]], cuts).items():
        assert torch.allclose(relevance, torch.ones(2, dtype=torch.float64), atol=TOLERANCE), (family, name, relevance)


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_encoder_decoder_lms_conserve_relevance(family):
    """What reaches the decoder's first layer and what reaches the encoder's output sum to the token's 1;
    every encoder layer passes on what reaches the encoder's output."""
    from helpers import encoder_decoder_model, prompt_batch

    model = encoder_decoder_model(family, layers=3).double()
    ids, _ = prompt_batch(batch=2)
    if family == "bart":
        encoder, decoder, encoder_output = model.model.encoder.layers, model.model.decoder.layers, model.model.encoder.layers[-1]
    else:
        encoder, decoder, encoder_output = model.encoder.block, model.decoder.block, model.encoder.final_layer_norm
    cuts = {f"encoder layer {k}": (layer, "input") for k, layer in enumerate(encoder)}
    cuts.update({"decoder": (decoder[0], "input"), "encoder output": (encoder_output, "output")})
    relevance = generation_relevance(model, {"input_ids": ids}, [[5, 6], [7, 8]], cuts)
    reaching_source = relevance["encoder output"]
    assert torch.allclose(relevance["decoder"] + reaching_source, torch.ones(2, dtype=torch.float64), atol=TOLERANCE)
    assert (reaching_source > 0).all()  # some reaches the prompt (0.3 % in the random BART, more in T5)
    for k in range(3):
        assert torch.allclose(relevance[f"encoder layer {k}"], reaching_source, atol=TOLERANCE), (family, k)


def test_blip_question_answering_conserves_relevance():
    """Post-norm text streams (BERT's residuals, also at every cross-attention), pre-norm vision layers (CLIP's), the
    vision attention's fused qkv split. What reaches the answer decoder's first layer and the question encoder's
    output sum to the token's 1; the question encoder passes that on to the question and the image embeddings (read
    by every encoder layer's cross-attention), and every vision layer passes on what reaches the image."""
    from helpers import blip_questions, blip_vqa

    model = blip_vqa(vision_layers=2, layers=2).double()
    batch = blip_questions(batch=2, pad=False)
    batch["pixel_values"] = batch["pixel_values"].double()
    vision, question = model.vision_model.encoder.layers, model.text_encoder.encoder.layer
    cuts = {f"vision layer {k}": (layer, "input") for k, layer in enumerate(vision)}
    cuts.update({"image": (vision[-1], "output"), "question": (question[0], "input"), "question output": (question[-1], "output"),
                 "answer": (model.text_decoder.bert.encoder.layer[0], "input")})
    relevance = generation_relevance(model, batch, [[5, 6], [7, 8]], cuts)
    one = torch.ones(2, dtype=torch.float64)
    assert torch.allclose(relevance["answer"] + relevance["question output"], one, atol=TOLERANCE)
    assert torch.allclose(relevance["question"] + relevance["image"], relevance["question output"], atol=TOLERANCE)
    assert (relevance["image"].abs() > 1e-3).all()
    for k in range(2):
        assert torch.allclose(relevance[f"vision layer {k}"], relevance["image"], atol=TOLERANCE), k
