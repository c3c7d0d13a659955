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
from minilora import backend
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
            p.data = backend.xp.asarray(rng.normal(0.0, 0.3, p.shape).astype(p.dtype))


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
    else:                                   # old -> aside succeeds, new -> place fails
        monkeypatch.setattr(os, "replace", _fail_on_call(2, os.replace))
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
