"""minilora.nn: the Module tree (names as in PyTorch), modes, state dicts, layers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import check_grads, requires_torch, torch, values

import minilora as ml
from minilora import backend
from minilora import functional as F
from minilora import nn

# ----------------------------------------------------------------------------
# a small nested model, built the same way in minilora and in PyTorch


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.drop = nn.Dropout(0.1)
        self.proj = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x):
        return x + self.proj(self.drop(F.gelu(self.fc(self.ln(x)), approximate="tanh")))


class Net(nn.Module):
    def __init__(self, vocab=7, dim=4, tie=False):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.h = nn.ModuleList([Block(dim), Block(dim)])
        self.heads = nn.ModuleDict({"b": nn.Linear(dim, 3), "a": nn.Linear(dim, 2)})
        self.tail = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.2))
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.tail(x))


def torch_net(vocab=7, dim=4, tie=False):
    tnn = torch.nn

    class TBlock(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln = tnn.LayerNorm(dim)
            self.fc = tnn.Linear(dim, 2 * dim)
            self.drop = tnn.Dropout(0.1)
            self.proj = tnn.Linear(2 * dim, dim, bias=False)

    class TNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte = tnn.Embedding(vocab, dim)
            self.h = tnn.ModuleList([TBlock(), TBlock()])
            self.heads = tnn.ModuleDict({"b": tnn.Linear(dim, 3), "a": tnn.Linear(dim, 2)})
            self.tail = tnn.Sequential(tnn.Linear(dim, dim), tnn.Dropout(0.2))
            self.lm_head = tnn.Linear(dim, vocab, bias=False)
            if tie:
                self.lm_head.weight = self.wte.weight

    return TNet()


@requires_torch
@pytest.mark.parity
@pytest.mark.parametrize("tie", [False, True])
def test_names_match_pytorch(tie):
    ours, theirs = Net(tie=tie), torch_net(tie=tie)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [n for n, _ in ours.named_children()] == [n for n, _ in theirs.named_children()]
    shapes = {n: tuple(p.shape) for n, p in theirs.named_parameters()}
    assert {n: p.shape for n, p in ours.named_parameters()} == shapes
    assert list(ours.state_dict()) == [n for n, _ in ours.named_parameters()]


def test_named_parameters_lists_a_tied_parameter_once():
    net = Net(tie=True)
    names = [n for n, _ in net.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names
    assert len(list(net.parameters())) == len(names) == len({id(p) for p in net.parameters()})
    all_names = [n for n, _ in net.named_parameters(remove_duplicate=False)]
    assert "lm_head.weight" in all_names
    assert net.lm_head.weight is net.wte.weight


def test_expected_dotted_names_and_children():
    net = Net()
    block = ["ln.weight", "ln.bias", "fc.weight", "fc.bias", "proj.weight"]   # proj has no bias
    assert [n for n, _ in net.named_parameters()] == (
        ["wte.weight"] + [f"h.{i}.{n}" for i in range(2) for n in block]
        + ["heads.b.weight", "heads.b.bias", "heads.a.weight", "heads.a.bias",   # insertion order
           "tail.0.weight", "tail.0.bias", "lm_head.weight"])
    assert [n for n, _ in net.named_children()] == ["wte", "h", "heads", "tail", "lm_head"]
    assert list(net.children()) == [net.wte, net.h, net.heads, net.tail, net.lm_head]
    modules = dict(net.named_modules())
    assert modules[""] is net and modules["h.1.fc"] is net.h[1].fc and modules["tail.1"] is net.tail[1]
    assert net.get_submodule("h.0.ln") is net.h[0].ln


def test_reassigning_keeps_the_position_like_pytorch():
    lin = nn.Linear(3, 2)
    lin.weight = nn.Parameter(np.zeros((2, 3), dtype=np.float32))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    net = Net()
    net.h = nn.ModuleList([Block(4)])            # replace a child: it keeps its place
    assert [n for n, _ in net.named_children()] == ["wte", "h", "heads", "tail", "lm_head"]


def test_a_parameter_assigned_where_bias_was_none_is_registered_and_visible():
    lin = nn.Linear(3, 2, bias=False)
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    b = nn.Parameter(np.ones(2, dtype=np.float32))
    lin.bias = b
    assert lin.bias is b and [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    lin.bias = None                              # and back to a plain attribute
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]


def test_train_and_eval_propagate_to_every_module():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.h[0].eval()
    assert not net.h[0].drop.training and net.h[1].drop.training and net.training


def test_dropout_module_follows_the_mode():
    drop = nn.Dropout(0.5)
    x = ml.Tensor(np.ones((10, 10), dtype=np.float32))
    ml.manual_seed(0)
    y = drop(x).numpy()
    assert (y == 0).any() and set(np.unique(y)) <= {0.0, 2.0}
    drop.eval()
    assert drop(x) is x


def test_zero_grad_clears_every_gradient():
    net = Net()
    ids = np.array([[1, 2, 3], [0, 0, 6]])
    F.cross_entropy(net(ids), np.array([[1, 2, 3], [4, 5, 6]])).backward()
    used = [p for n, p in net.named_parameters() if not n.startswith("heads.")]   # heads: not in forward
    assert all(p.grad is not None for p in used)
    assert all(p.grad is None for p in net.heads.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_requires_grad_and_parameter_counts():
    net = Net(vocab=7, dim=4)
    total = sum(p.size for p in net.parameters())
    assert net.num_parameters() == total
    net.requires_grad_(False)
    net.heads["a"].requires_grad_(True)
    assert net.num_parameters(trainable_only=True) == 4 * 2 + 2
    assert net.num_parameters() == total


# ----------------------------------------------------------------------------
# state dicts


def _snapshot(module):
    """Bit-exact host copies of every parameter, plus the identity of each array."""
    return {n: (backend.to_numpy(p.data).copy(), p.data) for n, p in module.named_parameters()}


def _assert_unchanged(module, snapshot):
    for n, p in module.named_parameters():
        before, array = snapshot[n]
        assert p.data is array, f"{n}: the array was replaced"
        assert np.array_equal(backend.to_numpy(p.data), before), f"{n} changed"
        assert backend.to_numpy(p.data).tobytes() == before.tobytes()


def test_state_dict_round_trip_copies_values():
    ml.manual_seed(0)
    src = Net()
    ml.manual_seed(1)
    dst = Net()
    sd = src.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert not np.array_equal(sd["h.0.fc.weight"], dst.state_dict()["h.0.fc.weight"])
    result = dst.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, value in dst.state_dict().items():
        assert np.array_equal(value, sd[name]) and value.dtype == sd[name].dtype
    ids = np.array([[1, 2, 3]])
    src.eval(), dst.eval()
    assert np.array_equal(src(ids).numpy(), dst(ids).numpy())
    # the state dict holds copies: changing it changes neither model, and back
    sd["wte.weight"][:] = 123.0
    assert not (backend.to_numpy(dst.wte.weight.data) == 123.0).any()
    assert not (backend.to_numpy(src.wte.weight.data) == 123.0).any()
    again = src.state_dict()
    src.wte.weight.data += 1
    assert not np.array_equal(again["wte.weight"], backend.to_numpy(src.wte.weight.data))


def test_load_state_dict_accepts_tensors_and_keeps_the_parameter_dtype():
    lin = nn.Linear(3, 2)
    sd = {"weight": ml.Tensor(np.ones((2, 3))), "bias": np.arange(2.0)}
    lin.load_state_dict(sd)
    assert lin.weight.dtype == np.float32 and np.array_equal(lin.bias.numpy(), [0.0, 1.0])


def test_tied_state_dict_loads_through_either_name():
    net = Net(tie=True)
    sd = net.state_dict()
    assert "lm_head.weight" not in sd
    sd["wte.weight"] = np.full_like(sd["wte.weight"], 0.5)
    net.load_state_dict(sd)
    assert np.all(net.lm_head.weight.numpy() == 0.5)
    with_alias = dict(sd, **{"lm_head.weight": sd["wte.weight"]})
    net.load_state_dict(with_alias)          # an alias of a tied weight is not "unexpected"


def test_load_state_dict_wrong_shape_names_key_and_shapes_and_changes_nothing():
    net = Net()
    before = _snapshot(net)
    sd = net.state_dict()
    sd["wte.weight"] = sd["wte.weight"] + 1.0          # a valid change that must not be applied
    sd["h.1.fc.weight"] = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    assert "h.1.fc.weight" in msg and "(5, 4)" in msg and "(8, 4)" in msg
    _assert_unchanged(net, before)


def test_load_state_dict_missing_and_unexpected_keys():
    net = Net()
    before = _snapshot(net)
    sd = net.state_dict()
    del sd["heads.a.bias"]
    sd["heads.c.weight"] = np.zeros((1, 4), dtype=np.float32)
    sd["wte.weight"] = sd["wte.weight"] * 0
    with pytest.raises(ValueError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    assert "heads.a.bias" in msg and "heads.c.weight" in msg and "missing" in msg and "unexpected" in msg
    _assert_unchanged(net, before)
    # strict=False loads what matches and reports the rest
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["heads.a.bias"] and result.unexpected_keys == ["heads.c.weight"]
    assert np.all(net.wte.weight.numpy() == 0)


# ----------------------------------------------------------------------------
# layers


def test_linear_forward_and_gradients():
    lin = nn.Linear(4, 3).to(np.float64)
    x = values(np.random.default_rng(0), (2, 5, 4))
    y = lin(ml.Tensor(x)).numpy()
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert np.allclose(y, x @ w.T + b, rtol=0, atol=1e-14)

    def as_function(x, w, b):
        return F.linear(x, w, b)

    check_grads(as_function, x, w, b)
    assert repr(lin) == "Linear(in_features=4, out_features=3, bias=True)"


def test_linear_default_init_is_uniform_within_one_over_sqrt_in():
    ml.manual_seed(0)
    lin = nn.Linear(64, 512)
    bound = 1 / math.sqrt(64)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert w.dtype == np.float32 and w.shape == (512, 64) and b.shape == (512,)
    for a in (w, b):
        assert a.min() >= -bound and a.max() <= bound
        assert a.min() < -0.98 * bound and a.max() > 0.98 * bound
    # U(-c, c): mean 0, standard deviation c / sqrt(3)
    assert abs(w.mean()) < 0.01 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound


def test_initialisation_is_reproducible_from_the_seed():
    ml.manual_seed(42)
    a = Net().state_dict()
    ml.manual_seed(42)
    b = Net().state_dict()
    ml.manual_seed(43)
    c = Net().state_dict()
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["wte.weight"], c["wte.weight"])


def test_embedding_layer_and_layer_norm_layer():
    emb = nn.Embedding(5, 3)
    assert emb.weight.shape == (5, 3) and emb.weight.dtype == np.float32
    ids = np.array([[4, 0], [4, 4]])
    assert np.array_equal(emb(ids).numpy(), emb.weight.numpy()[ids])
    ln = nn.LayerNorm(3)
    assert np.array_equal(ln.weight.numpy(), np.ones(3)) and np.array_equal(ln.bias.numpy(), np.zeros(3))
    y = ln(emb(ids)).numpy()
    assert np.allclose(y.mean(-1), 0, atol=1e-6)
    assert nn.LayerNorm(3, bias=False).bias is None


def test_sequential_modulelist_moduledict_behave_like_containers():
    seq = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert len(seq) == 2 and isinstance(seq[1], nn.Linear)
    assert seq(ml.Tensor(np.ones((4, 2), dtype=np.float32))).shape == (4, 1)
    lst = nn.ModuleList()
    lst.append(nn.Linear(1, 1)).append(nn.Linear(1, 1))
    assert len(lst) == 2 and [n for n, _ in lst.named_parameters()][2] == "1.weight"
    md = nn.ModuleDict()
    md["x"] = nn.Linear(1, 1)
    assert "x" in md and list(md.keys()) == ["x"] and len(md) == 1
    del md["x"]
    assert "x" not in md and list(md.named_parameters()) == []


def test_module_to_float64_casts_parameters_and_drops_gradients():
    lin = nn.Linear(2, 2)
    lin(ml.Tensor(np.ones((1, 2), dtype=np.float32))).sum().backward()
    lin.to(np.float64)
    assert lin.weight.dtype == np.float64 and lin.weight.grad is None


def test_module_without_super_init_explains_the_fix():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Broken()


def test_missing_attribute_error_names_it():
    with pytest.raises(AttributeError, match="nope"):
        nn.Linear(1, 1).nope  # noqa: B018


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_the_dtype_in_outputs_and_gradients(dtype):
    ml.manual_seed(0)
    net = Net().to(dtype)
    for p in net.parameters():
        assert p.dtype == dtype
    ids = np.array([[1, 2, 3], [0, 0, 6]])
    logits = net(ids)
    assert logits.dtype == dtype
    F.cross_entropy(logits, np.array([[1, 2, 3], [4, 5, 6]])).backward()
    for n, p in net.named_parameters():
        assert p.grad is None or p.grad.dtype == dtype, n
    x = ml.Tensor(np.ones((2, 4), dtype=dtype), requires_grad=True)
    for layer in (nn.Linear(4, 3).to(dtype), nn.LayerNorm(4).to(dtype), nn.Dropout(0.5)):
        y = layer(x)
        assert y.dtype == dtype, type(layer).__name__
        y.sum().backward()
        assert x.grad.dtype == dtype
    assert nn.Linear(2, 2).weight.dtype == np.float32          # the default is float32


# ----------------------------------------------------------------------------
# PyTorch's constructor spellings: LayerNorm over several dims, argument checks


def test_layer_norm_module_normalises_over_the_trailing_dims_of_normalized_shape():
    ln = nn.LayerNorm([3, 4]).to(np.float64)
    assert ln.weight.shape == (3, 4) and ln.bias.shape == (3, 4) and ln.normalized_shape == (3, 4)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)) * 5 + 2
    y = ln(ml.Tensor(x)).numpy()
    flat = y.reshape(2, 12)
    assert np.allclose(flat.mean(axis=1), 0, atol=1e-12) and np.allclose(flat.var(axis=1), 1, atol=1e-4)
    assert nn.LayerNorm(4).normalized_shape == (4,) and nn.LayerNorm((2, 4)).normalized_shape == (2, 4)
    assert nn.LayerNorm(4, elementwise_affine=False).weight is None


@pytest.mark.parametrize("make", [lambda: nn.Linear(0, 2), lambda: nn.Linear(True, 2), lambda: nn.Linear(2, -1),
                                  lambda: nn.Linear(2.0, 3), lambda: nn.Embedding(0, 2), lambda: nn.Embedding(3, True),
                                  lambda: nn.Embedding(3, 2, padding_idx=3), lambda: nn.LayerNorm([]),
                                  lambda: nn.LayerNorm([2, False]), lambda: nn.LayerNorm("4")])
def test_layer_constructors_refuse_bad_sizes_up_front(make):
    with pytest.raises(ValueError, match="must"):
        make()


def test_embedding_padding_idx_starts_at_zero_and_gets_no_gradient():
    emb = nn.Embedding(5, 3, padding_idx=-1)
    assert emb.padding_idx == 4 and np.all(emb.weight.numpy()[4] == 0)
    emb(np.array([[4, 1, 4]])).sum().backward()
    g = backend.to_numpy(emb.weight.grad)
    assert np.all(g[4] == 0) and np.all(g[1] == 1)


def test_activation_and_loss_modules_call_their_functions():
    x = ml.Tensor(np.random.default_rng(1).standard_normal((2, 5)))
    t = np.array([1, 4])
    pairs = [(nn.ReLU(), F.relu(x)), (nn.Tanh(), F.tanh(x)), (nn.Sigmoid(), F.sigmoid(x)),
             (nn.SiLU(), F.silu(x)), (nn.GELU(), F.gelu(x)), (nn.GELU("tanh"), F.gelu(x, approximate="tanh")),
             (nn.Softmax(dim=0), F.softmax(x, dim=0)), (nn.LogSoftmax(dim=1), F.log_softmax(x, dim=1)),
             (nn.LeakyReLU(0.2), F.leaky_relu(x, 0.2)), (nn.Softplus(2.0), F.softplus(x, 2.0))]
    for module, expected in pairs:
        assert np.array_equal(module(x).numpy(), expected.numpy()), type(module).__name__
    assert nn.Identity(3, any="thing")(x) is x
    assert nn.CrossEntropyLoss(label_smoothing=0.1)(x, t).item() == F.cross_entropy(x, t, label_smoothing=0.1).item()
    assert nn.NLLLoss(reduction="sum")(x, t).item() == F.nll_loss(x, t, reduction="sum").item()
    assert nn.MSELoss()(x, x * 2).item() == F.mse_loss(x, x * 2).item()
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="average")
    assert "approximate='tanh'" in repr(nn.GELU("tanh"))
