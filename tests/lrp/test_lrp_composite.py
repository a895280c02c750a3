"""Rules chosen per module (by name or class), and canonizers for model-specific blocks."""

import pytest
import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertSelfAttention
from transformers.pytorch_utils import Conv1D

from captum_mm.attr import TransformerAttribution
from captum_mm.lrp import AlphaBeta, Epsilon, HalvedAttention, LinearRule, LRPStructure, PositionEmbeddingInput, RuleSet, lrp_rules
from captum_mm.lrp.attention import repeat_heads, rotary, rotary_transposed, split_fused, sum_groups
from captum_mm.lrp.canonizers import GatedProduct
from captum_mm.lrp.composite import attention_relevance, relevance_seed
from captum_mm.models import capture_attention
from captum_mm.spec import AttentionParts, AttentionSpec, TensorSource, self_attention
from helpers import bert_case

NAMED = "bert.encoder.layer.1.output.dense"


class Recording(LinearRule):
    """A linear rule that notes the modules it is applied to."""

    def __init__(self, inner: LinearRule) -> None:
        self.inner, self.seen = inner, []

    def input_gradient(self, module, x, out, g_out):
        self.seen.append(module)
        return self.inner.input_gradient(module, x, out, g_out)


class RecordingAttention(HalvedAttention):
    def __init__(self) -> None:
        self.calls = 0

    def gradients(self, *tensors):
        self.calls += 1
        return super().gradients(*tensors)


def explain(case, rules=None):
    return TransformerAttribution(case.model, rules=rules).explain(case.inputs, None, case.additional).text


def float64_bert():
    case = bert_case()
    case.model.double()
    return case


def test_a_named_module_gets_its_own_rule_and_no_other_module_does():
    case = float64_bert()
    named = dict(case.model.named_modules())[NAMED]
    default, special = Recording(AlphaBeta()), Recording(Epsilon(0.25))
    swapped = explain(case, RuleSet(linear=default).override(NAMED, special))
    assert {id(m) for m in special.seen} == {id(named)}
    others = {id(m) for m in default.seen}
    assert id(named) not in others and len(others) > 8  # every other linear layer kept the default
    baseline = explain(case)
    assert torch.equal(explain(case, RuleSet().override(NAMED, AlphaBeta())), baseline)  # the same rule: same numbers
    assert not torch.allclose(swapped, baseline, rtol=1e-4, atol=0)  # relevance ~1e-9 on a random model


def test_rules_by_class_and_by_name_pattern_first_match_wins():
    case = float64_bert()
    attention, queries, keys = RecordingAttention(), Recording(AlphaBeta()), Recording(AlphaBeta())
    rules = RuleSet().override(BertSelfAttention, attention).override("*.attention.self.key", keys).override("*.self.*", queries)
    explain(case, rules)
    assert attention.calls == 2  # both layers' attention modules
    names = {module: name for name, module in case.model.named_modules()}
    # the LRP backward ends at the first layer's map, so only the second layer's projections are crossed
    assert sorted({names[m] for m in queries.seen}) == [f"bert.encoder.layer.1.attention.self.{p}" for p in ("key", "query", "value")]
    assert keys.seen == []  # "*.self.*" was added last, so it comes first and takes the keys too


class PositionedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 1.0]]))
            self.linear.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x, position):
        return self.linear(x + position)


def relevance_at_input(canonize):
    model = PositionedLinear()
    canonizers = [PositionEmbeddingInput(model.linear, TensorSource(model, "x"))] if canonize else []
    x = torch.tensor([[2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    with lrp_rules(model, LRPStructure([], canonizers=canonizers)) as state:
        logits = model(x, torch.tensor([[1.0, 1.0]], dtype=torch.float64))
        with state.relevance_mode():
            (gradient,) = torch.autograd.grad(logits, x, relevance_seed(logits, torch.tensor([[1.0, 0.0]], dtype=torch.float64)))
    assert not model.linear._forward_pre_hooks  # removed on exit
    return x * gradient


def test_position_embedding_canonizer_keeps_the_relevance_on_the_content():
    # linear input z = x + position = [3, 0]; alpha1-beta0 for output 0: z+ = 1*3 = 3, so R_z = [1, 0] and the
    # modified gradient g_z = [1/3, -2/3] (W+ column where z > 0, W- column where not: -2 * 1/3)
    # without the canonizer g_z is passed to x as is: R_x = x * g_z = [2/3, 2/3], not R_z
    assert torch.allclose(relevance_at_input(False), torch.tensor([[2 / 3, 2 / 3]], dtype=torch.float64))
    # with it the position embedding receives none: g_x = z * g_z / x, R_x = R_z
    assert torch.allclose(relevance_at_input(True), torch.tensor([[1.0, 0.0]], dtype=torch.float64))


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with scalar weights gate 2, up 3, down 1 and an identity activation."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = (nn.Linear(1, 1, bias=False).double() for _ in range(3))
        self.act = nn.Identity()
        with torch.no_grad():
            for linear, weight in ((self.gate, 2.0), (self.up, 3.0), (self.down, 1.0)):
                linear.weight.fill_(weight)

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


def test_gated_product_gives_each_factor_half_of_its_relevance():
    # x = 1: gate 2, up 3, product 6 = output. Relevance 1 at the output reaches the product whole;
    # each factor takes half (0.5), and each linear passes its half to x: R_x = 1. The ordinary
    # gradient gives both factors the whole product (d/dx of 2x * 3x at 1 is 12, so x * g = 12 / 6 = 2).
    model = GatedMLP()
    gated = [GatedProduct(model.down, TensorSource(model.act), TensorSource(model.up))]
    for canonizers, expected in ((gated, 1.0), ([], 2.0)):
        x = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
        with lrp_rules(model, LRPStructure([], canonizers=canonizers)) as state:
            output = model(x)
            with state.relevance_mode():
                (gradient,) = torch.autograd.grad(output, x, relevance_seed(output, torch.ones_like(output)))
        assert torch.allclose(x * gradient, torch.tensor([[expected]], dtype=torch.float64))
    assert not model.down._forward_pre_hooks


def test_rotary_and_grouped_heads_are_crossed_by_their_transposes():
    # a 2-d head rotated by the angle with cos 0.6, sin 0.8: q = (1, 2) -> (0.6 - 1.6, 1.2 + 0.8) = (-1, 2)
    cos, sin = torch.tensor([[[0.6, 0.6]]]), torch.tensor([[[0.8, 0.8]]])  # [B, N, d]
    q = torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2)  # [B, H, N, d]
    assert torch.allclose(rotary(q, cos, sin), torch.tensor([-1.0, 2.0]).reshape(1, 1, 1, 2))
    # the transpose of [[0.6, -0.8], [0.8, 0.6]] applied to g = (1, 0) is (0.6, -0.8)
    g = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    assert torch.allclose(rotary_transposed(g, cos, sin), torch.tensor([0.6, -0.8]).reshape(1, 1, 1, 2))
    # relevance q . g is kept: rotated (-1, 2) . (1, 0) = -1 = (1, 2) . (0.6, -0.8)
    assert torch.allclose((rotary(q, cos, sin) * g).sum(), (q * rotary_transposed(g, cos, sin)).sum())
    # two key/value heads a, b serve four query heads as a, a, b, b; back, each sums its group
    kv = torch.tensor([10.0, 20.0]).reshape(1, 2, 1, 1)
    assert repeat_heads(kv, 2).flatten().tolist() == [10.0, 10.0, 20.0, 20.0]
    assert sum_groups(torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1), 2).flatten().tolist() == [3.0, 7.0]


class FusedAttention(nn.Module):
    """One head, one token: ``c_attn`` (a Conv1D, 2 inputs) gives q, k, v fused; returns ``(A v, A)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = Conv1D(3, 2).double()
        with torch.no_grad():
            self.c_attn.weight.copy_(torch.tensor([[2.0, 1.0, 4.0], [0.0, 1.0, 0.0]]))  # [in, out]: q | k | v
            self.c_attn.bias.zero_()

    def forward(self, x):
        q, k, v = (part[:, None] for part in self.c_attn(x).split(1, dim=-1))  # [B, heads, N, d]
        probs = (q @ k.transpose(-1, -2)).softmax(-1)
        return (probs @ v)[:, 0], probs


def test_a_fused_projection_is_split_and_its_gradient_concatenated():
    # split: heads 2, one key/value head, head size 1: q | k | v = [0, 1] | [2] | [3]
    grouped = AttentionParts(nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1), heads=2, key_value_heads=1)
    assert [part.tolist() for part in split_fused(grouped, torch.arange(4.0))] == [[0.0, 1.0], [2.0], [3.0]]
    # x = [1, 2]: q = 2, k = 1 + 2 = 3, v = 4; one token, so A = 1 and the output is v = 4, relevance 1.
    # A v: R_A = R_v = 1/2. Q K^T = 6: R_q = R_k = 1/4 (g_q = R_A / 6 * k / 2 = 1/8, g_k = 1/12).
    # c_attn's output [2, 3, 4] takes the concatenated g = [1/8, 1/12, 1/8]: R = [1/4, 1/4, 1/2].
    # alpha1-beta0 back to x: q = 2 x0 -> [1/4, 0]; k = x0 + x1 (1, 2 of 3) -> [1/12, 1/6]; v = 4 x0 -> [1/2, 0].
    model = FusedAttention()
    parts = AttentionParts(model.c_attn, model.c_attn, model.c_attn, heads=1, fused=True)
    spec = AttentionSpec("attention", model, TensorSource(model, index=1), self_attention("x"), parts=parts)
    x = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64, requires_grad=True)
    with capture_attention(model, [spec]) as record, lrp_rules(model, LRPStructure([]), attention=[spec], record=record) as state:
        output, _ = model(x)
        seed = relevance_seed(output, torch.ones_like(output))
        (relevance_at_map,) = attention_relevance(state, record.calls, (output,), (seed[None],))
        with state.relevance_mode():
            (gradient,) = torch.autograd.grad(output, x, seed)
    torch.testing.assert_close(relevance_at_map, torch.full((1, 1, 1, 1, 1), 0.5, dtype=torch.float64))  # [K, B, H, N, N]
    torch.testing.assert_close(x * gradient, torch.tensor([[[5 / 6, 1 / 6]]], dtype=torch.float64))
    with pytest.raises(ValueError, match="one module"):
        AttentionParts(model.c_attn, model.c_attn, nn.Linear(2, 1), heads=1, fused=True)
