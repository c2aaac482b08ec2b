"""The straightforward baseline of an MAE pretraining step, written the way research code usually is.

* a ``torch.utils.data.Dataset`` of PIL images (converted from the uint8 array in
  ``__getitem__``, as torchvision's CIFAR-10 does) with torchvision transforms
  ``ToTensor`` and ``Normalize(0.5, 0.5)``;
* the PCA target gathered per sample in ``__getitem__``: each image projected
  separately with numpy (the complement filter, bottom = x - (x - mu) V V^T, with the
  mean and the top components the package's ``make_filter`` chooses, in float64);
* a ``DataLoader`` (shuffle, drop_last, optional workers and pinned memory), batches
  copied to the device every step;
* fp32, eager; attention written out (``softmax(q k^T / sqrt(d)) v`` with the
  (N, heads, L, L) matrix materialised, as timm 0.3.2, which the MAE reference code
  pins, computes it: ``lowvar_mae.models.set_attention(model, "math")``); the loss,
  ``backward`` and a plain ``AdamW`` (``foreach=False``, not fused) over
  ``model.parameters()``; the loss read back with ``.item()`` every step.

The model's weights and its loss are the package's MAE: only the data path, the
attention kernel, the precision and the optimiser differ from the fast path
(``bench/pretrain_throughput.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lowvar_mae import pca


class PILPCADataset(Dataset):
    """Images (N, H, W, C) uint8 -> (image (C, H, W) normalised, PCA target (C, H, W)) per index."""

    def __init__(self, images: np.ndarray, basis: pca.PCABasis, bottom_share: float):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        self.images = images
        flt = pca.make_filter(basis, "bottom", bottom_share, device="cpu", dtype=torch.float64)
        self.mean = flt.mean.numpy()              # (D,)
        self.components = flt.components.numpy()  # (D, k), the top components removed
        self.transform = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def pca_target(self, img: Image.Image) -> Tensor:
        """One image's bottom-variance target on the model's input scale, (C, H, W) float32."""
        x = np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 255.0  # (C, H, W) in [0, 1]
        flat = x.reshape(-1)
        coeffs = (flat - self.mean) @ self.components
        bottom = flat - coeffs @ self.components.T
        return torch.from_numpy(((bottom - 0.5) / 0.5).reshape(x.shape).astype(np.float32))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        img = Image.fromarray(self.images[index])
        return self.transform(img), self.pca_target(img)


def make_loader(dataset: Dataset, batch_size: int, *, workers: int = 0, pin_memory: bool = False,
                seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def batches(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches: a new epoch (a new shuffle) whenever one ends."""
    while True:
        yield from loader


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.Optimizer:
    """Plain AdamW on all parameters: the per-parameter loop, neither foreach nor fused."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay,
                             foreach=False, fused=False)


def compute_loss(model: nn.Module, imgs: Tensor, target: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
    """imgs, target: (N, C, H, W) on the model's device -> the MAE loss (masked patches only)."""
    loss, _, _ = model(imgs, target, generator=generator)
    return loss


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, Tensor],
               device: torch.device) -> float:
    """One optimiser step on one batch from the loader; returns the loss as a Python float."""
    imgs, target = (t.to(device) for t in batch)
    loss = compute_loss(model, imgs, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
