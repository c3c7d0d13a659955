"""Errors a learner can cause: each says what was wrong, with the values, and how
to fix it; and a failed call changes nothing."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import minilora as ml
from minilora import backend, nn, optim
from minilora import functional as F


def _host(t):
    return None if t is None else backend.to_numpy(t).copy()


def test_matmul_shape_mismatch_names_both_shapes():
    a = ml.Tensor(np.ones((3, 4)), requires_grad=True)
    b = ml.Tensor(np.ones((5, 6)), requires_grad=True)
    with pytest.raises(ValueError) as info:
        a @ b
    msg = str(info.value)
    assert "(3, 4)" in msg and "(5, 6)" in msg and "4" in msg and "5" in msg
    assert "transpose" in msg                                  # the fix
    assert a.grad is None and b.grad is None


def test_matmul_batch_dimensions_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(5, 4, 2\)"):
        ml.Tensor(np.ones((2, 3, 4))) @ ml.Tensor(np.ones((5, 4, 2)))
    with pytest.raises(ValueError, match="scalar"):
        ml.Tensor(np.ones(3)) @ ml.Tensor(np.array(2.0))


def test_broadcast_failure_in_add_names_both_shapes_and_the_rule():
    a, b = ml.Tensor(np.ones((2, 3)), requires_grad=True), ml.Tensor(np.ones(4))
    for op in (lambda: a + b, lambda: a * b, lambda: a - b, lambda: a / b):
        with pytest.raises(ValueError) as info:
            op()
        msg = str(info.value)
        assert "(2, 3)" in msg and "(4,)" in msg and "broadcast" in msg and "reshape" in msg.lower()


def test_backward_on_a_non_scalar_without_gradient():
    x = ml.Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError) as info:
        y.backward()
    msg = str(info.value)
    assert "(2, 3)" in msg and "sum()" in msg and "grad" in msg
    assert x.grad is None
    y.sum().backward()                                         # the graph is still intact
    assert np.array_equal(backend.to_numpy(x.grad), np.full((2, 3), 2.0))


def test_backward_with_a_gradient_of_the_wrong_shape():
    x = ml.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        (x * 2.0).backward(np.ones(3))
    assert x.grad is None


def test_backward_on_a_tensor_that_requires_no_grad():
    x = ml.Tensor(np.ones(3))
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        x.sum().backward()
    w = ml.Tensor(np.ones(3), requires_grad=True)
    with ml.no_grad():
        y = (w * 2).sum()
    with pytest.raises(RuntimeError, match="no_grad"):
        y.backward()
    assert w.grad is None


@pytest.mark.parametrize("bad", [7, 5, -3])
def test_cross_entropy_target_outside_the_classes(bad):
    logits = ml.Tensor(np.zeros((3, 5)), requires_grad=True)
    with pytest.raises(IndexError) as info:
        F.cross_entropy(logits, np.array([0, bad, 1]))
    msg = str(info.value)
    assert f"target {bad}" in msg and "5 classes" in msg and "0..4" in msg and "ignore_index" in msg
    assert logits.grad is None


def test_cross_entropy_bad_target_shape_dtype_and_all_ignored():
    logits = ml.Tensor(np.zeros((3, 5)))
    with pytest.raises(ValueError) as info:
        F.cross_entropy(logits, np.array([0, 1]))
    assert all(shape in str(info.value) for shape in ("(2,)", "(3, 5)", "(3,)"))   # given, input, needed
    # float targets are class indices written wrongly, or probabilities of the wrong shape
    with pytest.raises((TypeError, ValueError), match="integer|probability targets must have the input's shape"):
        F.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="ignore_index=-100"):
        F.cross_entropy(logits, np.array([-100, -100, -100]))


@pytest.mark.parametrize("bad", [10, -1])
def test_embedding_with_an_out_of_range_id(bad):
    emb = nn.Embedding(10, 4)
    before = emb.weight.numpy().copy()
    with pytest.raises(IndexError) as info:
        emb(np.array([[1, bad], [2, 3]]))
    msg = str(info.value)
    assert f"id {bad}" in msg and "10 rows" in msg and "0..9" in msg and "vocab_size" in msg
    assert np.array_equal(emb.weight.numpy(), before) and emb.weight.grad is None
    with pytest.raises(TypeError, match="integers"):
        emb(np.array([0.0, 1.0]))


def test_reshape_to_an_incompatible_shape():
    x = ml.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError) as info:
        x.reshape(4, 2)
    msg = str(info.value)
    assert "(2, 3)" in msg and "(4, 2)" in msg and "6 elements" in msg and "-1" in msg
    assert x.shape == (2, 3)


def test_permute_with_dims_that_are_not_a_permutation():
    x = ml.Tensor(np.ones((2, 3)))
    for dims in [(0, 0), (0,), (0, 5), (0, 1, 2)]:
        with pytest.raises((RuntimeError, IndexError), match=r"permutation.*\(2, 3\)"):
            x.permute(*dims)


def test_linear_with_the_wrong_input_width():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError) as info:
        lin(ml.Tensor(np.ones((2, 5), dtype=np.float32)))
    msg = str(info.value)
    assert "(2, 5)" in msg and "(3, 4)" in msg and "in_features" in msg
    assert lin.weight.grad is None


def test_split_sizes_that_do_not_add_up():
    with pytest.raises(RuntimeError, match="sum exactly to 5"):
        ml.split(ml.Tensor(np.ones(5)), [2, 2])


def test_concatenate_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        ml.concatenate([ml.Tensor(np.ones((2, 3))), ml.Tensor(np.ones((2, 4)))], axis=0)


def test_item_of_a_tensor_with_many_elements():
    with pytest.raises(ValueError, match=r"one element.*\(2,\)"):
        ml.Tensor(np.ones(2)).item()


def test_dropout_probability_out_of_range():
    with pytest.raises(ValueError, match="p=1.0"):
        F.dropout(ml.Tensor(np.ones(2)), 1.0)
    with pytest.raises(ValueError, match="p=-0.1"):
        nn.Dropout(-0.1)


# ----------------------------------------------------------------------------
# load_state_dict (also in test_nn.py, with the module-unchanged checks)


def test_load_state_dict_messages_name_keys_and_shapes():
    lin = nn.Linear(3, 2)
    before = {n: (p.data, _host(p.data)) for n, p in lin.named_parameters()}
    cases = [
        ({"weight": np.zeros((3, 2)), "bias": np.zeros(2)}, ["weight", "(3, 2)", "(2, 3)"]),
        ({"weight": np.zeros((2, 3))}, ["missing", "bias"]),
        ({"weight": np.zeros((2, 3)), "bias": np.zeros(2), "extra.weight": np.zeros(1)},
         ["unexpected", "extra.weight"]),
    ]
    for sd, fragments in cases:
        with pytest.raises(ValueError) as info:
            lin.load_state_dict(sd)
        msg = str(info.value)
        assert all(f in msg for f in fragments), msg
        assert "nothing was changed" in msg and "strict=False" in msg
        for n, p in lin.named_parameters():
            assert p.data is before[n][0] and np.array_equal(_host(p.data), before[n][1])


# ----------------------------------------------------------------------------
# devices


def test_set_device_cuda_without_cupy_explains_how_to_install(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setitem(sys.modules, "cupy", None)          # makes `import cupy` fail
    device = backend.default_device()
    with pytest.raises(RuntimeError) as info:
        ml.set_device("cuda")
    msg = str(info.value)
    assert "CuPy" in msg and "pip install" in msg and "set_device('cpu')" in msg
    assert backend.default_device() == device


def test_set_device_with_an_unknown_name():
    device = backend.default_device()
    with pytest.raises(ValueError) as info:
        ml.set_device("banana")
    msg = str(info.value)
    assert "'banana'" in msg and "'cpu'" in msg and "'cuda'" in msg
    assert backend.default_device() == device


# ----------------------------------------------------------------------------
# optimizers


def test_optimizer_with_no_trainable_parameters():
    lin = nn.Linear(3, 2).requires_grad_(False)
    for make in (lambda ps: optim.AdamW(ps), lambda ps: optim.SGD(ps, lr=0.1)):
        with pytest.raises(ValueError) as info:
            make(lin.parameters())
        msg = str(info.value)
        assert "none of the 2 parameters requires grad" in msg and "requires_grad = True" in msg
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])


def test_optimizer_hyperparameters_out_of_range():
    p = nn.Parameter(np.zeros(1))
    with pytest.raises(ValueError, match="lr=0"):
        optim.SGD([p], lr=0)
    with pytest.raises(ValueError, match="lr=-1"):
        optim.AdamW([p], lr=-1)
    with pytest.raises(ValueError, match=r"betas=\(0.9, 1.0\)"):
        optim.AdamW([p], betas=(0.9, 1.0))
