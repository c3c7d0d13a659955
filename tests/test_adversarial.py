"""Careless and hostile input to files, checkpoints, adapters, optimizers, training and the CLI.

Each test names an input that used to give a silently wrong result, lose data or
crash with an unclear error, and checks that it is now either correct or a clear
error that leaves everything as it was.
"""
from __future__ import annotations

import importlib
import json
import os
import re

import numpy as np
import pytest

import minilora as ml
from minilora import files
from minilora.adapters import load_adapter, save_adapter
from minilora.cli import main
from minilora.data import greedy_decode
from minilora.lora import LoraConfig, apply_lora
from minilora.optim import SGD, AdamW

train_mod = importlib.import_module("minilora.train")      # `minilora.train` is also a function
model_mod = importlib.import_module("minilora.model")
demo = importlib.import_module("minilora.demo")

CFG = ml.GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])


def gpt(seed: int = 0) -> ml.GPT:
    ml.manual_seed(seed)
    return ml.GPT(CFG)


def lora_gpt(targets=("q_proj", "v_proj"), seed: int = 1, name: str = "default") -> ml.GPT:
    model = gpt()
    ml.manual_seed(seed)
    return apply_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=list(targets),
                                        init_lora_weights=False), name)


def logits(model) -> np.ndarray:
    with ml.no_grad():
        return model(IDS).numpy()


def snapshot(model) -> tuple:
    """Everything a failed load must leave alone: weights, module names, flags, adapters."""
    return ({k: v.copy() for k, v in model.state_dict().items()},
            [n for n, _ in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()},
            dict(getattr(model, "peft_config", {})))


def assert_unchanged(model, before) -> None:
    after = snapshot(model)
    assert after[1:] == before[1:]
    assert after[0].keys() == before[0].keys()
    assert all(np.array_equal(after[0][k], before[0][k]) for k in before[0])


def batches(step):
    x = np.random.default_rng(step).integers(0, CFG.vocab_size, (2, CFG.block_size))
    return x, np.roll(x, -1, axis=1)


# ----------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_metadata_cannot_overwrite_the_model_config(tmp_path):
    # Before: metadata={"gpt_config": ...} replaced the real config in config.json.
    with pytest.raises(ValueError, match=r"metadata may not set \['gpt_config'\]"):
        ml.save_checkpoint(gpt(), tmp_path / "ck", metadata={"gpt_config": {"vocab_size": 3}})
    assert not (tmp_path / "ck").exists()
    ml.save_checkpoint(gpt(), tmp_path / "ok", metadata={"note": "mine"})
    info = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert info["gpt_config"] == CFG.to_dict() and info["note"] == "mine"


@pytest.mark.parametrize("poison", ["nan", "inf", "int32", "bool"])
def test_load_checkpoint_refuses_weights_no_training_leaves(tmp_path, poison):
    # Before: NaN/inf weights loaded as they were, integer and bool ones were cast to float32.
    model = gpt()
    ml.save_checkpoint(model, tmp_path / "ck")
    state = model.state_dict()
    if poison in ("nan", "inf"):
        state["transformer.wte.weight"][3, 1] = float(poison)
    else:
        state["transformer.wte.weight"] = (state["transformer.wte.weight"] > 0).astype(poison)
    (tmp_path / "ck" / "model.safetensors").write_bytes(files.safetensors_bytes(state))
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight (holds NaN or inf|has dtype)"):
        ml.load_checkpoint(tmp_path / "ck")


# ----------------------------------------------------------------------------
# Files


def test_saving_to_the_working_directory_leaves_the_process_in_a_real_folder(tmp_path, monkeypatch):
    # Before: the save swapped "." for a new folder, and the process sat in a deleted one:
    # os.getcwd() failed, and so did every relative path afterwards.
    (tmp_path / "run" / "sub").mkdir(parents=True)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "run" / "sub")
    ml.save_checkpoint(gpt(), "..")
    assert os.getcwd() == str(tmp_path / "run" / "sub")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    ml.save_checkpoint(gpt(), "relative")                # relative paths still work
    assert ml.load_checkpoint(tmp_path / "run" / "sub" / "relative").config == CFG


def test_a_crashed_save_of_an_earlier_process_with_our_process_id_is_recovered(tmp_path):
    # Before: any leftover named with this process's id counted as "still being written", so
    # where ids repeat (a container's process often has the same id at every start) the
    # complete old version, moved aside by a save killed between its renames, never came back.
    ml.save_checkpoint(gpt(), tmp_path / "ck")
    os.rename(tmp_path / "ck", tmp_path / f".ck.old.{os.getpid()}.deadbeef")
    (tmp_path / f".ck.tmp.{os.getpid()}.cafe0000").mkdir()
    assert ml.load_checkpoint(tmp_path / "ck").config == CFG
    assert os.listdir(tmp_path) == ["ck"]


def test_a_symbolic_link_loop_is_a_clear_error(tmp_path):
    # Before: NotADirectoryError naming an internal temporary folder.
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(OSError, match="leads back to itself"):
        ml.save_checkpoint(gpt(), tmp_path / "a")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_absurdly_nested_json_is_a_clear_error(tmp_path):
    # Before: RecursionError from the JSON parser.
    save_adapter(lora_gpt(), tmp_path / "ad")
    (tmp_path / "ad" / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_adapter(model, tmp_path / "ad")
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------
# Adapters


def test_layers_to_transform_zero_is_not_mistaken_for_switched_off(tmp_path):
    # Before: 0 == False, so layers_to_transform=0 ("only layer 0" in PEFT) was ignored.
    save_adapter(lora_gpt(), tmp_path / "ad")
    path = tmp_path / "ad" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "layers_to_transform": 0}))
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match="layers_to_transform=0: a PEFT option minilora does not implement"):
        load_adapter(model, tmp_path / "ad")
    assert_unchanged(model, before)


def test_an_alpha_that_overflows_the_layer_is_refused(tmp_path):
    # Before: lora_alpha=1e308 (finite) loaded, and the model's logits were NaN.
    save_adapter(lora_gpt(), tmp_path / "ad")
    path = tmp_path / "ad" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "lora_alpha": 1e308}))
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"scaling 5e\+307 .* overflows"):
        load_adapter(model, tmp_path / "ad")
    assert_unchanged(model, before)


def test_loading_over_an_adapter_of_the_same_name_never_mixes_the_two(tmp_path):
    # Before: a q,v adapter loaded as "default" over a q,k,v "default" replaced q and v and
    # silently kept the old k: the model matched neither adapter.
    source = lora_gpt(("q_proj", "v_proj"), seed=1)
    save_adapter(source, tmp_path / "qv")
    model = lora_gpt(("q_proj", "k_proj", "v_proj"), seed=7)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"already has an adapter 'default' on layers the file does not "
                                         r"adapt \(transformer\.h\.0\.attn\.k_proj"):
        load_adapter(model, tmp_path / "qv")
    assert_unchanged(model, before)
    same_layers = lora_gpt(("q_proj", "v_proj"), seed=7)     # the same layers: replaced whole
    load_adapter(same_layers, tmp_path / "qv")
    np.testing.assert_array_equal(logits(same_layers), logits(source))


def test_loading_a_second_adapter_keeps_the_first_ones_trainability(tmp_path):
    # Before: the second load_adapter re-ran "unfreeze the active adapter", so the first
    # adapter, loaded with is_trainable=False, would have been trained by train().
    save_adapter(lora_gpt(), tmp_path / "ad")
    model = gpt()
    load_adapter(model, tmp_path / "ad", adapter_name="frozen")
    load_adapter(model, tmp_path / "ad", adapter_name="waiting", is_trainable=True)
    assert model.active_adapter == "frozen"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []


# ----------------------------------------------------------------------------
# Optimizers


def test_a_parameter_listed_twice_is_refused():
    # Before: SGD([p, p]) stepped p twice per step (1 -> 0.8 with lr 0.1 and gradient 1),
    # and a parameter in two groups was updated with both learning rates.
    p = ml.nn.Parameter(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="listed more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="listed more than once"):
        AdamW([{"params": [p]}, {"params": [p], "lr": 1.0}], lr=0.1)


@pytest.mark.parametrize("damage, message", [
    (lambda arrays, info: info["scalars"].update({"0.step": "7"}), r"0\.step='7' must be a whole number"),
    (lambda arrays, info: arrays.pop("0.exp_avg_sq"), r"has state \['exp_avg', 'step'\], expected"),
    (lambda arrays, info: arrays["0.exp_avg"].__setitem__(0, np.nan), r"0\.exp_avg holds NaN or inf"),
])
def test_a_damaged_optimizer_state_is_refused_whole(damage, message):
    # Before: each loaded, then failed (or quietly misbehaved) at the next step.
    p = ml.nn.Parameter(np.ones(3, dtype=np.float32))
    opt = AdamW([p], lr=0.1)
    p.grad = p.xp.ones(3, dtype=np.float32)
    opt.step()
    arrays, info = opt.state_dict()
    damage(arrays, info)
    fresh = AdamW([p], lr=0.1)
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(arrays, info)
    assert fresh.state == {}


# ----------------------------------------------------------------------------
# Training and resuming


def test_targets_of_another_shape_are_refused_before_any_step():
    # Before: y of shape (4, 4) for x of shape (2, 8) was flattened into the wrong positions
    # and trained on without a word.
    model = gpt()
    before = snapshot(model)
    config = ml.TrainConfig(steps=2, lr=1e-2, warmup=0)
    with pytest.raises(ValueError, match=r"x of shape \(2, 8\) but targets y of shape \(4, 4\)"):
        ml.train(model, lambda step: (batches(step)[0], batches(step)[1].reshape(4, 4)), config,
                 progress=False)
    assert_unchanged(model, before)


def _saved_run(tmp_path):
    config = ml.TrainConfig(steps=4, lr=1e-2, warmup=0)
    ml.train(gpt(), batches, config, progress=False, checkpoint_dir=tmp_path / "state")
    return config, tmp_path / "state"


@pytest.mark.parametrize("edit, message", [
    (lambda state: [1, 2], r"not a resumable training state \(format 'a JSON list'\)"),
    (lambda state: {**state, "next_step": -3}, r"next_step=-3"),
    (lambda state: {**state, "next_step": 99}, r"next_step=99"),
])
def test_a_damaged_training_state_is_refused(tmp_path, edit, message):
    # Before: a list crashed with AttributeError, next_step=-3 with ZeroDivisionError, and
    # next_step=99 "resumed" a 4-step run by running nothing.
    config, state_dir = _saved_run(tmp_path)
    path = state_dir / "trainer_state.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        ml.train(model, batches, config, progress=False, resume_from=state_dir)
    assert_unchanged(model, before)


def test_resuming_from_nan_weights_is_refused(tmp_path):
    # Before: the NaN weights were loaded and the run went on from them.
    config, state_dir = _saved_run(tmp_path)
    weights = files.read_safetensors(state_dir / "model.safetensors")
    weights["transformer.wpe.weight"][0, 0] = np.nan
    (state_dir / "model.safetensors").write_bytes(files.safetensors_bytes(weights))
    model = gpt()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight holds NaN or inf"):
        ml.train(model, batches, config, progress=False, resume_from=state_dir)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------
# Generation


def test_generate_decodes_greedily_with_the_package_decoder(monkeypatch):
    model = gpt()
    expected = greedy_decode(lambda ids: logits_of(model, ids), IDS, 6, CFG.block_size)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[2])
        return greedy_decode(*args, **kwargs)

    monkeypatch.setattr(model_mod, "greedy_decode", spy)
    np.testing.assert_array_equal(model.generate(IDS, 6), expected)
    assert calls == [6]
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate(IDS, bad)


def logits_of(model, ids):
    with ml.no_grad():
        return model(ids).numpy()


# ----------------------------------------------------------------------------
# The demo's arguments


@pytest.mark.parametrize("argv, needle", [
    (["--rank", "65"], "r=65 is larger than the layer allows"),
    (["--targets", "lm_head"], "lm_head's weight is tied to another layer"),
])
def test_demo_refuses_what_only_the_model_can_refuse_before_training(tmp_path, capsys, monkeypatch,
                                                                     argv, needle):
    # Before: both passed the argument checks and failed after the full fine-tuning run.
    monkeypatch.setattr(demo, "compute", lambda *a, **k: pytest.fail("training started"))
    assert main(["demo", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------
# Model config


@pytest.mark.parametrize("field, value", [("bias", "false"), ("bias", 0), ("dropout", "0.1"), ("dropout", None)])
def test_gpt_config_fields_of_the_wrong_type_are_refused(field, value):
    # Before: bias="false" (a truthy string) built a model *with* biases; dropout="0.1" raised
    # a TypeError about comparing a float with a str.
    with pytest.raises(ValueError, match=f"GPTConfig: {field}="):
        ml.GPTConfig(**{**CFG.to_dict(), field: value})


# ----------------------------------------------------------------------------
# Hugging Face GPT-2 checkpoints


def hf_state(model) -> dict:
    """A GPT-2 state dict in Hugging Face's names, built from a minilora GPT (fused c_attn,
    Conv1D weights stored (in, out))."""
    sd, out = model.state_dict(), {}
    for i in range(CFG.n_layer):
        p = f"transformer.h.{i}"
        out[f"{p}.attn.c_attn.weight"] = np.concatenate(
            [sd[f"{p}.attn.{n}_proj.weight"] for n in "qkv"]).T.copy()
        out[f"{p}.attn.c_attn.bias"] = np.concatenate([sd[f"{p}.attn.{n}_proj.bias"] for n in "qkv"])
        for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            out[f"{p}.{theirs}.weight"] = sd[f"{p}.{ours}.weight"].T.copy()
            out[f"{p}.{theirs}.bias"] = sd[f"{p}.{ours}.bias"]
        for ln in ("ln_1", "ln_2"):
            out[f"{p}.{ln}.weight"], out[f"{p}.{ln}.bias"] = sd[f"{p}.{ln}.weight"], sd[f"{p}.{ln}.bias"]
    for k in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"):
        out[k] = sd[k]
    return out


def test_load_gpt2_round_trips_the_helper_state():
    # The helper above is right: without damage, load_gpt2 gives back the same model exactly.
    model = gpt()
    np.testing.assert_array_equal(logits(ml.load_gpt2(hf_state(model), n_head=CFG.n_head)), logits(model))


@pytest.mark.parametrize("poison", ["nan", "int32"])
def test_load_gpt2_refuses_nan_and_integer_weights(poison):
    # Before: NaN loaded as it was (every logit NaN); int32 weights were cast to float32.
    state = hf_state(gpt())
    key = "transformer.h.0.ln_1.weight"
    if poison == "nan":
        state[key] = state[key].copy()
        state[key][0] = np.nan
    else:
        state[key] = np.ones_like(state[key], dtype=np.int32)
    with pytest.raises(ValueError, match=rf"{re.escape(key)} (holds NaN|has dtype int32)"):
        ml.load_gpt2(state, n_head=CFG.n_head)


def test_load_gpt2_with_a_config_json_that_is_not_an_object(tmp_path):
    # Before: AttributeError: 'list' object has no attribute 'get'.
    (tmp_path / "model.safetensors").write_bytes(files.safetensors_bytes(hf_state(gpt())))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not the object of settings"):
        ml.load_gpt2(tmp_path)


def test_a_bfloat16_file_is_not_called_corrupt(tmp_path):
    # Before: "not a valid safetensors file ('BF16'); it may be truncated or corrupt".
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x80\x3f\x00\x40")
    with pytest.raises(ValueError, match="stores bfloat16 arrays, which NumPy"):
        files.read_safetensors(tmp_path / "w.safetensors")


def test_resuming_with_batches_drawn_differently_is_refused_and_changes_nothing(tmp_path):
    # Before: a TaskBatches with another seed (or tasks) took over the saved generator state,
    # so `pretrain --resume --seed 1` continued the seed-0 run and labelled it seed 1.
    from minilora.pretrained import task_batches

    config = ml.TrainConfig(steps=2, lr=1e-2, warmup=0)
    small = ml.GPTConfig(vocab_size=41, block_size=32, n_layer=1, n_head=2, n_embd=8)
    ml.manual_seed(0)
    ml.train(ml.GPT(small), task_batches(["rev"], 4, 32, seed=0), config, progress=False,
             checkpoint_dir=tmp_path / "state")
    ml.manual_seed(0)
    model = ml.GPT(small)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"drawn differently \(seed: saved 0, now 1\)"):
        ml.train(model, task_batches(["rev"], 4, 32, seed=1), config, progress=False,
                 resume_from=tmp_path / "state")
    assert_unchanged(model, before)


def test_make_batch_with_a_seed_instead_of_a_generator_is_a_clear_error():
    # Before: AttributeError: 'int' object has no attribute 'integers'.
    from minilora.data import make_batch

    with pytest.raises(TypeError, match=r"must be a NumPy Generator, e\.g\. np\.random\.default_rng\(0\)"):
        make_batch(["rev"], 4, 32, 0)


@pytest.mark.parametrize("change", ["lora_alpha", "dropout"])
def test_resuming_a_model_built_differently_is_refused(tmp_path, change):
    # Before: a LoRA with another lora_alpha (same names and shapes, another scaling), or a GPT
    # with another dropout, continued the saved run without a word.
    def build(alpha=4, dropout=0.0):
        ml.manual_seed(0)
        model = ml.GPT(ml.GPTConfig(**{**CFG.to_dict(), "dropout": dropout}))
        return apply_lora(model, LoraConfig(r=2, lora_alpha=alpha))

    config = ml.TrainConfig(steps=2, lr=1e-2, warmup=0)
    ml.train(build(), batches, config, progress=False, checkpoint_dir=tmp_path / "state")
    model = build(alpha=8) if change == "lora_alpha" else build(dropout=0.1)
    before = snapshot(model)
    expected = {"lora_alpha": r"lora\.default\.lora_alpha: saved 4, now 8",
                "dropout": r"config\.dropout: saved 0\.0, now 0\.1"}[change]
    with pytest.raises(ValueError, match=rf"the model is built differently \({expected}"):
        ml.train(model, batches, config, progress=False, resume_from=tmp_path / "state")
    assert_unchanged(model, before)
    ml.train(build(), batches, config, progress=False, resume_from=tmp_path / "state")   # the same: fine
