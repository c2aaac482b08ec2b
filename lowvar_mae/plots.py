"""Figures for the notebooks. Each function draws one figure and returns it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def glue(name: str, value, display: bool = False):
    """Hand a value to the book (myst-nb ``glue``) so prose can quote what the run computed.

    Outside a book build without myst-nb installed, the value is just returned.
    """
    try:
        from myst_nb import glue as nb_glue
    except ImportError:
        return value
    nb_glue(name, value, display=display)
    return value


def to_display(images: Tensor, stretch: bool = False, low: float = 1.0, high: float = 99.0,
               like: Tensor | None = None) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] -> (N, H, W, C) numpy in [0, 1] for imshow.

    stretch: map each image's ``low``..``high`` percentiles to 0..1 (per image, all
    channels together), so faint low-variance detail becomes visible. like: take the
    percentiles from these images instead (a prediction shown on its target's scale).
    """
    x = images.detach().float().cpu()
    if stretch:
        flat = (x if like is None else like.detach().float().cpu()).flatten(1)
        lo = torch.quantile(flat, low / 100, dim=1).view(-1, 1, 1, 1)
        hi = torch.quantile(flat, high / 100, dim=1).view(-1, 1, 1, 1)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid(rows: Mapping[str, Tensor], stretch: Sequence[str] = (), scale: float = 1.2, titles=None,
               stretch_like: Mapping[str, str] | None = None):
    """A grid with one row per entry of ``rows`` (name -> (N, C, H, W) in [0, 1]).

    stretch: rows shown contrast-stretched; stretch_like: {row: other row} stretches a row
    with the other row's per-image range (so the two compare pixel for pixel)."""
    import matplotlib.pyplot as plt

    stretch_like = dict(stretch_like or {})
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(scale * n, scale * len(rows) + 0.3), squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        ref = rows[stretch_like[name]] if name in stretch_like else None
        shown = to_display(imgs, stretch=name in stretch or ref is not None, like=ref)
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(shown):
                ax.imshow(shown[c], interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
            if titles is not None and r == 0 and c < len(titles):
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout()
    return fig


def plot_spectrum(basis, marks: Sequence[float] = (0.75, 0.9)):
    """Eigenvalue spectrum (log scale) and cumulative share of variance with marked shares."""
    import matplotlib.pyplot as plt

    ev = basis.eigenvalues.cpu().numpy()
    ratio = ev / ev.sum()
    cum = basis.cumulative_share("top").cpu().numpy()
    k = np.arange(1, len(ev) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    pos = ratio > 0
    a.loglog(k[pos], ratio[pos], lw=1.5)
    a.set_xlabel("component (by decreasing variance)")
    a.set_ylabel("share of variance")
    a.set_title("Explained-variance spectrum")
    b.semilogx(k, cum, lw=1.5, color="C1")
    for p in marks:
        n = basis.n_components(p, "top")
        b.axhline(p, color="grey", lw=0.8, ls="--")
        b.axvline(n, color="grey", lw=0.8, ls=":")
        b.annotate(f"{p:.0%}: {n} comp.", (n, p), textcoords="offset points", xytext=(6, -12), fontsize=9)
    b.set_xlabel("number of top components")
    b.set_ylabel("cumulative share")
    b.set_ylim(0, 1.02)
    b.set_title("Cumulative share of variance")
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def show_eigenimages(basis, k: int = 16, per_row: int = 8):
    """The first ``k`` components as images: 0.5 + 0.5 v / max|v|, so mid-grey is zero."""
    import matplotlib.pyplot as plt

    imgs = basis.eigenimages(k)
    peak = imgs.flatten(1).abs().max(1).values.view(-1, 1, 1, 1)
    shown = to_display(0.5 + 0.5 * imgs / peak.clamp_min(1e-12))
    share = basis.explained_variance_ratio()[:k].cpu().numpy()
    rows = -(-k // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(1.05 * per_row, 1.3 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(shown[i], interpolation="nearest")
            ax.set_title(f"#{i + 1}: {share[i]:.1%}", fontsize=11)
    fig.tight_layout()
    return fig


def takeaway(points):
    """The end-of-chapter box: what a reader should take from the chapter, one point a line."""
    from IPython.display import Markdown

    body = "\n".join(f"* {p}" for p in points)
    return Markdown(f"```{{admonition}} What to take from this chapter\n:class: takeaway\n{body}\n```")


def data_label(name: str) -> str:
    """What a figure's data is, for its title: the embedded set is named as synthetic teaching data."""
    return "synthetic teaching data (embedded set)" if name == "synthetic" else name


def dataset_note(name: str):
    """A Markdown note saying what data a chapter ran on (the embedded set is synthetic)."""
    from IPython.display import Markdown

    if name == "synthetic":
        return Markdown(
            "```{note}\nThis page ran on the **embedded synthetic dataset**: a controlled teaching "
            "dataset generated by the package, in which most pixel variance is class-independent "
            "(smooth colour fields) and the class is carried by a faint fine grating. It is not a "
            "benchmark; it makes the mechanism visible in minutes on a CPU. Run the notebook with "
            "`dataset='cifar10'` (see the README) for real images.\n```"
        )
    return Markdown(f"This page ran on **{name}**.")


def masked_view(images: Tensor, mask: Tensor, fill: float = 0.5) -> Tensor:
    """Images (N, C, H, W) with masked pixels (mask (N, 1, H, W), 1 = masked) set to grey."""
    return images * (1 - mask) + fill * mask


def reconstruction_grid(rec: Mapping[str, Tensor], n: int = 8, stretch_target: bool = False):
    """Masked input / prediction / target / original for one saved reconstruction batch.

    For an image target the prediction is shown where it counts (masked patches), pasted
    into the visible input. For a faint filtered target (``stretch_target``) the prediction
    of the masked patches is pasted into the target, both stretched with the target's
    per-image range, so what was learned is visible on the target's own scale.
    """
    x, mask = rec["input"][:n], rec["mask"][:n]
    target = rec["target"][:n]
    if stretch_target:
        pasted = target * (1 - mask) + rec["prediction"][:n] * mask  # the loss looks at masked patches only
        rows = {"masked input": masked_view(x, mask), "prediction\n(target's scale)": pasted,
                "target\n(stretched)": target, "original": x}
        return image_grid(rows, stretch=["target\n(stretched)"],
                          stretch_like={"prediction\n(target's scale)": "target\n(stretched)"})
    pasted = x * (1 - mask) + rec["prediction"][:n].clamp(0, 1) * mask
    rows = {"masked input": masked_view(x, mask), "prediction": pasted, "target": target, "original": x}
    return image_grid(rows)


def plot_curves(frames: Mapping[str, "object"], y: str = "loss", x: str = "epoch", logy: bool = True,
                ylabel: str | None = None):
    """One line per named DataFrame (e.g. metrics.jsonl of several runs)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, df in frames.items():
        ax.plot(df[x], df[y], marker="o", ms=3, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_recorded_losses(records, targets: Sequence[str], labels: Mapping[str, str] | None = None):
    """Training loss against epoch from pretraining records (``load_records('pretraining')``
    rows): one panel per target (their losses are on different scales), one line per run,
    named by its length and seed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(4.4 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(axes.flat, targets):
        part = records[records["target"] == target].sort_values(["pretrain_epochs", "seed"])
        for _, r in part.iterrows():
            epochs = [c["epoch"] for c in r["curve"]]
            ax.plot(epochs, [c["loss"] for c in r["curve"]], marker="o", ms=2.5,
                    label=f"{r['pretrain_epochs']} epochs, seed {r['seed']}")
        ax.set_yscale("log")
        ax.set_title((labels or {}).get(target, target), fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel("masked-patch MSE (training)")
        ax.grid(alpha=0.3, which="both")
        if len(part):
            ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_subspace_accuracy(frame, classifier: str | None = None, ax=None, title: str | None = None):
    """Test accuracy against the share of variance kept (measured on the test images): one
    curve for top and one for bottom subspaces per classifier, the full-image accuracy as a
    horizontal line, chance as a dotted line; the legend right of the axes, off the data.
    frame: rows of :func:`classify_subspaces`."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0))  # with the legend beside it, about 8.5 inches
    names = [classifier] if classifier else list(dict.fromkeys(frame["classifier"]))
    for i, name in enumerate(names):
        part = frame[frame["classifier"] == name]
        for side, marker, ls in (("top", "o", "-"), ("bottom", "s", "--")):
            rows = part[part["side"] == side].sort_values("kept_share_test")
            if len(rows):
                ax.plot(rows["kept_share_test"], rows["test_accuracy"], marker=marker, ls=ls, color=f"C{i}",
                        label=f"{name}: {side} subspace")
        full = part[part["side"] == "full"]
        if len(full):
            ax.axhline(float(full["test_accuracy"].iloc[0]), color=f"C{i}", lw=1, ls=":",
                       label=f"{name}: full image")
    if len(frame):
        ax.axhline(float(frame["chance"].iloc[0]), color="grey", lw=0.8, ls=(0, (1, 3)), label="chance")
    ax.set_xlabel("share of pixel variance kept (test images)")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=11)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.figure.tight_layout()
    return ax.figure


def plot_learning_order(frames: dict, ax_width: float = 3.2):
    """One panel per target: each band's relative error against epoch, top band darkest.

    frames: target name -> long DataFrame of :func:`band_metrics`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(frames))
    fig, axes = plt.subplots(1, n, figsize=(ax_width * n, 3.6), squeeze=False, sharey=True)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        bands = sorted(frame["band"].unique()) if len(frame) else []
        cmap = plt.get_cmap("viridis")
        for b in bands:
            rows = frame[frame["band"] == b].sort_values("epoch")
            if rows["rel_error"].notna().any():
                ax.plot(rows["epoch"], rows["rel_error"], marker=".", color=cmap(b / max(1, len(bands) - 1)),
                        label=rows["band_label"].iloc[0])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("squared error / data variance in band")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, title="band (from the top)", fontsize=9, title_fontsize=9,
                   loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def reproduce(command: str, records: str):
    """The line under a real-data figure: the command that makes its records and where they
    are. The figures drawn so far are shown first (``plt.show``), so the line stands under them."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown

    plt.show()
    return Markdown(f"*Reproduce:* `{command}` (its records: `results/{records}/`).")
