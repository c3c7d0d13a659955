"""Adapter files in PEFT's format: a directory with two small files.

    adapter_config.json          the LoraConfig, plus "peft_type": "LORA"
    adapter_model.safetensors    A and B of every adapted layer

Keys read `base_model.model.<module path>.lora_A.weight` (the adapter name is
left out of the file; you choose it when loading). An adapter is a few
kilobytes where the model is megabytes, which is why one base model can carry
many tasks.

`layout="hf-gpt2"` writes an adapter for Hugging Face's GPT2LMHeadModel instead,
which fuses q, k, v into one Conv1D `c_attn` of width 3C. LoRAs on q and v are
then one LoRA on c_attn of rank r_q + r_v: A stacks A_q over A_v, and B puts
B_q in c_attn's q rows and B_v in its v rows (k rows zero), each scaled, so
that B A x = [s_q B_q A_q x ; 0 ; s_v B_v A_v x].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minilora import backend
from minilora.files import (json_bytes, read_json, read_safetensors,
                            safetensors_bytes, write_dir_atomically)
from minilora.lora import (LORA_LAYERS, LoraConfig, LoRAEmbedding, LoRALinear, _adapter_names, _adapter_params,
                           _mark_trainable, _parent_of, lora_layers, set_adapter, trainable_bias_names)
from minilora import nn
from minilora.model import GPT

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def _peft_config_dict(config: LoraConfig, **overrides) -> dict:
    """The adapter_config.json contents: PEFT's keys, so PEFT can read it too."""
    d = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
         "r": config.r, "lora_alpha": config.lora_alpha, "target_modules": config.target_modules,
         "lora_dropout": config.lora_dropout, "bias": config.bias, "use_rslora": config.use_rslora,
         "use_dora": False, "fan_in_fan_out": False, "init_lora_weights": config.init_lora_weights,
         "rank_pattern": config.rank_pattern, "alpha_pattern": config.alpha_pattern,
         "modules_to_save": None, "inference_mode": True}
    d.update(overrides)
    return d


def adapter_state_dict(model, adapter_name: str) -> dict[str, np.ndarray]:
    """{PEFT key: array} for one adapter (and its biases when its bias mode trains them)."""
    out = {}
    for name, layer in lora_layers(model).items():
        if isinstance(layer, LoRALinear) and adapter_name in layer.lora_A:
            out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A[adapter_name].weight.numpy()
            out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B[adapter_name].weight.numpy()
        elif isinstance(layer, LoRAEmbedding) and adapter_name in layer.lora_embedding_A:
            out[f"{PREFIX}{name}.lora_embedding_A"] = layer.lora_embedding_A[adapter_name].numpy()
            out[f"{PREFIX}{name}.lora_embedding_B"] = layer.lora_embedding_B[adapter_name].numpy()
    params = dict(model.named_parameters())
    for bias_name in trainable_bias_names(model, adapter_name):
        out[PREFIX + bias_name.replace(".base_layer.", ".")] = params[bias_name].numpy()
    return out


def save_adapter(model, directory, adapter_name: str | None = None, layout: str = "minilora") -> Path:
    """Write one adapter as adapter_config.json + adapter_model.safetensors (atomically).

    layout="minilora": keys follow this model's module names (q_proj, v_proj, ...).
    layout="hf-gpt2": keys and config for Hugging Face's GPT2LMHeadModel, loadable
    with peft.PeftModel.from_pretrained.
    """
    configs = getattr(model, "peft_config", {})
    adapter_name = adapter_name or getattr(model, "active_adapter", None)
    if adapter_name not in configs:
        raise KeyError(f"save_adapter: no adapter named {adapter_name!r} (adapters: {list(configs)})")
    if any(layer.merged_adapters for layer in lora_layers(model).values()):
        raise RuntimeError("save_adapter: the adapter is merged into the base weights; "
                           "unmerge(model) first so A and B are saved on their own")
    config = configs[adapter_name]
    if layout == "minilora":
        # PEFT builds a PeftModelForCausalLM for task_type "CAUSAL_LM", which needs a language
        # model's generate hooks; any other module loads as a plain PeftModel (task_type null).
        task_type = "CAUSAL_LM" if isinstance(model, GPT) else None
        tensors = adapter_state_dict(model, adapter_name)
        cfg = _peft_config_dict(config, task_type=task_type)
    elif layout == "hf-gpt2":
        tensors, cfg = _to_hf_gpt2(model, adapter_name, config)
    else:
        raise ValueError(f"save_adapter: layout={layout!r} must be 'minilora' or 'hf-gpt2'")
    files = {WEIGHTS_FILE: safetensors_bytes(tensors, {"format": "pt"}), CONFIG_FILE: json_bytes(cfg)}
    return write_dir_atomically(directory, files)


def load_adapter(model, directory, adapter_name: str = "default", is_trainable: bool = False):
    """Read an adapter saved by save_adapter into the model, all or nothing.

    Every file, key and shape is checked before the model is touched: a missing,
    truncated or corrupt file, a key naming a module the model lacks, or a shape
    that differs from what is expected raises and leaves the model as it was.
    The first adapter of a model becomes active; later ones wait for set_adapter.
    Loaded adapters are frozen unless is_trainable=True.
    """
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"load_adapter: adapter_name={adapter_name!r} must be a non-empty string "
                         "without dots (it becomes part of parameter names)")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"load_adapter: {directory} is not a directory; expected one holding "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE} (written by save_adapter)")
    raw = read_json(directory / CONFIG_FILE)
    if not isinstance(raw, dict):
        raise ValueError(f"{directory / CONFIG_FILE}: expected a JSON object of LoRA settings, "
                         f"found a {type(raw).__name__}")
    if raw.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{directory / CONFIG_FILE}: peft_type={raw.get('peft_type')!r}; only LORA adapters load")
    known = LoraConfig.__dataclass_fields__
    try:
        config = LoraConfig(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_FILE}: invalid LoRA settings: {err}") from None
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    plan = _plan_load(model, tensors, config, adapter_name, directory)

    # Nothing has been changed so far; from here on every step is known to fit.
    for name, kind, (A, B) in plan["layers"]:
        module = model.get_submodule(name)
        if not isinstance(module, LORA_LAYERS):
            module = (LoRALinear if kind == "linear" else LoRAEmbedding)(module)
            parent, child = _parent_of(model, name)
            setattr(parent, child, module)
        if adapter_name not in _adapter_names(module):
            module.update_layer(adapter_name, A.shape[0], config.scaling_for(name), config.lora_dropout, True)
        a_param, b_param = _adapter_params(module, adapter_name)
        a_param.data = backend.to_device(A.astype(a_param.dtype), a_param.device)
        b_param.data = backend.to_device(B.astype(b_param.dtype), b_param.device)
        module.scaling[adapter_name] = config.scaling_for(name)
    params = dict(model.named_parameters())
    for bias_name, value in plan["biases"]:
        p = params[bias_name]
        p.data = backend.to_device(value.astype(p.dtype), p.device)
    model.peft_config = {**getattr(model, "peft_config", {}), adapter_name: config}
    if getattr(model, "active_adapter", None) is None:
        set_adapter(model, adapter_name)
    else:
        _mark_trainable(model)
    if not is_trainable:
        for layer in lora_layers(model).values():
            if adapter_name in _adapter_names(layer):
                for p in _adapter_params(layer, adapter_name):
                    p.requires_grad = False
    return model


def _plan_load(model, tensors: dict, config: LoraConfig, adapter_name: str, directory) -> dict:
    """Check every key and shape against the model; return what to write, or raise."""
    where = directory / WEIGHTS_FILE
    modules = dict(model.named_modules())
    pairs: dict[str, dict] = {}
    biases, problems = [], []
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            problems.append(f"key {key!r} does not start with {PREFIX!r}")
            continue
        path = key[len(PREFIX):]
        for suffix, kind, part in ((".lora_A.weight", "linear", "A"), (".lora_B.weight", "linear", "B"),
                                   (".lora_embedding_A", "embedding", "A"),
                                   (".lora_embedding_B", "embedding", "B")):
            if path.endswith(suffix):
                pairs.setdefault(path[: -len(suffix)], {"kind": kind})[part] = value
                break
        else:
            if path.endswith(".bias"):
                biases.append((path, value))
            else:
                problems.append(f"key {key!r} is neither a LoRA A/B nor a bias")
    layers = []
    wrapped = [n for n, m in modules.items() if isinstance(m, (LoRALinear, LoRAEmbedding))]
    for name, entry in sorted(pairs.items()):
        module = modules.get(name)
        owner = next((w for w in wrapped if name.startswith(w + ".")), None)
        if owner is not None:       # e.g. "...q_proj.base_layer": LoRA never nests inside LoRA
            problems.append(f"{name}: it is part of the LoRA layer {owner}; the key should name "
                            f"{owner} itself")
            continue
        base = module.base_layer if isinstance(module, LORA_LAYERS) else module
        expected_type = nn.Linear if entry["kind"] == "linear" else nn.Embedding
        if not isinstance(base, expected_type):
            found = "no such module" if module is None else type(module).__name__
            problems.append(f"{name}: the model has {found}, but the file holds a LoRA for a "
                            f"{expected_type.__name__} there")
            continue
        if "A" not in entry or "B" not in entry:
            problems.append(f"{name}: the file has lora_{'B' if 'A' not in entry else 'A'} but not "
                            f"lora_{'A' if 'A' not in entry else 'B'}")
            continue
        A, B = entry["A"], entry["B"]
        r = config.rank_for(name)
        if entry["kind"] == "linear":
            out_f, in_f = base.weight.shape
            want_a, want_b = (r, in_f), (out_f, r)
        else:
            num, dim = base.weight.shape
            want_a, want_b = (r, num), (dim, r)
        if A.shape != want_a or B.shape != want_b:
            problems.append(f"{name}: A {A.shape} and B {B.shape} in the file, the model needs "
                            f"A {want_a} and B {want_b} (r={r})")
            continue
        if isinstance(module, LORA_LAYERS) and adapter_name in _adapter_names(module):
            have = _adapter_params(module, adapter_name)[0].shape
            if have != A.shape:
                problems.append(f"{name}: the model's existing adapter {adapter_name!r} has A "
                                f"{have}, the file's A is {A.shape}")
                continue
        if isinstance(module, LORA_LAYERS) and module.merged_adapters:
            problems.append(f"{name}: an adapter is merged there; unmerge(model) first")
        layers.append((name, entry["kind"], (A, B)))
    params = dict(model.named_parameters())
    bias_plan = []
    for path, value in biases:
        # a bias saved as "<layer>.bias" lives at "<layer>.base_layer.bias" once wrapped
        target = next((n for n in (path, path[:-5] + ".base_layer.bias") if n in params), None)
        if target is None:
            problems.append(f"bias {path!r}: the model has no such parameter")
        elif params[target].shape != value.shape:
            problems.append(f"bias {path!r}: file shape {value.shape}, model shape {params[target].shape}")
        else:
            bias_plan.append((target, value))
    if not layers and not problems:
        problems.append("the file holds no LoRA weights")
    if problems:
        raise ValueError(f"load_adapter from {where}: the adapter does not fit this model, nothing "
                         "was changed:\n  - " + "\n  - ".join(problems))
    return {"layers": layers, "biases": bias_plan}


# --------------------------------------------------------------------------
# Export for Hugging Face GPT-2 (fused c_attn, Conv1D)
# --------------------------------------------------------------------------
_HF_RENAMES = {"attn.o_proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


def _to_hf_gpt2(model, adapter_name: str, config: LoraConfig):
    """Tensors and config for GPT2LMHeadModel: q/k/v LoRAs fused into c_attn, each
    layer's scaling folded into B so that every exported LoRA has scaling 1."""
    if config.bias != "none":
        raise ValueError("save_adapter(layout='hf-gpt2') supports bias='none' only")
    tensors, ranks = {}, {}
    fused: dict[str, dict] = {}
    for name, layer in lora_layers(model).items():
        if isinstance(layer, LoRALinear):
            if adapter_name not in layer.lora_A:
                continue
            A = layer.lora_A[adapter_name].weight.numpy()
            B = layer.scaling[adapter_name] * layer.lora_B[adapter_name].weight.numpy()
            parent, _, leaf = name.rpartition(".")
            if leaf in ("q_proj", "k_proj", "v_proj"):
                fused.setdefault(parent, {})[leaf] = (A, B)
                continue
            renamed = next((name[: -len(k)] + v for k, v in _HF_RENAMES.items()
                            if name.endswith("." + k)), name)     # wte, wpe, lm_head keep their names
            tensors[f"{PREFIX}{renamed}.lora_A.weight"] = A
            tensors[f"{PREFIX}{renamed}.lora_B.weight"] = B
            ranks[renamed] = A.shape[0]
        elif adapter_name in layer.lora_embedding_A:
            tensors[f"{PREFIX}{name}.lora_embedding_A"] = layer.lora_embedding_A[adapter_name].numpy()
            tensors[f"{PREFIX}{name}.lora_embedding_B"] = (
                layer.scaling[adapter_name] * layer.lora_embedding_B[adapter_name].numpy())
            ranks[name] = layer.lora_embedding_A[adapter_name].shape[0]
    for parent, parts in fused.items():
        C = next(iter(parts.values()))[0].shape[1]
        order = [p for p in ("q_proj", "k_proj", "v_proj") if p in parts]
        A = np.concatenate([parts[p][0] for p in order], axis=0)            # (r_q + r_v, C)
        B = np.zeros((3 * C, A.shape[0]), dtype=A.dtype)                     # (3C, r_q + r_v)
        col = 0
        for p in order:
            Bp = parts[p][1]
            row = ("q_proj", "k_proj", "v_proj").index(p) * C               # q rows, k rows, v rows
            B[row:row + C, col:col + Bp.shape[1]] = Bp
            col += Bp.shape[1]
        key = f"{parent}.c_attn"
        tensors[f"{PREFIX}{key}.lora_A.weight"] = A
        tensors[f"{PREFIX}{key}.lora_B.weight"] = B
        ranks[key] = A.shape[0]
    if not tensors:
        raise ValueError(f"save_adapter: adapter {adapter_name!r} has no LoRA layers to export")
    r = max(ranks.values())
    # Scaling is already inside B, so make PEFT's scaling exactly 1 for every layer: alpha = r.
    cfg = _peft_config_dict(
        config, r=r, lora_alpha=r, use_rslora=False, fan_in_fan_out=True, lora_dropout=0.0,
        target_modules=sorted(ranks),          # full names: "c_proj" alone would also match mlp.c_proj
        rank_pattern={k: v for k, v in ranks.items() if v != r},
        alpha_pattern={k: v for k, v in ranks.items() if v != r},
        init_lora_weights=True)
    return tensors, cfg


def adapter_size_bytes(directory) -> int:
    """Bytes on disk of an adapter directory (both files)."""
    directory = Path(directory)
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
