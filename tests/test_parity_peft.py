"""Parity with Hugging Face PEFT: the same LoRA computed by both libraries.

Layer level (float64): outputs, gradients of A, B and the input, merged weights,
scalings and trainable-parameter counts of a LoRA on a torch.nn.Linear wrapped
by peft.get_peft_model against minilora's LoRALinear with the same numbers.

GPT-2 (float32): a GPT2LMHeadModel with random weights is loaded into minilora,
adapted, exported with save_adapter(layout="hf_gpt2") and loaded back into
transformers with peft.PeftModel.from_pretrained: the logits must agree.

And the other way: an adapter saved by PEFT loads into minilora, and one saved
by minilora loads into PEFT.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import minilora as ml  # noqa: E402
from minilora import backend  # noqa: E402
from minilora.lora import lora_layers  # noqa: E402
from helpers import rel_err  # noqa: E402

torch.set_num_threads(1)
# transformers 5 deprecates a name that PEFT still calls; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# Float64 layer-level parity: both sides evaluate the same few products of <= 6 terms
# (possibly summed in another order), so they agree to ~1e-15 relative; 1e-6 is the
# contract. A wrong scaling, a transposed B A or a missed gradient is off by O(1).
F64_RTOL = 1e-6


def t2n(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def dev(array: np.ndarray):
    """A copy of a host array where minilora creates new tensors (CuPy when the suite runs on a
    GPU). Always a copy: t2n() shares torch's memory, and PEFT's merge writes into it in place."""
    return backend.to_device(np.array(array, copy=True), backend.default_device())


# ---------------------------------------------------------------------------
# Layer level: a chain of Linears, in torch (wrapped by PEFT) and in minilora
# ---------------------------------------------------------------------------
class TorchChain(torch.nn.Module):
    def __init__(self, sizes: dict):
        super().__init__()
        self.order = list(sizes)
        for name, (n_in, n_out) in sizes.items():
            setattr(self, name, torch.nn.Linear(n_in, n_out))

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return x


class MiniChain(ml.nn.Module):
    def __init__(self, sizes: dict):
        super().__init__()
        self.order = list(sizes)
        for name, (n_in, n_out) in sizes.items():
            setattr(self, name, ml.nn.Linear(n_in, n_out))

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return x


def layer_pair(sizes: dict, seed: int = 0, **lora_kwargs):
    """(peft model, minilora model) with equal base weights and equal non-zero A and B (float64)."""
    torch.manual_seed(seed)
    tnet = TorchChain(sizes).double()
    mnet = MiniChain(sizes)
    for name in sizes:
        t, m = getattr(tnet, name), getattr(mnet, name)
        m.weight.data = dev(t2n(t.weight))
        m.bias.data = dev(t2n(t.bias))
    pm = peft.get_peft_model(tnet, peft.LoraConfig(**lora_kwargs))
    ml.apply_lora(mnet, ml.LoraConfig(**lora_kwargs))
    rng = np.random.default_rng(seed + 1)
    for name, layer in lora_layers(mnet).items():
        player = pm.base_model.model.get_submodule(name)
        for table, ptable in ((layer.lora_A, player.lora_A), (layer.lora_B, player.lora_B)):
            value = rng.normal(0.0, 0.5, table["default"].weight.shape)
            table["default"].weight.data = dev(value)
            with torch.no_grad():
                ptable["default"].weight.copy_(torch.from_numpy(value))
    return pm, mnet


def compare_forward_backward(pm, mnet, n_in: int, seed: int = 0) -> dict[str, float]:
    """Relative errors of outputs and of the gradients of every A, B and the input."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, n_in))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tout = pm(tx)
    G = rng.standard_normal(tuple(tout.shape))
    (tout * torch.from_numpy(G)).sum().backward()
    mx = ml.Tensor(x, requires_grad=True)
    mout = mnet(mx)
    mout.backward(G)
    errs = {"output": rel_err(mout, t2n(tout)), "grad x": rel_err(mx.grad, t2n(tx.grad))}
    for name, layer in lora_layers(mnet).items():
        player = pm.base_model.model.get_submodule(name)
        for part in ("A", "B"):
            ours = getattr(layer, f"lora_{part}")["default"].weight
            theirs = getattr(player, f"lora_{part}")["default"].weight
            assert ours.dtype == np.float64
            errs[f"grad {name}.{part}"] = rel_err(ours.grad, t2n(theirs.grad))
    return errs


def test_linear_layer_parity():
    sizes = {"proj": (6, 5)}
    pm, mnet = layer_pair(sizes, r=4, lora_alpha=8, target_modules=["proj"])
    player, layer = pm.base_model.model.proj, mnet.proj
    assert player.scaling["default"] == layer.scaling["default"] == 2.0
    x = np.random.default_rng(9).standard_normal((4, 6))
    with torch.no_grad(), pm.disable_adapter():
        base = t2n(pm(torch.from_numpy(x)))
    with ml.no_grad():
        assert rel_err(mnet(ml.Tensor(x)), base) > 0.1          # the LoRA branch matters
    errs = compare_forward_backward(pm, mnet, 6)
    errs["delta weight"] = rel_err(layer.delta_weight("default"), t2n(player.get_delta_weight("default")))
    pm.merge_adapter()
    ml.merge(mnet)
    errs["merged weight"] = rel_err(layer.base_layer.weight, t2n(player.base_layer.weight))
    print("\nLoRA Linear parity (float64, relative):", {k: f"{v:.1e}" for k, v in errs.items()})
    for what, err in errs.items():
        assert err <= F64_RTOL, f"{what}: {err:.2e}"
    assert tuple(pm.get_nb_trainable_parameters()) == (mnet.num_parameters(True), mnet.num_parameters())


def test_print_trainable_parameters_matches_peft(capsys):
    pm, mnet = layer_pair({"proj1": (6, 5), "proj2": (5, 4)}, r=4, lora_alpha=8,
                          target_modules=["proj1", "proj2"])
    pm.print_trainable_parameters()
    theirs = capsys.readouterr().out
    ml.print_trainable_parameters(mnet)
    # LoRA: 4 * (6 + 5) + 4 * (5 + 4) = 80; base: 6 * 5 + 5 + 5 * 4 + 4 = 59; 80 / 139
    assert capsys.readouterr().out == theirs == \
        "trainable params: 80 || all params: 139 || trainable%: 57.5540\n"


def test_rslora_and_rank_pattern_parity():
    sizes = {"proj1": (6, 5), "proj2": (5, 3)}
    kwargs = dict(r=4, lora_alpha=8, target_modules=["proj1", "proj2"], use_rslora=True,
                  rank_pattern={"proj2": 2}, alpha_pattern={"proj2": 3})
    pm, mnet = layer_pair(sizes, seed=3, **kwargs)
    for name, r, scaling in (("proj1", 4, 8 / 4 ** 0.5), ("proj2", 2, 3 / 2 ** 0.5)):
        player, layer = pm.base_model.model.get_submodule(name), getattr(mnet, name)
        assert player.r["default"] == layer.lora_A["default"].weight.shape[0] == r
        assert player.scaling["default"] == pytest.approx(layer.scaling["default"], rel=1e-15)
        assert layer.scaling["default"] == pytest.approx(scaling, rel=1e-15)
    errs = compare_forward_backward(pm, mnet, 6)
    pm.merge_adapter()
    ml.merge(mnet)
    for name in sizes:
        errs[f"merged {name}"] = rel_err(getattr(mnet, name).base_layer.weight,
                                         t2n(pm.base_model.model.get_submodule(name).base_layer.weight))
    print("\nrsLoRA + rank_pattern parity (float64, relative):", {k: f"{v:.1e}" for k, v in errs.items()})
    for what, err in errs.items():
        assert err <= F64_RTOL, f"{what}: {err:.2e}"
    assert tuple(pm.get_nb_trainable_parameters()) == (mnet.num_parameters(True), mnet.num_parameters())


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_bias_modes_train_the_same_parameters(bias):
    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.other, self.norm = (torch.nn.Linear(4, 4), torch.nn.Linear(4, 4),
                                                torch.nn.LayerNorm(4))

    class MiniNet(ml.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.other, self.norm = ml.nn.Linear(4, 4), ml.nn.Linear(4, 4), ml.nn.LayerNorm(4)

    kwargs = dict(r=2, lora_alpha=4, target_modules=["proj"], bias=bias)
    pm = peft.get_peft_model(TorchNet(), peft.LoraConfig(**kwargs))
    mnet = ml.apply_lora(MiniNet(), ml.LoraConfig(**kwargs))
    theirs = {n.removeprefix("base_model.model.") for n, p in pm.named_parameters() if p.requires_grad}
    ours = {n for n, p in mnet.named_parameters() if p.requires_grad}
    assert ours == theirs
    assert len(ours) == {"none": 2, "all": 5, "lora_only": 3}[bias]


def test_embedding_parity():
    class TorchEmb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)

        def forward(self, ids):
            return self.emb(ids)

    class MiniEmb(ml.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = ml.nn.Embedding(10, 6)

        def forward(self, ids):
            return self.emb(ids)

    torch.manual_seed(0)
    tnet, mnet = TorchEmb().double(), MiniEmb()
    mnet.emb.weight.data = dev(t2n(tnet.emb.weight))
    kwargs = dict(r=3, lora_alpha=6, target_modules=["emb"])
    pm = peft.get_peft_model(tnet, peft.LoraConfig(**kwargs))
    ml.apply_lora(mnet, ml.LoraConfig(**kwargs))
    player, layer = pm.base_model.model.emb, mnet.emb
    assert not t2n(player.lora_embedding_A["default"]).any() and not layer.lora_embedding_A["default"].numpy().any()
    rng = np.random.default_rng(4)
    for part in ("A", "B"):
        value = rng.normal(0.0, 0.5, getattr(layer, f"lora_embedding_{part}")["default"].shape)
        getattr(layer, f"lora_embedding_{part}")["default"].data = dev(value)
        with torch.no_grad():
            getattr(player, f"lora_embedding_{part}")["default"].copy_(torch.from_numpy(value))
    ids = np.array([[1, 3, 3, 9], [0, 2, 5, 3]])
    tout = pm(torch.from_numpy(ids))
    G = rng.standard_normal(tuple(tout.shape))
    (tout * torch.from_numpy(G)).sum().backward()
    mout = mnet(ids)
    mout.backward(G)
    errs = {"output": rel_err(mout, t2n(tout))}
    for part in ("A", "B"):
        errs[f"grad {part}"] = rel_err(getattr(layer, f"lora_embedding_{part}")["default"].grad,
                                       t2n(getattr(player, f"lora_embedding_{part}")["default"].grad))
    assert rel_err(mout, t2n(player.base_layer(torch.from_numpy(ids)))) > 0.1     # LoRA matters
    pm.merge_adapter()
    ml.merge(mnet)
    errs["merged weight"] = rel_err(layer.base_layer.weight, t2n(player.base_layer.weight))
    print("\nLoRA Embedding parity (float64, relative):", {k: f"{v:.1e}" for k, v in errs.items()})
    for what, err in errs.items():
        assert err <= F64_RTOL, f"{what}: {err:.2e}"


def test_pissa_parity():
    """PiSSA in float32 (PEFT requires it): the same residual W0' and the same B A.
    A and B themselves may differ by the sign of each singular pair; B A does not."""
    torch.manual_seed(0)
    sizes = {"proj": (10, 12)}
    tnet, mnet = TorchChain(sizes), MiniChain(sizes)
    mnet.proj.weight.data = dev(t2n(tnet.proj.weight))
    mnet.proj.bias.data = dev(t2n(tnet.proj.bias))
    w0 = t2n(tnet.proj.weight).astype(np.float64)
    kwargs = dict(r=3, lora_alpha=6, target_modules=["proj"], init_lora_weights="pissa")
    pm = peft.get_peft_model(tnet, peft.LoraConfig(**kwargs))
    ml.apply_lora(mnet, ml.LoraConfig(**kwargs))
    player, layer = pm.base_model.model.proj, mnet.proj
    ours_ba = layer.lora_B["default"].weight.numpy().astype(np.float64) @ layer.lora_A["default"].weight.numpy()
    theirs_ba = t2n(player.lora_B["default"].weight).astype(np.float64) @ t2n(player.lora_A["default"].weight)
    residual = layer.base_layer.weight.numpy()
    assert rel_err(residual, w0) > 0.1                                   # W0 did change
    # float32 SVDs (torch's LAPACK, ours in float64 then rounded): relative error ~1e-6
    # for well-separated singular values; 1e-5 leaves 10x. A wrong r or scaling is O(1) off.
    errs = {"B A": rel_err(ours_ba, theirs_ba), "W0'": rel_err(residual, t2n(player.base_layer.weight))}
    print("\nPiSSA parity (float32, relative):", {k: f"{v:.1e}" for k, v in errs.items()})
    assert max(errs.values()) <= 1e-5


# ---------------------------------------------------------------------------
# Adapter files across the two libraries (plain Linears)
# ---------------------------------------------------------------------------
def test_peft_adapter_loads_into_minilora(tmp_path):
    sizes = {"proj1": (6, 5), "proj2": (5, 3)}
    pm, mnet = layer_pair(sizes, seed=5, r=4, lora_alpha=8, target_modules=["proj1", "proj2"],
                          rank_pattern={"proj2": 2})
    pm.save_pretrained(str(tmp_path / "peft_adapter"))
    # a fresh minilora chain with the same base weights, no LoRA yet
    fresh = MiniChain(sizes)
    for name in sizes:
        base = getattr(mnet, name).base_layer
        getattr(fresh, name).weight.data = dev(base.weight.numpy())
        getattr(fresh, name).bias.data = dev(base.bias.numpy())
    ml.load_adapter(fresh, tmp_path / "peft_adapter")
    x = np.random.default_rng(0).standard_normal((4, 6))
    with torch.no_grad():
        theirs = t2n(pm(torch.from_numpy(x)))
    with ml.no_grad():
        ours = fresh(ml.Tensor(x)).numpy()
    print(f"\nPEFT adapter in minilora: output relative error {rel_err(ours, theirs):.1e}")
    assert rel_err(ours, theirs) <= F64_RTOL
    assert fresh.proj2.lora_A["default"].weight.shape == (2, 5)


def test_minilora_adapter_loads_into_peft(tmp_path):
    sizes = {"proj1": (6, 5), "proj2": (5, 3)}
    pm, mnet = layer_pair(sizes, seed=6, r=3, lora_alpha=8, target_modules=["proj1", "proj2"],
                          use_rslora=True, rank_pattern={"proj1": 2})
    ml.save_adapter(mnet, tmp_path / "ours")
    torch.manual_seed(6)
    base = TorchChain(sizes).double()        # same seed: the same base weights as in layer_pair
    loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "ours"))
    x = np.random.default_rng(0).standard_normal((4, 6))
    with torch.no_grad():
        theirs = t2n(loaded(torch.from_numpy(x)))
    with ml.no_grad():
        ours = mnet(ml.Tensor(x)).numpy()
    print(f"\nminilora adapter in PEFT: output relative error {rel_err(ours, theirs):.1e}")
    assert rel_err(ours, theirs) <= F64_RTOL


# ---------------------------------------------------------------------------
# GPT-2: minilora -> save_adapter(layout="hf_gpt2") -> transformers + PEFT
# ---------------------------------------------------------------------------
GPT2_LOGITS_ATOL = 1e-4
# float32 logits of O(1) from two implementations that sum in different orders:
# measured differences ~1e-7..1e-6; 1e-4 is the contract. The adapters below move
# the logits by > 1e-1, a thousand times the tolerance, so a misplaced block (q rows
# vs v rows), a missing scaling or a missing layer cannot pass.


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    directory = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(str(directory))
    return directory


GPT2_IDS = np.random.default_rng(0).integers(0, 64, size=(2, 10))


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return t2n(model(torch.from_numpy(GPT2_IDS)).logits)


@pytest.mark.parametrize("lora_kwargs", [
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "fc", "proj"],
         rank_pattern={"v_proj": 2, "fc": 6}, alpha_pattern={"proj": 3}, use_rslora=True),
    dict(r=3, lora_alpha=5, target_modules=["k_proj", "wte"]),
], ids=["q_v", "all_linears_patterns_rslora", "k_and_wte"])
def test_gpt2_adapter_exported_to_peft(lora_kwargs, gpt2_dir, tmp_path):
    from transformers import GPT2LMHeadModel

    base_hf = GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()
    base_logits = hf_logits(base_hf)
    model = ml.load_gpt2(gpt2_dir)
    with ml.no_grad():
        assert np.abs(model(GPT2_IDS).numpy() - base_logits).max() <= GPT2_LOGITS_ATOL  # same base
    ml.apply_lora(model, ml.LoraConfig(init_lora_weights=False, **lora_kwargs))
    rng = np.random.default_rng(1)                  # non-zero A and B everywhere
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = dev(rng.normal(0.0, 0.3, p.shape).astype(np.float32))
    with ml.no_grad():
        ours = model(GPT2_IDS).numpy()

    ml.save_adapter(model, tmp_path / "hf", layout="hf_gpt2")
    fresh = GPT2LMHeadModel.from_pretrained(str(gpt2_dir))
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "hf")).eval()
    theirs = hf_logits(peft_model)
    err, moved = np.abs(ours - theirs).max(), np.abs(ours - base_logits).max()
    print(f"\nGPT-2 {sorted(lora_kwargs['target_modules'])}: max |minilora - PEFT| = {err:.1e}, "
          f"LoRA moved logits by {moved:.2f}")
    assert moved > 1000 * GPT2_LOGITS_ATOL
    assert err <= GPT2_LOGITS_ATOL
