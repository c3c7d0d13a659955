"""LoRA's algebra, freezing, targeting, initialisations and adapter management.

Every check here is exact where the maths is exact (B = 0 gives the base model
bit for bit; switching adapters moves no base array) and carries a justified
tolerance where float32 rounding enters (merging adds B A into W0).

All models are tiny GPTs (2 layers, 16 wide) so the whole file runs in seconds.
"""
from __future__ import annotations

import ast
import math
import re
from collections import Counter

import numpy as np
import pytest

import minilora as ml
from minilora import backend
from minilora import functional as F
from minilora.lora import LORA_LAYERS, lora_layers, target_matches

CFG = ml.GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)
IDS = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, 8))
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj"]

# Float32 tolerances. Logits here are O(0.1..1). Merging replaces
# x W0^T + s (x A^T) B^T by x (W0 + s B A)^T: the same sums in another order,
# each rounded at float32 eps = 6e-8 relative, over inner sizes <= 64 and two
# layers -> differences of order 1e-7..1e-6 in the logits. 1e-5 leaves ten
# times that, while a wrong merge (missing scaling, B A transposed, a layer
# skipped) moves logits by more than 1e-2, which every test below checks first.
MERGE_ATOL = 1e-5
# W0 + d - d with |W0| ~ 0.02 and |d| < 2 rounds twice at eps32 * 2 ~ 2.4e-7.
UNMERGE_ATOL = 1e-6


def gpt(seed: int = 0, config: ml.GPTConfig = CFG) -> ml.GPT:
    ml.manual_seed(seed)
    return ml.GPT(config)


def logits(model, ids=IDS) -> np.ndarray:
    with ml.no_grad():
        return model(ids).numpy()


def is_lora_name(name: str) -> bool:
    return any(part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")
               for part in name.split("."))


def randomize(model, adapter: str = "default", std: float = 0.3, seed: int = 1) -> None:
    """Give one adapter's A and B non-zero values, so it changes the model."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if is_lora_name(name) and adapter in name.split("."):
            p.data = backend.to_device(rng.normal(0.0, std, p.shape).astype(p.dtype), p.device)


def snapshot(model) -> dict[str, np.ndarray]:
    return model.state_dict()


def assert_same_state(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for name in before:
        assert np.array_equal(before[name], after[name], equal_nan=True), f"{name} changed"


def lora_gpt(targets=("q_proj", "v_proj"), seed: int = 0, nonzero: bool = True, **kw) -> ml.GPT:
    model = gpt(seed)
    cfg = ml.LoraConfig(r=kw.pop("r", 4), lora_alpha=kw.pop("lora_alpha", 8),
                        target_modules=list(targets), **kw)
    ml.apply_lora(model, cfg)
    if nonzero:
        randomize(model)
    return model


# ---------------------------------------------------------------------------
# The algebra
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("init", [True, "gaussian"])
def test_b_zero_gives_the_base_model_bit_for_bit(init):
    base_out = logits(gpt())
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEARS,
                                       init_lora_weights=init))
    for layer in lora_layers(model).values():
        assert not np.any(layer.lora_B["default"].weight.numpy())   # B = 0 ...
        assert np.any(layer.lora_A["default"].weight.numpy())       # ... A is not
    assert np.array_equal(logits(model), base_out)


def test_merge_equals_unmerged_and_unmerge_restores_w0():
    base_out = logits(gpt())
    model = lora_gpt(ALL_LINEARS)
    w0 = snapshot(model)
    unmerged = logits(model)
    assert np.abs(unmerged - base_out).max() > 1e-2      # the adapter matters

    ml.merge(model)
    merged_w = snapshot(model)
    assert np.abs(merged_w["transformer.h.0.attn.q_proj.base_layer.weight"]
                  - w0["transformer.h.0.attn.q_proj.base_layer.weight"]).max() > 1e-2
    np.testing.assert_allclose(logits(model), unmerged, rtol=0, atol=MERGE_ATOL)

    ml.unmerge(model)
    for name, value in snapshot(model).items():
        np.testing.assert_allclose(value, w0[name], rtol=0, atol=UNMERGE_ATOL, err_msg=name)
    np.testing.assert_allclose(logits(model), unmerged, rtol=0, atol=MERGE_ATOL)


def test_merged_delta_is_scaling_times_b_a():
    model = lora_gpt(["q_proj"], r=4, lora_alpha=6)
    layer = model.transformer.h[1].attn.q_proj
    w0 = layer.base_layer.weight.numpy().astype(np.float64)
    A = layer.lora_A["default"].weight.numpy().astype(np.float64)
    B = layer.lora_B["default"].weight.numpy().astype(np.float64)
    ml.merge(model)
    # float32 storage of W0 + 1.5 B A (|.| < 2): rounding 2 * eps32 ~ 2.4e-7
    np.testing.assert_allclose(layer.base_layer.weight.numpy(), w0 + 1.5 * B @ A, rtol=0, atol=1e-6)


def _graph_ops(model) -> Counter:
    """Count the ops of one forward pass by walking its graph (every weight made trainable
    so that every op is recorded)."""
    for p in model.parameters():
        p.requires_grad = True
    out = model(IDS)
    ops, stack, seen = Counter(), [out], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t._parents:
            ops[t._op] += 1
            stack.extend(t._parents)
    return ops


def test_merged_forward_does_exactly_the_base_models_work(monkeypatch):
    model = lora_gpt(ALL_LINEARS)
    calls = []
    for layer in lora_layers(model).values():
        for table in (layer.lora_A, layer.lora_B):
            module = table["default"]
            monkeypatch.setattr(module, "forward",
                                lambda x, _f=module.forward: (calls.append(1), _f(x))[1])
    # many rows: A's and B's work done in one product by functional.lora_linear
    monkeypatch.setattr(F, "lora_linear", lambda *args, _f=F.lora_linear: (calls.extend([1, 1]), _f(*args))[1])
    logits(model)
    assert len(calls) == 2 * 6 * CFG.n_layer                  # the spy sees unmerged LoRA work
    ml.merge(model)
    calls.clear()
    logits(model)
    assert calls == []                                        # merged: no A or B runs

    base_ops = _graph_ops(gpt())
    assert _graph_ops(lora_gpt(ALL_LINEARS)) != base_ops      # unmerged: extra products
    assert _graph_ops(model) == base_ops                      # merged: the base model's ops


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_merge_of_a_diverged_adapter_raises_and_changes_nothing(bad):
    model = lora_gpt(ALL_LINEARS)
    last = model.transformer.h[1].mlp.proj                    # the last layer merged
    B = last.lora_B["default"].weight
    data = B.numpy().copy()
    data[0, 0] = bad
    B.data = backend.to_device(data, B.device)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"NaN or Inf") as err:
        ml.merge(model)
    assert "transformer.h.1.mlp.proj" in str(err.value)
    assert "nothing was changed" in str(err.value)
    assert_same_state(before, snapshot(model))
    assert all(not layer.merged_adapters for layer in lora_layers(model).values())


@pytest.mark.parametrize("target", ["lm_head", "wte"])
def test_merge_refused_on_tied_weights(target):
    model = lora_gpt([target])
    before = snapshot(model)
    out = logits(model)
    with pytest.raises(RuntimeError, match=r"tied") as err:
        ml.merge(model)
    msg = str(err.value)
    assert "transformer.wte" in msg and "lm_head" in msg and "unmerged" in msg   # both uses named
    assert_same_state(before, snapshot(model))
    assert np.array_equal(logits(model), out)


def test_embedding_lora_merges_when_untied():
    model = lora_gpt(["wpe"])                    # position table: an Embedding nobody shares
    out = logits(model)
    assert np.abs(out - logits(gpt())).max() > 1e-2
    ml.merge(model)
    np.testing.assert_allclose(logits(model), out, rtol=0, atol=MERGE_ATOL)


def test_merge_and_unload_returns_a_plain_gpt_with_the_same_outputs():
    base = gpt()
    model = lora_gpt(ALL_LINEARS)
    out = logits(model)
    plain = ml.merge_and_unload(model)
    assert type(plain) is ml.GPT
    assert not any(isinstance(m, LORA_LAYERS) for m in plain.modules())
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert not hasattr(plain, "peft_config")
    assert plain.lm_head.weight is plain.transformer.wte.weight          # still tied
    np.testing.assert_allclose(logits(plain), out, rtol=0, atol=MERGE_ATOL)


# ---------------------------------------------------------------------------
# Freezing: only A and B train, and frozen weights cost nothing
# ---------------------------------------------------------------------------
def _lora_names(targets=("q_proj", "v_proj")):
    return {f"transformer.h.{i}.attn.{t}.lora_{x}.default.weight"
            for i in range(CFG.n_layer) for t in targets for x in "AB"}


def _all_bias_names():
    names = {"transformer.ln_f.bias"}
    for i in range(CFG.n_layer):
        h = f"transformer.h.{i}"
        names |= {f"{h}.ln_1.bias", f"{h}.ln_2.bias", f"{h}.attn.q_proj.base_layer.bias",
                  f"{h}.attn.k_proj.bias", f"{h}.attn.v_proj.base_layer.bias",
                  f"{h}.attn.o_proj.bias", f"{h}.mlp.fc.bias", f"{h}.mlp.proj.bias"}
    return names


@pytest.mark.parametrize("bias, extra", [
    ("none", set()),
    ("all", _all_bias_names()),
    ("lora_only", {f"transformer.h.{i}.attn.{t}.base_layer.bias"
                   for i in range(CFG.n_layer) for t in ("q_proj", "v_proj")}),
])
def test_only_a_and_b_train_with_peft_bias_modes(bias, extra):
    model = lora_gpt(bias=bias, nonzero=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _lora_names() | extra


class OneLinear(ml.nn.Module):
    """The smallest model LoRA can target: one Linear, named proj."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = ml.nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def test_frozen_means_free_in_a_linear():
    """One LoRA Linear, x trainable: freezing W0 and b removes exactly their two gradients."""
    def grads_counted(unfreeze_base: bool) -> int:
        ml.manual_seed(0)
        net = ml.apply_lora(OneLinear(8, 6), ml.LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False))
        if unfreeze_base:
            net.proj.base_layer.weight.requires_grad = net.proj.base_layer.bias.requires_grad = True
        x = ml.Tensor(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32),
                      requires_grad=True)
        y = net(x)
        with ml.count_backward_work() as work:
            y.backward(np.ones(y.shape, dtype=np.float32))
        assert (net.proj.base_layer.weight.grad is None) == (not unfreeze_base)
        assert net.proj.lora_A["default"].weight.grad is not None and x.grad is not None
        return work["grads"]

    assert grads_counted(True) - grads_counted(False) == 2      # dW0 and db, nothing else


def test_frozen_means_free_in_a_gpt():
    ids, targets = IDS, np.roll(IDS, -1, axis=1)

    def backward_work(model):
        loss = F.cross_entropy(model(ids).reshape(-1, CFG.vocab_size), targets.reshape(-1))
        with ml.count_backward_work() as work:
            loss.backward()
        return work

    full = backward_work(gpt())
    model = lora_gpt()
    lora = backward_work(model)
    for name, p in model.named_parameters():
        if is_lora_name(name):
            assert p.grad is not None and p.grad.shape == p.shape, name
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    assert lora["grads"] < full["grads"]            # fewer gradients than full fine-tuning
    # The same LoRA model with its base unfrozen: the same graph, plus one gradient for each
    # use of a base weight (wte twice: embedding and head) and some activation gradients
    # below the first LoRA layer. Frozen, none of those is computed (not computed and thrown
    # away, which would leave the counts equal).
    unfrozen = lora_gpt()
    for p in unfrozen.parameters():
        p.requires_grad = True
    base_uses = sum(1 for _ in gpt().named_parameters(remove_duplicate=False))
    assert backward_work(unfrozen)["grads"] - lora["grads"] >= base_uses


def test_optimizer_holds_state_only_for_a_and_b():
    model = lora_gpt()
    trainable = model.num_parameters(trainable_only=True)
    assert trainable == CFG.n_layer * 2 * (4 * 16 + 16 * 4)
    opt = ml.optim.AdamW(model.parameters(), lr=1e-3)
    loss = (model(IDS) ** 2).mean()
    loss.backward()
    opt.step()
    lora_ids = {id(p) for n, p in model.named_parameters() if is_lora_name(n)}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == lora_ids
    assert set(opt.state) == lora_ids
    assert opt.state_bytes() == 2 * 4 * trainable          # m and v, float32, for A and B only


# ---------------------------------------------------------------------------
# Which layers: target_modules, rank_pattern, alpha_pattern
# ---------------------------------------------------------------------------
def _wrapped(model) -> set[str]:
    return set(lora_layers(model))


@pytest.mark.parametrize("targets, expected", [
    (["transformer.h.0.attn.q_proj"], {"transformer.h.0.attn.q_proj"}),          # exact name
    (["q_proj"], {"transformer.h.0.attn.q_proj", "transformer.h.1.attn.q_proj"}),  # suffix
    (["1.attn.q_proj", "wpe"], {"transformer.h.1.attn.q_proj", "transformer.wpe"}),
    # suffixes match at a dot: "proj" is mlp.proj, not q_proj / o_proj
    (["proj"], {"transformer.h.0.mlp.proj", "transformer.h.1.mlp.proj"}),
    # a string is a regex over the full name
    (r".*\.0\.attn\.(q|v)_proj", {"transformer.h.0.attn.q_proj", "transformer.h.0.attn.v_proj"}),
])
def test_target_modules_matching(targets, expected):
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=2, target_modules=targets))
    assert _wrapped(model) == expected


def test_target_matches_rule():
    assert target_matches("a.b.q_proj", ["q_proj"])
    assert not target_matches("a.b.xq_proj", ["q_proj"])
    assert not target_matches("a.b.q_proj", "q_proj")          # a regex must match it all
    assert target_matches("a.b.q_proj", r".*q_proj")


@pytest.mark.parametrize("targets", [["query"], "q_proj"])
def test_no_match_lists_what_can_be_targeted(targets):
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=2, target_modules=["k_proj"]))
    before = snapshot(model)
    with pytest.raises(ValueError, match="matched no Linear") as err:
        ml.apply_lora(model, ml.LoraConfig(r=2, target_modules=targets), adapter_name="b")
    listed = re.search(r"Layer names you can target: (\[.*\])", str(err.value)).group(1)
    assert ast.literal_eval(listed) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj",
                                   "wte", "wpe", "lm_head"])   # no LoRA internals (base_layer...)
    assert_same_state(before, snapshot(model))
    assert list(model.peft_config) == ["default"]


@pytest.mark.parametrize("targets, culprit", [(["ln_1"], "LayerNorm"), (["attn"], "CausalSelfAttention")])
def test_matching_a_non_linear_is_an_error(targets, culprit):
    model = gpt()
    with pytest.raises(ValueError, match="neither Linear nor Embedding") as err:
        ml.apply_lora(model, ml.LoraConfig(r=2, target_modules=targets))
    assert culprit in str(err.value) and "transformer.h.0" in str(err.value)
    assert not _wrapped(model)


def test_rank_and_alpha_patterns():
    model = gpt()
    cfg = ml.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                        rank_pattern={"v_proj": 2}, alpha_pattern={"h.1.attn.q_proj": 3})
    ml.apply_lora(model, cfg)
    layers = lora_layers(model)
    expect = {  # name: (r, scaling)
        "transformer.h.0.attn.q_proj": (4, 8 / 4), "transformer.h.1.attn.q_proj": (4, 3 / 4),
        "transformer.h.0.attn.v_proj": (2, 8 / 2), "transformer.h.1.attn.v_proj": (2, 8 / 2),
    }
    assert set(layers) == set(expect)
    for name, (r, scaling) in expect.items():
        assert layers[name].lora_A["default"].weight.shape == (r, 16)
        assert layers[name].lora_B["default"].weight.shape == (16, r)
        assert layers[name].scaling["default"] == scaling


def test_rslora_scaling():
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=16, lora_alpha=8, target_modules=["q_proj"], use_rslora=True))
    assert model.transformer.h[0].attn.q_proj.scaling["default"] == 8 / math.sqrt(16) == 2.0
    assert ml.LoraConfig(r=16, lora_alpha=8).scaling_for("x.q_proj") == 0.5


def test_lora_layer_forward_formula():
    """h = W0 x + b + (alpha / r) B A x, checked against the formula in float64."""
    model = lora_gpt(["fc"], r=3, lora_alpha=5)
    layer = model.transformer.h[0].mlp.fc
    x = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    W, b = layer.base_layer.weight.numpy(), layer.base_layer.bias.numpy()
    A, B = layer.lora_A["default"].weight.numpy(), layer.lora_B["default"].weight.numpy()
    expected = x @ W.T.astype(np.float64) + b + (5 / 3) * (x @ A.T.astype(np.float64)) @ B.T
    with ml.no_grad():
        out = layer(ml.Tensor(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)   # float32 sums of <= 16 terms O(1)


# ---------------------------------------------------------------------------
# Initialisations
# ---------------------------------------------------------------------------
class Wide(ml.nn.Module):
    """One 256 x 256 Linear: enough numbers in A for its statistics to be sharp."""

    def __init__(self):
        super().__init__()
        self.proj = ml.nn.Linear(256, 256)

    def forward(self, x):
        return self.proj(x)


def test_default_init_is_kaiming_uniform_a_and_zero_b():
    ml.manual_seed(0)
    net = ml.apply_lora(Wide(), ml.LoraConfig(r=8, target_modules=["proj"]))
    A = net.proj.lora_A["default"].weight.numpy()
    bound = 1 / math.sqrt(256)
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.99 * bound
    # U(-b, b) has std b / sqrt(3); with 2048 draws the sample std is within ~1.6% (1 sigma)
    assert abs(A.std() / (bound / math.sqrt(3)) - 1) < 0.1
    assert not np.any(net.proj.lora_B["default"].weight.numpy())


def test_gaussian_init_has_std_one_over_r():
    ml.manual_seed(0)
    net = ml.apply_lora(Wide(), ml.LoraConfig(r=8, target_modules=["proj"], init_lora_weights="gaussian"))
    A = net.proj.lora_A["default"].weight.numpy()
    # 2048 draws of N(0, 1/8^2): sample std within 10% is > 6 sigma; the uniform init's std
    # (0.036) is 70% off, so this tells the two apart.
    assert abs(A.std() / (1 / 8) - 1) < 0.1
    assert np.abs(A).max() > 1 / math.sqrt(256)          # not bounded like the uniform init
    assert not np.any(net.proj.lora_B["default"].weight.numpy())


def test_adapter_dtype_follows_the_base_weight():
    ml.manual_seed(0)
    net = Wide().to(np.float64)
    for init in (True, False, "gaussian", "pissa"):
        name = f"i{init}"
        ml.apply_lora(net, ml.LoraConfig(r=2, target_modules=["proj"], init_lora_weights=init), name)
        assert net.proj.lora_A[name].weight.dtype == np.float64
        assert net.proj.lora_B[name].weight.dtype == np.float64


def test_pissa_init():
    base_out = logits(gpt())
    w0 = gpt().transformer.h[0].attn.q_proj.weight.numpy().astype(np.float64)
    r, alpha = 4, 2
    scaling = alpha / r
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"],
                                       init_lora_weights="pissa"))
    layer = model.transformer.h[0].attn.q_proj
    A = layer.lora_A["default"].weight.numpy().astype(np.float64)
    B = layer.lora_B["default"].weight.numpy().astype(np.float64)
    w_res = layer.base_layer.weight.numpy().astype(np.float64)
    U, S, Vh = np.linalg.svd(w0)
    truncation = (U[:, :r] * S[:r]) @ Vh[:r]                      # best rank-r approximation
    # float32 storage of A, B, W0' (|.| <= 0.5): rounding ~ 3e-8 each; 1e-6 is ample,
    # while B A = W0 (no /scaling) or a wrong r would be off by > 1e-2.
    np.testing.assert_allclose(B @ A, truncation / scaling, rtol=0, atol=1e-6)
    np.testing.assert_allclose(w_res + scaling * B @ A, w0, rtol=0, atol=1e-5)
    assert np.abs(w_res - w0).max() > 1e-2                        # W0 really changed
    np.testing.assert_allclose(logits(model), base_out, rtol=0, atol=MERGE_ATOL)


def test_embedding_lora():
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=4, lora_alpha=8, target_modules=["wpe"]))
    layer = model.transformer.wpe
    assert isinstance(layer, ml.LoRAEmbedding)
    A, B = layer.lora_embedding_A["default"].numpy(), layer.lora_embedding_B["default"].numpy()
    assert A.shape == (4, CFG.block_size) and B.shape == (16, 4)
    assert not np.any(A)
    assert abs(B.std() - 1) < 0.35        # 64 draws of N(0, 1): sample std within 0.35 is ~4 sigma
    ids = np.array([[3, 0, 3, 15]])
    W0 = layer.base_layer.weight.numpy()
    with ml.no_grad():
        assert np.array_equal(layer(ids).numpy(), W0[ids])       # A = 0: the base rows exactly
    randomize(model)
    A, B = layer.lora_embedding_A["default"].numpy(), layer.lora_embedding_B["default"].numpy()
    expected = W0[ids] + 2.0 * (B.astype(np.float64) @ A).T[ids]
    with ml.no_grad():
        np.testing.assert_allclose(layer(ids).numpy(), expected, rtol=0, atol=1e-6)  # 4-term sums


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------
def test_print_trainable_parameters(capsys):
    config = ml.GPTConfig(vocab_size=1280, block_size=64, n_layer=2, n_head=2, n_embd=16)
    model = gpt(config=config)
    C = 16
    per_block = 2 * 2 * C + 4 * (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    base_total = (1280 + 64) * C + 2 * per_block + 2 * C          # wte, wpe, blocks, ln_f (head tied)
    assert model.num_parameters() == base_total == 28_096
    ml.apply_lora(model, ml.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    result = ml.print_trainable_parameters(model)
    assert capsys.readouterr().out == \
        "trainable params: 1,024 || all params: 29,120 || trainable%: 3.5165\n"
    assert result == (2 * 2 * (8 * C + C * 8), base_total + 1024)


# ---------------------------------------------------------------------------
# Several adapters on one base
# ---------------------------------------------------------------------------
def two_adapter_gpt():
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), "a")
    ml.apply_lora(model, ml.LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj", "fc"]), "b")
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    return model


def test_set_adapter_switches_outputs_and_moves_no_base_array():
    model = two_adapter_gpt()
    assert model.active_adapter == "a"                      # the first one stays active
    base_arrays = {n: p.data for n, p in model.named_parameters() if not is_lora_name(n)}
    base_values = {n: p.numpy().copy() for n, p in model.named_parameters() if not is_lora_name(n)}
    out_a = logits(model)

    ml.set_adapter(model, "b")
    out_b = logits(model)
    # adapter b alone on a fresh model, same values: the same numbers bit for bit
    only_b = gpt()
    ml.apply_lora(only_b, ml.LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj", "fc"]), "b")
    randomize(only_b, "b", seed=2)
    assert np.array_equal(out_b, logits(only_b))
    assert np.abs(out_b - out_a).max() > 1e-2
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n in dict(model.named_parameters()) if is_lora_name(n) and ".b." in n}

    ml.set_adapter(model, "a")
    assert np.array_equal(logits(model), out_a)
    for n, p in model.named_parameters():
        if not is_lora_name(n):
            assert p.data is base_arrays[n] and np.array_equal(p.numpy(), base_values[n]), n
    with pytest.raises(KeyError, match=r"'c'.*\['a', 'b'\]"):
        ml.set_adapter(model, "c")


def test_disable_adapters_gives_the_base_model():
    base_out = logits(gpt())
    model = two_adapter_gpt()
    out_a = logits(model)
    with ml.disable_adapters(model):
        assert np.array_equal(logits(model), base_out)
    assert np.array_equal(logits(model), out_a)


def test_disable_adapters_on_a_merged_model_unmerges_then_remerges():
    base_out = logits(gpt())
    model = lora_gpt(ALL_LINEARS)
    ml.merge(model)
    merged_out = logits(model)
    with ml.disable_adapters(model):
        assert all(not layer.merged_adapters for layer in lora_layers(model).values())
        np.testing.assert_allclose(logits(model), base_out, rtol=0, atol=MERGE_ATOL)
    assert all(layer.merged_adapters == ["default"] for layer in lora_layers(model).values())
    np.testing.assert_allclose(logits(model), merged_out, rtol=0, atol=MERGE_ATOL)


def test_delete_adapter():
    model = two_adapter_gpt()
    with pytest.raises(RuntimeError, match=r"active adapter.*set_adapter\(model, 'b'\)"):
        ml.delete_adapter(model, "a")
    out_a = logits(model)
    ml.delete_adapter(model, "b")
    assert list(model.peft_config) == ["a"]
    assert not any(".b." in n for n, _ in model.named_parameters())
    assert np.array_equal(logits(model), out_a)
    ml.delete_adapter(model, "a")                            # the last one may go
    assert not any(is_lora_name(n) for n, _ in model.named_parameters())
    assert np.array_equal(logits(model), logits(gpt()))
    with pytest.raises(KeyError, match="no adapter named 'a'"):
        ml.delete_adapter(model, "a")


def test_adapter_names_are_checked():
    model = gpt()
    cfg = ml.LoraConfig(r=2, target_modules=["q_proj"])
    ml.apply_lora(model, cfg, "task")
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has an adapter named 'task'"):
        ml.apply_lora(model, cfg, "task")
    with pytest.raises(ValueError, match="without dots"):
        ml.apply_lora(model, cfg, "a.b")
    assert_same_state(before, snapshot(model))


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), r"r=0 must be a positive integer"),
    (dict(r=2.5), r"r=2.5 must be a positive integer"),
    (dict(lora_alpha=0), r"lora_alpha=0 must be positive"),
    (dict(bias="x"), r"bias='x' must be 'none', 'all' or 'lora_only'"),
    (dict(init_lora_weights="foo"), r"init_lora_weights='foo' must be True, False, 'gaussian' or 'pissa'"),
    (dict(lora_dropout=1.0), r"lora_dropout=1.0 must be in \[0, 1\)"),
    (dict(target_modules=[]), r"target_modules is empty"),
    (dict(rank_pattern={"v_proj": 0}), r"rank_pattern\['v_proj'\]=0 must be a positive integer"),
    (dict(alpha_pattern={"v_proj": -1}), r"alpha_pattern\['v_proj'\]=-1 must be positive"),
    # a string is not a bool, NaN and inf are not numbers, a bool is not an int
    (dict(use_rslora="false"), r"use_rslora='false' must be True or False \(a str is not a bool\)"),
    (dict(use_rslora=1), r"use_rslora=1 must be True or False"),
    (dict(lora_alpha=float("inf")), r"lora_alpha=inf must be positive"),
    (dict(lora_alpha=float("nan")), r"lora_alpha=nan must be positive"),
    (dict(lora_alpha="16"), r"lora_alpha='16' must be positive"),
    (dict(r=True), r"r=True must be a positive integer"),
    (dict(r="8"), r"r='8' must be a positive integer"),
    (dict(target_modules=5), r"target_modules=5 must be a list of layer names"),
    (dict(target_modules=["q_proj", 3]), r"target_modules entry 3 must be a non-empty layer name"),
    (dict(target_modules="(unclosed"), r"'\(unclosed' is not a valid regular expression"),
    (dict(init_lora_weights=1), r"init_lora_weights=1 must be True"),
    (dict(lora_dropout=True), r"lora_dropout=True must be in \[0, 1\)"),
    (dict(bias=None), r"bias=None must be 'none'"),
    (dict(rank_pattern={"v_proj": True}), r"rank_pattern\['v_proj'\]=True must be a positive integer"),
    (dict(rank_pattern=[("v_proj", 2)]), r"rank_pattern=\[\('v_proj', 2\)\] must be a dict"),
    (dict(alpha_pattern={"v_proj": float("inf")}), r"alpha_pattern\['v_proj'\]=inf must be positive"),
])
def test_lora_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ml.LoraConfig(**kwargs)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def test_short_lora_training_changes_only_a_and_b_and_lowers_the_loss():
    model = gpt()
    # The frozen head is tied to wte; at GPT-2's init (std 0.02) it can only produce logits
    # below ~0.3, so no adapter could fit anything. Give the "pretrained" table O(1) rows.
    model.transformer.wte.weight.data *= 25
    ml.apply_lora(model, ml.LoraConfig(r=4, lora_alpha=8, target_modules=ALL_LINEARS))
    before = snapshot(model)
    # a learnable task: each token is followed by (token + 1) mod vocab
    start = np.random.default_rng(3).integers(0, CFG.vocab_size, size=(8, 1))
    seq = (start + np.arange(13)) % CFG.vocab_size
    x, y = seq[:, :-1], seq[:, 1:]
    opt = ml.optim.AdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x).reshape(-1, CFG.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # measured: 8.1 -> 1.6; half is a clear margin, and a LoRA that does not learn (no
    # gradient reaching A or B, a wrong sign) stays near 8
    assert losses[-1] < 0.5 * losses[0], losses
    after = snapshot(model)
    for name in before:
        if is_lora_name(name):
            assert not np.array_equal(before[name], after[name]), f"{name} did not train"
        else:
            assert np.array_equal(before[name], after[name]), f"frozen {name} changed"


@pytest.mark.parametrize("init", [True, "gaussian", "pissa"])
def test_rank_above_the_layer_is_refused_naming_r_and_the_shape(init):
    """PiSSA cannot build r > min(out, in) (W0 has only that many singular directions),
    and for any init such an r adds nothing: refused before anything changes."""
    config = ml.GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=8)
    model = gpt(config=config)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.q_proj: r=9 is larger than the layer "
                                         r"allows: its weight is \(8, 8\), so r must be at most 8"):
        ml.apply_lora(model, ml.LoraConfig(r=9, target_modules=["fc", "q_proj"], init_lora_weights=init))
    assert_same_state(before, snapshot(model))
    assert not lora_layers(model) and not hasattr(model, "peft_config")
    ml.apply_lora(model, ml.LoraConfig(r=8, target_modules=["q_proj"], init_lora_weights=init))   # the limit fits


def test_all_linear_is_every_linear_but_the_output_head():
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=2, target_modules="all-linear"))
    assert _wrapped(model) == {f"transformer.h.{i}.{m}" for i in range(2)
                               for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                         "mlp.fc", "mlp.proj")}


def test_each_lora_layer_declares_its_adapter_tables():
    """Generic code (save, load, delete, trainable flags) reads these tables by name."""
    model = lora_gpt(["q_proj", "wte"])
    ml.apply_lora(model, ml.LoraConfig(r=2, target_modules=["q_proj", "wte"]), "b")
    for layer in lora_layers(model).values():
        tables = type(layer).adapter_layer_names
        assert len(tables) == 2 and all(set(getattr(layer, t)) == {"default", "b"} for t in tables)
        weights = layer.adapter_weights("b")
        assert list(weights) == list(type(layer).file_keys)
        assert all(p.requires_grad is False for p in weights.values())     # "default" is active
    ml.delete_adapter(model, "b")
    for layer in lora_layers(model).values():
        for table in type(layer).adapter_layer_names + type(layer).other_adapter_tables:
            assert list(getattr(layer, table)) == ["default"]


def test_lora_linear_layer_takes_the_merged_product_only_where_it_is_the_same_sum(monkeypatch):
    """Many rows and no dropout: functional.lora_linear, equal to h + s B(A(x)) up to float32
    rounding in values and gradients; few rows, or dropout while training: the plain sum."""
    ml.manual_seed(0)
    layer = ml.apply_lora(OneLinear(16, 12), ml.LoraConfig(r=4, lora_alpha=6, target_modules=["proj"],
                                                init_lora_weights=False)).proj
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    fused = []
    monkeypatch.setattr(F, "lora_linear", lambda *args, _f=F.lora_linear: (fused.append(1), _f(*args))[1])
    rng = np.random.default_rng(0)
    for rows, expect_fused in ((64, True), (2, False)):     # 64 (16 + 12) > 16 * 12 > 2 (16 + 12)
        x_data = rng.standard_normal((rows, 16)).astype(np.float32)
        g = rng.standard_normal((rows, 12)).astype(np.float32)
        results = []
        for form in ("layer", "sum"):
            for p in (A, B):
                p.grad = None
            x = ml.Tensor(x_data, requires_grad=True)
            y = layer(x) if form == "layer" else layer.base_layer(x) + layer.lora_B["default"](
                layer.lora_A["default"](x)) * layer.scaling["default"]
            y.backward(g)
            results.append([y.numpy(), x.grad, A.grad, B.grad])
        assert fused == ([1] if expect_fused else [])
        for got, want in zip(*results):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)    # float32 rounding, |.| ~ 1-10
        fused.clear()
    layer.lora_dropout["default"].p = 0.1                          # dropout on A's input: the plain sum
    layer(ml.Tensor(rng.standard_normal((64, 16)).astype(np.float32)))
    assert fused == []
    layer.eval()                                                   # evaluation: dropout is off again
    layer(ml.Tensor(rng.standard_normal((64, 16)).astype(np.float32)))
    assert fused == [1]
