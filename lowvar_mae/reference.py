"""The reference experiment's reported numbers (Table 1 of the presentation), as data.

Single runs with no error bars; "validation" accuracy there is test-split accuracy.
This is the only place these numbers are written down; pages and tables read them here.
"""

from __future__ import annotations

# (dataset, target, fine-tuning accuracy, linear-probing accuracy or None)
TABLE1 = (
    ("stl10", "pixels", 0.695, 0.460),
    ("stl10", "none", 0.629, None),
    ("stl10", "pca-bottom:0.25", 0.785, 0.539),
    ("stl10", "pca-bottom:0.1", 0.704, 0.483),
    ("stl10", "pca-top:0.75", 0.649, 0.398),
    ("stl10", "pca-top:0.6", 0.650, 0.445),
    ("cifar10", "pixels", 0.885, 0.615),
    ("cifar10", "none", 0.813, None),
    ("cifar10", "pca-bottom:0.25", 0.902, 0.638),
    ("cifar10", "pca-bottom:0.1", 0.922, 0.636),
    ("cifar10", "pca-top:0.75", 0.894, 0.607),
    ("cifar10", "pca-top:0.6", 0.880, 0.560),
    ("cifar100", "pixels", 0.671, 0.370),
    ("cifar100", "none", 0.593, None),
    ("cifar100", "pca-bottom:0.25", 0.682, 0.373),
    ("cifar100", "pca-top:0.75", 0.643, 0.270),
)

TARGET_LABELS = {
    "pixels": "Original image",
    "none": "Without pretraining",
    "norm-pix": "Normalised pixels (official MAE)",
    "pc-mask": "PC masking (PMAE, 10-90% variance)",
    "pc-mask:0.2": "PC masking (PMAE's best: 20% variance)",
}


def target_label(target: str) -> str:
    """Human name of a target: 'pca-bottom:0.25' -> 'Bottom 25% variance'."""
    if target in TARGET_LABELS:
        return TARGET_LABELS[target]
    kind, _, share = target.partition(":")
    if kind in ("fft-low", "fft-high") and share:
        return f"{'Low' if kind == 'fft-low' else 'High'}-pass, radius {float(share):g} Nyquist"
    if kind == "pc-mask" and share:
        return f"PC masking ({float(share) * 100:g}% variance)"
    side = {"pca-bottom": "Bottom", "pca-top": "Top", "pca-bottom-norm": "Bottom"}.get(kind)
    if side is None or not share:
        raise ValueError(f"unknown target {target!r}")
    return f"{side} {float(share) * 100:g}% variance" + (", normalised per patch" if kind.endswith("-norm") else "")


def table1():
    """Table 1 as a pandas DataFrame (dataset, target, label, finetune, linprobe)."""
    import pandas as pd

    rows = [dict(dataset=d, target=t, label=target_label(t), finetune=ft, linprobe=lp) for d, t, ft, lp in TABLE1]
    return pd.DataFrame(rows)
