"""Adapter files in PEFT's format: a directory with two small files.

    adapter_config.json          the LoraConfig, plus "peft_type": "LORA"
    adapter_model.safetensors    A and B of every adapted layer

Keys read `base_model.model.<module path>.lora_A.weight` (the adapter name is
left out of the file; you choose it when loading). An adapter is a few
kilobytes where the model is megabytes, which is why one base model can carry
many tasks.

Module paths name the layers of one particular base model, so an adapter file
is written for a base. `save_adapter` has two layouts:

  layout="minilora"  this model's own names (q_proj, v_proj, fc, ...). It loads
                     back with load_adapter, and into PEFT onto a PyTorch model
                     with the same layer names (benchmarks/torch_gpt.py's GPT).
                     adapter_config.json says base_model_name_or_path "minilora:GPT".
  layout="hf_gpt2"   Hugging Face's GPT2LMHeadModel, which fuses q, k, v into
                     one Conv1D `c_attn`: it loads into PEFT onto that model
                     (PeftModel.from_pretrained), and back into a minilora GPT.

load_adapter reads both, and adapters that PEFT saved for GPT2LMHeadModel: the
layout is recognised from the keys (c_attn, c_fc, c_proj are GPT-2's names).
Loading is all or nothing: the file, the config and every key, dtype, value
and shape are checked against the model first, and only then is it changed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from minilora import backend, hf_gpt2
from minilora.files import (json_bytes, read_json, read_safetensors,
                            safetensors_bytes, write_dir_atomically)
from minilora.lora import (LORA_LAYER_FOR, LORA_LAYERS, LoraConfig, LoraLayer, check_adapter_name,
                           check_rank_fits, lora_class_for, lora_layers, match_targets, set_adapter,
                           targeted_modules, trainable_biases, wrap_module)
from minilora.model import GPT

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
MINILORA_BASE = "minilora:"          # base_model_name_or_path of a layout="minilora" adapter
# A LoRA weight or bias beyond this is a broken file, not a trained adapter: two such
# numbers multiplied (B times A) stay below float32's largest value, 3.4e38.
MAX_ABS_WEIGHT = 1e15
MAX_DELTA = 1e30     # scaling * |B A| beyond this would overflow float32 on the way through a layer
_BASE_NAME = {cls: base.__name__ for base, cls in LORA_LAYER_FOR.items()}   # LoRALinear -> "Linear"


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------
def _config_dict(config: LoraConfig, **overrides) -> dict:
    """The adapter_config.json contents: PEFT's keys, so PEFT can read it too."""
    d = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
         **config.to_dict(), "use_dora": False, "fan_in_fan_out": False,
         "modules_to_save": None, "inference_mode": True}
    d.update(overrides)
    return d


def adapter_state_dict(model, adapter_name: str) -> dict[str, np.ndarray]:
    """{PEFT key: array} for one adapter (and its biases when its bias mode trains them)."""
    out = {}
    for name, layer in lora_layers(model).items():
        if adapter_name in layer.adapter_names():
            for key, param in layer.adapter_weights(adapter_name).items():
                out[f"{PREFIX}{name}.{key}"] = param.numpy()
    for name, bias in trainable_biases(model, adapter_name).items():
        out[PREFIX + name] = bias.numpy()          # "...q_proj.base_layer.bias", as PEFT writes it
    return out


def save_adapter(model, directory, adapter_name: str | None = None, layout: str = "minilora") -> Path:
    """Write one adapter as adapter_config.json + adapter_model.safetensors (atomically).

    layout="minilora": keys follow this model's module names (q_proj, v_proj, ...);
    for load_adapter, or PEFT on a PyTorch model with the same names.
    layout="hf_gpt2": keys and config for Hugging Face's GPT2LMHeadModel, loadable
    with peft.PeftModel.from_pretrained onto it (and by load_adapter).
    """
    configs = getattr(model, "peft_config", {})
    adapter_name = adapter_name or getattr(model, "active_adapter", None)
    if adapter_name not in configs:
        raise KeyError(f"save_adapter: no adapter named {adapter_name!r} (adapters: {list(configs)})")
    if layout not in ("minilora", "hf_gpt2", "hf-gpt2"):
        raise ValueError(f"save_adapter: layout={layout!r} must be 'minilora' (this model's layer "
                         "names) or 'hf_gpt2' (Hugging Face's GPT2LMHeadModel)")
    if any(layer.merged_adapters for layer in lora_layers(model).values()):
        raise RuntimeError("save_adapter: the adapter is merged into the base weights; "
                           "unmerge(model) first so A and B are saved on their own")
    config = configs[adapter_name]
    if layout == "minilora":
        tensors = adapter_state_dict(model, adapter_name)
        targets = config.target_modules
        if isinstance(targets, str) and targets.lower() == "all-linear":    # written resolved, as PEFT does
            targets = sorted(n for n, l in lora_layers(model).items() if adapter_name in l.adapter_names())
        # task_type null: PEFT's "CAUSAL_LM" wrapper needs transformers' generate hooks, which
        # a PyTorch model with minilora's names lacks; a plain PeftModel loads onto it.
        cfg = _config_dict(config, task_type=None,
                           target_modules=targets,
                           base_model_name_or_path=MINILORA_BASE + type(model).__name__)
    else:
        tensors, cfg = _to_hf_gpt2(model, adapter_name, config)
    files = {WEIGHTS_FILE: safetensors_bytes(tensors, {"format": "pt"}), CONFIG_FILE: json_bytes(cfg)}
    return write_dir_atomically(directory, files)


def _to_hf_gpt2(model, adapter_name: str, config: LoraConfig):
    """Tensors and config for GPT2LMHeadModel: q/k/v LoRAs fused into c_attn, each
    layer's scaling folded into B so that every exported LoRA has scaling 1."""
    if not isinstance(model, GPT):
        raise ValueError(f"save_adapter(layout='hf_gpt2') needs a minilora GPT, not a "
                         f"{type(model).__name__}; use layout='minilora'")
    if config.bias != "none":
        raise ValueError(f"save_adapter(layout='hf_gpt2'): bias={config.bias!r} is not supported "
                         "there; save with layout='minilora', or train with bias='none'")
    if config.init_lora_weights == "pissa":
        raise ValueError("save_adapter(layout='hf_gpt2'): a PiSSA adapter belongs to the base PiSSA "
                         "changed, and PEFT would redo PiSSA on the fused c_attn, a different base. "
                         "merge_and_unload(model) and save the whole model instead")
    ours, kinds = {}, {}
    for name, layer in lora_layers(model).items():
        if adapter_name in layer.adapter_names():
            A, B = (p.numpy() for p in layer.adapter_weights(adapter_name).values())
            ours[name] = (A, layer.scaling[adapter_name] * B)
            kinds[hf_gpt2.to_hf(name)[0]] = type(layer)
    tensors, ranks = {}, {}
    for hf_name, (A, B) in hf_gpt2.adapter_to_hf(ours).items():
        key_a, key_b = kinds[hf_name].file_keys
        tensors[f"{PREFIX}{hf_name}.{key_a}"] = A
        tensors[f"{PREFIX}{hf_name}.{key_b}"] = B.astype(A.dtype)
        ranks[hf_name] = A.shape[0]
    r = max(ranks.values())
    # Scaling is already inside B, so make PEFT's scaling exactly 1 for every layer: alpha = r.
    odd = {re.escape(k): v for k, v in ranks.items() if v != r}
    cfg = _config_dict(config, r=r, lora_alpha=r, use_rslora=False, fan_in_fan_out=True,
                       target_modules=sorted(ranks),   # full names: "c_proj" would match mlp.c_proj too
                       rank_pattern=odd, alpha_pattern=dict(odd), init_lora_weights=True,
                       base_model_name_or_path=getattr(model, "name_or_path", None))
    return tensors, cfg


# --------------------------------------------------------------------------
# Loading: read, check everything, then change the model
# --------------------------------------------------------------------------
def load_adapter(model, directory, adapter_name: str = "default", is_trainable: bool = False):
    """Read an adapter saved by save_adapter (or by PEFT) into the model, all or nothing.

    Every file, setting, key, dtype, value and shape is checked before the
    model is touched: a missing, truncated or corrupt file, an option minilora
    does not implement, a key naming a module the model lacks or the config
    does not target, an A without its B, a NaN, or a shape that differs from
    what is expected raises and leaves the model exactly as it was.
    The first adapter of a model becomes active; later ones wait for set_adapter.
    Loaded adapters are frozen unless is_trainable=True.
    """
    check_adapter_name(adapter_name, "load_adapter")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"load_adapter: {directory} is not a directory; expected one holding "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE} (written by save_adapter)")
    raw = read_json(directory / CONFIG_FILE)
    config = read_adapter_config(raw, directory / CONFIG_FILE)
    tensors = read_safetensors(directory / WEIGHTS_FILE)
    where = directory / WEIGHTS_FILE
    pairs, biases, base_weights, problems = _parse_keys(tensors)
    _refuse(where, problems)
    layout = _detect_layout(model, raw, pairs, {**biases, **base_weights}, where)
    _refuse(directory / CONFIG_FILE, _unsupported_options(raw, layout))
    owners = set(pairs)               # the layers whose biases bias="lora_only" saves
    if layout == "hf_gpt2":
        pairs, biases, config, owners = _from_hf_gpt2(model, pairs, biases, config, where)
    _refuse(where, _check_base_weights(model, base_weights, layout))
    plan = _plan_load(model, pairs, biases, config, adapter_name, where, owners)
    _apply(model, plan, config, adapter_name, is_trainable)
    return model


def read_adapter_config(raw, where) -> LoraConfig:
    """The LoraConfig of an adapter_config.json, every field's type and value checked."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object of LoRA settings, found a {type(raw).__name__}")
    if raw.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type={raw.get('peft_type')!r}; only LoRA adapters "
                         "(\"peft_type\": \"LORA\") load")
    if "target_modules" not in raw:
        raise ValueError(f"{where}: no target_modules; an adapter must say which layers it adapts")
    fields = {k: raw[k] for k in LoraConfig.__dataclass_fields__ if k in raw}
    for table in ("rank_pattern", "alpha_pattern"):     # PEFT writes {} but older files null
        if fields.get(table, {}) is None:
            fields[table] = {}
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: invalid LoRA settings: {err}") from None


# PEFT's keys that describe the file or the run, not the arithmetic of the adapter.
_BOOKKEEPING = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
                "auto_mapping", "peft_version", "megatron_core", "qalora_group_size",
                "runtime_config"}


def _unsupported_options(raw: dict, layout: str) -> list[str]:
    """Options that change what the adapter computes and that minilora does not implement.
    Loading without them would give a different model, so each one switched on is refused."""
    problems = []
    for key in ("inference_mode", "use_dora", "fan_in_fan_out"):
        if key in raw and not isinstance(raw[key], bool):
            problems.append(f"{key}={raw[key]!r} must be true or false (a "
                            f"{type(raw[key]).__name__} is not a bool)")
    for key in ("task_type", "base_model_name_or_path"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            problems.append(f"{key}={raw[key]!r} must be a string or null")
    if raw.get("use_dora") is True:
        problems.append("use_dora=true: DoRA (a LoRA with a learned magnitude per column) is not "
                        "implemented in minilora")
    if raw.get("fan_in_fan_out") is True and layout == "minilora":
        problems.append("fan_in_fan_out=true: it says the layers store their weight (in, out), like "
                        "GPT-2's Conv1D, but this adapter names minilora's Linear layers, which store "
                        "(out, in); an adapter for Hugging Face's GPT-2 names c_attn, c_fc, c_proj")
    for key, value in raw.items():
        if key in LoraConfig.__dataclass_fields__ or key in _BOOKKEEPING or \
                key in ("use_dora", "fan_in_fan_out"):
            continue
        if _switched_off(value):
            continue
        problems.append(f"{key}={value!r}: a PEFT option minilora does not implement")
    return problems


def _switched_off(value) -> bool:
    """null, false or an empty list/table/string: PEFT's ways of saying an option is unused.
    (0 is not among them: layers_to_transform=0 means "only layer 0".)"""
    return value is None or value is False or (isinstance(value, (dict, list, str)) and not value)


def _parse_keys(tensors: dict):
    """Sort the file's arrays into LoRA pairs and biases, checking each array.

    Returns ({module: {"cls": LoRA class, "A": array, "B": array}}, {module: bias},
    {module: base weight}, problems).
    """
    pairs, biases, base_weights, problems = {}, {}, {}, []
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            problems.append(f"key {key!r} does not start with {PREFIX!r}")
            continue
        if value.dtype.kind != "f":
            problems.append(f"{key}: dtype {value.dtype}; LoRA weights and biases must be floating point")
            continue
        if not np.isfinite(value).all():
            problems.append(f"{key}: holds NaN or inf")
            continue
        if value.size and np.abs(value).max() > MAX_ABS_WEIGHT:
            problems.append(f"{key}: holds {np.abs(value).max():.3g}, beyond any trained weight "
                            f"(limit {MAX_ABS_WEIGHT:.0e}); the file is broken")
            continue
        path = key[len(PREFIX):]
        for cls in LORA_LAYERS:
            part = next((p for p, k in zip("AB", cls.file_keys) if path.endswith("." + k)), None)
            if part is not None:
                module = path[: -len(cls.file_keys["AB".index(part)]) - 1]
                entry = pairs.setdefault(module, {"cls": cls})
                if entry["cls"] is not cls:
                    problems.append(f"{module}: the file holds both Linear and Embedding LoRA keys")
                entry[part] = value
                break
        else:
            if path.endswith(".bias"):
                biases[path[: -len(".bias")].removesuffix(".base_layer")] = value
            elif path.endswith(".base_layer.weight"):     # PEFT saves these with embedding LoRAs
                base_weights[path[: -len(".base_layer.weight")]] = value
            else:
                problems.append(f"key {key!r} is neither a LoRA A/B nor a bias")
    return pairs, biases, base_weights, problems


def _check_base_weights(model, base_weights: dict, layout: str) -> list[str]:
    """PEFT saves the base weights of adapted embedding layers (wte, lm_head) beside the
    LoRA, for a vocabulary it may have resized. minilora loads LoRA weights only, so each
    must equal the model's own weight exactly: otherwise the adapter is for another base."""
    modules, problems = dict(model.named_modules()), []
    for name, value in sorted(base_weights.items()):
        if layout == "hf_gpt2" and hf_gpt2.from_hf(name) != [name]:
            problems.append(f"{name}.base_layer.weight: a base weight of GPT-2's fused layers; "
                            "minilora loads LoRA weights only")
            continue
        module = modules.get(name)
        weight = getattr(getattr(module, "base_layer", module), "weight", None)
        if weight is None or tuple(weight.shape) != value.shape or \
                not np.array_equal(weight.numpy(), value.astype(weight.dtype)):
            problems.append(f"{name}.base_layer.weight: the file carries a base weight that differs "
                            "from this model's (another base, or a resized vocabulary); minilora "
                            "loads LoRA weights only")
    return problems


def _detect_layout(model, raw: dict, pairs: dict, biases: dict, where) -> str:
    """"hf_gpt2" when the keys use Hugging Face GPT-2's names (c_attn, c_fc, c_proj), else
    "minilora"; refuses a file that mixes the two or that is for another base."""
    modules = set(pairs) | set(biases)
    theirs = sorted(m for m in modules if hf_gpt2.is_conv1d(m))
    ours = sorted(m for m in modules if not hf_gpt2.from_hf(m))
    if theirs and ours:
        _refuse(where, [f"the keys mix Hugging Face GPT-2's layer names ({theirs[0]}) with "
                        f"minilora's ({ours[0]}); an adapter is written for one base"])
    base = raw.get("base_model_name_or_path")
    if theirs and isinstance(base, str) and base.startswith(MINILORA_BASE):
        _refuse(where, [f"base_model_name_or_path={base!r} says this adapter uses minilora's "
                        f"layer names, but its keys name Hugging Face GPT-2's ({theirs[0]})"])
    if theirs and not isinstance(model, GPT):
        _refuse(where, [f"this adapter is for Hugging Face's GPT2LMHeadModel (its keys name "
                        f"{theirs[0]}); it loads onto a minilora GPT (from load_gpt2), not a "
                        f"{type(model).__name__}"])
    return "hf_gpt2" if theirs else "minilora"


def _from_hf_gpt2(model, pairs: dict, biases: dict, config: LoraConfig, where):
    """An adapter for Hugging Face's GPT-2 in minilora's names, exactly.

    The config's targets, rank_pattern and alpha_pattern speak of GPT-2's names, so
    each layer's r and alpha are found there first; the returned config names every
    minilora layer in full, with that layer's r and alpha.
    """
    if config.init_lora_weights == "pissa":
        _refuse(where, ["init_lora_weights='pissa' on GPT-2: PEFT redoes PiSSA on the fused c_attn "
                        "when it loads this adapter, which minilora's separate q, k, v cannot repeat"])
    # GPT-2's modules, seen through minilora's: {Hugging Face name: LoRA class}
    hf_modules = {hf_gpt2.to_hf(n)[0]: lora_class_for(m) for n, m in targeted_modules(model, ".*")[0].items()}
    targeted = set(match_targets(hf_modules, config.target_modules, head="lm_head")[0])
    ours, ranks, alphas, owners, problems = {}, {}, {}, set(), []
    for hf_name, entry in sorted(pairs.items()):
        if hf_name not in hf_modules:
            problems.append(f"{hf_name}: GPT-2 has no such module")
            continue
        if hf_name not in targeted:
            problems.append(f"{hf_name}: not among the config's target_modules={config.target_modules!r}")
            continue
        if "A" not in entry or "B" not in entry:
            problems.append(f"{hf_name}: the file has lora_{'B' if 'A' not in entry else 'A'} but not "
                            f"lora_{'A' if 'A' not in entry else 'B'}")
            continue
        r = config.rank_for(hf_name)
        if entry["A"].ndim != 2 or entry["A"].shape[0] != r:
            problems.append(f"{hf_name}: A {entry['A'].shape} in the file, but the config gives r={r}")
            continue
        try:
            pieces = hf_gpt2.adapter_from_hf(hf_name, entry["A"], entry["B"])
        except ValueError as err:
            problems.append(str(err))
            continue
        owners.update(hf_gpt2.from_hf(hf_name))     # c_attn's bias covers q, k and v
        for name, (A, B) in pieces.items():
            ours[name] = {"cls": entry["cls"], "A": A, "B": B}
            ranks[name], alphas[name] = r, config.alpha_for(hf_name)
    for hf_name in sorted(targeted - set(pairs)):
        problems.append(f"{hf_name}: the config targets it, but the file has no LoRA weights for it")
    our_biases = {}
    for hf_name, value in biases.items():
        try:
            our_biases.update(hf_gpt2.bias_from_hf(hf_name, value))
        except ValueError as err:
            problems.append(str(err))
    if not ours and not problems:
        problems.append("the file holds no LoRA weights")
    _refuse(where, problems)
    our_config = LoraConfig(
        r=config.r, lora_alpha=config.lora_alpha, target_modules=sorted(ours),
        lora_dropout=config.lora_dropout, bias=config.bias, use_rslora=config.use_rslora,
        init_lora_weights=config.init_lora_weights,
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != config.r},
        alpha_pattern={re.escape(n): a for n, a in alphas.items() if a != config.lora_alpha})
    return ours, our_biases, our_config, owners


def _plan_load(model, pairs: dict, biases: dict, config: LoraConfig, adapter_name: str, where,
               owners: set) -> dict:
    """Check every LoRA pair and bias against the model; return what to write, or raise."""
    modules = dict(model.named_modules())
    targeted = targeted_modules(model, config.target_modules)[0]
    problems, layers = [], []
    for name, entry in sorted(pairs.items()):
        problem = _check_pair(model, modules, targeted, name, entry, config, adapter_name)
        if problem:
            problems.append(f"{name}: {problem}")
        else:
            layers.append((name, entry["A"], entry["B"], config.scaling_for(name)))
    for name in sorted(set(targeted) - set(pairs)):
        problems.append(f"{name}: the config's target_modules={config.target_modules!r} name it, "
                        "but the file has no LoRA weights for it")
    bias_plan, bias_problems = _plan_biases(modules, biases, config, owners)
    problems += bias_problems
    problems += _check_replaced_adapter(model, adapter_name, [name for name, *_ in layers])
    if not layers and not problems:
        problems.append("the file holds no LoRA weights")
    _refuse(where, problems)
    return {"layers": layers, "biases": bias_plan}


def _check_replaced_adapter(model, adapter_name: str, loaded: list[str]) -> list[str]:
    """Loading under an existing adapter's name replaces it, but only whole: if the old one
    adapted layers the file does not, those would keep the old A and B beside the new ones."""
    if adapter_name not in getattr(model, "peft_config", {}):
        return []
    stale = sorted(n for n, layer in lora_layers(model).items()
                   if adapter_name in layer.adapter_names() and n not in loaded)
    if not stale:
        return []
    return [f"the model already has an adapter {adapter_name!r} on layers the file does not adapt "
            f"({stale[0]}, ...); load under another name, or delete_adapter(model, {adapter_name!r}) first"]


def _check_pair(model, modules, targeted, name, entry, config, adapter_name) -> str | None:
    """What is wrong with loading this LoRA pair at `name`, or None."""
    module = modules.get(name)
    owner = next((w for w, m in modules.items() if isinstance(m, LoraLayer) and name.startswith(w + ".")), None)
    if owner is not None:       # e.g. "...q_proj.base_layer": LoRA never nests inside LoRA
        return f"it is part of the LoRA layer {owner}; the key should name {owner} itself"
    cls = entry["cls"]
    if lora_class_for(module) is not cls:
        found = "no such module" if module is None else type(module).__name__
        return f"the model has {found}, but the file holds a LoRA for a {_BASE_NAME[cls]} there"
    if name not in targeted:
        return f"not among the config's target_modules={config.target_modules!r}"
    if "A" not in entry or "B" not in entry:
        have, lack = ("B", "A") if "A" not in entry else ("A", "B")
        return f"the file has lora_{have} but not lora_{lack}"
    A, B, r = entry["A"], entry["B"], config.rank_for(name)
    base = getattr(module, "base_layer", module)
    want_a, want_b = cls.adapter_shapes(base, r)
    if A.shape != want_a or B.shape != want_b:
        return f"A {A.shape} and B {B.shape} in the file, the model needs A {want_a} and B {want_b} (r={r})"
    try:
        check_rank_fits(name, base, r)
    except ValueError as err:
        return str(err).removeprefix(f"{name}: ")
    scaling = config.scaling_for(name)
    largest_delta = scaling * r * float(np.abs(B).max(initial=0)) * float(np.abs(A).max(initial=0))
    if max(scaling, largest_delta) > MAX_DELTA:     # largest_delta bounds every entry of scaling * B A
        return (f"scaling {scaling:.3g} (lora_alpha {config.alpha_for(name):.3g}, r={r}) times B A "
                f"overflows what the layer's float32 weights can hold (limit {MAX_DELTA:.0e}); "
                "the config's lora_alpha is broken")
    if isinstance(module, LoraLayer):
        if adapter_name in module.adapter_names():
            have = next(iter(module.adapter_weights(adapter_name).values())).shape
            if have != A.shape:
                return f"the model's existing adapter {adapter_name!r} has A {have}, the file's A is {A.shape}"
        if module.merged_adapters:
            return "an adapter is merged there; unmerge(model) first"
    return None


def _plan_biases(modules, biases: dict, config: LoraConfig, adapted: set):
    """[(bias Parameter, value)] to write, found by module (so wrapping does not rename
    them away), and the problems."""
    plan, problems = [], []
    if biases and config.bias == "none":
        problems.append(f"the file holds biases ({sorted(biases)[0]}, ...) but its config says "
                        "bias='none'")
        return plan, problems
    for name, value in sorted(biases.items()):
        module = modules.get(name)
        param = getattr(getattr(module, "base_layer", module), "bias", None)
        if param is None:
            problems.append(f"bias {name}.bias: the model has no such parameter")
        elif tuple(param.shape) != value.shape:
            problems.append(f"bias {name}.bias: file shape {value.shape}, model shape {tuple(param.shape)}")
        elif config.bias == "lora_only" and name not in adapted:
            problems.append(f"bias {name}.bias: bias='lora_only' saves only the biases of adapted layers")
        else:
            plan.append((param, value))
    return plan, problems


def _refuse(where, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"load_adapter from {where}: the adapter does not fit this model, nothing "
                         "was changed:\n  - " + "\n  - ".join(problems))


def _apply(model, plan: dict, config: LoraConfig, adapter_name: str, is_trainable: bool) -> None:
    """Write a checked plan into the model. Every step here is known to fit."""
    for name, A, B, scaling in plan["layers"]:
        layer = wrap_module(model, name)
        if adapter_name not in layer.adapter_names():
            # PiSSA here redoes what PEFT redoes on loading: it moves W0's top singular
            # directions out of W0, the base this adapter was trained on.
            layer.update_layer(adapter_name, A.shape[0], scaling, config.lora_dropout,
                               config.init_lora_weights)
        layer.set_adapter_weights(adapter_name, (A, B))
        layer.scaling[adapter_name] = scaling
    for param, value in plan["biases"]:
        param.data = backend.to_device(value.astype(param.dtype), param.device)
    model.peft_config = {**getattr(model, "peft_config", {}), adapter_name: config}
    if getattr(model, "active_adapter", None) is None:
        set_adapter(model, adapter_name)
    # Only the new adapter's flags change: it trains if asked to and active (a waiting
    # adapter trains once set_adapter picks it); the adapters already there keep theirs.
    active = model.active_adapter == adapter_name
    params = [p for layer in lora_layers(model).values() if adapter_name in layer.adapter_names()
              for p in layer.adapter_weights(adapter_name).values()]
    params += list(trainable_biases(model, adapter_name).values()) if active else []
    for p in params:
        p.requires_grad = is_trainable and active


def adapter_size_bytes(directory) -> int:
    """Bytes on disk of an adapter directory (both files)."""
    directory = Path(directory)
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
