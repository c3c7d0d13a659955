"""minilora.optim: update rules written out by hand, state only for trainable
parameters (frozen means free), dtypes, clipping. PyTorch parity is in
test_parity_torch.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import values

import minilora as ml
from minilora import backend, nn, optim


def _param(array, requires_grad=True):
    return nn.Parameter(np.array(array), requires_grad=requires_grad)


def _set_grad(p, g):
    p.grad = p.xp.asarray(np.asarray(g, dtype=p.dtype))


def test_sgd_plain_and_with_momentum_by_hand():
    p = _param([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1)
    _set_grad(p, [0.5, 1.0])
    opt.step()
    assert np.allclose(p.numpy(), [0.95, -2.1], rtol=0, atol=1e-15)
    assert opt.state_bytes() == 0                   # plain SGD keeps no state

    q = _param([1.0])
    opt = optim.SGD([q], lr=0.1, momentum=0.9)
    buf, x = 0.0, 1.0
    for step, g in enumerate([1.0, -0.5, 2.0]):
        _set_grad(q, [g])
        opt.step()
        buf = g if step == 0 else 0.9 * buf + g     # PyTorch: the first buffer is the gradient
        x -= 0.1 * buf
        assert abs(q.numpy()[0] - x) < 1e-15


def test_sgd_weight_decay_is_added_to_the_gradient():
    p = _param([2.0])
    opt = optim.SGD([p], lr=0.5, weight_decay=0.1)
    _set_grad(p, [1.0])
    opt.step()
    assert abs(p.numpy()[0] - (2.0 - 0.5 * (1.0 + 0.1 * 2.0))) < 1e-15


def test_adamw_by_hand_for_three_steps():
    p = _param([1.0, -1.0])
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.99), 1e-8, 0.1
    opt = optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    x, m, v = np.array([1.0, -1.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate([[0.3, -1.0], [0.1, 2.0], [-0.4, 0.5]], start=1):
        g = np.array(g)
        _set_grad(p, g)
        opt.step()
        x = x * (1 - lr * wd)                       # decoupled: the weight decays, not the gradient
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        assert np.allclose(p.numpy(), x, rtol=1e-13, atol=0)
    assert opt.state[id(p)]["step"] == 3


def test_adamw_first_step_moves_each_weight_by_about_lr():
    # After bias correction the first update is lr * g / (|g| + eps): a step of lr per weight.
    p = _param([0.0, 0.0, 0.0])
    opt = optim.AdamW([p], lr=0.05, weight_decay=0.0)
    _set_grad(p, [1e-3, -5.0, 20.0])
    opt.step()
    assert np.allclose(p.numpy(), [-0.05, 0.05, -0.05], rtol=1e-4)


def test_optimizer_keeps_state_only_for_trainable_parameters():
    ml.manual_seed(0)
    base = nn.Linear(16, 8)               # frozen, as a pretrained layer under LoRA
    base.requires_grad_(False)
    a = nn.Parameter(np.zeros((2, 16), dtype=np.float32))
    b = nn.Parameter(np.zeros((8, 2), dtype=np.float32))
    frozen_before = {n: p.numpy().copy() for n, p in base.named_parameters()}
    opt = optim.AdamW(list(base.parameters()) + [a, b], lr=1e-2)
    assert [len(g["params"]) for g in opt.param_groups] == [2]      # only a and b are kept
    x = ml.Tensor(values(np.random.default_rng(0), (4, 16)).astype(np.float32))
    y = base(x) + (x @ a.T) @ b.T + 1.0
    (y * y).mean().backward()
    assert base.weight.grad is None and base.bias.grad is None
    opt.step()
    trainable = a.size + b.size
    assert set(opt.state) == {id(a), id(b)}
    assert opt.state_bytes() == 2 * 4 * trainable                   # exp_avg + exp_avg_sq, float32
    for n, p in base.named_parameters():
        assert np.array_equal(p.numpy(), frozen_before[n])
    assert not np.array_equal(b.numpy(), 0)


def test_sgd_momentum_state_bytes_and_frozen_parameters():
    p, frozen = _param(np.ones(5, dtype=np.float32)), _param(np.ones(3, dtype=np.float32), False)
    opt = optim.SGD([p, frozen], lr=0.1, momentum=0.9)
    _set_grad(p, np.ones(5))
    frozen.grad = frozen.xp.ones(3, dtype=np.float32)    # even a stray gradient is not applied
    opt.step()
    assert opt.state_bytes() == 4 * 5 and set(opt.state) == {id(p)}
    assert np.array_equal(frozen.numpy(), np.ones(3))


def test_parameters_without_gradient_are_skipped():
    p, q = _param([1.0]), _param([1.0])
    opt = optim.AdamW([p, q], lr=0.1)
    _set_grad(p, [1.0])
    opt.step()
    assert q.numpy()[0] == 1.0 and id(q) not in opt.state and p.numpy()[0] != 1.0


def test_zero_grad_and_learning_rate_setter():
    p, q = _param([1.0]), _param([2.0])
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    _set_grad(p, [1.0])
    _set_grad(q, [1.0])
    opt.step()
    assert np.allclose([p.numpy()[0], q.numpy()[0]], [0.9, 1.5], rtol=0, atol=1e-15)
    opt.zero_grad()
    assert p.grad is None and q.grad is None
    opt.lr = 0.01
    assert opt.lr == 0.01 and all(g["lr"] == 0.01 for g in opt.param_groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [lambda ps: optim.AdamW(ps, lr=1e-2),
                                  lambda ps: optim.SGD(ps, lr=1e-2, momentum=0.9)],
                         ids=["AdamW", "SGD"])
def test_optimizer_step_keeps_the_dtype(make, dtype):
    lin = nn.Linear(3, 2).to(dtype)
    opt = make(lin.parameters())
    for _ in range(2):
        lin(ml.Tensor(np.ones((4, 3), dtype=dtype))).sum().backward()
        for p in lin.parameters():
            assert p.grad.dtype == dtype
        opt.step()
        opt.zero_grad()
    for p in lin.parameters():
        assert p.dtype == dtype
    for state in opt.state.values():
        for value in state.values():
            assert not hasattr(value, "dtype") or value.dtype == dtype


def test_training_reduces_the_loss():
    ml.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Linear(16, 2))
    opt = optim.AdamW(model.parameters(), lr=0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    t = (x[:, 0] > x[:, 1]).astype(np.int64)
    losses = []
    for _ in range(30):
        loss = ml.functional.cross_entropy(model(ml.Tensor(x)), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_clip_grad_norm():
    p, q = _param([3.0, 0.0]), _param([0.0])
    _set_grad(p, [3.0, 0.0])
    _set_grad(q, [4.0])
    total = optim.clip_grad_norm_([p, q], max_norm=1.0)
    assert abs(total - 5.0) < 1e-12
    clipped = math.sqrt(float((backend.to_numpy(p.grad) ** 2).sum() + (backend.to_numpy(q.grad) ** 2).sum()))
    assert abs(clipped - 1.0) < 1e-6
    assert np.allclose(backend.to_numpy(q.grad), [0.8], rtol=1e-6)
    # below the threshold nothing changes
    _set_grad(p, [0.3, 0.0])
    assert abs(optim.clip_grad_norm_([p], max_norm=1.0) - 0.3) < 1e-12
    assert np.array_equal(backend.to_numpy(p.grad), [0.3, 0.0])
    assert optim.clip_grad_norm_([_param([1.0])], 1.0) == 0.0        # no gradients at all


# ----------------------------------------------------------------------------
# nonsense hyper-parameters are refused with the value and the fix


@pytest.mark.parametrize("make, needle", [
    (lambda ps: optim.AdamW(ps, lr=float("nan")), "lr=nan must be a finite number in (0, inf)"),
    (lambda ps: optim.AdamW(ps, lr=float("inf")), "lr=inf"),
    (lambda ps: optim.AdamW(ps, lr=-1e-3), "lr=-0.001"),
    (lambda ps: optim.AdamW(ps, eps=-1e-8), "eps=-1e-08 must be a finite number in [0, inf)"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.1), "weight_decay=-0.1 must be a finite number in [0, inf) (0 turns"),
    (lambda ps: optim.AdamW(ps, betas=(1.0, 0.9)), "betas=(1.0, 0.9) must be two numbers, each in [0, 1)"),
    (lambda ps: optim.AdamW(ps, betas=(-0.1, 0.9)), "betas=(-0.1, 0.9)"),
    (lambda ps: optim.AdamW(ps, betas=(0.9,)), "betas=(0.9,)"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.9), "momentum=-0.9"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=float("nan")), "weight_decay=nan"),
    (lambda ps: optim.SGD([{"params": ps, "lr": -1.0}], lr=0.1), "lr=-1.0"),   # a group's own value too
])
def test_nonsense_hyperparameters_are_refused(make, needle):
    with pytest.raises(ValueError) as info:
        make([_param([1.0])])
    assert needle in str(info.value)


def test_a_string_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match=r"lr='0.1' must be a number"):
        optim.SGD([_param([1.0])], lr="0.1")


def test_a_single_parameter_instead_of_a_list_is_refused_as_in_pytorch():
    p = _param([1.0, 2.0])
    with pytest.raises(TypeError, match=r"iterable of Tensors.*got a Parameter.*AdamW\(\[p\]\)"):
        optim.AdamW(p)
    with pytest.raises(TypeError, match="is not a Tensor"):
        optim.AdamW([np.zeros(2)])


def test_the_schedule_cannot_set_a_nonsense_learning_rate():
    opt = optim.AdamW([_param([1.0])])
    opt.lr = 0.0                                  # the end of a schedule may reach 0
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="lr="):
            opt.lr = bad
    assert opt.lr == 0.0


@pytest.mark.parametrize("bad", [-1, -1e-3, 0, float("nan")])
def test_clip_grad_norm_refuses_a_max_norm_that_is_not_positive(bad):
    p = _param([3.0, 4.0])
    _set_grad(p, [3.0, 4.0])
    with pytest.raises(ValueError, match=rf"clip_grad_norm_: max_norm={bad!r}"):
        optim.clip_grad_norm_([p], bad)
    assert np.array_equal(backend.to_numpy(p.grad), [3.0, 4.0])      # the sign was not flipped


def test_clip_grad_norm_accepts_one_tensor_and_leaves_a_nan_norm_for_the_caller():
    p = _param([3.0, 4.0])
    _set_grad(p, [3.0, 4.0])
    assert abs(optim.clip_grad_norm_(p, 1.0) - 5.0) < 1e-12
    _set_grad(p, [np.nan, 1.0])
    assert math.isnan(optim.clip_grad_norm_([p], 1.0))
    assert optim.clip_grad_norm_([p], math.inf) != 0.0


def test_optimizer_state_round_trips_and_refuses_a_mismatch():
    p, q = _param([1.0, 2.0]), _param([[1.0]])
    opt = optim.AdamW([p, q], lr=0.1)
    _set_grad(p, [0.5, -0.5])
    _set_grad(q, [[2.0]])
    opt.step()
    arrays, info = opt.state_dict()
    assert set(arrays) == {"0.exp_avg", "0.exp_avg_sq", "1.exp_avg", "1.exp_avg_sq"}
    assert info["scalars"] == {"0.step": 1, "1.step": 1}
    fresh = optim.AdamW([_param([1.0, 2.0]), _param([[1.0]])], lr=0.1)
    fresh.load_state_dict(arrays, info)
    again, _ = fresh.state_dict()
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    with pytest.raises(ValueError, match="AdamW with 2 trainable parameters, this optimizer is AdamW with 1"):
        optim.AdamW([_param([1.0, 2.0])]).load_state_dict(arrays, info)
    with pytest.raises(ValueError, match=r"0.exp_avg has shape \(2,\)"):
        optim.AdamW([_param([1.0, 2.0, 3.0]), _param([[1.0]])]).load_state_dict(arrays, info)
