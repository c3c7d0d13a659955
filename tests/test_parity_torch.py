"""Parity with PyTorch (CPU, float64): every op's values and input gradients, the
layers with weights copied both ways, cross-entropy on huge logits, and ten
AdamW / SGD-momentum steps.

Comparison: norm-wise relative error ||ours - torch||_2 / ||torch||_2 over all
elements of each array (helpers.rel_err) must be <= 1e-6 (helpers.PARITY_RTOL).
Both sides evaluate the same float64 formulas, so the real agreement is ~1e-15;
1e-6 is the contract. PyTorch always runs on the CPU with NumPy copies, so this
file also runs with MINILORA_DEVICE=cuda.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import PARITY_RTOL, assert_close, rel_err, requires_torch, to_np, torch, values

import minilora as ml
from minilora import functional as F
from minilora import nn, optim

pytestmark = [requires_torch, pytest.mark.parity]

if torch is not None:
    import torch.nn.functional as TF


def _t(a, grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def compare(ml_fn, torch_fn, *inputs, seed=0):
    """Run both on the same float64 inputs, backprop the same output weights, compare."""
    ours = [ml.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in inputs]
    theirs = [_t(a) for a in inputs]
    out, ref = ml_fn(*ours), torch_fn(*theirs)
    assert out.shape == tuple(ref.shape), f"shape {out.shape} != torch {tuple(ref.shape)}"
    weights = np.random.default_rng([seed, 7]).standard_normal(out.shape)
    out.backward(weights)
    ref.backward(torch.from_numpy(np.asarray(weights, dtype=ref.detach().numpy().dtype)))
    assert_close(out.numpy(), ref.detach().numpy(), what="value")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert (a.grad is None) == (b.grad is None), f"input {i}: gradient presence differs"
        if b.grad is not None:
            assert_close(a.grad, b.grad, what=f"gradient of input {i}")


def _dims(x, axis):
    return tuple(range(x.ndim)) if axis is None else axis


rng = np.random.default_rng(2024)
CASES = {}


def case(name, ml_fn, torch_fn, *inputs):
    assert name not in CASES, name
    CASES[name] = (ml_fn, torch_fn, inputs)


# binary, with broadcasting
for a_shape, b_shape in [((2, 3), (2, 3)), ((3, 1), (2, 3, 4)), ((4,), (2, 3, 4)), ((), (2, 3))]:
    tag = f"{a_shape}x{b_shape}"
    case(f"add{tag}", lambda a, b: a + b, lambda a, b: a + b, values(rng, a_shape), values(rng, b_shape))
    case(f"sub{tag}", lambda a, b: a - b, lambda a, b: a - b, values(rng, a_shape), values(rng, b_shape))
    case(f"mul{tag}", lambda a, b: a * b, lambda a, b: a * b, values(rng, a_shape), values(rng, b_shape))
    case(f"div{tag}", lambda a, b: a / b, lambda a, b: a / b, values(rng, a_shape),
         values(rng, b_shape, "away0"))
    case(f"pow_tensor{tag}", lambda a, b: a ** b, lambda a, b: a ** b, values(rng, a_shape, "pos"),
         values(rng, b_shape))

# Python scalars and unary ops
X = values(rng, (2, 3, 4))
XP = values(rng, (2, 3, 4), "pos")
XA = values(rng, (2, 3, 4), "away0")
for name, f, x in [
    ("radd", lambda x: 2.5 + x, X), ("rsub", lambda x: 2.5 - x, X), ("rmul", lambda x: 1.5 * x, X),
    ("rdiv", lambda x: 2.0 / x, XA), ("sub_scalar", lambda x: x - 1.5, X), ("div_scalar", lambda x: x / 3.0, X),
    ("pow2", lambda x: x ** 2, X), ("pow3", lambda x: x ** 3, X), ("pow_half", lambda x: x ** 0.5, XP),
    ("pow_neg", lambda x: x ** -1.5, XP), ("neg", lambda x: -x, X),
]:
    case(name, f, f, x)
for name, x in [("exp", X), ("log", XP), ("tanh", X), ("relu", XA), ("sqrt", XP), ("sigmoid", X)]:
    case(name, (lambda n: lambda t: getattr(t, n)())(name), (lambda n: lambda t: getattr(torch, n)(t))(name), x)

# matmul, incl. broadcast batch dimensions and vectors
for a_shape, b_shape in [((3, 4), (4, 2)), ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 2)),
                         ((4,), (2, 4, 3)), ((2, 3, 4), (4,)), ((4,), (4,))]:
    case(f"matmul{a_shape}@{b_shape}", lambda a, b: a @ b, lambda a, b: a @ b,
         values(rng, a_shape), values(rng, b_shape))

# reductions
XD = values(rng, (2, 3, 4), "distinct")
for axis in [None, 1, -1, (0, 2)]:
    for keep in [False, True]:
        tag = f"axis={axis},keepdims={keep}"
        case(f"sum[{tag}]", lambda x, a=axis, k=keep: x.sum(axis=a, keepdims=k),
             lambda x, a=axis, k=keep: torch.sum(x, dim=_dims(x, a), keepdim=k), XD)
        case(f"mean[{tag}]", lambda x, a=axis, k=keep: x.mean(axis=a, keepdims=k),
             lambda x, a=axis, k=keep: torch.mean(x, dim=_dims(x, a), keepdim=k), XD)
        case(f"max[{tag}]", lambda x, a=axis, k=keep: x.amax(axis=a, keepdims=k),
             lambda x, a=axis, k=keep: torch.amax(x, dim=_dims(x, a), keepdim=k), XD)
TIES = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, 0.0, 5.0, 1.0]])
case("max_ties[axis=1]", lambda x: x.amax(dim=1), lambda x: torch.amax(x, dim=1), TIES)
case("max_ties[axis=0]", lambda x: x.amax(dim=0), lambda x: torch.amax(x, dim=0), TIES)
case("max_ties[all]", lambda x: x.max(), lambda x: torch.amax(x), TIES)
case("max_dim_ties", lambda x: x.max(1).values, lambda x: x.max(1).values, TIES)

# reshaping
case("reshape", lambda x: x.reshape(4, 6), lambda x: x.reshape(4, 6), X)
case("reshape-1", lambda x: x.reshape(-1), lambda x: x.reshape(-1), X)
case("transpose", lambda x: x.transpose(0, 2), lambda x: x.transpose(0, 2), X)
case("permute", lambda x: x.permute(1, 2, 0), lambda x: x.permute(1, 2, 0), X)
case("T_matrix", lambda x: x.T, lambda x: x.T, values(rng, (3, 5)))
case("T_3d", lambda x: x.T, lambda x: x.permute(2, 1, 0), X)

# indexing: ints, slices, integer arrays with repeats, masks
M = values(rng, (5, 3))
IDX = np.array([[0, 3], [3, 3]])
for name, ml_index, torch_fn in [
    ("int", 2, lambda x: x[2]),
    ("negative_int", -1, lambda x: x[-1]),
    ("element", (1, 2), lambda x: x[1, 2]),
    ("slice", slice(1, 4), lambda x: x[1:4]),
    ("slice_step", (slice(None, None, 2), slice(1, None)), lambda x: x[::2, 1:]),
    ("reverse", (slice(None), slice(None, None, -1)), lambda x: x.flip(-1)),
    ("ellipsis_none", (Ellipsis, None, 0), lambda x: x[..., None, 0]),
    ("list_repeats", [0, 2, 2, 4, 0], lambda x: x[[0, 2, 2, 4, 0]]),
    ("array2d_repeats", IDX, lambda x: x[torch.as_tensor(IDX)]),
    ("pairs_repeats", (np.array([0, 0, 4]), np.array([1, 1, 2])),
     lambda x: x[torch.tensor([0, 0, 4]), torch.tensor([1, 1, 2])]),
    ("slice_and_list", (slice(1, None), [2, 2, 0]), lambda x: x[1:, [2, 2, 0]]),
    ("negative_repeats", np.array([-1, 4, 0, -1]), lambda x: x[torch.tensor([-1, 4, 0, -1])]),
    ("bool_mask", M > 0, lambda x: x[torch.as_tensor(M > 0)]),
]:
    case(f"getitem[{name}]", lambda x, i=ml_index: x[i], torch_fn, M)

# joining and splitting
A, B = values(rng, (2, 3)), values(rng, (2, 5))
case("concatenate_axis1", lambda a, b: ml.concatenate([a, b], axis=1), lambda a, b: torch.cat([a, b], 1), A, B)
case("concatenate_axis0", lambda a, b: ml.concatenate([a, a * b[:, :3]], axis=0),
     lambda a, b: torch.cat([a, a * b[:, :3]], 0), A, B)
case("stack_axis1", lambda a, b: ml.stack([a, b[:, 1:4]], axis=1),
     lambda a, b: torch.stack([a, b[:, 1:4]], 1), A, B)
case("stack_axis-1", lambda a, b: ml.stack([a, b[:, :3], a], axis=-1),
     lambda a, b: torch.stack([a, b[:, :3], a], -1), A, B)
for sections in ([1, 2, 2], 2):
    case(f"split{sections}",
         lambda x, s=sections: ml.concatenate([p * (i + 1.0) for i, p in enumerate(ml.split(x, s, dim=1))], 1),
         lambda x, s=sections: torch.cat([p * (i + 1.0) for i, p in enumerate(torch.split(x, s, 1))], 1),
         B)
MASK = rng.random((3, 1)) < 0.5
MASK[0, 0], MASK[1, 0] = True, False
case("masked_fill", lambda x: x.masked_fill(MASK, -1e9), lambda x: x.masked_fill(torch.as_tensor(MASK), -1e9), X)
COND = rng.random((3, 1)) < 0.5
COND[0, 0], COND[1, 0] = True, False
case("where", lambda a, b: ml.where(COND, a, b), lambda a, b: torch.where(torch.as_tensor(COND), a, b),
     X, values(rng, (4,)))
case("astype", lambda x: x.astype(np.float32).astype(np.float64) * x,
     lambda x: x.to(torch.float32).to(torch.float64) * x, X)

# functional
W, BIAS = values(rng, (5, 4)), values(rng, (5,))
case("linear_3d_bias", F.linear, TF.linear if torch else None, X, W, BIAS)
case("linear_3d_nobias", F.linear, TF.linear if torch else None, X, W)
case("linear_vector", F.linear, TF.linear if torch else None, values(rng, (4,)), W, BIAS)
IDS = np.array([[1, 4, 4, 0], [4, 2, 1, 1]])
case("embedding", lambda w: F.embedding(w, IDS), lambda w: TF.embedding(torch.as_tensor(IDS), w),
     values(rng, (6, 3)))
for axis in (-1, 0, 1):
    case(f"softmax[{axis}]", lambda x, a=axis: F.softmax(x, axis=a), lambda x, a=axis: torch.softmax(x, a), X * 3)
    case(f"log_softmax[{axis}]", lambda x, a=axis: F.log_softmax(x, axis=a),
         lambda x, a=axis: torch.log_softmax(x, a), X * 3)
T2 = np.array([0, 4, -100, 2, 2, 1])
T3 = np.array([[4, 0, 0], [1, -100, 3]])
case("cross_entropy_2d", lambda x: F.cross_entropy(x, T2),
     lambda x: TF.cross_entropy(x, torch.as_tensor(T2)), values(rng, (6, 5)) * 2)
case("cross_entropy_3d", lambda x: F.cross_entropy(x, T3),
     lambda x: TF.cross_entropy(x.reshape(-1, 5), torch.as_tensor(T3).reshape(-1)), values(rng, (2, 3, 5)) * 2)
case("cross_entropy_ignore_index_0", lambda x: F.cross_entropy(x, T2.clip(0), ignore_index=0),
     lambda x: TF.cross_entropy(x, torch.as_tensor(T2.clip(0)), ignore_index=0), values(rng, (6, 5)))
case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"), X * 2)
case("layer_norm", F.layer_norm, lambda x, w, b: TF.layer_norm(x, (4,), w, b, eps=1e-5),
     X * 3 + 1, values(rng, (4,)), values(rng, (4,)))
case("layer_norm_eps", lambda x, w, b: F.layer_norm(x, w, b, eps=0.1),
     lambda x, w, b: TF.layer_norm(x, (4,), w, b, eps=0.1), X, values(rng, (4,)), values(rng, (4,)))
if hasattr(F, "causal_attention"):
    Q, K, V = (values(rng, (2, 3, 5, 4)) for _ in range(3))
    case("causal_attention", F.causal_attention,
         lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True), Q, K, V)


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_torch(name):
    ml_fn, torch_fn, inputs = CASES[name]
    compare(ml_fn, torch_fn, *inputs)


def test_every_op_has_a_parity_case():
    needed = ["add", "sub", "mul", "div", "pow_tensor", "radd", "rsub", "rmul", "rdiv", "sub_scalar",
              "div_scalar", "pow2", "pow3", "pow_half", "pow_neg", "neg", "exp", "log", "tanh", "relu",
              "sqrt", "sigmoid", "matmul", "sum[", "mean[", "max[", "max_ties", "reshape", "transpose",
              "T_", "getitem[int", "getitem[slice", "getitem[list_repeats", "getitem[pairs_repeats",
              "concatenate", "stack", "split", "masked_fill", "where", "astype", "linear_3d_bias",
              "linear_3d_nobias", "embedding", "softmax", "log_softmax", "cross_entropy_2d",
              "cross_entropy_3d", "gelu", "layer_norm"]
    missing = [p for p in needed if not any(n.startswith(p) for n in CASES)]
    assert not missing, missing


def test_cross_entropy_with_huge_logits_stays_finite_and_equal():
    logits = values(np.random.default_rng(1), (8, 6)) * 1e4
    targets = np.array([0, 5, 2, 2, 1, 3, 4, 0])
    ours = ml.Tensor(logits, requires_grad=True)
    theirs = _t(logits)
    loss, ref = F.cross_entropy(ours, targets), TF.cross_entropy(theirs, torch.as_tensor(targets))
    loss.backward()
    ref.backward()
    assert math.isfinite(loss.item()) and loss.item() > 1e3
    assert_close(loss.numpy(), ref.detach().numpy(), what="loss")
    assert np.all(np.isfinite(to_np(ours.grad)))
    assert_close(ours.grad, theirs.grad, what="gradient")
    # float32 too: finite, and equal to float64 torch within float32 rounding
    ours32 = F.cross_entropy(ml.Tensor(logits.astype(np.float32)), targets)
    assert ours32.dtype == np.float32 and rel_err(ours32.numpy(), ref.detach().numpy()) < 1e-6


# ----------------------------------------------------------------------------
# layers, with weights copied both ways


def _to_torch_state(module):
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in module.state_dict().items()}


def _layer_pair(kind):
    if kind == "Linear":
        return nn.Linear(4, 3), torch.nn.Linear(4, 3), values(rng, (2, 5, 4))
    if kind == "Linear_nobias":
        return nn.Linear(4, 3, bias=False), torch.nn.Linear(4, 3, bias=False), values(rng, (2, 5, 4))
    if kind == "LayerNorm":
        return nn.LayerNorm(4), torch.nn.LayerNorm(4), values(rng, (2, 5, 4)) * 3 + 1
    if kind == "Embedding":
        return nn.Embedding(7, 3), torch.nn.Embedding(7, 3), np.array([[1, 6, 6], [0, 1, 1]])
    raise ValueError(kind)


def _run_layer(ours, theirs, x, weights):
    float_input = x.dtype.kind == "f"
    x_ml = ml.Tensor(x, requires_grad=float_input)
    x_t = _t(x) if float_input else torch.as_tensor(x)
    out, ref = ours(x_ml), theirs(x_t)
    out.backward(weights)
    ref.backward(torch.from_numpy(weights))
    assert_close(out.numpy(), ref.detach().numpy(), what="output")
    if float_input:
        assert_close(x_ml.grad, x_t.grad, what="input gradient")
    theirs_params = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(theirs_params)
    for n, p in ours.named_parameters():
        assert_close(p.grad, theirs_params[n].grad, what=f"{n} gradient")


@pytest.mark.parametrize("kind", ["Linear", "Linear_nobias", "LayerNorm", "Embedding"])
def test_layer_matches_torch_with_weights_copied_both_ways(kind):
    ours, theirs, x = _layer_pair(kind)
    ours.to(np.float64)
    theirs.double()
    weights = None
    # ours -> torch (perturb LayerNorm's ones/zeros so the affine part is exercised)
    for p in ours.parameters():
        p.data = p.data + ml.Tensor(values(np.random.default_rng(3), p.shape) * 0.1).data
    theirs.load_state_dict(_to_torch_state(ours))
    with torch.no_grad():
        out_shape = tuple(theirs(_t(x, False) if x.dtype.kind == "f" else torch.as_tensor(x)).shape)
    weights = np.random.default_rng(4).standard_normal(out_shape)
    _run_layer(ours, theirs, x, weights)
    # torch -> ours
    ours.zero_grad()
    theirs.zero_grad()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64))
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert ours.weight.dtype == np.float64
    _run_layer(ours, theirs, x, weights)


@pytest.mark.parametrize("tie", [False, True])
def test_nested_model_matches_torch_end_to_end(tie):
    from test_nn import Net, torch_net

    ours, theirs = Net(tie=tie).to(np.float64).eval(), torch_net(tie=tie).double().eval()
    theirs.load_state_dict(_to_torch_state(ours), strict=not tie)
    if tie:
        assert theirs.lm_head.weight is theirs.wte.weight

    def torch_forward(ids):
        x = theirs.wte(ids)
        for blk in theirs.h:
            x = x + blk.proj(blk.drop(TF.gelu(blk.fc(blk.ln(x)), approximate="tanh")))
        return theirs.lm_head(theirs.tail(x))

    ids = np.array([[1, 2, 3, 3], [0, 0, 6, 5]])
    targets = np.array([[2, 3, 3, 0], [0, 6, 5, -100]])
    loss = F.cross_entropy(ours(ids), targets)
    ref = TF.cross_entropy(torch_forward(torch.as_tensor(ids)).reshape(-1, 7), torch.as_tensor(targets).reshape(-1))
    loss.backward()
    ref.backward()
    assert_close(loss.numpy(), ref.detach().numpy(), what="loss")
    theirs_params = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        if n.startswith("heads."):
            assert p.grad is None and theirs_params[n].grad is None
            continue
        assert_close(p.grad, theirs_params[n].grad, what=f"{n} gradient")


def test_linear_default_init_matches_torch_bound():
    ml.manual_seed(0)
    torch.manual_seed(0)
    ours, theirs = nn.Linear(64, 512), torch.nn.Linear(64, 512)
    bound = 1 / math.sqrt(64)
    for a, b in [(ours.weight.numpy(), theirs.weight.detach().numpy()),
                 (ours.bias.numpy(), theirs.bias.detach().numpy())]:
        for arr in (a, b):   # both uniform on [-bound, bound], reaching close to both ends
            assert -bound <= arr.min() < -0.98 * bound and 0.98 * bound < arr.max() <= bound
        assert abs(a.std() - b.std()) < 0.05 * bound
    assert ours.weight.dtype == np.float32 and theirs.weight.dtype == torch.float32


# ----------------------------------------------------------------------------
# optimizers: ten steps, several parameters, compared after every step


def _two_layer_problem():
    r = np.random.default_rng(5)
    params = {"w1": r.standard_normal((8, 4)) * 0.5, "b1": r.standard_normal(8) * 0.1,
              "w2": r.standard_normal((3, 8)) * 0.5, "b2": np.zeros(3)}
    x, t = r.standard_normal((16, 4)), r.integers(0, 3, 16)
    return params, x, t


def _loss_ml(p, x, t):
    return F.cross_entropy(F.linear(F.linear(ml.Tensor(x), p["w1"], p["b1"]).tanh(), p["w2"], p["b2"]), t)


def _loss_torch(p, x, t):
    h = torch.tanh(TF.linear(torch.from_numpy(x), p["w1"], p["b1"]))
    return TF.cross_entropy(TF.linear(h, p["w2"], p["b2"]), torch.as_tensor(t))


@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_ten_optimizer_steps_match_torch(kind):
    init, x, t = _two_layer_problem()
    ours = {k: nn.Parameter(v.copy()) for k, v in init.items()}
    theirs = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in init.items()}
    groups = lambda ps, extra: [{"params": [ps["w1"], ps["b1"], ps["w2"]]}, {"params": [ps["b2"]], **extra}]  # noqa: E731
    if kind == "AdamW":
        opt = optim.AdamW(groups(ours, {"weight_decay": 0.0}), lr=0.05, betas=(0.9, 0.95), eps=1e-8,
                          weight_decay=0.1)
        ref = torch.optim.AdamW(groups(theirs, {"weight_decay": 0.0}), lr=0.05, betas=(0.9, 0.95), eps=1e-8,
                                weight_decay=0.1)
    else:
        opt = optim.SGD(groups(ours, {"lr": 0.05}), lr=0.2, momentum=0.9, weight_decay=0.01)
        ref = torch.optim.SGD(groups(theirs, {"lr": 0.05}), lr=0.2, momentum=0.9, weight_decay=0.01)
    for step in range(10):
        opt.zero_grad()
        ref.zero_grad()
        loss, loss_ref = _loss_ml(ours, x, t), _loss_torch(theirs, x, t)
        loss.backward()
        loss_ref.backward()
        assert_close(loss.numpy(), loss_ref.detach().numpy(), what=f"step {step} loss")
        opt.step()
        ref.step()
        for k in ours:
            assert_close(ours[k].numpy(), theirs[k].detach().numpy(), what=f"step {step} {k}")
    # the parameters really moved, and so did the loss
    assert _loss_ml(ours, x, t).item() < _loss_ml({k: ml.Tensor(v) for k, v in init.items()}, x, t).item()


def test_clip_grad_norm_matches_torch():
    r = np.random.default_rng(9)
    grads = [r.standard_normal((3, 4)), r.standard_normal(5)]
    ours = [nn.Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad = ml.Tensor(g).data
        q.grad = torch.from_numpy(g.copy())
    total = optim.clip_grad_norm_(ours, max_norm=0.5)
    total_ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm=0.5)
    assert abs(total - float(total_ref)) <= PARITY_RTOL * float(total_ref)
    for p, q in zip(ours, theirs):
        assert_close(p.grad, q.grad, what="clipped gradient")
