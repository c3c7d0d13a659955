"""Sliders that let you *see* low rank: thin views over `minilora.linalg`.

Each explorer is an ipywidgets container. Moving a slider calls a Python
callback that computes with `linalg`, draws a matplotlib `Figure` (the object
API, no pyplot state, so nothing leaks between widgets or into the notebook's
own plots), saves it as PNG bytes into an `ipywidgets.Image`, and writes the
numbers into an `HTML` widget. The callback runs synchronously, so a test can
write `w.slider.value = 5` and read `w.image.value` straight after, with no
browser and no kernel.

    svd_explorer()            # Grace Hopper's photo at rank r, the spectrum, the error
    svd_explorer(M)           # any matrix
    param_count_explorer()    # 2dr against d^2, and where real models sit

Needs the notebook extras: `pip install minilora[notebooks]`.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from minilora.linalg import default_rank_tol, factorization_storage, low_rank_approx, thin_svd

try:
    import ipywidgets as widgets
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised only without the extras
    raise ImportError("minilora.widgets needs ipywidgets and matplotlib: "
                      "pip install 'minilora[notebooks]'") from exc

__all__ = ["svd_explorer", "param_count_explorer", "load_sample_image",
           "SVDExplorer", "ParamCountExplorer", "figure_to_png"]

# Widths of real models, to place them on the 2dr-versus-d^2 picture.
MODEL_WIDTHS = {"GPT-2 small": 768, "GPT-3 175B": 12288}


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """Render a matplotlib Figure to PNG bytes (no pyplot, no display)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def load_sample_image(downsample: int = 2) -> np.ndarray:
    """Grace Hopper's portrait, which matplotlib ships, as a grayscale float64 matrix in [0, 1].

    The photo is 600 x 512 pixels; `downsample=2` keeps every second pixel
    (300 x 256), which still looks like her and makes each redraw quick.
    Grayscale uses the usual luminance weights 0.299 R + 0.587 G + 0.114 B.
    """
    from matplotlib import cbook
    from matplotlib.image import imread

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        rgb = np.asarray(imread(f, format="jpg"), dtype=np.float64)   # [600, 512, 3], 0..255
    gray = rgb[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255.0    # [600, 512], 0..1
    step = max(int(downsample), 1)
    return gray[::step, ::step]


def _html(lines: list[str]) -> str:
    return "<div style='font-family: monospace; line-height: 1.5'>" + "<br>".join(lines) + "</div>"


class SVDExplorer(widgets.VBox):
    """A rank slider over a matrix: rank-r reconstruction, spectrum with the cut, error, storage.

    Attributes for code and tests: `matrix`, `slider` (IntSlider over r),
    `image` (ipywidgets.Image, PNG), `text` (ipywidgets.HTML), `info` (the
    latest `linalg.LowRankError`).
    """

    def __init__(self, matrix: np.ndarray, title: str = "matrix", rank: int | None = None,
                 is_image: bool = False):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        if self.matrix.ndim != 2:
            raise ValueError(f"svd_explorer needs a 2-D matrix (grayscale image); got shape "
                             f"{self.matrix.shape}. For a colour image take one channel or a grayscale mix.")
        self.title = title
        self.is_image = is_image
        self._svd = thin_svd(self.matrix)               # once; each slider move is then a matmul
        s = self._svd[1]
        self.rank = int(np.count_nonzero(s > default_rank_tol(s, self.matrix.shape)))   # = numerical_rank(M)
        k = min(self.matrix.shape)
        start = min(k, 10) if rank is None else int(np.clip(rank, 0, k))
        self.slider = widgets.IntSlider(value=start, min=0, max=k, step=1, description="rank r",
                                        continuous_update=False,
                                        layout=widgets.Layout(width="60%"))
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.info = None
        super().__init__([self.slider, self.image, self.text])
        self.add_class("minilora-svd-explorer")
        self.slider.observe(self._on_change, names="value")
        self.redraw()

    def _on_change(self, change: dict) -> None:
        self.redraw()

    def redraw(self) -> None:
        r = int(self.slider.value)
        M_r, info = low_rank_approx(self.matrix, r, svd=self._svd)
        self.info = info
        m, n = self.matrix.shape
        storage = factorization_storage(m, n, info.rank)

        fig = Figure(figsize=(10, 3.3))
        ax_orig, ax_rank, ax_spec = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.2]})
        if self.is_image:
            style = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
            shown = np.clip(M_r, 0.0, 1.0)              # rank-r pixels can overshoot [0, 1] a little
        else:
            lim = float(np.max(np.abs(self.matrix))) or 1.0
            style = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
            shown = M_r
        ax_orig.imshow(self.matrix, **style)
        ax_orig.set_title(f"original {m}x{n}, rank {self.rank}", fontsize=9)
        ax_rank.imshow(shown, **style)
        ax_rank.set_title(f"best rank-{info.rank} approximation", fontsize=9)
        for ax in (ax_orig, ax_rank):
            ax.set_xticks([])
            ax.set_yticks([])

        s = info.singular_values
        idx = np.arange(1, s.size + 1)
        pos = s > 0
        ax_spec.semilogy(idx[pos], s[pos], ".-", color="0.55", markersize=3, linewidth=1)
        kept = idx[:info.rank]
        ax_spec.semilogy(kept[pos[:info.rank]], s[:info.rank][pos[:info.rank]], ".", color="C0", markersize=5,
                         label=f"kept: top {info.rank}")
        ax_spec.axvline(info.rank + 0.5, color="C3", linestyle="--", linewidth=1.2, label=f"cut at r = {info.rank}")
        ax_spec.set_xlabel("index i", fontsize=9)
        ax_spec.set_ylabel("singular value $\\sigma_i$", fontsize=9)
        ax_spec.set_title("spectrum", fontsize=9)
        ax_spec.legend(fontsize=8, loc="upper right")
        ax_spec.tick_params(labelsize=8)
        fig.suptitle(self.title, fontsize=10)
        fig.subplots_adjust(left=0.01, right=0.98, bottom=0.14, top=0.84, wspace=0.12)
        self.image.value = figure_to_png(fig)

        self.text.value = _html([
            f"rank r = {info.rank} of {min(m, n)}",
            f"relative error ||M - M_r||_F / ||M||_F = {info.relative_error:.4f}"
            f" &nbsp; (energy kept {100 * info.energy_kept:.2f}%)",
            f"spectral error ||M - M_r||_2 = sigma_(r+1) = {info.spectral_error:.4g}",
            f"storage r(m+n) = {storage.factored:,} numbers vs mn = {storage.dense:,}"
            f" &nbsp; ratio {storage.ratio:.3f}"
            + ("" if storage.saves else " &nbsp; (no saving: r is past mn/(m+n))"),
        ])


def svd_explorer(image_or_matrix: Any = None, title: str | None = None, rank: int | None = None) -> SVDExplorer:
    """A rank slider over an image or any matrix (default: Grace Hopper's photo, grayscale).

    Move the slider and watch three things together: the picture built from the
    top r singular triplets, the singular-value spectrum with the cut at r, and
    what you pay: the relative error and the storage r(m+n) against mn.
    """
    if image_or_matrix is None:
        return SVDExplorer(load_sample_image(), title=title or "Grace Hopper (grayscale), via SVD",
                           rank=rank, is_image=True)
    arr = np.asarray(image_or_matrix)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):          # colour image: to grayscale in [0, 1]
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if arr.max() > 1.0:
            arr = arr / 255.0
        return SVDExplorer(arr, title=title or "image (grayscale)", rank=rank, is_image=True)
    return SVDExplorer(arr, title=title or f"{arr.shape[0]}x{arr.shape[-1]} matrix", rank=rank)


class ParamCountExplorer(widgets.VBox):
    """Sliders for d and r: LoRA's 2dr trainable numbers against full fine-tuning's d^2.

    Attributes: `d_slider`, `r_slider` (also `slider`), `image`, `text`.
    """

    def __init__(self, d: int = 768, r: int = 8):
        self.d_slider = widgets.IntSlider(value=d, min=16, max=16384, step=16, description="width d",
                                          continuous_update=False, layout=widgets.Layout(width="60%"))
        self.r_slider = widgets.IntSlider(value=min(r, d), min=1, max=min(64, d), step=1, description="rank r",
                                          continuous_update=False, layout=widgets.Layout(width="60%"))
        self.slider = self.r_slider
        self.image = widgets.Image(format="png")
        self.text = widgets.HTML()
        super().__init__([self.d_slider, self.r_slider, self.image, self.text])
        self.add_class("minilora-param-explorer")
        self.d_slider.observe(self._on_change, names="value")
        self.r_slider.observe(self._on_change, names="value")
        self.redraw()

    def _on_change(self, change: dict) -> None:
        # A rank cannot exceed the matrix's size: keep r <= d (moving r's max clamps its value).
        self.r_slider.max = min(64, int(self.d_slider.value))
        self.redraw()

    def redraw(self) -> None:
        d, r = int(self.d_slider.value), int(self.r_slider.value)
        here = factorization_storage(d, d, r)                  # (2dr, d^2)

        ds = np.geomspace(16, 16384, 200)
        fig = Figure(figsize=(7.5, 3.6))
        ax = fig.subplots()
        ax.loglog(ds, ds ** 2, color="C3", label="full fine-tuning: $d^2$")
        ax.loglog(ds, 2 * ds * r, color="C0", label=f"LoRA: $2dr$, r = {r}")
        ax.fill_between(ds, 2 * ds * r, ds ** 2, where=ds ** 2 > 2 * ds * r, color="C0", alpha=0.08)
        ax.plot([d, d], [here.factored, here.dense], "k:", linewidth=1)
        ax.plot([d], [here.dense], "o", color="C3")
        ax.plot([d], [here.factored], "o", color="C0")
        for name, width in MODEL_WIDTHS.items():
            ax.axvline(width, color="0.6", linestyle="--", linewidth=0.8)
            ax.text(width * 1.06, 0.03, name, transform=ax.get_xaxis_transform(), fontsize=8, color="0.3",
                    rotation=90, va="bottom", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax.set_xlabel("width d of a d x d weight matrix")
        ax.set_ylabel("trainable numbers per matrix")
        ax.set_title(f"d = {d:,}, r = {r}: LoRA trains {here.ratio:.3%} of the matrix", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, which="major", alpha=0.3)
        fig.subplots_adjust(left=0.11, right=0.97, bottom=0.14, top=0.9)
        self.image.value = figure_to_png(fig)

        fewer = (f"{here.dense / here.factored:,.1f}x fewer" if here.saves
                 else f"{here.factored / here.dense:,.2f}x as many: no saving")
        rows = [f"d = {d:,}, r = {r}: 2dr = {here.factored:,} vs d^2 = {here.dense:,}"
                f" &nbsp; ratio 2r/d = {here.ratio:.4%} ({fewer})"]
        for name, width in MODEL_WIDTHS.items():
            s = factorization_storage(width, width, r)
            rows.append(f"{name} (d = {width:,}): {s.factored:,} vs {s.dense:,} &nbsp; ratio {s.ratio:.4%}")
        if not here.saves:
            rows.append("r is at or past d/2: the two factors are no cheaper than the matrix")
        self.text.value = _html(rows)


def param_count_explorer(d: int = 768, r: int = 8) -> ParamCountExplorer:
    """Sliders for the width d and the rank r: how 2dr compares with d^2, and where real models sit."""
    return ParamCountExplorer(d=d, r=r)
