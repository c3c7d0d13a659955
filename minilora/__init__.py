"""minilora: learn Low-Rank Adaptation by building it.

Read the package in the order of its data flow; each layer uses only the ones
before it:

    backend -> tensor -> functional -> nn -> optim -> model -> lora -> adapters
"""
from minilora import backend, functional, nn, optim
from minilora.backend import get_array_module, set_device, to_numpy
from minilora.tensor import (
    Tensor,
    concatenate,
    count_backward_work,
    manual_seed,
    no_grad,
    split,
    stack,
    tensor,
    where,
)

from minilora.model import GPT, GPTConfig, load_gpt2, module_shapes
from minilora.lora import (
    LoraConfig,
    LoRAEmbedding,
    LoRALinear,
    apply_lora,
    delete_adapter,
    disable_adapters,
    merge,
    merge_and_unload,
    print_trainable_parameters,
    set_adapter,
    unmerge,
)
from minilora.adapters import load_adapter, save_adapter
from minilora.train import TrainConfig, load_checkpoint, save_checkpoint, train
from minilora import checks, data, linalg, pretrained

__version__ = "0.1.0"
