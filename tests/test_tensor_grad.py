"""Every Tensor op's gradient against central finite differences (float64), with
broadcasting and shapes drawn by hypothesis; graph bookkeeping (topological order,
retain_graph, no_grad, frozen inputs); dtypes through every op.

Tolerance: see helpers.FD_RTOL (norm-wise relative error <= 1e-6, step 1e-6).
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from helpers import check_grads, rel_err, values
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import minilora as ml
from minilora import backend
from minilora import functional as F
from minilora.tensor import add_methods, is_grad_enabled

FAST = settings(max_examples=25)
seeds = st.integers(0, 2**32 - 1)
pairs = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4).map(
    lambda b: b.input_shapes)
shapes = array_shapes(min_dims=1, max_dims=3, max_side=4)

# ----------------------------------------------------------------------------
# binary elementwise ops, broadcasting both ways

BINARY = {
    "add": (lambda a, b: a + b, "any", "any"),
    "sub": (lambda a, b: a - b, "any", "any"),
    "mul": (lambda a, b: a * b, "any", "any"),
    "div": (lambda a, b: a / b, "any", "away0"),
    "pow_tensor_exponent": (lambda a, b: a ** b, "pos", "any"),
}


@pytest.mark.parametrize("name", list(BINARY))
@FAST
@given(shapes=pairs, seed=seeds)
@example(shapes=((3, 1), (2, 3, 4)), seed=0)
@example(shapes=((2, 3, 4), (3, 1)), seed=1)
@example(shapes=((4,), (2, 3, 4)), seed=2)
@example(shapes=((2, 1, 4), (3, 1)), seed=3)
@example(shapes=((), (2, 3)), seed=4)
def test_binary_op_gradients(name, shapes, seed):
    fn, kind_a, kind_b = BINARY[name]
    rng = np.random.default_rng(seed)
    a, b = values(rng, shapes[0], kind_a), values(rng, shapes[1], kind_b)
    check_grads(fn, a, b, seed=seed)


def test_binary_op_with_constant_operand_differentiates_only_the_tensor():
    rng = np.random.default_rng(0)
    x = values(rng, (2, 3))
    const = values(rng, (3,), "away0")
    check_grads(lambda t: t * const + const / t.exp() - t / const, x)
    # a NumPy array on the left defers to the Tensor (__array_priority__)
    out = const * ml.Tensor(x)
    assert isinstance(out, ml.Tensor)


# ----------------------------------------------------------------------------
# unary ops and ops with a Python scalar

UNARY = {
    "neg": (lambda x: -x, "any"),
    "exp": (lambda x: x.exp(), "any"),
    "log": (lambda x: x.log(), "pos"),
    "tanh": (lambda x: x.tanh(), "any"),
    "relu": (lambda x: x.relu(), "away0"),
    "sqrt": (lambda x: x.sqrt(), "pos"),
    "sigmoid": (lambda x: x.sigmoid(), "any"),
    "pow_int_2": (lambda x: x ** 2, "any"),
    "pow_int_3": (lambda x: x ** 3, "any"),
    "pow_half": (lambda x: x ** 0.5, "pos"),
    "pow_negative": (lambda x: x ** -1.5, "pos"),
    "pow_zero": (lambda x: x ** 0, "any"),
    "radd": (lambda x: 2.5 + x, "any"),
    "rsub": (lambda x: 2.5 - x, "any"),
    "rmul": (lambda x: 1.5 * x, "any"),
    "rdiv": (lambda x: 2.0 / x, "away0"),
    "sub_scalar": (lambda x: x - 1.5, "any"),
    "div_scalar": (lambda x: x / 3.0, "any"),
    "astype_float64": (lambda x: x.astype(np.float64), "any"),
    "abs": (lambda x: x.abs(), "away0"),
    "clamp": (lambda x: x.clamp(-0.5, 0.7), "any"),
    "clamp_min_only": (lambda x: x.clamp(min=0.1), "any"),
    "flatten": (lambda x: x.flatten(), "any"),
    "unsqueeze_squeeze": (lambda x: x.unsqueeze(0).squeeze(0) * x.unsqueeze(-1).squeeze(-1), "any"),
    "cumsum": (lambda x: x.cumsum(0) * x, "any"),
    "prod": (lambda x: x.prod(), "any"),
    "clone": (lambda x: x.clone() * x, "any"),
    # the same intermediate used on several paths of different depth
    "reused_intermediate": (lambda x: (lambda y: y * y.sum() + (y * 2).exp())(x.tanh()), "any"),
}


@pytest.mark.parametrize("name", list(UNARY))
@FAST
@given(shape=array_shapes(min_dims=0, max_dims=3, max_side=4), seed=seeds)
def test_unary_op_gradients(name, shape, seed):
    fn, kind = UNARY[name]
    check_grads(fn, values(np.random.default_rng(seed), shape, kind), seed=seed)


def test_relu_gradient_is_a_step():
    x = ml.Tensor(np.array([-2.0, -0.5, 0.5, 3.0]), requires_grad=True)
    x.relu().sum().backward()
    assert np.array_equal(backend.to_numpy(x.grad), [0.0, 0.0, 1.0, 1.0])


def test_astype_gradient_comes_back_in_the_input_dtype():
    x = ml.Tensor(np.array([1.0, 2.0, 3.0], dtype=np.float32), requires_grad=True)
    y = x.astype(np.float64)
    assert y.dtype == np.float64
    y.backward(np.array([0.5, -1.0, 2.0]))
    assert x.grad.dtype == np.float32
    assert np.array_equal(backend.to_numpy(x.grad), np.array([0.5, -1.0, 2.0], dtype=np.float32))


# ----------------------------------------------------------------------------
# matmul: matrices, batches with broadcast batch dimensions, vectors

@st.composite
def matmul_shapes(draw):
    batch_a, batch_b = draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                          max_side=3)).input_shapes
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    a = (k,) if a_vec else batch_a + (n, k)
    b = (k,) if b_vec else batch_b + (k, m)
    return a, b


@FAST
@given(shapes=matmul_shapes(), seed=seeds)
@example(shapes=((3, 4), (4, 2)), seed=0)
@example(shapes=((2, 1, 3, 4), (5, 4, 2)), seed=1)     # batch dims broadcast: (2,1) vs (5,)
@example(shapes=((3, 4), (2, 4, 2)), seed=2)           # a matrix against a batch
@example(shapes=((4,), (2, 4, 3)), seed=3)             # vector @ batch of matrices
@example(shapes=((2, 3, 4), (4,)), seed=4)             # batch of matrices @ vector
@example(shapes=((4,), (4,)), seed=5)                  # vector @ vector -> scalar
def test_matmul_gradients(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = values(rng, shapes[0]), values(rng, shapes[1])
    check_grads(lambda x, y: x @ y, a, b, seed=seed)


def test_rmatmul_with_a_constant_on_the_left():
    rng = np.random.default_rng(0)
    const = values(rng, (2, 3))
    check_grads(lambda x: const @ x, values(rng, (3, 4)))


# ----------------------------------------------------------------------------
# reductions

@st.composite
def shape_and_axis(draw):
    shape = draw(shapes)
    ndim = len(shape)
    axis = draw(st.one_of(
        st.none(),
        st.integers(-ndim, ndim - 1),
        st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
    ))
    return shape, axis, draw(st.booleans())


REDUCTIONS = {
    "sum": lambda x, axis, keep: x.sum(axis=axis, keepdims=keep),
    "mean": lambda x, axis, keep: x.mean(dim=axis, keepdim=keep),
    "amax": lambda x, axis, keep: x.amax(axis=axis, keepdims=keep),
    "amin": lambda x, axis, keep: x.amin(dim=axis, keepdim=keep),
    "var": lambda x, axis, keep: x.var(dim=axis, keepdim=keep, correction=0),
    "std": lambda x, axis, keep: x.std(dim=axis, keepdim=keep, unbiased=False),
    "logsumexp": lambda x, axis, keep: x.logsumexp(dim=axis, keepdim=keep),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
@FAST
@given(case=shape_and_axis(), seed=seeds)
@example(case=((2, 3, 4), (0, 2), False), seed=0)
@example(case=((2, 3, 4), -1, True), seed=1)
@example(case=((2, 3, 4), None, True), seed=2)
def test_reduction_gradients(name, case, seed):
    shape, axis, keep = case
    x = values(np.random.default_rng(seed), shape, "distinct")   # no ties for max
    reduce = REDUCTIONS[name]
    check_grads(lambda t: reduce(t, axis, keep), x, seed=seed)


@pytest.mark.parametrize("name", ["max", "min"])
@FAST
@given(shape=shapes, seed=seeds, data=st.data())
def test_max_and_min_with_a_dim_give_values_and_indices(name, shape, seed, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    keep = data.draw(st.booleans())
    x = values(np.random.default_rng(seed), shape, "distinct")
    check_grads(lambda t: getattr(t, name)(dim, keep).values, x, seed=seed)
    got = getattr(ml.Tensor(x), name)(dim=dim, keepdim=keep)
    arg = getattr(np, "arg" + name)(x, axis=dim, keepdims=keep)
    assert np.array_equal(got.indices.numpy(), arg) and got.indices.dtype == np.int64
    assert np.array_equal(got[0].numpy(), getattr(np, name)(x, axis=dim, keepdims=keep))
    assert np.array_equal(getattr(ml.Tensor(x), "arg" + name)(dim, keep).numpy(), arg)


def test_max_with_a_dim_sends_the_gradient_to_the_first_maximum_only():
    x = ml.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(1).values.sum().backward()                     # PyTorch: the index it returns
    assert np.array_equal(backend.to_numpy(x.grad), [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_max_ties_share_the_gradient_equally():
    # As torch.amax: each of the k tied maxima gets 1/k of the gradient.
    x = ml.Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [5.0, 0.0, 1.0]]), requires_grad=True)
    x.amax(dim=1).backward(np.array([1.0, 3.0, 2.0]))
    expected = np.array([[0.0, 0.5, 0.5], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    assert np.allclose(backend.to_numpy(x.grad), expected, rtol=0, atol=1e-15)
    y = ml.Tensor(np.array([[4.0, 1.0], [4.0, 4.0]]), requires_grad=True)
    y.max().backward()
    assert np.allclose(backend.to_numpy(y.grad), [[1 / 3, 0.0], [1 / 3, 1 / 3]], rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------
# reshaping and indexing

@FAST
@given(shape=shapes, seed=seeds, data=st.data())
def test_reshape_gradients(shape, seed, data):
    size = int(np.prod(shape))
    target = data.draw(st.sampled_from([(-1,), (1, size), tuple(reversed(shape)), (size, 1, 1), (-1, 1)]))
    check_grads(lambda t: t.reshape(target), values(np.random.default_rng(seed), shape), seed=seed)
    check_grads(lambda t: t.reshape(*target), values(np.random.default_rng(seed), shape), seed=seed)


@FAST
@given(shape=array_shapes(min_dims=1, max_dims=4, max_side=3), seed=seeds, data=st.data())
def test_transpose_gradients(shape, seed, data):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = values(np.random.default_rng(seed), shape)
    d0, d1 = data.draw(st.integers(-len(shape), len(shape) - 1)), data.draw(st.integers(0, len(shape) - 1))
    check_grads(lambda t: t.permute(*perm), x, seed=seed)
    check_grads(lambda t: t.permute(perm), x, seed=seed)
    check_grads(lambda t: t.transpose(d0, d1), x, seed=seed)
    check_grads(lambda t: t.T, x, seed=seed)
    if len(shape) >= 2:
        check_grads(lambda t: t.mT, x, seed=seed)
    assert np.array_equal(ml.Tensor(x).transpose(d0, d1).numpy(), np.swapaxes(x, d0, d1))
    assert np.array_equal(ml.Tensor(x).permute(*perm).numpy(), x.transpose(perm))


def test_transpose_swaps_two_dims_and_refuses_numpy_permutations():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert np.array_equal(ml.Tensor(x).T.numpy(), x.T)
    assert ml.Tensor(np.ones((2, 3))).transpose(0, 1).shape == (3, 2)      # PyTorch's meaning
    assert ml.Tensor(x).mT.shape == (2, 4, 3)
    for wrong in [(1, 0, 2), ((1, 0, 2),), (), (0,)]:
        with pytest.raises(TypeError, match="permute"):
            ml.Tensor(x).transpose(*wrong)


GETITEM = [
    ((5,), 2),
    ((5,), -1),
    ((4, 3), 1),
    ((4, 3), (1, 2)),                                        # a single element
    ((4, 3), slice(1, 3)),
    ((4, 3), (slice(None), slice(None, None, -1))),          # reversed columns
    ((4, 3, 2), (Ellipsis, 0)),
    ((4, 3), (None, 1)),
    ((5,), [0, 2, 2, 4, 0]),                                 # a list with repeated indices
    ((5, 2), np.array([[0, 3], [3, 3]])),                    # a 2-D integer array, repeats
    ((4, 3), (np.array([0, 0, 2]), np.array([1, 1, 0]))),    # repeated (row, col) pairs
    ((4, 3), (slice(1, None), [2, 2, 0])),                   # a slice and a repeating list
    ((4, 3), np.array([[True, False, True], [False, False, True],
                       [True, True, True], [False, False, False]])),   # a boolean mask
]


@pytest.mark.parametrize("shape,index", GETITEM, ids=[f"{s}-{i!r}"[:40] for s, i in GETITEM])
def test_getitem_gradients(shape, index):
    check_grads(lambda t: t[index], values(np.random.default_rng(0), shape))


@FAST
@given(rows=st.integers(1, 5), cols=st.integers(1, 3), seed=seeds,
       ids=st.lists(st.integers(0, 4), min_size=1, max_size=8))
def test_getitem_with_random_repeated_integer_arrays(rows, cols, seed, ids):
    ids = np.array([i % rows for i in ids])
    x = values(np.random.default_rng(seed), (rows, cols))
    check_grads(lambda t: t[ids], x, seed=seed)
    check_grads(lambda t: t[ml.Tensor(ids)], x, seed=seed)          # a Tensor of ids works too
    check_grads(lambda t: t[:, ids % cols], x, seed=seed)


def test_getitem_repeated_index_counts_every_occurrence():
    x = ml.Tensor(np.zeros(3), requires_grad=True)
    x[[1, 1, 1, 2]].sum().backward()
    assert np.array_equal(backend.to_numpy(x.grad), [0.0, 3.0, 1.0])


@st.composite
def concat_case(draw):
    shape = list(draw(array_shapes(min_dims=1, max_dims=3, max_side=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    pieces = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        pieces.append(tuple(s))
    return pieces, axis


@FAST
@given(case=concat_case(), seed=seeds)
def test_concatenate_gradients(case, seed):
    pieces, axis = case
    rng = np.random.default_rng(seed)
    check_grads(lambda *ts: ml.concatenate(list(ts), axis=axis), *[values(rng, s) for s in pieces], seed=seed)


@FAST
@given(shape=array_shapes(min_dims=0, max_dims=3, max_side=3), k=st.integers(1, 3), seed=seeds,
       data=st.data())
def test_stack_gradients(shape, k, seed, data):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    rng = np.random.default_rng(seed)
    inputs = [values(rng, shape) for _ in range(k)]
    check_grads(lambda *ts: ml.stack(list(ts), axis=axis), *inputs, seed=seed)
    out = ml.stack([ml.Tensor(a) for a in inputs], axis=axis)
    assert np.array_equal(out.numpy(), np.stack(inputs, axis=axis))


@FAST
@given(shape=array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), seed=seeds, data=st.data())
def test_split_gradients(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[axis]
    cuts = data.draw(st.lists(st.integers(0, size), max_size=3).map(sorted))
    sections = data.draw(st.one_of(
        st.integers(1, size + 1),                                   # chunk size, as torch.split
        st.just([b - a for a, b in zip([0, *cuts], [*cuts, size])])))  # piece sizes

    def weighted_pieces(t):
        pieces = ml.split(t, sections, dim=axis)
        total = t.sum() * 0.0
        for i, p in enumerate(pieces):
            total = total + (p * p).sum() * (i + 1.0)   # each piece weighted differently
        return total

    x = values(np.random.default_rng(seed), shape)
    check_grads(weighted_pieces, x, seed=seed)
    got = [p.numpy() for p in ml.split(ml.Tensor(x), sections, axis)]
    points = (list(range(sections, size, sections)) if isinstance(sections, int)
              else list(np.cumsum(sections)[:-1]))
    want = np.split(x, points, axis=axis)
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))


@FAST
@given(shapes=pairs, seed=seeds)
@example(shapes=((2, 3), (4, 2, 1)), seed=0)     # a mask larger than x broadcasts x
@example(shapes=((2, 3, 4), (3, 1)), seed=1)     # a causal-mask-like smaller mask
def test_masked_fill_gradients(shapes, seed):
    x_shape, mask_shape = shapes
    rng = np.random.default_rng(seed)
    mask = rng.random(mask_shape) < 0.4
    x = values(rng, x_shape)
    check_grads(lambda t: t.masked_fill(mask, -7.0), x, seed=seed)
    out = ml.Tensor(x).masked_fill(mask, -7.0).numpy()
    assert np.array_equal(out, np.where(mask, -7.0, x))


@FAST
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3), seed=seeds)
def test_where_gradients(shapes, seed):
    cond_shape, a_shape, b_shape = shapes.input_shapes
    rng = np.random.default_rng(seed)
    cond = rng.random(cond_shape) < 0.5
    a, b = values(rng, a_shape), values(rng, b_shape)
    check_grads(lambda s, t: ml.where(cond, s, t), a, b, seed=seed)
    check_grads(lambda s: ml.where(cond, s, 0.5), a, seed=seed)      # a scalar branch
    assert np.array_equal(ml.where(cond, ml.Tensor(a), ml.Tensor(b)).numpy(), np.where(cond, a, b))


# ----------------------------------------------------------------------------
# graph bookkeeping

def test_intermediate_reached_by_a_short_and_a_long_path():
    # L = sum(a * (2a)) with a = exp(x): dL/dx = 4 e^{2x}. The node `a` is a direct
    # parent of the product and also reached through `b = 2a`; backward must wait
    # for both contributions before running a's rule.
    x0 = np.array([0.3, -0.2, 1.1])
    x = ml.Tensor(x0, requires_grad=True)
    a = x.exp()
    b = a * 2.0
    (a * b).sum().backward()
    assert rel_err(x.grad, 4 * np.exp(2 * x0)) < 1e-14


def test_gradients_accumulate_across_backward_calls_and_retain_graph():
    x0 = np.array([1.0, -2.0])
    x = ml.Tensor(x0, requires_grad=True)
    y = (x * x).sum()                           # dy/dx = 2x
    y.backward(retain_graph=True)
    y.backward()                                # the second pass adds, like PyTorch
    assert np.allclose(backend.to_numpy(x.grad), 4 * x0, rtol=0, atol=1e-15)
    assert y.grad is None                       # intermediate gradients are not kept


def test_saved_arrays_are_freed_after_backward():
    # exp keeps its output for backward: freed. sum keeps nothing: it stays, as in PyTorch.
    x = ml.Tensor(np.ones(3), requires_grad=True)
    h = x.exp()
    loss = h.sum()
    loss.backward()
    assert h._parents == () and h.grad is None and h._backward is not None
    assert loss._parents == (h,)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    assert np.allclose(backend.to_numpy(x.grad), np.e, rtol=1e-15)    # unchanged by the refusal


def test_reusing_an_intermediate_after_backward():
    # PyTorch: y = x * 3 saved the factor, so a second backward through it raises, and
    # with retain_graph=True on the first it adds up to 2*y*3 + 2*3 = 18x + 6.
    x0 = np.array([1.0, 2.0])
    x = ml.Tensor(x0, requires_grad=True)
    y = x * 3.0
    (y * y).sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        (y * 2.0).sum().backward()
    x = ml.Tensor(x0, requires_grad=True)
    y = x * 3.0
    (y * y).sum().backward(retain_graph=True)
    (y * 2.0).sum().backward()
    assert np.array_equal(backend.to_numpy(x.grad), 18 * x0 + 6)
    # ops that save nothing (add, sum, reshape) can be differentiated again
    x = ml.Tensor(x0, requires_grad=True)
    z = (x + 1.0).reshape(2, 1).sum()
    z.backward()
    z.backward()
    assert np.array_equal(backend.to_numpy(x.grad), [2.0, 2.0])


@pytest.mark.parametrize("idx", [((0, 0, 1), slice(None)), [0, 0, 1], ((0, 0, 1),),
                                 np.array([True, False, True]), (slice(None), [1, 1]),
                                 ([2, 2], [1, 1]), (np.array([[0], [0]]), [1, 1, 0])])
def test_getitem_with_repeats_accumulates(idx):
    x0 = np.arange(6.0).reshape(3, 2)
    x = ml.Tensor(x0, requires_grad=True)
    x[idx].sum().backward()
    want = np.zeros_like(x0)
    np.add.at(want, idx, 1.0)
    assert np.array_equal(backend.to_numpy(x.grad), want)


def test_two_leaves_never_share_a_gradient_array():
    a, b = ml.Tensor(np.ones(2), requires_grad=True), ml.Tensor(np.ones(2), requires_grad=True)
    (a + b).backward(np.array([1.0, 2.0]))
    a.grad *= 0                                             # an in-place edit of one
    assert np.array_equal(backend.to_numpy(b.grad), [1.0, 2.0])


def test_backward_with_explicit_gradient_scales_the_result():
    x = ml.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    (x * 2.0).backward(ml.Tensor(np.array([1.0, 0.0, -1.0])))
    assert np.array_equal(backend.to_numpy(x.grad), [2.0, 0.0, -2.0])


def test_detach_cuts_the_graph():
    x = ml.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x.detach() * x).sum()                  # only the second factor is differentiated
    y.backward()
    assert np.array_equal(backend.to_numpy(x.grad), [1.0, 2.0])


# ----------------------------------------------------------------------------
# no_grad and frozen inputs: frozen means free

# Every op, as a callable of Tensors, with the host inputs it needs.
def _all_ops():
    rng = np.random.default_rng(0)
    ids = np.array([[0, 2, 2], [1, 0, 1]])          # rows of a (3, 4) table, repeated
    targets = np.array([1, -100, 3])                # one position ignored
    mask = rng.random((3, 4)) < 0.5
    ops = {
        **{f"binary:{k}": (lambda f: (lambda a, b: f(a, b)))(v[0]) for k, v in BINARY.items()},
        **{f"unary:{k}": (lambda f: (lambda a, b: f(a)))(v[0]) for k, v in UNARY.items()},
        "matmul": lambda a, b: a @ b.T,
        "sum": lambda a, b: a.sum(axis=1), "mean": lambda a, b: a.mean(), "max": lambda a, b: a.max(dim=0).values,
        "amax": lambda a, b: a.amax(1), "max_all": lambda a, b: a.max(), "var": lambda a, b: a.var(0),
        "std": lambda a, b: a.std(), "logsumexp": lambda a, b: a.logsumexp(1), "prod": lambda a, b: a.prod(1),
        "cumsum": lambda a, b: a.cumsum(1), "abs": lambda a, b: a.abs(), "clamp": lambda a, b: a.clamp(0.2, b),
        "maximum": lambda a, b: ml.maximum(a, b), "minimum": lambda a, b: ml.minimum(a, b),
        "tril": lambda a, b: a.tril(), "triu": lambda a, b: ml.triu(a, 1), "expand": lambda a, b: a[:1].expand(3, 4),
        "gather": lambda a, b: a.gather(1, ml.Tensor(ids % 3)[:, :2]), "einsum": lambda a, b: ml.einsum("ij,kj->ik", a, b),
        "permute": lambda a, b: a.permute(1, 0), "mT": lambda a, b: a.mT, "unsqueeze": lambda a, b: a.unsqueeze(1),
        "cat": lambda a, b: ml.cat([a, b], dim=1), "chunk": lambda a, b: a.chunk(2, 1)[0], "clone": lambda a, b: a.clone(),
        "reshape": lambda a, b: a.reshape(-1), "transpose": lambda a, b: a.transpose(1, 0),
        "T": lambda a, b: a.T, "getitem": lambda a, b: a[[0, 0, 2]], "getitem_slice": lambda a, b: a[1:],
        "concatenate": lambda a, b: ml.concatenate([a, b]), "stack": lambda a, b: ml.stack([a, b], axis=1),
        "split": lambda a, b: ml.split(a, 2, axis=1)[1], "masked_fill": lambda a, b: a.masked_fill(mask, 0.0),
        "where": lambda a, b: ml.where(mask, a, b), "astype": lambda a, b: a.astype(np.float32),
        "linear": lambda a, b: F.linear(a, b, b[:, 0]), "linear_nobias": lambda a, b: F.linear(a, b),
        "embedding": lambda a, b: F.embedding(a, ids), "softmax": lambda a, b: F.softmax(a),
        "log_softmax": lambda a, b: F.log_softmax(a, axis=0),
        "cross_entropy": lambda a, b: F.cross_entropy(a, targets),
        "gelu": lambda a, b: F.gelu(a), "layer_norm": lambda a, b: F.layer_norm(a, b[0], b[1]),
        "dropout": lambda a, b: F.dropout(a, 0.5, True),
    }
    a, b = values(rng, (3, 4), "pos"), values(rng, (3, 4), "pos")
    return ops, a, b


OPS, OP_A, OP_B = _all_ops()


@pytest.mark.parametrize("name", list(OPS))
def test_ops_on_inputs_that_need_no_grad_record_nothing(name):
    out = OPS[name](ml.Tensor(OP_A), ml.Tensor(OP_B))
    assert out.requires_grad is False
    assert out._backward is None and out._parents == ()


@pytest.mark.parametrize("name", list(OPS))
def test_ops_under_no_grad_record_nothing(name):
    a, b = ml.Tensor(OP_A, requires_grad=True), ml.Tensor(OP_B, requires_grad=True)
    with ml.no_grad():
        out = OPS[name](a, b)
    assert out.requires_grad is False
    assert out._backward is None and out._parents == ()
    # and with the grad mode back on, the same op records its graph
    out = OPS[name](a, b)
    assert out.requires_grad is True and out._backward is not None


def test_no_grad_restores_the_mode_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with ml.no_grad():
            assert not is_grad_enabled()
            raise ZeroDivisionError
    assert is_grad_enabled()
    with ml.no_grad():
        with ml.no_grad():
            pass
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_frozen_weight_in_matmul_gets_no_gradient_and_no_work():
    rng = np.random.default_rng(0)
    x0, w0 = values(rng, (2, 5, 4)), values(rng, (3, 4))

    def run(frozen):
        x = ml.Tensor(x0, requires_grad=True)
        w = ml.Tensor(w0, requires_grad=not frozen)
        with ml.count_backward_work() as work:
            (x @ w.T).sum().backward()
        return x, w, work

    x_f, w_f, frozen = run(True)
    x_t, w_t, trained = run(False)
    assert w_f.grad is None and w_t.grad is not None
    assert np.array_equal(backend.to_numpy(x_f.grad), backend.to_numpy(x_t.grad))
    # Trainable: matmul computes dx and d(W.T), transpose turns d(W.T) into dW.
    assert trained["grads:matmul"] == 2 and trained["rules:permute"] == 1
    # Frozen: W.T recorded no closure, and matmul computed only dx.
    assert frozen["grads:matmul"] == 1 and frozen["rules:permute"] == 0
    assert frozen["grads"] == trained["grads"] - 2


@pytest.mark.parametrize("frozen", [("weight",), ("bias",), ("weight", "bias")])
def test_frozen_parameters_in_linear_cost_exactly_their_gradients(frozen):
    rng = np.random.default_rng(0)
    x0, w0, b0 = values(rng, (2, 3, 4)), values(rng, (5, 4)), values(rng, (5,))

    def run(frozen_names):
        x = ml.Tensor(x0, requires_grad=True)
        w = ml.Tensor(w0, requires_grad="weight" not in frozen_names)
        b = ml.Tensor(b0, requires_grad="bias" not in frozen_names)
        with ml.count_backward_work() as work:
            F.linear(x, w, b).sum().backward()
        return (x, w, b), work

    (x, w, b), work = run(frozen)
    (_, w_all, b_all), work_all = run(())
    assert work_all["grads:linear"] == 3                   # dx, dW, db
    assert work["grads:linear"] == 3 - len(frozen)
    assert work["grads"] == work_all["grads"] - len(frozen)
    assert (w.grad is None) == ("weight" in frozen) and (b.grad is None) == ("bias" in frozen)
    assert x.grad is not None


def test_frozen_input_to_linear_gets_no_gradient():
    # The first layer's input (token embeddings of a frozen model) needs no dx.
    rng = np.random.default_rng(0)
    x = ml.Tensor(values(rng, (3, 4)))
    w = ml.Tensor(values(rng, (2, 4)), requires_grad=True)
    with ml.count_backward_work() as work:
        F.linear(x, w).sum().backward()
    assert x.grad is None and work["grads:linear"] == 1


def test_counting_leaves_backward_and_add_grad_as_they_were():
    """The counters exist only inside count_backward_work(), even when the block raises."""
    tensor = importlib.import_module("minilora.tensor")     # (minilora.tensor is the function)

    plain = ml.Tensor._add_grad
    x = ml.Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ZeroDivisionError):
        with ml.count_backward_work() as work:
            (x * x).sum().backward()
            1 / 0
    assert ml.Tensor._add_grad is plain and tensor._on_rule is None
    assert work["rules"] == 2 and work["grads:mul"] == 2 and work["grads:sum"] == 1
    (x * 3).sum().backward()                     # uncounted: the last count does not move
    assert work["rules"] == 2 and np.array_equal(x.grad.tolist(), [2 + 3, 4 + 3])


def test_nested_counts_both_see_the_inner_work():
    x = ml.Tensor([1.0, 2.0], requires_grad=True)
    with ml.count_backward_work() as outer:
        x.exp().sum().backward()
        with ml.count_backward_work() as inner:
            (x * x).sum().backward()
    assert dict(inner) == {"rules": 2, "rules:sum": 1, "rules:mul": 1,
                           "grads": 3, "grads:sum": 1, "grads:mul": 2}
    assert outer["rules"] == 4 and outer["grads"] == 5 and outer["grads:exp"] == 1
    assert outer["grads:mul"] == 2


def test_each_tensor_method_is_written_once_in_the_file_that_says_so():
    """tensor.py's docstring tells where each family lives; the methods are really there."""
    from minilora import tensor_compare, tensor_convert, tensor_reductions, tensor_shape

    homes = {"sum": tensor_reductions.ReductionMethods, "max": tensor_reductions.ReductionMethods,
             "reshape": tensor_shape.ShapeMethods, "__getitem__": tensor_shape.ShapeMethods,
             "T": tensor_shape.ShapeMethods, "__eq__": tensor_compare.ComparisonMethods,
             "clamp": tensor_compare.ComparisonMethods, "numpy": tensor_convert.ConversionMethods,
             "float": tensor_convert.ConversionMethods}
    for name, home in homes.items():
        assert vars(ml.Tensor)[name] is vars(home)[name], name
    with pytest.raises(RuntimeError, match="Tensor.sum is defined twice"):
        add_methods(type("Again", (), {"sum": lambda self: 0}))


# ----------------------------------------------------------------------------
# dtypes: float32 stays float32, float64 stays float64, Python floats -> float32

def test_python_floats_give_float32_tensors():
    assert ml.Tensor(1.5).dtype == np.float32
    assert ml.Tensor([1.0, 2.0]).dtype == np.float32
    assert ml.tensor([[0.5]]).dtype == np.float32
    assert ml.Tensor(np.zeros(2)).dtype == np.float64            # NumPy arrays keep theirs
    assert ml.Tensor([1, 2]).dtype.kind == "i"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", [n for n in OPS if "astype" not in n])
def test_every_op_keeps_the_float_dtype_in_values_and_gradients(name, dtype):
    a = ml.Tensor(OP_A.astype(dtype), requires_grad=True)
    b = ml.Tensor(OP_B.astype(dtype), requires_grad=True)
    out = OPS[name](a, b)
    assert out.dtype == dtype, f"{name}: {dtype.__name__} in, {out.dtype} out"
    out.backward(np.ones(out.shape, dtype=dtype))
    for t in (a, b):
        assert t.grad is None or t.grad.dtype == dtype, f"{name}: gradient dtype {t.grad.dtype}"
    assert a.grad is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_scalars_do_not_change_the_dtype(dtype):
    x = ml.Tensor(np.array([1.0, 4.0], dtype=dtype))
    for out in (x * 2.0, 2.0 * x, x + 1, 1.0 - x, x / 3, 3.0 / x, x ** 0.5, x ** 2, -x, x.mean()):
        assert out.dtype == dtype
