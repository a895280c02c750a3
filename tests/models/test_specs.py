"""One attention spec per attention module: capture, schedule roles and the LRP probe all come from it."""

import pytest
import torch

from captum_mm.attr.engine import Needs, forward_pass
from captum_mm.models import TargetOptions, adapter_for
from helpers import CASES

T, IMG, J, Q = "text", "image", "joint", "query"
ROLES = {
    "bert": {(T, T)},
    "vit": {(IMG, IMG)},
    "visual_bert": {(J, J)},
    "vilt": {(J, J)},
    "clip": {(IMG, IMG), (T, T)},
    "detr": {(IMG, IMG), (Q, Q), (Q, IMG)},
    "lxmert": {(T, T), (IMG, IMG), (T, IMG), (IMG, T)},
    "swin": {("stage0", "stage0"), ("stage1", "stage1")},
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_specs_name_their_modules_and_drive_capture_schedule_and_lrp(family):
    case = CASES[family]()
    specs = adapter_for(case.model).attention_specs()
    modules = dict(case.model.named_modules())
    assert all(modules[spec.name] is spec.module for spec in specs)
    assert len({id(spec.module) for spec in specs}) == len(specs)  # one spec per module
    options = TargetOptions(threshold=0.0)  # DETR: every query; the other families have no options
    needs = Needs(gradients=True, relevance=True)
    with forward_pass(case.model, case.forward, case.inputs, case.additional, needs=needs, target_options=options) as forward:
        calls = forward.record.calls
        assert {call.site for call in calls} == {spec.name for spec in specs}  # every module recorded
        assert {call.roles for call in calls} == ROLES[family]
        for event in forward.schedule.events:  # the schedule uses the roles the specs declare
            assert (event.query, event.key) == calls[event.call].roles
        for call in calls:  # LRP relevance is attached to the recorded call (in the module's own layout: Swin's windows)
            own = call.parts[0] if call.parts is not None and len(call.parts) == 1 else call.probs
            assert call.probe is not None and call.probe.shape == own.shape


def test_clip_towers_and_lxmert_shared_cross_attention_roles():
    clip, lxmert = CASES["clip"](), CASES["lxmert"]()
    with forward_pass(clip.model, clip.forward, clip.inputs, clip.additional) as forward:
        for call in forward.record.calls:
            assert call.roles == ((IMG, IMG) if call.site.startswith("vision_model.") else (T, T))
    with forward_pass(lxmert.model, lxmert.forward, lxmert.inputs, lxmert.additional) as forward:
        cross = [call for call in forward.record.calls if ".visual_attention." in call.site]
        assert [call.roles for call in cross] == [(T, IMG), (IMG, T)] * 2  # per-call counting in each x-layer
        assert cross[0].spec is cross[1].spec and cross[1].name.endswith("image->text")


def test_relevance_without_lrp_rules_is_an_error():
    from captum_mm.lrp import LRPState, attention_relevance

    case = CASES["bert"]()
    with forward_pass(case.model, case.forward, case.inputs, case.additional, needs=Needs(gradients=True)) as forward:
        with pytest.raises(RuntimeError, match="without LRP rules"):
            attention_relevance(LRPState(), forward.record.calls, (forward.logits,), (torch.ones_like(forward.logits)[None],))
