"""Adapters across minilora and PEFT, both ways, on Hugging Face GPT-2 and on minilora's names.

* PEFT -> minilora -> PEFT: PEFT adapts a GPT2LMHeadModel (random weights, no
  download), every A and B is randomised (a zero B would make any round trip
  pass), PEFT saves it; minilora loads it onto `load_gpt2` of the same
  checkpoint, then saves it with layout="hf_gpt2" and PEFT loads that again.
* minilora -> PEFT -> minilora: the same, starting from minilora's apply_lora.
* layout="minilora" -> PEFT on the PyTorch twin with minilora's layer names.

Five configurations each way: q/v, all linears with rsLoRA, rank and alpha
patterns, regex targets, embedding + attention.

Tolerance: 1e-4 absolute on float32 logits of size ~1-5, as for the base model
(tests/test_parity_hf.py). Both sides compute the same float32 sums in another
order (PEFT adds B A x on the fused c_attn, minilora on q, k, v separately;
export folds the scaling into B), measured differences ~1e-6. Every adapter
moves the logits by more than 0.1, a thousand times the tolerance, so a
misplaced block of c_attn, a lost layer or a wrong scaling cannot pass.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import minilora as ml  # noqa: E402
from minilora.lora import lora_layers  # noqa: E402

torch.set_num_threads(1)
pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to:UserWarning")]

ATOL = 1e-4
MOVED = 1000 * ATOL
HF = dict(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
IDS = np.random.default_rng(0).integers(0, HF["vocab_size"], size=(2, 12))
ERRORS: dict[str, float] = {}          # printed at the end: the measured round-trip errors


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = transformers.GPT2Config(**HF, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():       # weights of size O(0.2): logits O(1), so 1e-4 means something
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(str(directory))
    return directory


def hf_model(gpt2_dir):
    return transformers.GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(IDS)).logits.numpy()


def ml_logits(model) -> np.ndarray:
    with ml.no_grad():
        return model(IDS).numpy()


def record(name: str, err: float) -> None:
    ERRORS[name] = err
    print(f"\n{name}: max |logit difference| = {err:.2e}")


# (PEFT config on GPT-2's names, minilora config on minilora's names) for each case
CASES = {
    "q_v": (dict(r=4, lora_alpha=8, target_modules=["c_attn"]),
            dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "all_linear_rslora": (dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True),
                          dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True)),
    "rank_alpha_patterns": (
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
             rank_pattern={"c_fc": 2, "h.1.attn.c_attn": 6}, alpha_pattern={"c_proj": 3}),
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "fc", "proj"],
             rank_pattern={"v_proj": 2, "fc": 6}, alpha_pattern={"proj": 3})),
    "regex_targets": (dict(r=3, lora_alpha=5, target_modules=r".*\.1\.(attn\.c_attn|mlp\.c_fc)"),
                      dict(r=3, lora_alpha=5, target_modules=r".*\.1\.attn\.(q|v)_proj|.*\.0\.mlp\.fc")),
    "embedding_attention": (dict(r=3, lora_alpha=6, target_modules=["wte", "wpe", "c_attn", "attn.c_proj",
                                                                     "lm_head"]),
                            dict(r=3, lora_alpha=6, target_modules=["wte", "wpe", "k_proj", "o_proj",
                                                                    "lm_head"])),
}


def randomize_peft(pm, seed: int, zero_k_rows: bool = False) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
                if zero_k_rows and "c_attn.lora_B" in name:       # LoRA on q and v only
                    C = HF["n_embd"]
                    p[C:2 * C] = 0.0


def randomize_ml(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.xp.asarray(rng.normal(0.0, 0.2, p.shape).astype(np.float32))


@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapter_to_minilora_and_back(case, gpt2_dir, tmp_path):
    peft_kwargs, _ = CASES[case]
    base = hf_logits(hf_model(gpt2_dir))
    pm = peft.get_peft_model(hf_model(gpt2_dir), peft.LoraConfig(**peft_kwargs)).eval()
    randomize_peft(pm, seed=1, zero_k_rows=case == "q_v")
    theirs = hf_logits(pm)
    assert np.abs(theirs - base).max() > MOVED                      # the adapter matters
    pm.save_pretrained(str(tmp_path / "peft"))

    model = ml.load_adapter(ml.load_gpt2(gpt2_dir), tmp_path / "peft")
    err = np.abs(ml_logits(model) - theirs).max()
    record(f"PEFT -> minilora [{case}]", err)
    assert err <= ATOL
    if case == "q_v":          # k's rows of B are exactly zero: no LoRA is made for k_proj
        assert not any(n.endswith("k_proj") for n in lora_layers(model))
        assert any(n.endswith("v_proj") for n in lora_layers(model))

    ml.save_adapter(model, tmp_path / "again", layout="hf_gpt2")
    again = peft.PeftModel.from_pretrained(hf_model(gpt2_dir), str(tmp_path / "again")).eval()
    err = np.abs(hf_logits(again) - theirs).max()
    record(f"PEFT -> minilora -> PEFT [{case}]", err)
    assert err <= ATOL


@pytest.mark.parametrize("case", list(CASES))
def test_minilora_adapter_to_peft_and_back(case, gpt2_dir, tmp_path):
    _, ml_kwargs = CASES[case]
    model = ml.load_gpt2(gpt2_dir)
    base = ml_logits(model)
    ml.apply_lora(model, ml.LoraConfig(**ml_kwargs))
    randomize_ml(model, seed=2)
    ours = ml_logits(model)
    assert np.abs(ours - base).max() > MOVED
    ml.save_adapter(model, tmp_path / "ours", layout="hf_gpt2")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(gpt2_dir)      # the base it loads into

    pm = peft.PeftModel.from_pretrained(hf_model(gpt2_dir), str(tmp_path / "ours")).eval()
    err = np.abs(hf_logits(pm) - ours).max()
    record(f"minilora -> PEFT [{case}]", err)
    assert err <= ATOL

    pm.save_pretrained(str(tmp_path / "peft"))
    back = ml.load_adapter(ml.load_gpt2(gpt2_dir), tmp_path / "peft")
    err = np.abs(ml_logits(back) - ours).max()
    record(f"minilora -> PEFT -> minilora [{case}]", err)
    assert err <= ATOL


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_peft_adapter_with_biases_loads(bias, gpt2_dir, tmp_path):
    """Saved biases include c_attn's fused one: it is cut into q, k, v (k's too, even where
    k's rows of B are zero and k_proj gets no LoRA)."""
    pm = peft.get_peft_model(hf_model(gpt2_dir), peft.LoraConfig(r=2, target_modules=["c_attn", "c_fc"],
                                                                 bias=bias)).eval()
    randomize_peft(pm, seed=3, zero_k_rows=True)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if name.endswith("bias") and p.requires_grad:            # the biases this mode trains
                p.add_(0.3)
    pm.save_pretrained(str(tmp_path / "peft"))
    model = ml.load_adapter(ml.load_gpt2(gpt2_dir), tmp_path / "peft")
    err = np.abs(ml_logits(model) - hf_logits(pm)).max()
    record(f"PEFT bias={bias!r} -> minilora", err)
    assert err <= ATOL


# ---------------------------------------------------------------------------
# layout="minilora" -> PEFT on a PyTorch model with minilora's layer names
# ---------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("torch_gpt", ROOT / "benchmarks" / "torch_gpt.py")
torch_gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_gpt)


@pytest.mark.parametrize("case, bias", [("q_v", "none"), ("all_linear_rslora", "lora_only"),
                                        ("rank_alpha_patterns", "all"), ("regex_targets", "none"),
                                        ("embedding_attention", "none")])
def test_minilora_layout_loads_into_peft_on_the_same_names(case, bias, tmp_path):
    _, ml_kwargs = CASES[case]
    ml.manual_seed(0)
    model = ml.GPT(ml.GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    twin = torch_gpt.twin_of(model).eval()                         # the base, before LoRA
    base = ml_logits(model)
    ml.apply_lora(model, ml.LoraConfig(bias=bias, **ml_kwargs))
    randomize_ml(model, seed=4)
    for name, p in model.named_parameters():                        # trained biases too
        if p.requires_grad and name.endswith("bias"):
            p.data = p.data + 0.3
    ours = ml_logits(model)
    assert np.abs(ours - base).max() > MOVED
    ml.save_adapter(model, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "minilora:GPT"
    pm = peft.PeftModel.from_pretrained(twin, str(tmp_path / "a")).eval()
    with torch.no_grad():      # the LoRA model inside PEFT's causal-LM wrapper takes token ids as they are
        theirs = pm.base_model(torch.from_numpy(IDS)).numpy()
    err = np.abs(ours - theirs).max()
    record(f"minilora layout -> PEFT on minilora names [{case}, bias={bias}]", err)
    assert err <= ATOL
    back = ml.load_adapter(_fresh_like(model), tmp_path / "a")     # and back into minilora, exactly
    assert np.array_equal(ml_logits(back), ours)


def _fresh_like(model) -> ml.GPT:
    ml.manual_seed(0)
    return ml.GPT(model.config)


def test_print_errors():
    """Summary of the measured errors (run with -s to see it)."""
    for name, err in sorted(ERRORS.items()):
        print(f"{err:.2e}  {name}")
