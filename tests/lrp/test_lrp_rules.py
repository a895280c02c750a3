"""Every LRP rule against a hand-computed example (relevance = input * modified gradient)."""

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from captum_mm.lrp import AlphaBeta, Epsilon, HalvedAttention, PassThrough, ProportionalResidual, lrp_rules
from captum_mm.lrp.composite import LRPStructure, attention_relevance, relevance_seed
from captum_mm.lrp.rules import safe_divide


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def toy_linear():
    linear = nn.Linear(2, 2).double()
    with torch.no_grad():
        linear.weight.copy_(t([[1.0, -2.0], [3.0, 1.0]]))
        linear.bias.copy_(t([0.5, 0.0]))
    return linear


def relevance_through(rule, linear, x, relevance_out):
    out = linear(x)
    return x * rule.input_gradient(linear, x, out, relevance_out / out)


def test_safe_divide():
    assert torch.allclose(safe_divide(t([1.0, 2.0, 3.0]), t([2.0, 0.0, -4.0])), t([0.5, 0.0, -0.75]))


def test_alpha1_beta0_ignores_the_bias_and_conserves():
    # z0 = W+ x+ + W- x- = 1*2 + (-2)*(-1) = 4; R_x = [2, -1] * [1/4, -2/4] = [.5, .5]
    relevance = relevance_through(AlphaBeta(), toy_linear(), t([[2.0, -1.0]]), t([[1.0, 0.0]]))
    assert torch.allclose(relevance, t([[0.5, 0.5]]))


def test_alpha1_beta0_on_a_conv1d_reads_its_weight_as_in_by_out():
    # GPT-2's Conv1D: out = x @ W + b with W [in, out]. x = [1, 2, -1], W = [[1, 2], [-1, -1], [2, -3]].
    # Output 0: contributions x_i W_i0 = [1, -2, -2]; only x+ W+ = 1 counts (x- W- needs both negative): R_x = [1, 0, 0].
    # Output 1: contributions [2, -2, 3]; x+ W+ = 2 and x- W- = (-1)(-3) = 3, z = 5: R_x = [2/5, 0, 3/5].
    # Relevance 1 at each output: R_x = [1.4, 0, 0.6]; the bias is left out.
    conv = Conv1D(2, 3).double()
    with torch.no_grad():
        conv.weight.copy_(t([[1.0, 2.0], [-1.0, -1.0], [2.0, -3.0]]))
        conv.bias.copy_(t([0.5, 0.25]))
    x = t([[1.0, 2.0, -1.0]])
    assert torch.allclose(relevance_through(AlphaBeta(), conv, x, t([[1.0, 1.0]])), t([[1.4, 0.0, 0.6]]))
    # installed by lrp_rules: Conv1D modules are found by type, as nn.Linear ones are
    x.requires_grad_()
    with lrp_rules(conv, LRPStructure([])) as state:
        out = conv(x)
        with state.relevance_mode():
            (gradient,) = torch.autograd.grad(out, x, relevance_seed(out, t([[1.0, 1.0]])))
    assert torch.allclose(x * gradient, t([[1.4, 0.0, 0.6]]))


def test_alpha2_beta1():
    # x = [2, 1]: activator z = 1*2 = 2 -> [1, 0]; inhibitor z = (-2)*1 = -2 -> [0, 1]; R = 2 [1, 0] - [0, 1]
    relevance = relevance_through(AlphaBeta(alpha=2.0, beta=1.0), toy_linear(), t([[2.0, 1.0]]), t([[1.0, 0.0]]))
    assert torch.allclose(relevance, t([[2.0, -1.0]]))


def test_alpha_beta_conserve_rescales_to_the_output_total():
    # x = [2, 1], R_out = [1, 3]: activator z = [2, 7] -> R_act = [25/7, 3/7]; inhibitor z = [-2, 0] -> [0, 1]
    # 2 R_act - R_inh = [50/7, -1/7] (total 7), rescaled to the output total 4
    relevance = relevance_through(AlphaBeta(2.0, 1.0, conserve=True), toy_linear(), t([[2.0, 1.0]]), t([[1.0, 3.0]]))
    assert torch.allclose(relevance, t([[200 / 49, -4 / 49]]))


def test_epsilon_rule_lets_bias_and_epsilon_absorb():
    # z0 = 4.5 with the bias; R / (z + 0.5) = 0.2; R_x = [2, -1] * 0.2 * [1, -2] = [.4, .4]
    relevance = relevance_through(Epsilon(0.5), toy_linear(), t([[2.0, -1.0]]), t([[1.0, 0.0]]))
    assert torch.allclose(relevance, t([[0.4, 0.4]]))


def test_pass_through_keeps_relevance():
    x, out = t([[2.0, -4.0]]), t([[1.0, 1.0]])
    g_x = PassThrough().input_gradient(x, out, t([[3.0, 0.5]]))
    assert torch.allclose(x * g_x, t([[3.0, 0.5]]))


def test_proportional_residual():
    a, b, g = t([[1.0, 2.0]]), t([[3.0, -1.0]]), t([[0.5, 3.0]])
    # R_z = [4, 1] * g = [2, 3] (total 5); a*g = [.5, 6] (6.5), b*g = [1.5, -3] (-1.5)
    # a carries 6.5/8 * 5 = 4.0625, b 1.5/8 * 5 = .9375
    g_a, g_b = ProportionalResidual().branch_gradients(a, b, g)
    assert torch.allclose(a * g_a, t([[0.3125, 3.75]]))
    assert torch.allclose(b * g_b, t([[-0.9375, 1.875]]))


def test_proportional_residual_sums_per_sample():
    a, b, g = t([[1.0, 2.0], [1.0, 2.0]]), t([[3.0, -1.0], [0.0, 0.0]]), t([[0.5, 3.0], [1.0, 1.0]])
    g_a, g_b = ProportionalResidual().branch_gradients(a, b, g)
    assert torch.allclose(a[1] * g_a[1], t([1.0, 2.0]))  # the second sample's b is zero: a keeps everything
    assert torch.allclose(a[0] * g_a[0], t([0.3125, 3.75]))


def test_halved_attention():
    q, k, v = t([[[[1.0, 0.0], [0.0, 1.0]]]]), t([[[[1.0, 1.0], [0.0, 1.0]]]]), t([[[[1.0, 0.0], [0.0, 2.0]]]])
    probs = t([[[[0.5, 0.5], [0.25, 0.75]]]])
    g_context = t([[[[1.0, 0.0], [0.0, 0.0]]]])  # relevance 0.5 on context[0, 0] = 0.5
    g_q, g_k, g_v, relevance = HalvedAttention().gradients(q, k, v, probs, g_context)
    # R_A = A * (g V^T) / 2 = [[.25, 0], [0, 0]]; R_V = V * (A^T g) / 2 = [[.25, 0], [0, 0]]
    assert torch.allclose(relevance, t([[[[0.25, 0.0], [0.0, 0.0]]]]))
    assert torch.allclose(v * g_v, t([[[[0.25, 0.0], [0.0, 0.0]]]]))
    # scores Q K^T = [[1, 0], [1, 1]]: R_A / scores = [[.25, 0], [0, 0]]; each of Q and K gets half
    assert torch.allclose(q * g_q, t([[[[0.125, 0.0], [0.0, 0.0]]]]))
    assert torch.allclose(k * g_k, t([[[[0.125, 0.0], [0.0, 0.0]]]]))


def test_rules_installed_on_a_toy_model_reproduce_the_hand_computed_relevance():
    model = nn.Sequential(toy_linear(), nn.GELU())
    x = t([[2.0, -1.0]]).requires_grad_()
    with lrp_rules(model, LRPStructure([])) as state:
        logits = model(x)
        seed = relevance_seed(logits, t([[1.0, 0.0]]))
        ordinary = torch.autograd.grad(logits, x, t([[1.0, 0.0]]), retain_graph=True)[0]
        with state.relevance_mode():
            modified = torch.autograd.grad(logits, x, seed)[0]
    assert torch.allclose(x * modified, t([[0.5, 0.5]]))  # GELU passes, then alpha1-beta0 as above
    expected = torch.autograd.grad(model(x)[0, 0], x)[0]
    assert torch.allclose(ordinary, expected)  # gradient mode is the ordinary gradient
    assert attention_relevance(state, [], (logits,), (seed[None],)) == []
