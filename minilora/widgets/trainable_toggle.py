"""A checkbox per kind of weight: choose what trains, and see what training it costs, measured.

    trainable_toggle()        # the shipped tiny GPT with a LoRA (r = 4) on q and v

Each checkbox sets `requires_grad` on every parameter of one kind (token
embedding, attention's q/k/v/o, the MLP, LayerNorms, LoRA's A and B). After
each change the widget *runs* one training step on a real batch and reports
what it measured: the gradients that were stored, AdamW's state, and the
backward work (`count_backward_work`). Nothing is computed from a formula,
so what you read is what training costs.
"""
from __future__ import annotations

try:
    import ipywidgets as widgets
except ImportError as exc:  # pragma: no cover - exercised only without the extras
    raise ImportError("minilora.widgets needs ipywidgets: pip install 'minilora[notebooks]'") from exc

__all__ = ["trainable_toggle", "TrainableToggle", "weight_kind"]

# Kinds of weight, in the order the checkboxes show them.
KINDS = ["embeddings", "q_proj", "k_proj", "v_proj", "o_proj", "mlp", "layernorm", "lora A, B"]


def weight_kind(name: str) -> str:
    """The checkbox a parameter belongs to, from its dotted name."""
    if "lora_" in name:
        return "lora A, B"
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if f".{proj}." in name:
            return proj
    if ".mlp." in name:
        return "mlp"
    if ".ln_" in name:
        return "layernorm"
    if ".wte." in name or ".wpe." in name:
        return "embeddings"
    raise ValueError(f"weight_kind: no kind for parameter {name!r}")


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


class TrainableToggle(widgets.VBox):
    """Checkboxes per weight kind; the text shows one measured training step's costs.

    Attributes for code and tests: `model`, `boxes` ({kind: Checkbox}), `text`
    (HTML), `measured` (dict of the latest numbers).
    """

    def __init__(self, model=None, seed: int = 0):
        from minilora.checks.frozen import lora_model

        self.model = model if model is not None else lora_model()
        self.seed = seed
        self.kinds = [k for k in KINDS if any(weight_kind(n) == k for n, _ in self.model.named_parameters())]
        start = {k: any(p.requires_grad for n, p in self.model.named_parameters() if weight_kind(n) == k)
                 for k in self.kinds}
        self.boxes = {k: widgets.Checkbox(value=start[k], description=k, indent=False,
                                          layout=widgets.Layout(width="120px")) for k in self.kinds}
        self.full = widgets.Button(description="full fine-tuning")
        self.lora = widgets.Button(description="LoRA only")
        self.text = widgets.HTML()
        self.measured: dict = {}
        super().__init__([widgets.HBox(list(self.boxes.values())), widgets.HBox([self.full, self.lora]),
                          self.text])
        self.add_class("minilora-trainable-toggle")
        for box in self.boxes.values():
            box.observe(self._on_change, names="value")
        self.full.on_click(lambda _: self.select([k for k in self.kinds if k != "lora A, B"]))
        self.lora.on_click(lambda _: self.select(["lora A, B"]))
        self.redraw()

    def select(self, kinds) -> None:
        """Tick exactly `kinds` (one redraw at the end, not one per box)."""
        self._quiet = True
        try:
            for k, box in self.boxes.items():
                box.value = k in kinds
        finally:
            self._quiet = False
        self.redraw()

    def _on_change(self, change: dict) -> None:
        if not getattr(self, "_quiet", False):
            self.redraw()

    def redraw(self) -> None:
        from minilora.checks.frozen import one_backward
        from minilora.optim import AdamW
        from minilora.tensor import count_backward_work

        for name, p in self.model.named_parameters():
            p.requires_grad = self.boxes[weight_kind(name)].value
        params = list(self.model.parameters())
        trainable = [p for p in params if p.requires_grad]
        total = sum(p.size for p in params)
        weights = sum(int(p.data.nbytes) for p in params)
        if not trainable:
            self.measured = {"trainable": 0, "grad_bytes": 0, "adam_bytes": 0, "grads": 0}
            self.text.value = ("<div style='font-family: monospace'>nothing is trainable: no gradient, no "
                               "optimizer state, and nothing would learn. Tick a box.</div>")
            return
        with count_backward_work() as work:
            one_backward(self.model, seed=self.seed)
        grad_bytes = sum(int(p.grad.nbytes) for p in params if p.grad is not None)
        optimizer = AdamW(trainable, lr=1e-12, weight_decay=0.0)   # one step only to allocate its state
        optimizer.step()
        for p in params:
            p.grad = None
        n_train = sum(p.size for p in trainable)
        self.measured = {"trainable": int(n_train), "grad_bytes": grad_bytes,
                         "adam_bytes": optimizer.state_bytes(), "grads": int(work["grads"]),
                         "rules": int(work["rules"]), "weight_bytes": weights}
        m = self.measured
        extra = m["grad_bytes"] + m["adam_bytes"]
        self.text.value = (
            "<div style='font-family: monospace; line-height: 1.5'>"
            f"trainable parameters: {n_train:,} of {total:,} ({n_train / total:.2%})<br>"
            f"gradients stored: {_kib(m['grad_bytes'])} &nbsp; AdamW state: {_kib(m['adam_bytes'])}"
            f" &nbsp; (weights themselves: {_kib(weights)})<br>"
            f"training memory beyond the weights: {_kib(extra)} = {extra / weights:.0%} of the weights<br>"
            f"backward pass: {m['rules']} rules ran, {m['grads']} gradients computed</div>")


def trainable_toggle(model=None) -> TrainableToggle:
    """Checkboxes for what trains (default: the tiny GPT with LoRA r = 4 on q and v), with measured costs."""
    return TrainableToggle(model)
