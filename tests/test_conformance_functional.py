"""Conformance of minilora.functional and minilora.nn with torch.nn.functional and torch.nn.

Every case runs the same call, spelled as PyTorch spells it, through both libraries
and compares the forward values and the gradient of sum(out * W) (W a fixed random
array) with respect to every float input. Cases cover empty batches, 0-d inputs,
edge values (0, +-inf, NaN, huge logits) and float16. A case PyTorch runs but
minilora refuses is listed in UNSUPPORTED and must raise a clear error, never answer.

Tolerances (elementwise, NaN must match NaN and inf must match inf):
- float64: rtol 1e-9, atol 1e-12. The two libraries evaluate the same formulas,
  perhaps summing in another order, so they agree to ~1e-15; a wrong rule is off by O(1).
- float16: both compute in float32 and round to float16 once, so they agree to the
  rounding of float16: rtol 2e-3 (two float16 ulps, eps16 = 9.8e-4), atol 1e-3.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import requires_torch, torch

import minilora as ml
from minilora import functional as F
from minilora import nn

if torch is not None:
    import torch.nn.functional as TF

pytestmark = [requires_torch, pytest.mark.parity]

TOL = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float16: dict(rtol=2e-3, atol=1e-3)}
rng = np.random.default_rng(2024)
CASES: dict = {}


def randn(*shape, dtype=np.float64, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def case(name, ml_fn, torch_fn, *inputs, grad=True):
    """Register a comparison. Float inputs get gradients; int/bool inputs are passed as data."""
    assert name not in CASES, name
    CASES[name] = (ml_fn, torch_fn, inputs, grad)


def _to_ml(a, grad):
    return ml.Tensor(a, requires_grad=grad and a.dtype.kind == "f")


def _to_torch(a, grad):
    t = torch.from_numpy(np.array(a))
    return t.requires_grad_(grad and a.dtype.kind == "f")


def _assert_same(ours, theirs, dtype, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != torch {theirs.dtype}"
    np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), equal_nan=True,
                               err_msg=what, **TOL[dtype])


def run_case(ml_fn, torch_fn, inputs, grad):
    dtype = next((a.dtype.type for a in inputs if a.dtype.kind == "f"), np.float64)
    mins = [_to_ml(a, grad) for a in inputs]
    tins = [_to_torch(a, grad) for a in inputs]
    ours, theirs = ml_fn(*mins), torch_fn(*tins)
    _assert_same(ours.numpy(), theirs.detach().numpy(), dtype, "forward")
    if not grad or not theirs.requires_grad:
        return
    weights = np.random.default_rng(7).standard_normal(theirs.shape).astype(theirs.detach().numpy().dtype)
    theirs.backward(torch.from_numpy(weights))
    ours.backward(weights)
    for i, (m, t) in enumerate(zip(mins, tins)):
        if t.requires_grad:
            t_grad = np.zeros_like(inputs[i]) if t.grad is None else t.grad.numpy()
            m_grad = np.zeros_like(inputs[i]) if m.grad is None else ml.backend.to_numpy(m.grad)
            _assert_same(m_grad, t_grad, dtype, f"gradient of input {i}")


# ----------------------------------------------------------------------------
# activations, over shapes (0-d, empty, 3-D) and edge values

EDGE = np.array([0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 30.0, -30.0, 1e3, -1e3, np.inf, -np.inf, np.nan])
ACTIVATIONS = {
    "relu": (F.relu, torch.relu if torch else None),
    "tanh": (F.tanh, torch.tanh if torch else None),
    "sigmoid": (F.sigmoid, torch.sigmoid if torch else None),
    "silu": (F.silu, TF.silu if torch else None),
    "leaky_relu": (F.leaky_relu, TF.leaky_relu if torch else None),
    "leaky_relu_0.2": (lambda x: F.leaky_relu(x, negative_slope=0.2),
                       lambda x: TF.leaky_relu(x, negative_slope=0.2)),
    "softplus": (F.softplus, TF.softplus if torch else None),
    "softplus_beta2_thr1": (lambda x: F.softplus(x, beta=2.0, threshold=1.0),
                            lambda x: TF.softplus(x, beta=2.0, threshold=1.0)),
    "gelu": (F.gelu, TF.gelu if torch else None),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh")),
    "erf": (F.erf, torch.erf if torch else None),
}
for _name, (_ours, _theirs) in ACTIVATIONS.items():
    case(f"{_name}[3d]", _ours, _theirs, randn(2, 3, 4, scale=3))
    case(f"{_name}[0d]", _ours, _theirs, np.array(0.7))
    case(f"{_name}[empty]", _ours, _theirs, randn(0, 4))
    case(f"{_name}[edge]", _ours, _theirs, EDGE.copy())
    case(f"{_name}[f16]", _ours, _theirs, np.array([-200.0, -100.0, -3.0, -0.5, 0.0, 0.5, 3.0, 100.0, 200.0,
                                                    60000.0], dtype=np.float16))

MODULES = {
    "nn.ReLU": (nn.ReLU(), torch.nn.ReLU() if torch else None),
    "nn.Tanh": (nn.Tanh(), torch.nn.Tanh() if torch else None),
    "nn.Sigmoid": (nn.Sigmoid(), torch.nn.Sigmoid() if torch else None),
    "nn.SiLU": (nn.SiLU(), torch.nn.SiLU() if torch else None),
    "nn.GELU": (nn.GELU(), torch.nn.GELU() if torch else None),
    "nn.GELU_tanh": (nn.GELU(approximate="tanh"), torch.nn.GELU(approximate="tanh") if torch else None),
    "nn.LeakyReLU": (nn.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3) if torch else None),
    "nn.Softplus": (nn.Softplus(beta=0.5), torch.nn.Softplus(beta=0.5) if torch else None),
    "nn.Softmax": (nn.Softmax(dim=1), torch.nn.Softmax(dim=1) if torch else None),
    "nn.LogSoftmax": (nn.LogSoftmax(dim=-1), torch.nn.LogSoftmax(dim=-1) if torch else None),
    "nn.Identity": (nn.Identity(54, unused="x"), torch.nn.Identity(54, unused="x") if torch else None),
}
for _name, (_ours, _theirs) in MODULES.items():
    case(_name, _ours, _theirs, randn(2, 3, 4, scale=2))

# ----------------------------------------------------------------------------
# softmax and log_softmax

for _fn in ("softmax", "log_softmax"):
    _ours, _theirs = getattr(F, _fn), getattr(TF, _fn) if torch else None
    for _dim in (-1, 0, 1, 2):
        case(f"{_fn}[dim={_dim}]", lambda x, f=_ours, d=_dim: f(x, dim=d),
             lambda x, f=_theirs, d=_dim: f(x, dim=d), randn(2, 3, 4, scale=3))
    case(f"{_fn}[axis_alias]", lambda x, f=_ours: f(x, axis=0), lambda x, f=_theirs: f(x, dim=0), randn(3, 4))
    case(f"{_fn}[2d_default]", _ours, lambda x, f=_theirs: f(x, dim=-1), randn(3, 4))
    case(f"{_fn}[0d]", lambda x, f=_ours: f(x, dim=0), lambda x, f=_theirs: f(x, dim=0), np.array(1.5))
    case(f"{_fn}[empty_batch]", lambda x, f=_ours: f(x, dim=-1), lambda x, f=_theirs: f(x, dim=-1), randn(0, 5))
    case(f"{_fn}[over_empty_dim]", lambda x, f=_ours: f(x, dim=0), lambda x, f=_theirs: f(x, dim=0), randn(0, 5))
    case(f"{_fn}[huge]", lambda x, f=_ours: f(x, dim=-1), lambda x, f=_theirs: f(x, dim=-1),
         np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4], [-np.inf, 0.0, 1.0]]))
    case(f"{_fn}[dtype=float64]", lambda x, f=_ours: f(x, dim=-1, dtype=np.float64),
         lambda x, f=_theirs: f(x, dim=-1, dtype=torch.float64), randn(2, 5, dtype=np.float16), grad=False)
    case(f"{_fn}[f16]", lambda x, f=_ours: f(x, dim=-1), lambda x, f=_theirs: f(x, dim=-1),
         np.array([[300.0, -300.0, 0.0, 10.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float16))

# ----------------------------------------------------------------------------
# losses

T_N = np.array([0, 4, 2, 2, 1, 3])                       # (6,) targets among 5 classes
T_IGN = np.array([0, 4, -100, 2, 2, 1])
T_ND = np.array([[4, 0, 0], [1, -100, 3]])                 # (N=2, d=3) targets for (2, 5, 3) input
CLASS_W = np.array([0.5, 2.0, 1.0, 0.1, 3.0])
for _red in ("mean", "sum", "none"):
    for _ls in (0.0, 0.1, 1.0):
        for _tname, _t in (("plain", T_N), ("ignore", T_IGN)):
            for _w in (None, CLASS_W):
                _n = f"cross_entropy[{_red},ls={_ls},{_tname},w={_w is not None}]"
                case(_n, lambda x, t=_t, r=_red, ls=_ls, w=_w: F.cross_entropy(
                         x, t, weight=w, reduction=r, label_smoothing=ls),
                     lambda x, t=_t, r=_red, ls=_ls, w=_w: TF.cross_entropy(
                         x, torch.as_tensor(t), weight=None if w is None else torch.as_tensor(w),
                         reduction=r, label_smoothing=ls), randn(6, 5, scale=2))
    case(f"cross_entropy[N,C,d,{_red}]", lambda x, r=_red: F.cross_entropy(x, T_ND, reduction=r, label_smoothing=0.2),
         lambda x, r=_red: TF.cross_entropy(x, torch.as_tensor(T_ND), reduction=r, label_smoothing=0.2),
         randn(2, 5, 3))
    case(f"cross_entropy[probs,{_red}]", lambda x, p, r=_red: F.cross_entropy(x, p, reduction=r, label_smoothing=0.1),
         lambda x, p, r=_red: TF.cross_entropy(x, p, reduction=r, label_smoothing=0.1),
         randn(4, 3), np.random.default_rng(1).dirichlet(np.ones(3), size=4))
    case(f"nll_loss[{_red}]", lambda x, r=_red: F.nll_loss(x, T_IGN, reduction=r),
         lambda x, r=_red: TF.nll_loss(x, torch.as_tensor(T_IGN), reduction=r), randn(6, 5))
    case(f"nll_loss[weight,{_red}]", lambda x, r=_red: F.nll_loss(x, T_IGN, weight=CLASS_W, reduction=r),
         lambda x, r=_red: TF.nll_loss(x, torch.as_tensor(T_IGN), weight=torch.as_tensor(CLASS_W), reduction=r),
         randn(6, 5))
    case(f"nll_loss[N,C,d,{_red}]", lambda x, r=_red: F.nll_loss(x, T_ND, reduction=r),
         lambda x, r=_red: TF.nll_loss(x, torch.as_tensor(T_ND), reduction=r), randn(2, 5, 3))
    case(f"mse_loss[{_red}]", lambda a, b, r=_red: F.mse_loss(a, b, reduction=r),
         lambda a, b, r=_red: TF.mse_loss(a, b, reduction=r), randn(3, 4), randn(3, 4))
    case(f"bce_logits[{_red}]", lambda x, y, r=_red: F.binary_cross_entropy_with_logits(x, y, reduction=r),
         lambda x, y, r=_red: TF.binary_cross_entropy_with_logits(x, y, reduction=r),
         np.array([[-100.0, -3.0, 0.0], [0.5, 30.0, 100.0]]), rng.uniform(0, 1, (2, 3)))
    _w, _pw = rng.uniform(0.5, 2, (4, 3)), rng.uniform(0.5, 3, (3,))    # PyTorch: constants, no gradient
    case(f"bce_logits[weights,{_red}]",
         lambda x, y, r=_red, w=_w, pw=_pw: F.binary_cross_entropy_with_logits(x, y, weight=w, reduction=r,
                                                                              pos_weight=pw),
         lambda x, y, r=_red, w=_w, pw=_pw: TF.binary_cross_entropy_with_logits(
             x, y, weight=torch.from_numpy(w), reduction=r, pos_weight=torch.from_numpy(pw)),
         randn(4, 3, scale=3), rng.uniform(0, 1, (4, 3)))
for _red in ("sum", "none"):     # an empty batch: nothing to average, but a sum and rows are fine
    case(f"cross_entropy[empty,{_red}]", lambda x, r=_red: F.cross_entropy(x, np.zeros(0, np.int64), reduction=r),
         lambda x, r=_red: TF.cross_entropy(x, torch.zeros(0, dtype=torch.long), reduction=r), randn(0, 5))
case("cross_entropy[1d_input]", lambda x: F.cross_entropy(x, np.array(2)),
     lambda x: TF.cross_entropy(x, torch.tensor(2)), randn(5))
case("cross_entropy[huge]", lambda x: F.cross_entropy(x, np.array([1, 2])),
     lambda x: TF.cross_entropy(x, torch.tensor([1, 2])), np.array([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]]))
case("cross_entropy[f16]", lambda x: F.cross_entropy(x, np.array([1, 2]), label_smoothing=0.1),
     lambda x: TF.cross_entropy(x, torch.tensor([1, 2]), label_smoothing=0.1),
     np.array([[300.0, -300.0, 0.0], [0.0, 20.0, 20.0]], dtype=np.float16))
case("cross_entropy[ignore_index=0]", lambda x: F.cross_entropy(x, T_N, ignore_index=0, label_smoothing=0.3),
     lambda x: TF.cross_entropy(x, torch.as_tensor(T_N), ignore_index=0, label_smoothing=0.3), randn(6, 5))
case("mse_loss[target_needs_grad_broadcast]", lambda a, b: F.mse_loss(a, b.reshape(1, 4)),
     lambda a, b: TF.mse_loss(a, b.reshape(1, 4).expand(3, 4)), randn(3, 4), randn(4))
for _name, _ours, _theirs in (
        ("nn.CrossEntropyLoss", nn.CrossEntropyLoss(label_smoothing=0.2), torch.nn.CrossEntropyLoss(label_smoothing=0.2)
         if torch else None),
        ("nn.NLLLoss", nn.NLLLoss(reduction="sum"), torch.nn.NLLLoss(reduction="sum") if torch else None)):
    case(_name, lambda x, m=_ours: m(x, T_IGN), lambda x, m=_theirs: m(x, torch.as_tensor(T_IGN)), randn(6, 5))
case("nn.MSELoss", nn.MSELoss(), torch.nn.MSELoss() if torch else None, randn(3, 2), randn(3, 2))
case("nn.BCEWithLogitsLoss", nn.BCEWithLogitsLoss(reduction="sum"),
     torch.nn.BCEWithLogitsLoss(reduction="sum") if torch else None, randn(3, 2), rng.uniform(0, 1, (3, 2)))

# ----------------------------------------------------------------------------
# linear, embedding, layer_norm, attention

case("linear[3d]", F.linear, TF.linear if torch else None, randn(2, 3, 4), randn(5, 4), randn(5))
case("linear[nobias]", F.linear, TF.linear if torch else None, randn(3, 4), randn(5, 4))
case("linear[vector]", F.linear, TF.linear if torch else None, randn(4), randn(5, 4), randn(5))
case("linear[empty_batch]", F.linear, TF.linear if torch else None, randn(0, 4), randn(5, 4), randn(5))
IDS = np.array([[1, 4, 4, 0], [4, 2, 1, 1]])
case("embedding", lambda w: F.embedding(IDS, w), lambda w: TF.embedding(torch.as_tensor(IDS), w), randn(6, 3))
case("embedding[padding_idx]", lambda w: F.embedding(IDS, w, padding_idx=4),
     lambda w: TF.embedding(torch.as_tensor(IDS), w, padding_idx=4), randn(6, 3))
case("embedding[empty]", lambda w: F.embedding(np.zeros((0, 2), np.int64), w),
     lambda w: TF.embedding(torch.zeros((0, 2), dtype=torch.long), w), randn(6, 3))
case("one_hot", lambda: F.one_hot(np.array([[0, 3], [2, 2]])).astype(np.float64),
     lambda: TF.one_hot(torch.tensor([[0, 3], [2, 2]])).double(), grad=False)
case("one_hot[num_classes]", lambda: F.one_hot(np.array([1, 0]), num_classes=4).astype(np.float64),
     lambda: TF.one_hot(torch.tensor([1, 0]), num_classes=4).double(), grad=False)
for _shape in ((4,), (3, 4), [3, 4]):
    case(f"layer_norm[{_shape}]", lambda x, w, b, s=_shape: F.layer_norm(x, s, w, b),
         lambda x, w, b, s=_shape: TF.layer_norm(x, s, w, b), randn(2, 3, 4, scale=3) + 1,
         randn(*tuple(_shape)), randn(*tuple(_shape)))
case("layer_norm[no_affine,eps]", lambda x: F.layer_norm(x, (5,), eps=0.1),
     lambda x: TF.layer_norm(x, (5,), eps=0.1), randn(3, 5))
case("layer_norm[empty_batch]", lambda x, w: F.layer_norm(x, 4, w),
     lambda x, w: TF.layer_norm(x, (4,), w), randn(0, 4), randn(4))
case("layer_norm[f16,200]", lambda x: F.layer_norm(x, (3,)), lambda x: TF.layer_norm(x, (3,)),
     np.array([[200.0, -200.0, 0.0], [1e4, 1e4, -3e4]], dtype=np.float16))
case("layer_norm[f16,affine]", lambda x, w, b: F.layer_norm(x, (4,), w, b),
     lambda x, w, b: TF.layer_norm(x, (4,), w, b), randn(3, 4, dtype=np.float16, scale=100),
     randn(4, dtype=np.float16), randn(4, dtype=np.float16))
for _ns in (4, [3, 4], (2, 3, 4)):
    _ours = nn.LayerNorm(_ns)
    _theirs = torch.nn.LayerNorm(_ns, dtype=torch.float64) if torch else None
    _ours.to(np.float64)
    for _p in _ours.parameters():
        _p.data = _p.data + _p.xp.asarray(randn(*_p.shape))
    if torch:
        _theirs.load_state_dict({k: torch.from_numpy(v) for k, v in _ours.state_dict().items()})
    case(f"nn.LayerNorm({_ns})", _ours, _theirs, randn(2, 3, 4, scale=2))
for _name, _ours, _theirs_cls in (("nn.Linear", nn.Linear(4, 3), "Linear"), ("nn.Embedding", nn.Embedding(6, 3), "Embedding")):
    _ours.to(np.float64)
    if torch:
        _theirs = getattr(torch.nn, _theirs_cls)(*((4, 3) if _theirs_cls == "Linear" else (6, 3)), dtype=torch.float64)
        _theirs.load_state_dict({k: torch.from_numpy(v) for k, v in _ours.state_dict().items()})
    else:
        _theirs = None
    if _theirs_cls == "Linear":
        case(_name, _ours, _theirs, randn(2, 4))
    else:
        case(_name, lambda m=_ours: m(IDS), lambda m=_theirs: m(torch.as_tensor(IDS)), grad=False)

Q, K, V = randn(2, 3, 5, 4), randn(2, 3, 5, 4), randn(2, 3, 5, 6)
K7, V7 = randn(2, 3, 7, 4), randn(2, 3, 7, 6)
BOOL_MASK = rng.random((5, 7)) < 0.6
BOOL_MASK[2] = False                                      # a query that may attend to nothing: 0, as PyTorch
sdpa = F.scaled_dot_product_attention
tsdpa = TF.scaled_dot_product_attention if torch else None
case("sdpa[plain]", sdpa, tsdpa, Q, K, V)
case("sdpa[causal]", lambda q, k, v: sdpa(q, k, v, is_causal=True), lambda q, k, v: tsdpa(q, k, v, is_causal=True),
     Q, K, V)
case("sdpa[causal,L<S]", lambda q, k, v: sdpa(q, k, v, is_causal=True),
     lambda q, k, v: tsdpa(q, k, v, is_causal=True), Q, K7, V7)
case("sdpa[scale]", lambda q, k, v: sdpa(q, k, v, scale=0.3), lambda q, k, v: tsdpa(q, k, v, scale=0.3), Q, K7, V7)
case("sdpa[bool_mask]", lambda q, k, v: sdpa(q, k, v, attn_mask=BOOL_MASK),
     lambda q, k, v: tsdpa(q, k, v, attn_mask=torch.as_tensor(BOOL_MASK)), Q, K7, V7)
case("sdpa[bool_mask_4d]", lambda q, k, v: sdpa(q, k, v, attn_mask=BOOL_MASK[None, None]),
     lambda q, k, v: tsdpa(q, k, v, attn_mask=torch.as_tensor(BOOL_MASK[None, None])), Q, K7, V7)
case("sdpa[float_mask_with_grad]", lambda q, k, v, m: sdpa(q, k, v, attn_mask=m),
     lambda q, k, v, m: tsdpa(q, k, v, attn_mask=m), Q, K7, V7, randn(1, 3, 5, 7))
case("sdpa[3d]", sdpa, tsdpa, randn(3, 5, 4), randn(3, 6, 4), randn(3, 6, 2))
case("sdpa[empty_batch]", sdpa, tsdpa, randn(0, 2, 5, 4), randn(0, 2, 5, 4), randn(0, 2, 5, 4))
case("sdpa[f16,causal]", lambda q, k, v: sdpa(q, k, v, is_causal=True),
     lambda q, k, v: tsdpa(q, k, v, is_causal=True),
     *(randn(1, 2, 4, 8, dtype=np.float16) for _ in range(3)))


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name):
    ml_fn, torch_fn, inputs, grad = CASES[name]
    run_case(ml_fn, torch_fn, inputs, grad)


# ----------------------------------------------------------------------------
# what PyTorch runs and minilora refuses, or what both refuse: always a clear error

def _t(a):
    return ml.Tensor(np.asarray(a, dtype=np.float64))


UNSUPPORTED = {
    # PyTorch returns nan for a mean over nothing; minilora says why
    "cross_entropy mean, every target ignored": (
        lambda: F.cross_entropy(_t(randn(3, 4)), np.array([-100, -100, -100])), ValueError, "ignore"),
    "cross_entropy mean, empty batch": (
        lambda: F.cross_entropy(_t(randn(0, 4)), np.zeros(0, np.int64)), ValueError, "empty"),
    # (N, C, C) logits fit both class layouts
    "cross_entropy ambiguous layout": (
        lambda: F.cross_entropy(_t(randn(2, 3, 3)), np.zeros((2, 3), np.int64)), ValueError, "ambiguous"),
    "softmax of a 3-D input without dim": (lambda: F.softmax(_t(randn(2, 3, 4))), TypeError, "dim"),
    "sdpa enable_gqa": (lambda: F.scaled_dot_product_attention(_t(Q), _t(K), _t(V), enable_gqa=True),
                        NotImplementedError, "enable_gqa"),
    "embedding max_norm": (lambda: F.embedding(IDS, _t(randn(6, 3)), max_norm=1.0), NotImplementedError, "max_norm"),
    "mse_loss weight": (lambda: F.mse_loss(_t(randn(2)), _t(randn(2)), weight=_t(randn(2))),
                        NotImplementedError, "weight"),
    "relu inplace": (lambda: F.relu(_t(randn(3)), inplace=True), NotImplementedError, "inplace"),
    "nn.ReLU inplace": (lambda: nn.ReLU(inplace=True), NotImplementedError, "inplace"),
    "dropout p=1": (lambda: F.dropout(_t(randn(3)), 1.0), ValueError, "p=1"),
    "legacy size_average": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 1]), size_average=True),
                            TypeError, "reduction"),
}
ERRORS = {   # both libraries refuse; minilora's message names the problem
    "unknown reduction": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 1]), reduction="avg"),
                          ValueError, "reduction"),
    "unknown reduction (mse)": (lambda: F.mse_loss(_t(randn(2)), _t(randn(2)), reduction="mean "), ValueError,
                                "reduction"),
    "label_smoothing > 1": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 1]), label_smoothing=1.5),
                            ValueError, "label_smoothing"),
    "label_smoothing < 0": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 1]), label_smoothing=-0.1),
                            ValueError, "label_smoothing"),
    "target out of range": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 3])), IndexError, "target 3"),
    "negative target": (lambda: F.nll_loss(_t(randn(2, 3)), np.array([0, -2])), IndexError, "target -2"),
    "target shape": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 1, 2])), ValueError, "shape"),
    "float target shape": (lambda: F.cross_entropy(_t(randn(2, 3)), randn(2, 4)), TypeError, "shape"),
    "class weight shape": (lambda: F.cross_entropy(_t(randn(2, 3)), np.array([0, 1]), weight=np.ones(4)),
                           ValueError, "weight"),
    "bce shape": (lambda: F.binary_cross_entropy_with_logits(_t(randn(2, 3)), _t(randn(3, 2))), ValueError, "shape"),
    "mse broadcast": (lambda: F.mse_loss(_t(randn(2, 3)), _t(randn(4))), ValueError, "broadcast"),
    "gelu approximate": (lambda: F.gelu(_t(randn(2)), approximate="erf"), ValueError, "approximate"),
    "nn.GELU approximate": (lambda: nn.GELU(approximate="fast"), ValueError, "approximate"),
    "softmax dim out of range": (lambda: F.softmax(_t(randn(2, 3)), dim=2), IndexError, "out of range"),
    "layer_norm shape": (lambda: F.layer_norm(_t(randn(2, 3)), (4,)), ValueError, "normalized_shape"),
    "layer_norm weight shape": (lambda: F.layer_norm(_t(randn(2, 3)), (3,), _t(randn(4))), ValueError, "weight"),
    "linear features": (lambda: F.linear(_t(randn(2, 3)), _t(randn(5, 4))), ValueError, "in_features"),
    "embedding id": (lambda: F.embedding(np.array([6]), _t(randn(6, 3))), IndexError, "id 6"),
    "embedding float ids": (lambda: F.embedding(np.array([1.0]), _t(randn(6, 3))), TypeError, "integers"),
    "one_hot too small": (lambda: F.one_hot(np.array([3]), num_classes=3), ValueError, "num_classes"),
    "one_hot negative": (lambda: F.one_hot(np.array([-1])), ValueError, "non-negative"),
    "one_hot floats": (lambda: F.one_hot(np.array([1.0])), TypeError, "integer"),
    "one_hot empty without num_classes": (lambda: F.one_hot(np.zeros(0, np.int64)), ValueError, "empty"),
    "sdpa mask and causal": (lambda: F.scaled_dot_product_attention(_t(Q), _t(K), _t(V), attn_mask=np.ones((5, 5), bool),
                                                                     is_causal=True), ValueError, "not both"),
    "sdpa shapes": (lambda: F.scaled_dot_product_attention(_t(Q), _t(K7), _t(V)), ValueError, "share"),
    "Linear(0, 3)": (lambda: nn.Linear(0, 3), ValueError, "in_features"),
    "Linear(True, 3)": (lambda: nn.Linear(True, 3), ValueError, "in_features"),
    "Linear(3, 2.5)": (lambda: nn.Linear(3, 2.5), ValueError, "out_features"),
    "Embedding(-1, 2)": (lambda: nn.Embedding(-1, 2), ValueError, "num_embeddings"),
    "Embedding(4, False)": (lambda: nn.Embedding(4, False), ValueError, "embedding_dim"),
    "Embedding padding_idx": (lambda: nn.Embedding(4, 2, padding_idx=4), ValueError, "padding_idx"),
    "LayerNorm([])": (lambda: nn.LayerNorm([]), ValueError, "normalized_shape"),
    "LayerNorm([3, 0])": (lambda: nn.LayerNorm([3, 0]), ValueError, "normalized_shape"),
    "LayerNorm input": (lambda: nn.LayerNorm([3, 4])(_t(randn(2, 4, 3))), ValueError, "normalized_shape"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_case_raises_a_clear_error(name):
    fn, error, words = UNSUPPORTED[name]
    with pytest.raises(error, match=words):
        fn()


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments_raise_clear_errors(name):
    fn, error, words = ERRORS[name]
    with pytest.raises(error, match=words):
        fn()


def test_counts():
    """The report's numbers: cases compared with PyTorch, and cases refused with an error."""
    print(f"\nconformance: {len(CASES)} cases match PyTorch, {len(UNSUPPORTED)} unsupported (clear error), "
          f"{len(ERRORS)} bad-argument errors")
    assert len(CASES) > 150 and len(UNSUPPORTED) >= 5


# ----------------------------------------------------------------------------
# float16, the defects named in the brief, against PyTorch


def test_layer_norm_float16_of_plus_minus_200_is_not_zero():
    x = np.array([[200.0, -200.0, 0.0]], dtype=np.float16)
    ours = F.layer_norm(ml.Tensor(x), (3,)).numpy()
    theirs = TF.layer_norm(torch.from_numpy(x), (3,)).numpy()
    assert ours.dtype == np.float16
    np.testing.assert_allclose(ours, theirs, **TOL[np.float16])
    assert abs(abs(float(ours[0, 0])) - 1.2247) < 2e-3          # sqrt(3/2)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float16_gradient_is_finite_for_large_inputs(approximate):
    x = np.array([-1000.0, -100.0, 100.0, 1000.0, 60000.0], dtype=np.float16)
    xt = ml.Tensor(x, requires_grad=True)
    F.gelu(xt, approximate=approximate).sum().backward()
    tt = torch.from_numpy(x).requires_grad_()
    TF.gelu(tt, approximate=approximate).sum().backward()
    grad = ml.to_numpy(xt.grad)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, tt.grad.numpy(), **TOL[np.float16])


def test_module_outputs_keep_the_input_dtype_float16():
    x = ml.Tensor(randn(2, 3, 4, dtype=np.float16))
    for module in (nn.GELU(), nn.Softmax(-1), nn.LayerNorm(4).to(np.float16), nn.SiLU()):
        assert module(x).dtype == np.float16, type(module).__name__
