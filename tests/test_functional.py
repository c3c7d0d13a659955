"""minilora.functional: each fused op against finite differences (float64) and
against its composition from Tensor primitives, in value and gradient.

Tolerances: finite differences as in helpers.FD_RTOL. Fused vs composed: both are
exact float64 formulas for the same function, differing only in rounding, so
they must agree to 1e-10 (norm-wise relative); a wrong backward rule is off by O(1).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import autograd, check_grads, rel_err, values
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import minilora as ml
from minilora import backend
from minilora import functional as F

FAST = settings(max_examples=25)
seeds = st.integers(0, 2**32 - 1)
COMPOSE_RTOL = 1e-10

# ----------------------------------------------------------------------------
# compositions from primitives (the definitions the fused ops must equal): the
# module's own reference forms, plus a cross-entropy with ignored rows.

softmax_composed = F.softmax_reference
log_softmax_composed = F.log_softmax_reference
linear_composed = F.linear_reference
layer_norm_composed = F.layer_norm_reference


def cross_entropy_composed(logits, targets, ignore_index=-100):
    c = logits.shape[-1]
    logp = F.log_softmax_reference(logits.reshape(-1, c))    # [N, C]
    t = np.asarray(targets).reshape(-1)
    valid = t != ignore_index
    picked = logp[np.arange(t.size), np.where(valid, t, 0)]  # log p(target), [N]
    return -(picked * valid.astype(np.float64)).sum() / int(valid.sum())


def gelu_composed(x):
    return F.gelu_reference(x, approximate="tanh")


def assert_same_function(fused, composed, *inputs, seed=0):
    """Equal values and equal gradients w.r.t. every input (same output weights)."""
    with ml.no_grad():
        shape = fused(*[ml.Tensor(a) for a in inputs]).shape
    weights = np.random.default_rng([seed, 0x5EED]).standard_normal(shape)
    out_f, grads_f = autograd(fused, *inputs, weights=weights)
    out_c, grads_c = autograd(composed, *inputs, weights=weights)
    assert rel_err(out_f, out_c) <= COMPOSE_RTOL, "values differ"
    for i, (gf, gc) in enumerate(zip(grads_f, grads_c)):
        assert gf is not None and gc is not None, f"input {i} got no gradient"
        assert rel_err(gf, gc) <= COMPOSE_RTOL, f"gradient of input {i} differs"


# ----------------------------------------------------------------------------
# linear

@st.composite
def linear_case(draw):
    lead = draw(array_shapes(min_dims=0, max_dims=2, max_side=3))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return lead + (n_in,), (n_out, n_in), draw(st.booleans())


@FAST
@given(case=linear_case(), seed=seeds)
@example(case=((2, 3, 4), (5, 4), True), seed=0)     # 3-D input with bias
@example(case=((2, 3, 4), (5, 4), False), seed=1)    # 3-D input without bias
@example(case=((4,), (3, 4), True), seed=2)          # a single vector
def test_linear_gradients_and_composition(case, seed):
    x_shape, w_shape, bias = case
    rng = np.random.default_rng(seed)
    inputs = [values(rng, x_shape), values(rng, w_shape)] + ([values(rng, w_shape[:1])] if bias else [])
    check_grads(F.linear, *inputs, seed=seed)
    assert_same_function(F.linear, linear_composed, *inputs, seed=seed)
    out = F.linear(*[ml.Tensor(a) for a in inputs])
    assert out.shape == x_shape[:-1] + (w_shape[0],)


@pytest.mark.parametrize("x_shape, out_f, r, bias", [((2, 3, 4), 5, 2, True), ((6, 4), 3, 1, False),
                                                      ((4,), 4, 3, True)])
def test_lora_linear_gradients_and_composition(x_shape, out_f, r, bias):
    """x (W0 + s B A)^T + b equals the frozen Linear plus s (x A^T) B^T, gradients included."""
    rng = np.random.default_rng(r)
    in_f = x_shape[-1]
    inputs = [values(rng, x_shape), values(rng, (out_f, in_f))] + ([values(rng, (out_f,))] if bias else []) \
        + [values(rng, (r, in_f)), values(rng, (out_f, r))]

    def fused(x, w, *rest):
        b, (A, B) = (rest[0], rest[1:]) if bias else (None, rest)
        return F.lora_linear(x, w, b, A, B, 1.5)

    def reference(x, w, *rest):
        b, (A, B) = (rest[0], rest[1:]) if bias else (None, rest)
        return F.lora_linear_reference(x, w, b, A, B, 1.5)

    check_grads(fused, *inputs)
    assert_same_function(fused, reference, *inputs)


def test_lora_linear_refuses_adapters_that_do_not_fit():
    x, w = ml.Tensor(np.ones((2, 4))), ml.Tensor(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"A \(2, 5\) and B \(3, 2\) do not fit W0 \(3, 4\)"):
        F.lora_linear(x, w, None, ml.Tensor(np.ones((2, 5))), ml.Tensor(np.ones((3, 2))), 1.0)
    with pytest.raises(ValueError, match="expects 4 features"):
        F.lora_linear(ml.Tensor(np.ones((2, 5))), w, None, ml.Tensor(np.ones((2, 4))), ml.Tensor(np.ones((3, 2))), 1.0)


# ----------------------------------------------------------------------------
# embedding

@FAST
@given(rows=st.integers(1, 6), dim=st.integers(1, 4), seed=seeds,
       ids=st.lists(st.integers(0, 5), min_size=1, max_size=12), two_d=st.booleans())
@example(rows=4, dim=3, seed=0, ids=[1, 1, 3, 1, 0, 0], two_d=True)   # repeated ids
def test_embedding_gradients(rows, dim, seed, ids, two_d):
    ids = np.array([i % rows for i in ids])
    if two_d and ids.size % 2 == 0:
        ids = ids.reshape(2, -1)
    weight = values(np.random.default_rng(seed), (rows, dim))
    check_grads(lambda w: F.embedding(w, ids), weight, seed=seed)
    check_grads(lambda w: F.embedding(w, ml.Tensor(ids)), weight, seed=seed)
    assert np.array_equal(F.embedding(ml.Tensor(weight), ids).numpy(), weight[ids])


def test_embedding_gradient_adds_every_occurrence_of_an_id():
    w = ml.Tensor(np.zeros((3, 2)), requires_grad=True)
    F.embedding(w, np.array([[2, 2], [2, 0]])).sum().backward()
    assert np.array_equal(backend.to_numpy(w.grad), [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]])


# ----------------------------------------------------------------------------
# softmax, log_softmax, cross_entropy

@st.composite
def shape_and_axis(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


@FAST
@given(case=shape_and_axis(), seed=seeds)
@example(case=((2, 3, 5), -1), seed=0)
@example(case=((2, 3, 5), 0), seed=1)
def test_softmax_gradients_and_composition(case, seed):
    shape, axis = case
    x = values(np.random.default_rng(seed), shape)   # not saturated: FD of a tiny gradient is noise
    check_grads(lambda t: F.softmax(t, axis=axis), x, seed=seed)
    assert_same_function(lambda t: F.softmax(t, axis=axis), lambda t: softmax_composed(t, axis), x, seed=seed)
    assert np.allclose(F.softmax(ml.Tensor(x), axis=axis).numpy().sum(axis=axis), 1.0, rtol=0, atol=1e-12)


@FAST
@given(case=shape_and_axis(), seed=seeds)
def test_log_softmax_gradients_and_composition(case, seed):
    shape, axis = case
    x = values(np.random.default_rng(seed), shape)   # not saturated: FD of a tiny gradient is noise
    check_grads(lambda t: F.log_softmax(t, axis=axis), x, seed=seed)
    assert_same_function(lambda t: F.log_softmax(t, axis=axis), lambda t: log_softmax_composed(t, axis),
                         x, seed=seed)
    assert rel_err(F.log_softmax(ml.Tensor(x), axis=axis).numpy(),
                   np.log(F.softmax(ml.Tensor(x), axis=axis).numpy())) < 1e-12


def test_softmax_and_log_softmax_are_stable_for_huge_logits():
    x = ml.Tensor(np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]]))
    assert np.allclose(F.softmax(x).numpy(), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)
    lsm = F.log_softmax(x).numpy()
    assert np.all(np.isfinite(lsm[1])) and lsm[0, 0] == 0.0 and lsm[0, 2] == -2e4


@st.composite
def cross_entropy_case(draw):
    lead = draw(array_shapes(min_dims=1, max_dims=2, max_side=4))
    classes = draw(st.integers(1, 5))
    targets = draw(st.lists(st.integers(-1, classes - 1), min_size=int(np.prod(lead)),
                            max_size=int(np.prod(lead))))
    targets = np.array(targets).reshape(lead)
    if len(lead) == 2 and lead[1] == classes:    # (N, C, C) fits both class layouts: refused
        classes += 1
    if (targets == -1).all():                    # keep at least one position that counts
        targets.flat[0] = 0
    ignore = draw(st.sampled_from(["default", "custom"]))
    if ignore == "default":
        return lead + (classes,), np.where(targets == -1, -100, targets), -100
    return lead + (classes,), targets, -1          # ignore_index=-1


@FAST
@given(case=cross_entropy_case(), seed=seeds)
@example(case=((4, 3), np.array([0, 2, -100, 1]), -100), seed=0)
@example(case=((2, 3, 5), np.array([[4, 0, 0], [1, -100, 3]]), -100), seed=1)
def test_cross_entropy_gradients_and_composition(case, seed):
    shape, targets, ignore = case
    logits = values(np.random.default_rng(seed), shape) * 2
    fused = lambda t: F.cross_entropy(t, targets, ignore_index=ignore)  # noqa: E731
    check_grads(fused, logits, seed=seed)
    assert_same_function(fused, lambda t: cross_entropy_composed(t, targets, ignore), logits, seed=seed)


def test_cross_entropy_value_by_hand():
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    targets = np.array([0, 2])
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -(logp[0, 0] + logp[1, 2]) / 2
    assert abs(F.cross_entropy(ml.Tensor(logits), targets).item() - expected) < 1e-14
    # ignored positions neither count in the sum nor in the mean's denominator
    got = F.cross_entropy(ml.Tensor(logits), np.array([0, -100])).item()
    assert abs(got + logp[0, 0]) < 1e-14


def test_cross_entropy_is_finite_for_huge_logits():
    logits = ml.Tensor(np.array([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]]), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([1, 2]))
    # -log p = 2e4 for the first row, log 2 for the second
    assert abs(loss.item() - (2e4 + math.log(2)) / 2) < 1e-9
    loss.backward()
    g = backend.to_numpy(logits.grad)
    assert np.all(np.isfinite(g))
    assert np.allclose(g, [[0.5, -0.5, 0.0], [0.0, 0.25, -0.25]], atol=1e-12)


# ----------------------------------------------------------------------------
# gelu, layer_norm

@FAST
@given(shape=array_shapes(min_dims=0, max_dims=3, max_side=4), seed=seeds)
def test_gelu_gradients_and_composition(shape, seed):
    # Keep away from where gelu' vanishes (x ~ -0.752, and the far negative tail,
    # gelu'(-5) ~ 1e-8): there a relative error measures only rounding noise.
    x = np.clip(values(np.random.default_rng(seed), shape) * 2, -3.5, 3.5)
    x = np.where(np.abs(x + 0.752) < 0.1, x + 0.3, x)
    for approximate in ("tanh", "none"):
        fused = lambda t, a=approximate: F.gelu(t, approximate=a)  # noqa: E731
        check_grads(fused, x, seed=seed)
        assert_same_function(fused, lambda t, a=approximate: F.gelu_reference(t, a), x, seed=seed)


def test_gelu_known_values():
    # GPT-2's tanh approximation: gelu(1) = 0.5 (1 + tanh(sqrt(2/pi) * 1.044715))
    x = ml.Tensor(np.array([-10.0, 0.0, 1.0, 10.0]))
    expected = [0.0, 0.0, 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715)), 10.0]
    assert np.allclose(F.gelu(x, approximate="tanh").numpy(), expected, rtol=0, atol=1e-15)
    # exact: x Phi(x), Phi(1) = (1 + erf(1/sqrt 2)) / 2 from the standard library
    exact = [0.0, 0.0, 0.5 * (1 + math.erf(1 / math.sqrt(2))), 10.0]
    assert np.allclose(F.gelu(x).numpy(), exact, rtol=0, atol=1e-15)


@FAST
@given(lead=array_shapes(min_dims=0, max_dims=2, max_side=3), dim=st.integers(4, 6), seed=seeds,
       affine=st.sampled_from(["both", "weight", "none"]))
@example(lead=(2, 3), dim=5, seed=0, affine="both")
def test_layer_norm_gradients_and_composition(lead, dim, seed, affine):
    rng = np.random.default_rng(seed)
    x = values(rng, lead + (dim,)) * 2 + 1
    w, b = values(rng, (dim,)), values(rng, (dim,))
    if affine == "both":
        fused, composed, inputs = F.layer_norm, layer_norm_composed, (x, w, b)
    elif affine == "weight":
        fused = lambda t, s: F.layer_norm(t, s, None)  # noqa: E731
        composed = lambda t, s: layer_norm_composed(t, s, None)  # noqa: E731
        inputs = (x, w)
    else:
        fused = lambda t: F.layer_norm(t, None, None, eps=1e-3)  # noqa: E731
        composed = lambda t: layer_norm_composed(t, None, None, eps=1e-3)  # noqa: E731
        inputs = (x,)
    check_grads(fused, *inputs, seed=seed)
    assert_same_function(fused, composed, *inputs, seed=seed)


def test_layer_norm_output_has_zero_mean_and_unit_variance():
    x = values(np.random.default_rng(0), (4, 16)) * 5 + 3
    y = F.layer_norm(ml.Tensor(x), None, None, eps=0.0).numpy()
    assert np.allclose(y.mean(axis=-1), 0, atol=1e-12) and np.allclose(y.var(axis=-1), 1, atol=1e-12)


# ----------------------------------------------------------------------------
# dropout

def _mask(shape, p, seed):
    """The keep-mask dropout draws after manual_seed(seed)."""
    ml.manual_seed(seed)
    return backend.to_numpy(backend.random_uniform(shape, ml.default_device())) >= p


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_equals_x_times_mask_over_keep_probability(p):
    x = values(np.random.default_rng(0), (8, 50))
    keep = _mask(x.shape, p, seed=11)
    ml.manual_seed(11)
    xt = ml.Tensor(x, requires_grad=True)
    y = F.dropout(xt, p, training=True)
    assert rel_err(y.numpy(), x * keep / (1 - p)) < 1e-15
    assert 0 < keep.sum() < keep.size
    assert abs(keep.mean() - (1 - p)) < 0.05           # 400 draws: 4-5 standard deviations
    w = np.random.default_rng(1).standard_normal(x.shape)
    y.backward(w)
    assert rel_err(xt.grad, w * keep / (1 - p)) < 1e-15


def test_dropout_gradient_against_finite_differences_with_a_fixed_mask():
    def fixed_dropout(t):
        ml.manual_seed(5)        # the same mask on every evaluation
        return F.dropout(t, 0.3, training=True)

    check_grads(fixed_dropout, values(np.random.default_rng(0), (3, 7)))


def test_dropout_is_the_identity_in_eval_mode_or_with_p_zero():
    x = ml.Tensor(np.ones((3, 3)), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x


def test_dropout_is_reproducible_from_the_seed():
    x = ml.Tensor(np.ones((4, 30), dtype=np.float32))
    ml.manual_seed(3)
    a = F.dropout(x, 0.5).numpy()
    ml.manual_seed(3)
    b = F.dropout(x, 0.5).numpy()
    c = F.dropout(x, 0.5).numpy()
    assert np.array_equal(a, b) and not np.array_equal(b, c)
    assert a.dtype == np.float32 and set(np.unique(a)) <= {0.0, 2.0}


# ----------------------------------------------------------------------------
# causal attention (fused softmax(q k^T / sqrt(D), future masked) v)

def attention_composed(q, k, v, dropout_p=0.0, training=False):
    T, D = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))     # [B, H, T, T]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    weights = softmax_composed(scores.masked_fill(future, -np.inf))
    return F.dropout(weights, dropout_p, training) @ v


@FAST
@given(b=st.integers(1, 2), h=st.integers(1, 2), t=st.integers(1, 4), d=st.integers(1, 4), seed=seeds,
       dropout=st.sampled_from([0.0, 0.3]))
@example(b=2, h=2, t=4, d=3, seed=0, dropout=0.0)
def test_causal_attention_gradients_and_composition(b, h, t, d, seed, dropout):
    if not hasattr(F, "causal_attention"):
        pytest.skip("functional.causal_attention not present")
    rng = np.random.default_rng(seed)
    q, k, v = (values(rng, (b, h, t, d)) for _ in range(3))

    def fused(q, k, v):
        ml.manual_seed(seed)          # the same dropout mask on every evaluation
        return F.causal_attention(q, k, v, dropout_p=dropout, training=True)

    def composed(q, k, v):
        ml.manual_seed(seed)
        return attention_composed(q, k, v, dropout, training=True)

    check_grads(fused, q, k, v, seed=seed)
    assert_same_function(fused, composed, q, k, v, seed=seed)
    # position 0 attends only to itself: its output is v[..., 0, :] (times its dropout keep)
    if dropout == 0.0:
        out = F.causal_attention(ml.Tensor(q), ml.Tensor(k), ml.Tensor(v)).numpy()
        assert np.allclose(out[:, :, 0], v[:, :, 0], rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------
# every fused op equals its reference form from functional.py (values and gradients)

def test_embedding_equals_its_one_hot_reference():
    ids = np.array([[1, 4, 4], [0, 2, 4]])
    weight = values(np.random.default_rng(0), (5, 3))
    assert_same_function(lambda w: F.embedding(ids, w), lambda w: F.embedding_reference(ids, w), weight)
    # the older argument order names the same function
    assert np.array_equal(F.embedding(ml.Tensor(weight), ids).numpy(), F.embedding(ids, ml.Tensor(weight)).numpy())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_equals_its_reference_with_label_smoothing(smoothing):
    rng = np.random.default_rng(1)
    logits, targets = values(rng, (6, 5)) * 2, rng.integers(0, 5, 6)
    assert_same_function(lambda x: F.cross_entropy(x, targets, label_smoothing=smoothing),
                         lambda x: F.cross_entropy_reference(x, targets, smoothing), logits)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_its_reference(causal):
    rng = np.random.default_rng(2)
    q, k, v = values(rng, (2, 3, 4, 5)), values(rng, (2, 3, 6, 5)), values(rng, (2, 3, 6, 2))
    assert_same_function(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                         lambda q, k, v: F.attention_reference(q, k, v, is_causal=causal), q, k, v)


def test_layer_norm_over_two_dims_equals_the_reference_on_flattened_rows():
    rng = np.random.default_rng(3)
    x, w, b = values(rng, (2, 3, 4)) * 2 + 1, values(rng, (3, 4)), values(rng, (3, 4))
    assert_same_function(
        lambda x, w, b: F.layer_norm(x, (3, 4), w, b),
        lambda x, w, b: F.layer_norm_reference(x.reshape(2, 12), w.reshape(12), b.reshape(12)).reshape(2, 3, 4),
        x, w, b)
    check_grads(lambda x, w, b: F.layer_norm(x, [3, 4], w, b), x, w, b)


@pytest.mark.parametrize("op", ["softplus", "silu", "leaky_relu", "relu", "erf"])
def test_elementwise_activations_against_finite_differences(op):
    x = values(np.random.default_rng(4), (3, 4), "away0") * 2
    check_grads(getattr(F, op), x)


def test_losses_against_finite_differences():
    rng = np.random.default_rng(5)
    logits, t = values(rng, (6, 5)), np.array([0, 4, -100, 2, 2, 1])
    w = rng.uniform(0.5, 2, 5)
    check_grads(lambda x: F.cross_entropy(x, t, weight=w, label_smoothing=0.2), logits)
    check_grads(lambda x: F.cross_entropy(x, t, reduction="none", label_smoothing=0.2), logits)
    check_grads(lambda x: F.nll_loss(x, t, weight=w), logits)
    check_grads(lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=np.full(5, 2.0)),
                logits, rng.uniform(0, 1, (6, 5)))
    check_grads(lambda x, m: F.scaled_dot_product_attention(x.reshape(1, 6, 5), x.reshape(1, 6, 5),
                                                            x.reshape(1, 6, 5), attn_mask=m), logits,
                values(rng, (6, 6)))


def test_float16_reductions_are_computed_in_float32():
    x = ml.Tensor(np.array([[200.0, -200.0, 0.0]], dtype=np.float16), requires_grad=True)
    y = F.layer_norm(x, 3)
    expected = np.array([1.0, -1.0, 0.0]) * math.sqrt(1.5)          # (x - 0) / sqrt(80000/3)
    assert y.dtype == np.float16 and np.allclose(y.numpy(), expected, atol=2e-3)
    z = ml.Tensor(np.array([-100.0, 100.0, 1000.0], dtype=np.float16), requires_grad=True)
    F.gelu(z, approximate="tanh").sum().backward()
    assert z.grad.dtype == np.float16 and np.array_equal(z.grad, [0.0, 1.0, 1.0])


def test_the_older_layer_norm_call_keeps_its_meaning():
    rng = np.random.default_rng(6)
    x, w, b = ml.Tensor(values(rng, (2, 5))), ml.Tensor(values(rng, (5,))), ml.Tensor(values(rng, (5,)))
    new = F.layer_norm(x, (5,), w, b, 0.1).numpy()
    assert np.array_equal(F.layer_norm(x, w, b, 0.1).numpy(), new)          # (x, weight, bias, eps)
    assert np.array_equal(F.layer_norm(x, w, b, eps=0.1).numpy(), new)
    assert np.array_equal(F.layer_norm(x, None, None).numpy(), F.layer_norm(x, 5).numpy())
    assert not np.allclose(F.layer_norm(x, w, b).numpy(), new)               # eps matters here
