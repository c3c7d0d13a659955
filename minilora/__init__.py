"""minilora: learn Low-Rank Adaptation by building it.

Read the package in the order of its data flow; each layer uses only the ones
before it:

    backend -> tensor -> functional -> nn -> optim -> model -> lora -> adapters

(tensor is tensor.py, the autograd core, then the op families beside it, in the
order its docstring gives: tensor_rules, _convert, _compare, _reductions,
_shape, _creation.)
"""
import numpy as np

from minilora import backend, functional, nn, optim, parallel
from minilora.backend import default_device, set_device, to_numpy
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
from minilora.tensor import (  # PyTorch's names for tensor ops and creation functions
    arange, cat, chunk, clamp, clip, cumsum, einsum, eye, full, full_like, gather, is_grad_enabled,
    logsumexp, maximum, minimum, ones, ones_like, prod, rand, rand_like, randn, randn_like, tril,
    triu, zeros, zeros_like,
)
from minilora.tensor import functions_from_methods as _functions_from_methods

# torch.sum(x, 0), torch.exp(x), ...: the methods also as functions, minilora.sum(x, 0)
for _name, _function in _functions_from_methods().items():
    globals().setdefault(_name, _function)
# dtype names as in torch (torch.float32 ...): minilora's dtypes are NumPy's
float16, float32, float64, int32, int64, bool = (np.float16, np.float32, np.float64, np.int32,
                                                 np.int64, np.bool_)

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
from minilora import lora_count  # count_lora_params: LoRA parameters from shapes alone

__version__ = "0.1.0"
