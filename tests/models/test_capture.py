"""Attention capture against what HuggingFace itself returns with output_attentions=True."""

import torch

from captum_mm.attr._gradients import attention_gradients
from captum_mm.attr.engine import Needs, forward_pass
from captum_mm.models import TargetOptions
from helpers import detr_case, lxmert_case


def captured(case, references, target_options=TargetOptions()):
    """Record a forward; ``references(output, selection)`` runs its own backward before ours.
    Returns the gradients of the scheduled maps, keyed by call index."""

    def with_attentions(*args):
        return case.forward(*args, output_attentions=True)

    needs = Needs(gradients=True)
    with forward_pass(case.model, with_attentions, case.inputs, case.additional, needs=needs, target_options=target_options) as forward:
        expected = references(forward.output, forward.selection)
        events = forward.schedule.events  # the maps the output depends on
        found = attention_gradients(forward.logits, [forward.record.calls[e.call].probs for e in events], forward.selection.grad_outputs)
    return forward.record, forward.output, {event.call: gradient for event, gradient in zip(events, found)}, expected


def test_lxmert_capture_matches_output_attentions_and_their_gradients():
    case = lxmert_case()

    def references(output, selection):
        logits, last_cross = output.question_answering_score, output.cross_encoder_attentions[-1]
        together = torch.autograd.grad(logits[torch.arange(3), selection.classes].sum(), [last_cross], retain_graph=True)[0]
        alone = torch.autograd.grad(logits[1, selection.classes[1]], [last_cross], retain_graph=True)[0]
        return together, alone

    record, output, grads, (together, alone) = captured(case, references)
    sites = [call.site for call in record.calls]
    language = [i for i, s in enumerate(sites) if s.startswith("lxmert.encoder.layer.")]
    vision = [i for i, s in enumerate(sites) if s.startswith("lxmert.encoder.r_layers.")]
    cross = [i for i, s in enumerate(sites) if ".visual_attention." in s and record.calls[i].count == 0]
    for indices, reference in ((language, output.language_attentions), (vision, output.vision_attentions), (cross, output.cross_encoder_attentions)):
        assert len(indices) == len(reference)
        for index, attention in zip(indices, reference):
            assert record.calls[index].probs is attention  # the live tensor, not a copy
    assert torch.allclose(grads[cross[-1]][0], together)
    assert torch.allclose(grads[cross[-1]][0][1], alone[1])  # each sample gets its own gradient


def test_detr_capture_switches_to_eager_and_gives_one_gradient_per_query():
    case = detr_case()
    assert case.model.config._attn_implementation == "sdpa"

    def references(output, selection):
        found = {}
        for query in (0, 5):
            label = selection.classes[(selection.sample == 1) & (selection.queries == query)]
            logit = output.logits[1, query, label].sum()
            found[query] = torch.autograd.grad(logit, [output.cross_attentions[-1]], retain_graph=True)[0]
        return found

    record, output, grads, expected = captured(case, references, TargetOptions(threshold=0.0))
    assert len(record.calls) == 2 + 2 * 2
    assert record.calls[0].probs is output.encoder_attentions[0]
    assert record.calls[-1].probs is output.cross_attentions[-1]
    assert case.model.config._attn_implementation == "sdpa"
    # threshold 0 keeps all 6 queries: slot k of image b is query k, from one batched backward
    last = len(record.calls) - 1
    assert grads[last].shape == (6, 2, 2, 6, 6)
    for query, single in expected.items():
        assert torch.allclose(grads[last][query, 1], single[1], atol=1e-7)
