"""The public, abstract method interface, the one method registry, and the docs' "Add a method" example."""

import re
from pathlib import Path
from typing import Dict

import pytest
import torch
from helpers import bert_case
from methods_under_test import LRP_BASED, MAY_VANISH, METHODS, OPTION_VARIANTS, SIGNED, STUDY_ONLY
from torch import Tensor

import captum_mm.attr as attr
from captum_mm.attr import AttentionAttribution, GenericAttention
from captum_mm.attr.catalog import ABLATIONS, BEYOND_PAPER, PAPER_METHODS, REFERENCE_DETR, REGISTRY, every_method, method_alias
from captum_mm.attr.engine import AttentionBundle
from captum_mm.relevance.propagation import Matrices
from captum_mm.relevance.schedule import Schedule

ADD_A_METHOD = Path(__file__).parents[2] / "docs" / "methods" / "add_a_method.md"


class WithoutFuse(AttentionAttribution):
    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        return {}


class WithoutRelevanceMatrices(AttentionAttribution):
    def fuse(self, bundle: AttentionBundle) -> Tensor:
        return bundle.valid.float()


@pytest.mark.parametrize("method", [WithoutFuse, WithoutRelevanceMatrices, AttentionAttribution])
def test_a_method_missing_an_abstract_hook_cannot_be_instantiated(method):
    with pytest.raises(TypeError, match="abstract"):
        method(bert_case(batch=1).model)


def test_every_registered_method_implements_the_interface_and_the_bases_are_abstract():
    for method in REGISTRY:
        if method.key in STUDY_ONLY - {"captum-lig", "captum-feature-ablation"}:  # WithoutSinks wraps a registered method
            wrapped = method.factory.args[0]
            assert wrapped in {m.factory for m in REGISTRY} or wrapped.func in {m.factory for m in REGISTRY}, method.key
            continue
        cls = getattr(method.factory, "func", method.factory)
        assert issubclass(cls, AttentionAttribution) and not cls.__abstractmethods__, method.key
    assert attr.LastLayerAttribution.__abstractmethods__ == {"fuse"}
    assert attr.AttentionMethod.__abstractmethods__ == {"fuse", "relevance_matrices"}


def test_the_contract_tests_run_the_registry_and_its_option_variants_only():
    assert set(METHODS) == ({method.key for method in REGISTRY} - STUDY_ONLY) | set(OPTION_VARIANTS)
    assert SIGNED | MAY_VANISH | LRP_BASED <= set(METHODS)
    assert len({method.key for method in REGISTRY}) == len({method.name for method in REGISTRY}) == len(REGISTRY)
    assert len({method_alias(name) for name in every_method()}) == len(REGISTRY)


def test_the_catalog_tables_are_views_of_the_registry_in_the_papers_order():
    assert list(PAPER_METHODS) == ["ours", "ours w/ LRP", "transformer att.", "raw attn.", "partial LRP", "Grad-CAM", "rollout"]
    assert list(ABLATIONS) == ["w/o norm.", "w/o aggregation", "Eq.10 w/o self-att."]
    assert list(REFERENCE_DETR) == ["ours (reference Eq. 8-9)"]
    assert list(BEYOND_PAPER) == ["AttnLRP", "CP-LRP", "ours w/ AttnLRP", "ours w/o sinks", "rollout w/o sinks",
                                  "ours w/ LRP w/o sinks", "ours w/ AttnLRP w/o sinks", "LIG (Captum)",
                                  "FeatureAblation (Captum)"]
    assert every_method() == {**PAPER_METHODS, **ABLATIONS, **REFERENCE_DETR, **BEYOND_PAPER}


def test_the_docs_example_method_runs_and_computes_the_last_layer_of_generic_attention():
    code = re.findall(r"```python\n(.*?)```", ADD_A_METHOD.read_text(), re.S)[0]
    namespace: Dict[str, object] = {}
    exec(compile(code, str(ADD_A_METHOD), "exec"), namespace)
    case = bert_case(batch=2, layers=2)
    example = namespace["LastLayerGradientAttention"](case.forward, case.model).explain(case.inputs, None, case.additional)
    last_layer = GenericAttention(case.forward, case.model, start_layer=1).explain(case.inputs, None, case.additional)
    assert example.relevance["text"].abs().sum() > 0
    torch.testing.assert_close(example.relevance["text"], last_layer.relevance["text"])
