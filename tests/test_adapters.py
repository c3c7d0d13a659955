"""Adapter files: PEFT's format, exact round trips, all-or-nothing loads, atomic saves.

A saved adapter is a directory with adapter_config.json and
adapter_model.safetensors. Loading checks everything before it touches the
model, so each broken file below must raise a clear error *and* leave the model
exactly as it was (weights bit for bit, module types, configs, active adapter).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import minilora as ml
from minilora import files
from minilora.adapters import adapter_size_bytes
from minilora.lora import lora_layers

CFG = ml.GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16)
IDS = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, 8))
PEFT_KEYS = {"peft_type", "r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora",
             "use_dora", "fan_in_fan_out", "init_lora_weights", "rank_pattern", "alpha_pattern",
             "modules_to_save", "task_type", "base_model_name_or_path", "inference_mode"}


def gpt(seed: int = 0) -> ml.GPT:
    ml.manual_seed(seed)
    return ml.GPT(CFG)


def logits(model) -> np.ndarray:
    with ml.no_grad():
        return model(IDS).numpy()


def randomize(model, adapter: str = "default", seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if "lora_" in name and adapter in name.split("."):
            p.data = p.xp.asarray(rng.normal(0.0, 0.3, p.shape).astype(p.dtype))


def adapted(targets=("q_proj", "v_proj"), r: int = 4, seed: int = 1, **kw) -> ml.GPT:
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=r, lora_alpha=8, target_modules=list(targets), **kw))
    randomize(model, seed=seed)
    return model


@pytest.fixture
def saved(tmp_path) -> Path:
    """A valid adapter directory (r=4 on q_proj and v_proj)."""
    return ml.save_adapter(adapted(), tmp_path / "adapter")


# ---------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------
def test_save_writes_peft_files(saved):
    assert sorted(os.listdir(saved)) == ["adapter_config.json", "adapter_model.safetensors"]
    text = (saved / "adapter_config.json").read_text()
    cfg = json.loads(text)
    assert text.strip() == json.dumps(cfg, indent=2, sort_keys=True)       # PEFT's json layout
    assert PEFT_KEYS <= set(cfg)
    assert cfg["peft_type"] == "LORA" and cfg["inference_mode"] is True
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (4, 8, ["q_proj", "v_proj"])
    assert (cfg["bias"], cfg["use_rslora"], cfg["use_dora"], cfg["fan_in_fan_out"]) == \
        ("none", False, False, False)
    with safe_open(str(saved / "adapter_model.safetensors"), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}


def test_safetensors_keys_and_values(saved):
    model = adapted()
    tensors = load_file(str(saved / "adapter_model.safetensors"))
    assert set(tensors) == {f"base_model.model.transformer.h.{i}.attn.{m}.lora_{x}.weight"
                            for i in range(2) for m in ("q_proj", "v_proj") for x in "AB"}
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        ours = key.removeprefix("base_model.model.").replace(".weight", ".default.weight")
        assert value.dtype == np.float32 and np.array_equal(value, params[ours].numpy()), key


def test_embedding_keys(tmp_path):
    model = adapted(["wpe", "q_proj"])
    tensors = load_file(str(ml.save_adapter(model, tmp_path / "a") / "adapter_model.safetensors"))
    assert tensors["base_model.model.transformer.wpe.lora_embedding_A"].shape == (4, CFG.block_size)
    assert tensors["base_model.model.transformer.wpe.lora_embedding_B"].shape == (16, 4)
    assert not any("default" in k for k in tensors)
    assert len(tensors) == 2 + 4


def test_round_trip_into_a_fresh_base(tmp_path):
    model = adapted(["wpe", "q_proj", "fc"], rank_pattern={"fc": 2}, use_rslora=True)
    out = logits(model)
    assert np.abs(out - logits(gpt())).max() > 1e-2                  # the adapter matters
    ml.save_adapter(model, tmp_path / "a")
    fresh = ml.load_adapter(gpt(), tmp_path / "a")
    assert np.array_equal(logits(fresh), out)                        # float32 stored exactly
    assert fresh.peft_config["default"].to_dict() == model.peft_config["default"].to_dict()
    assert fresh.active_adapter == "default"
    assert {n for n, _ in fresh.named_parameters()} == {n for n, _ in model.named_parameters()}


def test_load_under_a_new_name_and_is_trainable(saved):
    model = adapted(seed=5)
    own = logits(model)
    ml.load_adapter(model, saved, adapter_name="task")
    names = [n for n, _ in model.named_parameters()]
    assert "transformer.h.0.attn.q_proj.lora_A.task.weight" in names
    assert list(model.peft_config) == ["default", "task"]
    assert model.active_adapter == "default"                        # loading does not switch
    assert np.array_equal(logits(model), own)
    # loaded for inference: frozen; is_trainable=True makes it train
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".task." in n)
    ml.set_adapter(model, "task")
    assert np.array_equal(logits(model), logits(ml.load_adapter(gpt(), saved)))
    trainable = ml.load_adapter(gpt(), saved, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == \
        {n for n, _ in trainable.named_parameters() if "lora_" in n}


def test_adapter_is_far_smaller_than_the_checkpoint(tmp_path):
    # 64 wide: at 16 wide the safetensors header (~250 bytes a key) outweighs the numbers
    ml.manual_seed(0)
    model = ml.GPT(ml.GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=64))
    ckpt = ml.save_checkpoint(model, tmp_path / "ckpt")
    ml.apply_lora(model, ml.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapter = ml.save_adapter(model, tmp_path / "adapter")
    trainable, total = model.num_parameters(trainable_only=True), model.num_parameters()
    assert total - trainable > 50 * trainable          # 2,048 vs 103,168 numbers
    # bytes follow the numbers (4 each) plus ~1.4 KB of headers and config: measured 1/43
    assert adapter_size_bytes(adapter) * 25 < (ckpt / "model.safetensors").stat().st_size


def test_save_refuses_a_merged_adapter_and_unknown_names(tmp_path):
    model = adapted()
    with pytest.raises(KeyError, match=r"no adapter named 'x'.*\['default'\]"):
        ml.save_adapter(model, tmp_path / "a", adapter_name="x")
    ml.merge(model)
    with pytest.raises(RuntimeError, match=r"unmerge\(model\) first"):
        ml.save_adapter(model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------
# All or nothing: a broken adapter changes nothing
# ---------------------------------------------------------------------------
def model_state(model) -> dict:
    """Everything a load could change."""
    return {
        "weights": model.state_dict(),
        "types": {n: type(m).__name__ for n, m in model.named_modules()},
        "configs": {k: c.to_dict() for k, c in getattr(model, "peft_config", {}).items()},
        "active": getattr(model, "active_adapter", None),
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "layers": {n: (l.active_adapter, dict(l.scaling), list(l.merged_adapters))
                   for n, l in lora_layers(model).items()},
    }


def assert_unchanged(before: dict, model) -> None:
    after = model_state(model)
    assert list(after["weights"]) == list(before["weights"])
    for name, value in before["weights"].items():
        assert np.array_equal(after["weights"][name], value), f"{name} changed"
    for key in ("types", "configs", "active", "grad", "layers"):
        assert after[key] == before[key], key


def _rewrite_tensors(directory: Path, edit) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _rewrite_config(directory: Path, **changes) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _missing_dir(d):
    return d.parent / "nowhere"


def _missing_config(d):
    (d / "adapter_config.json").unlink()
    return d


def _missing_weights(d):
    (d / "adapter_model.safetensors").unlink()
    return d


def _truncated(d):
    path = d / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return d


def _corrupt_json(d):
    path = d / "adapter_config.json"
    path.write_text(path.read_text()[:-20])
    return d


def _json_not_an_object(d):
    (d / "adapter_config.json").write_text("[1, 2]")
    return d


def _unknown_module(d):
    def edit(t):   # the valid q/v keys stay: a partial loader would take those
        t["base_model.model.transformer.h.7.attn.q_proj.lora_A.weight"] = np.zeros((4, 16), np.float32)
        t["base_model.model.transformer.h.7.attn.q_proj.lora_B.weight"] = np.zeros((16, 4), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _not_a_linear(d):
    def edit(t):
        t["base_model.model.transformer.h.0.ln_1.lora_A.weight"] = np.zeros((4, 16), np.float32)
        t["base_model.model.transformer.h.0.ln_1.lora_B.weight"] = np.zeros((16, 4), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _inside_a_lora_layer(d):
    def edit(t):
        t["base_model.model.transformer.h.0.attn.q_proj.base_layer.lora_A.weight"] = np.zeros((4, 16), np.float32)
        t["base_model.model.transformer.h.0.attn.q_proj.base_layer.lora_B.weight"] = np.zeros((16, 4), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _wrong_rank_vs_config(d):
    _rewrite_config(d, r=8)
    return d


def _wrong_shape_one_layer(d):
    def edit(t):
        t["base_model.model.transformer.h.1.attn.v_proj.lora_B.weight"] = np.zeros((12, 4), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _a_without_b(d):
    _rewrite_tensors(d, lambda t: t.pop("base_model.model.transformer.h.1.attn.v_proj.lora_B.weight"))
    return d


def _adapter_name_in_key(d):
    def edit(t):
        t["base_model.model.transformer.h.0.attn.k_proj.lora_A.default.weight"] = np.zeros((4, 16), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _invalid_setting(d):
    _rewrite_config(d, bias="sometimes")
    return d


def _set_tensor(key: str, make):
    """A breaker that replaces one array of the file by make(old array)."""
    def breaker(d):
        def edit(t):
            t[key] = make(t[key])
        _rewrite_tensors(d, edit)
        return d
    return breaker


def _config_breaker(**changes):
    def breaker(d):
        _rewrite_config(d, **changes)
        return d
    return breaker


def _config_text_breaker(field: str, raw_json: str):
    """Write a JSON value Python's json module would not produce from a LoraConfig (NaN, inf)."""
    def breaker(d):
        path = d / "adapter_config.json"
        cfg = json.loads(path.read_text())
        cfg[field] = "__X__"
        path.write_text(json.dumps(cfg).replace('"__X__"', raw_json))
        return d
    return breaker


def _drop_config_key(key: str):
    def breaker(d):
        path = d / "adapter_config.json"
        cfg = json.loads(path.read_text())
        del cfg[key]
        path.write_text(json.dumps(cfg))
        return d
    return breaker


def _untargeted_layer(d):
    def edit(t):   # k_proj is a Linear of the right shape, but the config targets q and v only
        t["base_model.model.transformer.h.0.attn.k_proj.lora_A.weight"] = np.ones((4, 16), np.float32)
        t["base_model.model.transformer.h.0.attn.k_proj.lora_B.weight"] = np.ones((16, 4), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _targeted_layer_missing(d):
    def edit(t):
        for part in "AB":
            t.pop(f"base_model.model.transformer.h.1.attn.v_proj.lora_{part}.weight")
    _rewrite_tensors(d, edit)
    return d


def _b_without_a(d):
    _rewrite_tensors(d, lambda t: t.pop("base_model.model.transformer.h.0.attn.q_proj.lora_A.weight"))
    return d


def _rank_above_the_layer(d):
    """r = 17 on 16 x 16 layers, with A and B of exactly that shape."""
    def edit(t):
        for key in list(t):
            t[key] = np.ones((17, 16) if ".lora_A." in key else (16, 17), np.float32)
    _rewrite_tensors(d, edit)
    _rewrite_config(d, r=17)
    return d


def _mixed_layouts(d):
    def edit(t):
        t["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"] = np.ones((4, 16), np.float32)
        t["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"] = np.ones((48, 4), np.float32)
    _rewrite_tensors(d, edit)
    return d


def _hf_keys_under_a_minilora_base(d):
    def edit(t):
        for key in list(t):
            t[key.replace("q_proj", "c_fc").replace("v_proj", "c_proj")] = t.pop(key)
    _rewrite_tensors(d, edit)
    return d


def _bias_with_mode_none(d):
    def edit(t):
        t["base_model.model.transformer.h.0.attn.q_proj.base_layer.bias"] = np.ones(16, np.float32)
    _rewrite_tensors(d, edit)
    return d


def _foreign_base_weight(d):
    def edit(t):   # PEFT saves embedding base weights; these are not this model's
        t["base_model.model.transformer.wpe.base_layer.weight"] = np.ones((16, 16), np.float32)
    _rewrite_tensors(d, edit)
    return d


Q_A = "base_model.model.transformer.h.0.attn.q_proj.lora_A.weight"
V_B = "base_model.model.transformer.h.1.attn.v_proj.lora_B.weight"

# (how to break a good adapter, the error type, what the message must say)
BROKEN = {
    "missing directory": (_missing_dir, FileNotFoundError, r"nowhere is not a directory"),
    "missing config": (_missing_config, FileNotFoundError, r"adapter_config\.json does not exist"),
    "missing safetensors": (_missing_weights, FileNotFoundError,
                            r"adapter_model\.safetensors does not exist"),
    "truncated safetensors": (_truncated, ValueError,
                              r"adapter_model\.safetensors is not a valid safetensors file.*truncated"),
    "corrupt json": (_corrupt_json, ValueError, r"adapter_config\.json is not valid JSON"),
    "json not an object": (_json_not_an_object, ValueError, r"expected a JSON object.*found a list"),
    "invalid setting": (_invalid_setting, ValueError, r"adapter_config\.json: invalid LoRA settings.*bias='sometimes'"),
    "unknown module": (_unknown_module, ValueError,
                       r"transformer\.h\.7\.attn\.q_proj: the model has no such module"),
    "not a linear": (_not_a_linear, ValueError, r"transformer\.h\.0\.ln_1: the model has LayerNorm"),
    "inside a lora layer": (_inside_a_lora_layer, ValueError, r"part of the LoRA layer transformer\.h\.0\.attn\.q_proj"),
    "wrong rank vs config": (_wrong_rank_vs_config, ValueError,
                             r"A \(4, 16\) and B \(16, 4\) in the file, the model needs A \(8, 16\) and B \(16, 8\) \(r=8\)"),
    "wrong shape": (_wrong_shape_one_layer, ValueError,
                    r"h\.1\.attn\.v_proj: A \(4, 16\) and B \(12, 4\) in the file, the model needs A \(4, 16\) and B \(16, 4\)"),
    "lora_A without lora_B": (_a_without_b, ValueError,
                              r"transformer\.h\.1\.attn\.v_proj: the file has lora_A but not lora_B"),
    "adapter name in a key": (_adapter_name_in_key, ValueError, r"lora_A\.default\.weight' is neither"),
    # the file's contents
    "NaN weight": (_set_tensor(V_B, lambda a: np.where(a == a.flat[0], np.nan, a)), ValueError,
                   r"v_proj\.lora_B\.weight: holds NaN or inf"),
    "inf weight": (_set_tensor(Q_A, lambda a: a * np.inf), ValueError, r"q_proj\.lora_A\.weight: holds NaN or inf"),
    "absurd weight": (_set_tensor(Q_A, lambda a: np.full_like(a, 1e38)), ValueError,
                      r"q_proj\.lora_A\.weight: holds 1e\+38, beyond any trained weight"),
    "integer weights": (_set_tensor(Q_A, lambda a: a.astype(np.int64)), ValueError,
                        r"q_proj\.lora_A\.weight: dtype int64; LoRA weights and biases must be floating point"),
    "bool weights": (_set_tensor(V_B, lambda a: a > 0), ValueError, r"dtype bool"),
    "lora_B without lora_A": (_b_without_a, ValueError,
                              r"h\.0\.attn\.q_proj: the file has lora_B but not lora_A"),
    "untargeted layer": (_untargeted_layer, ValueError,
                         r"h\.0\.attn\.k_proj: not among the config's target_modules=\['q_proj', 'v_proj'\]"),
    "targeted layer missing": (_targeted_layer_missing, ValueError,
                               r"h\.1\.attn\.v_proj: the config's target_modules=.* name it, but the file "
                               r"has no LoRA weights for it"),
    "r above the layer": (_rank_above_the_layer, ValueError, r"r=17 is larger than the layer allows: "
                          r"its weight is \(16, 16\), so r must be at most 16"),
    "another base's weight": (_foreign_base_weight, ValueError,
                              r"transformer\.wpe\.base_layer\.weight: the file carries a base weight that "
                              r"differs from this model's"),
    "bias with bias='none'": (_bias_with_mode_none, ValueError, r"holds biases .* config says bias='none'"),
    "mixed layouts": (_mixed_layouts, ValueError, r"mix Hugging Face GPT-2's layer names \(transformer\.h\.0"
                      r"\.attn\.c_attn\) with minilora's"),
    "GPT-2 keys, minilora base": (_hf_keys_under_a_minilora_base, ValueError,
                                  r"base_model_name_or_path='minilora:GPT' says .* keys name Hugging Face"),
    # the config: every field's type and value
    "use_rslora a string": (_config_breaker(use_rslora="false"), ValueError,
                            r"use_rslora='false' must be True or False \(a str is not a bool\)"),
    "lora_alpha inf": (_config_text_breaker("lora_alpha", "Infinity"), ValueError, r"lora_alpha=inf must be positive"),
    "lora_alpha NaN": (_config_text_breaker("lora_alpha", "NaN"), ValueError, r"lora_alpha=nan must be positive"),
    "lora_alpha a string": (_config_breaker(lora_alpha="8"), ValueError, r"lora_alpha='8' must be positive"),
    "r a string": (_config_breaker(r="4"), ValueError, r"r='4' must be a positive integer"),
    "r a bool": (_config_breaker(r=True), ValueError, r"r=True must be a positive integer"),
    "target_modules a number": (_config_breaker(target_modules=5), ValueError,
                                r"target_modules=5 must be a list of layer names"),
    "target_modules bad regex": (_config_breaker(target_modules="q_proj("), ValueError,
                                 r"target_modules 'q_proj\(' is not a valid regular expression"),
    "rank_pattern a string value": (_config_breaker(rank_pattern={"v_proj": "2"}), ValueError,
                                    r"rank_pattern\['v_proj'\]='2' must be a positive integer"),
    "dropout a string": (_config_breaker(lora_dropout="0.1"), ValueError, r"lora_dropout='0.1' must be in"),
    "init a number": (_config_breaker(init_lora_weights=1), ValueError, r"init_lora_weights=1 must be True"),
    "no peft_type": (_drop_config_key("peft_type"), ValueError, r"peft_type=None; only LoRA adapters"),
    "no target_modules": (_drop_config_key("target_modules"), ValueError, r"no target_modules"),
    "inference_mode a string": (_config_breaker(inference_mode="yes"), ValueError,
                                r"inference_mode='yes' must be true or false"),
    # options minilora does not implement, named
    "use_dora": (_config_breaker(use_dora=True), ValueError, r"use_dora=true: DoRA .* not implemented"),
    "fan_in_fan_out": (_config_breaker(fan_in_fan_out=True), ValueError,
                       r"fan_in_fan_out=true: .* names minilora's Linear layers"),
    "layers_to_transform": (_config_breaker(layers_to_transform=[0]), ValueError,
                            r"layers_to_transform=\[0\]: a PEFT option minilora does not implement"),
    "modules_to_save": (_config_breaker(modules_to_save=["lm_head"]), ValueError,
                        r"modules_to_save=\['lm_head'\]: a PEFT option"),
    "init olora": (_config_breaker(init_lora_weights="olora"), ValueError, r"init_lora_weights='olora' must be"),
}


@pytest.mark.parametrize("adapter_name", ["default", "new"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_adapter_raises_and_changes_nothing(case, adapter_name, saved):
    breaker, error, message = BROKEN[case]
    directory = breaker(saved)
    model = adapted(seed=7)          # has an adapter "default" already (r=4 on q and v)
    before = model_state(model)
    with pytest.raises(error, match=message) as err:
        ml.load_adapter(model, directory, adapter_name=adapter_name)
    assert str(directory.name) in str(err.value)                   # says where
    assert_unchanged(before, model)


def test_loading_a_different_rank_over_an_existing_adapter_changes_nothing(tmp_path):
    ml.save_adapter(adapted(r=8), tmp_path / "r8")
    model = adapted(seed=7)                                          # "default" has r=4
    before = model_state(model)
    with pytest.raises(ValueError, match=r"existing adapter 'default' has A \(4, 16\), the file's A is "
                                         r"\(8, 16\)") as err:
        ml.load_adapter(model, tmp_path / "r8", adapter_name="default")
    assert "nothing was changed" in str(err.value)
    assert_unchanged(before, model)
    ml.load_adapter(model, tmp_path / "r8", adapter_name="r8")      # under a new name it fits


def test_loading_into_a_merged_layer_changes_nothing(saved):
    model = adapted(seed=7)
    ml.merge(model)
    before = model_state(model)
    with pytest.raises(ValueError, match=r"an adapter is merged there; unmerge\(model\) first"):
        ml.load_adapter(model, saved, adapter_name="new")
    assert_unchanged(before, model)


def test_a_bad_adapter_name_changes_nothing(saved):
    model = adapted(seed=7)
    before = model_state(model)
    with pytest.raises(ValueError, match="without dots"):
        ml.load_adapter(model, saved, adapter_name="a.b")
    assert_unchanged(before, model)


# ---------------------------------------------------------------------------
# Atomic save
# ---------------------------------------------------------------------------
def _fail_on_call(n: int, real):
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise OSError("simulated failure (disk full)")
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize("where", ["second file written", "swapping the directories"])
def test_a_failed_save_leaves_the_previous_adapter_intact(where, tmp_path, monkeypatch):
    directory = tmp_path / "adapter"
    ml.save_adapter(adapted(seed=1), directory)
    old = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    if where == "second file written":      # each file is fsync-ed before the swap
        monkeypatch.setattr(os, "fsync", _fail_on_call(2, os.fsync))
    else:                                   # the complete new folder fails to take the old one's place
        monkeypatch.setattr(files, "_swap_in", _fail_on_call(1, files._swap_in))
    with pytest.raises(OSError, match="simulated failure"):
        ml.save_adapter(adapted(seed=2), directory)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["adapter"]                       # no temporary directories
    assert {name: (directory / name).read_bytes() for name in os.listdir(directory)} == old
    assert np.array_equal(logits(ml.load_adapter(gpt(), directory)), logits(adapted(seed=1)))


def test_saving_again_replaces_the_adapter(tmp_path):
    directory = tmp_path / "adapter"
    ml.save_adapter(adapted(seed=1), directory)
    ml.save_adapter(adapted(seed=2), directory)
    assert os.listdir(tmp_path) == ["adapter"]
    assert np.array_equal(logits(ml.load_adapter(gpt(), directory)), logits(adapted(seed=2)))


# ---------------------------------------------------------------------------
# No pickle anywhere
# ---------------------------------------------------------------------------
def test_no_pickle_in_the_package(saved):
    package = Path(ml.__file__).parent
    forbidden = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|shelve)\b"
                           r"|\bpickle\.(loads?|dumps?)\b|allow_pickle\s*=\s*True|torch\.load\(",
                           re.MULTILINE)
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 10
    offenders = [f"{p.name}: {m.group(0).strip()}" for p in sources
                 for m in forbidden.finditer(p.read_text())]
    assert offenders == []
    # and the adapter file is safetensors: an 8-byte header length, then a JSON header
    data = (saved / "adapter_model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert json.loads(data[8:8 + n])["__metadata__"] == {"format": "pt"}


# ---------------------------------------------------------------------------
# Biases: bias="lora_only" and "all" round-trip, under PEFT's key names
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_adapters_with_biases_round_trip(bias, tmp_path):
    model = adapted(["q_proj", "wpe"], bias=bias)
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    assert trained                                                   # the mode trains biases
    for name, p in model.named_parameters():
        if name in trained:
            p.data = p.data + 0.5                                    # as if trained
    out = logits(model)
    ml.save_adapter(model, tmp_path / "a")
    keys = set(load_file(str(tmp_path / "a" / "adapter_model.safetensors")))
    assert "base_model.model.transformer.h.0.attn.q_proj.base_layer.bias" in keys   # PEFT's key
    assert {k for k in keys if k.endswith("bias")} == {"base_model.model." + n for n in trained}
    fresh = ml.load_adapter(gpt(), tmp_path / "a")                   # unwrapped base
    assert np.array_equal(logits(fresh), out)
    other = adapted(["k_proj"], seed=3)                              # already has LoRA layers
    ml.load_adapter(other, tmp_path / "a", adapter_name="b")
    ml.set_adapter(other, "b")
    assert np.array_equal(logits(other), out)


def test_biases_saved_without_base_layer_still_load(tmp_path):
    """Files written by earlier minilora versions named a wrapped layer's bias "<layer>.bias"."""
    model = adapted(["q_proj"], bias="lora_only")
    model.transformer.h[0].attn.q_proj.base_layer.bias.data += 0.5
    ml.save_adapter(model, tmp_path / "a")
    _rewrite_tensors(tmp_path / "a", lambda t: t.update(
        {k.replace(".base_layer.bias", ".bias"): t.pop(k) for k in list(t) if k.endswith("bias")}))
    assert np.array_equal(logits(ml.load_adapter(gpt(), tmp_path / "a")), logits(model))


def test_pissa_adapter_reloads_onto_the_original_base(tmp_path):
    """PiSSA changes W0; loading redoes it on the original base (as PEFT does), then sets A, B."""
    model = gpt()
    ml.apply_lora(model, ml.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    randomize(model)                                                 # as if trained
    ml.save_adapter(model, tmp_path / "a")
    fresh = ml.load_adapter(gpt(), tmp_path / "a")
    residual = model.transformer.h[0].attn.q_proj.base_layer.weight.numpy()
    assert np.abs(residual - gpt().transformer.h[0].attn.q_proj.weight.numpy()).max() > 1e-3
    assert np.abs(fresh.transformer.h[0].attn.q_proj.base_layer.weight.numpy() - residual).max() <= 1e-7
    # the residual W0 - s B0 A0 is recomputed in float64 and rounded: equal to float32 rounding
    assert np.abs(logits(fresh) - logits(model)).max() <= 1e-6


def test_hf_gpt2_adapter_onto_another_model_is_refused(tmp_path):
    ml.save_adapter(adapted(), tmp_path / "hf", layout="hf_gpt2")

    class NotGPT(ml.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = ml.nn.Linear(16, 16)

    model = NotGPT()
    before = model_state(model)
    with pytest.raises(ValueError, match=r"for Hugging Face's GPT2LMHeadModel \(its keys name "
                                         r"transformer\.h\.0\.attn\.c_attn\); it loads onto a minilora GPT"):
        ml.load_adapter(model, tmp_path / "hf")
    assert_unchanged(before, model)


def test_hf_gpt2_layout_says_its_base_and_refuses_what_it_cannot_write(tmp_path):
    ml.save_adapter(adapted(), tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == "minilora:GPT"
    with pytest.raises(ValueError, match="layout='nope' must be 'minilora'"):
        ml.save_adapter(adapted(), tmp_path / "x", layout="nope")
    with pytest.raises(ValueError, match=r"bias='all' is not supported there"):
        ml.save_adapter(adapted(bias="all"), tmp_path / "x", layout="hf_gpt2")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------
# Adapters in Hugging Face GPT-2's layout: the same all-or-nothing checks
# ---------------------------------------------------------------------------
C_ATTN = "base_model.model.transformer.h.0.attn.c_attn"


def _hf_bad_rows(d):
    _rewrite_tensors(d, lambda t: t.update({f"{C_ATTN}.lora_B.weight": np.ones((47, 8), np.float32)}))
    return d


def _hf_missing_layer(d):
    def edit(t):
        for part in "AB":
            t.pop(f"{C_ATTN}.lora_{part}.weight")
    _rewrite_tensors(d, edit)
    return d


def _hf_untargeted(d):
    def edit(t):
        t["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"] = np.ones((8, 16), np.float32)
        t["base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight"] = np.ones((64, 8), np.float32)
    _rewrite_tensors(d, edit)
    return d


HF_BROKEN = {
    "B rows not 3 x C": (_hf_bad_rows, r"c_attn: lora_B has shape \(47, 8\); a LoRA on the fused q, k, v "
                                       r"layer needs 3 equal row blocks"),
    "targeted layer missing": (_hf_missing_layer, r"h\.0\.attn\.c_attn: the config targets it, but the file "
                                                  r"has no LoRA weights"),
    "untargeted layer": (_hf_untargeted, r"h\.0\.mlp\.c_fc: not among the config's target_modules"),
    "rank vs config": (_config_breaker(r=6, rank_pattern={}, alpha_pattern={}),
                       r"c_attn: A \(8, 16\) in the file, but the config gives r=6"),
    "use_dora": (_config_breaker(use_dora=True), r"use_dora=true: DoRA"),
    "pissa": (_config_breaker(init_lora_weights="pissa"), r"init_lora_weights='pissa' on GPT-2"),
    "NaN": (_set_tensor(f"{C_ATTN}.lora_A.weight", lambda a: a * np.nan), r"c_attn\.lora_A\.weight: holds NaN"),
}


@pytest.mark.parametrize("case", list(HF_BROKEN))
def test_a_broken_hf_gpt2_adapter_raises_and_changes_nothing(case, tmp_path):
    breaker, message = HF_BROKEN[case]
    directory = breaker(ml.save_adapter(adapted(), tmp_path / "hf", layout="hf_gpt2"))
    model = adapted(seed=7)
    before = model_state(model)
    with pytest.raises(ValueError, match=message):
        ml.load_adapter(model, directory, adapter_name="new")
    assert_unchanged(before, model)


def test_hf_gpt2_layout_round_trips_inside_minilora(tmp_path):
    """q and v exported as one c_attn LoRA (k rows zero) come back as q and v, same logits;
    fan_in_fan_out=true is right for GPT-2's Conv1D layers and accepted there."""
    model = adapted(["q_proj", "v_proj", "fc", "wte"])
    ml.save_adapter(model, tmp_path / "hf", layout="hf_gpt2")
    cfg = json.loads((tmp_path / "hf" / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["task_type"] == "CAUSAL_LM"
    back = ml.load_adapter(gpt(), tmp_path / "hf")
    assert set(lora_layers(back)) == set(lora_layers(model))               # no k_proj LoRA
    # scaling folded into B and q, v sharing A's rows: float32 rounding only
    assert np.abs(logits(back) - logits(model)).max() <= 1e-6


def test_c_attn_lora_splits_exactly_and_skips_only_exact_zeros():
    from minilora import hf_gpt2

    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 4)), rng.normal(size=(12, 3))
    B[4:8] = 0.0                                                     # k's rows: exactly zero
    B[9, 1] = 0.0
    parts = hf_gpt2.adapter_from_hf("transformer.h.2.attn.c_attn", A, B)
    assert list(parts) == ["transformer.h.2.attn.q_proj", "transformer.h.2.attn.v_proj"]
    x = rng.normal(size=4)
    assert np.array_equal(parts["transformer.h.2.attn.q_proj"][1] @ (A @ x), (B @ (A @ x))[:4])
    assert np.array_equal(parts["transformer.h.2.attn.v_proj"][1] @ (A @ x), (B @ (A @ x))[8:])
    B[5, 0] = 1e-30                                                  # tiny is not zero: k is kept
    assert "transformer.h.2.attn.k_proj" in hf_gpt2.adapter_from_hf("transformer.h.2.attn.c_attn", A, B)
    # and back: one shared A gives back the original (A, B)
    back = hf_gpt2.adapter_to_hf(hf_gpt2.adapter_from_hf("transformer.h.2.attn.c_attn", A, B))
    assert np.array_equal(back["transformer.h.2.attn.c_attn"][0], A)
    assert np.array_equal(back["transformer.h.2.attn.c_attn"][1], B)


def test_the_gpt2_name_map_goes_both_ways():
    from minilora import hf_gpt2

    for ours in ("transformer.h.3.attn.q_proj", "transformer.h.3.attn.o_proj", "transformer.h.3.mlp.fc",
                 "transformer.h.3.mlp.proj", "transformer.wte", "lm_head", "transformer.h.3.ln_1"):
        hf, third = hf_gpt2.to_hf(ours)
        assert ours in hf_gpt2.from_hf(hf)
        assert (third is not None) == (hf == "transformer.h.3.attn.c_attn")
    assert hf_gpt2.to_hf("transformer.h.3.mlp.proj")[0] == "transformer.h.3.mlp.c_proj"
    assert hf_gpt2.to_hf("transformer.h.3.attn.o_proj")[0] == "transformer.h.3.attn.c_proj"
    assert hf_gpt2.from_hf("transformer.h.3.attn.v_proj") == []      # minilora's name, not GPT-2's
