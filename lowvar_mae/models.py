"""Masked autoencoder (MAE) with a ViT encoder, in one file.

Stages follow He et al. (2022) and facebookresearch/mae ``models_mae.py``:
``patchify`` -> ``random_masking`` -> ``forward_encoder`` -> ``forward_decoder``
-> ``forward_loss``. Transformer blocks are timm's ``Block``; only patchify,
masking, position embeddings and the wiring are written here.

Notation used in the shapes below:
    N  batch size
    C  image channels (``in_chans``), H = W = ``img_size``, p = ``patch_size``
    L  number of patches, (H / p) ** 2; patch index l = i * (W / p) + j for the
       patch in patch-row i and patch-column j (row-major, as the conv patch
       embedding flattens them)
    D  encoder width (``embed_dim``), D_dec decoder width
    K  patches kept visible, round(L * (1 - mask_ratio))

The encoder (:class:`ViTEncoder`) is written once; :class:`MAE` and
:class:`ViTClassifier` hold an instance of it.
"""

import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

# timm imports huggingface_hub, which imports tqdm.auto: in a notebook kernel without
# ipywidgets that warns "IProgress not found" although no bar is drawn. The package's own
# bars fall back to text there (train.progress_bar); this one warning is silenced.
warnings.filterwarnings("ignore", message="IProgress not found")
from timm.models.vision_transformer import Block  # noqa: E402
from torch import nn

POS_EMBED_KINDS = ("learned", "sincos")
ATTENTION_KERNELS = ("sdpa", "math")
LAYER_NORM_EPS = 1e-6  # timm Block's own norms use the same eps


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """K = round(L * (1 - mask_ratio)), the patches left visible; must be in [1, L - 1]."""
    keep = round(num_patches * (1.0 - mask_ratio))
    if not 0 < keep < num_patches:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps {keep} of {num_patches} patches; "
            f"it must keep between 1 and {num_patches - 1}")
    return keep


@dataclass(frozen=True, kw_only=True)
class MAEConfig:
    """Architecture of a ViT masked autoencoder; saved as JSON with every run.

    ``decoder_embed_dim=None`` gives a decoder of the encoder's width with no
    projection and no final decoder norm (the original ViT-Tiny CIFAR MAE); an
    integer adds ``decoder_embed = Linear(embed_dim, decoder_embed_dim)`` and a
    final decoder LayerNorm (official MAE). ``pos_embed="learned"`` trains the
    position embeddings; ``"sincos"`` uses fixed 2-D sin-cos buffers.
    """

    img_size: int  # pixels, square images
    patch_size: int  # pixels per patch side
    in_chans: int = 3
    embed_dim: int
    depth: int  # encoder blocks
    num_heads: int
    decoder_embed_dim: int | None = None
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    mask_ratio: float = 0.75  # share of patches hidden from the encoder (0: none, as PC masking uses)
    pos_embed: str = "learned"

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth",
                     "num_heads", "decoder_depth", "decoder_num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.decoder_embed_dim is not None and (
                not isinstance(self.decoder_embed_dim, int) or self.decoder_embed_dim < 1):
            raise ValueError(
                f"decoder_embed_dim must be None or a positive integer, got {self.decoder_embed_dim!r}")
        if self.img_size % self.patch_size != 0:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} is outside [0, 1) (0: every patch visible)")
        if self.mask_ratio:
            num_kept(self.num_patches, self.mask_ratio)
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if self.decoder_width % self.decoder_num_heads != 0:
            raise ValueError(
                f"decoder width {self.decoder_width} is not divisible by "
                f"decoder_num_heads={self.decoder_num_heads}")
        if self.pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f"pos_embed={self.pos_embed!r} is not one of {POS_EMBED_KINDS}")
        if self.pos_embed == "sincos":
            for name, dim in (("embed_dim", self.embed_dim), ("decoder width", self.decoder_width)):
                if dim % 4 != 0:
                    raise ValueError(f"sincos position embeddings need {name} divisible by 4, got {dim}")

    @property
    def grid_size(self) -> int:
        """Patches per image side, img_size / patch_size."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """L, patches per image."""
        return self.grid_size ** 2

    @property
    def patch_dim(self) -> int:
        """Values per patch, patch_size**2 * in_chans."""
        return self.patch_size ** 2 * self.in_chans

    @property
    def decoder_width(self) -> int:
        """D_dec: decoder_embed_dim, or embed_dim when there is no projection."""
        return self.embed_dim if self.decoder_embed_dim is None else self.decoder_embed_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, JSON-serialisable."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MAEConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown MAEConfig fields: {unknown}")
        return cls(**values)


PRESETS: dict[str, MAEConfig] = {
    # ViT-Tiny MAE of the original CIFAR work, exactly: its code called timm's
    # Block(dim, heads), whose default is qkv_bias=False: 7,212,684 parameters.
    "vit-tiny-cifar": MAEConfig(
        img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, qkv_bias=False,
        decoder_depth=4, decoder_num_heads=3, mask_ratio=0.75, pos_embed="learned"),
    "vit-tiny-stl": MAEConfig(
        img_size=96, patch_size=6, embed_dim=192, depth=12, num_heads=3, qkv_bias=False,
        decoder_depth=4, decoder_num_heads=3, mask_ratio=0.75, pos_embed="learned"),
    # Official-MAE options on the ViT-Tiny encoder: fixed sin-cos position
    # embeddings, a narrower decoder behind a projection (head dim 32), final decoder norm.
    "vit-tiny-cifar-official": MAEConfig(
        img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3,
        decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4,
        mask_ratio=0.75, pos_embed="sincos"),
    # Trains in minutes on a laptop CPU: 64 patches of 4x4, about 1.2 M parameters.
    "small-cifar": MAEConfig(
        img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4,
        decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75, pos_embed="learned"),
    # The same for STL-10's 96x96 images: 64 patches of 12x12.
    "small-stl": MAEConfig(
        img_size=96, patch_size=12, embed_dim=128, depth=4, num_heads=4,
        decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75, pos_embed="learned"),
    # The CPU protocol's model (recipe "cpu"): the ViT-Tiny width and heads on 64 patches
    # of 4x4, half the encoder depth and a 2-block decoder of the encoder's width,
    # about 3.6 M parameters. Sized so that pretraining on all 50,000 CIFAR-10 images
    # fits the recipe's budget on a 2-core CPU (see lowvar_mae.recipes.PRETRAIN_RECIPES).
    "cpu-cifar": MAEConfig(
        img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, qkv_bias=False,
        decoder_depth=2, decoder_num_heads=3, mask_ratio=0.75, pos_embed="learned"),
    # For tests: 16 patches, 4 kept at mask_ratio 0.75.
    "micro": MAEConfig(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
        decoder_depth=1, decoder_num_heads=2, mask_ratio=0.75, pos_embed="learned"),
}


def get_config(name: str, **overrides: Any) -> MAEConfig:
    """Preset ``name`` with fields replaced by ``overrides`` (validated again)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches.

    imgs: (N, C, H, W) with H, W divisible by p. Returns (N, L, p*p*C); patch l
    is the block at patch-row i = l // (W/p), patch-column j = l % (W/p), and
    inside a patch the values are ordered (row, column, channel), channel
    fastest: ``out[n, l].reshape(p, p, C) == imgs[n, :, i*p:(i+1)*p, j*p:(j+1)*p].permute(1, 2, 0)``.
    """
    n, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, in_chans: int) -> torch.Tensor:
    """Exact inverse of :func:`patchify` for square images.

    x: (N, L, p*p*C) with L a square number. Returns (N, C, H, W), H = W = sqrt(L) * p.
    """
    n, num_patches, _ = x.shape
    p = patch_size
    grid = int(round(num_patches ** 0.5))
    if grid * grid != num_patches:
        raise ValueError(f"unpatchify needs a square number of patches, got {num_patches}")
    x = x.reshape(n, grid, grid, p, p, in_chans)
    x = x.permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, in_chans, grid * p, grid * p)


def random_masking(x: torch.Tensor, mask_ratio: float,
                   generator: torch.Generator | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of K tokens per sample, a different one for each sample.

    x: (N, L, D). ``generator`` must live on x's device. Returns
    x_masked: (N, K, D), the kept tokens in shuffled order;
    mask: (N, L) float32, 1 = masked (hidden from the encoder), 0 = kept;
    ids_restore: (N, L) int64, position of each original token in the shuffled
    order, so gathering ``cat([x_masked, mask_tokens], 1)`` with it restores
    the original token order.
    """
    n, num_patches, dim = x.shape
    keep = num_kept(num_patches, mask_ratio)
    noise = torch.rand(n, num_patches, generator=generator, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, num_patches, device=x.device, dtype=torch.float32)
    mask[:, :keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of the official MAE, (grid_size**2, embed_dim).

    Row l belongs to the patch at row y = l // grid_size, column x = l % grid_size.
    With F = embed_dim / 4 and omega_k = 10000 ** (-k / F), k = 0..F-1, the row is
    [sin(x omega), cos(x omega), sin(y omega), cos(y omega)].
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"sincos position embeddings need embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for pos in (xs, ys):
        angles = pos.reshape(-1, 1) * omega
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).to(torch.get_default_dtype())


def _make_pos_embed(module: nn.Module, name: str, kind: str, num_tokens: int, dim: int,
                    grid_size: int, with_cls: bool) -> None:
    """Register a (1, num_tokens, dim) position embedding on ``module`` as ``name``.

    Learned: trainable, trunc-normal std .02. Sincos: fixed buffer; the CLS slot
    (first row when ``with_cls``) is zero as in the official MAE.
    """
    if kind == "learned":
        param = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(param, std=0.02)
        setattr(module, name, param)
    else:
        table = sincos_pos_embed_2d(dim, grid_size)
        if with_cls:
            table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
        module.register_buffer(name, table.unsqueeze(0), persistent=False)


class ViTEncoder(nn.Module):
    """ViT encoder: conv patch embedding, position embedding on patches, CLS token, blocks, norm.

    The CLS token gets no position embedding; it is prepended after masking.
    """

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int = 3,
                 embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, pos_embed: str = "learned") -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        _make_pos_embed(self, "pos_embed", pos_embed, self.num_patches, embed_dim,
                        self.grid_size, with_cls=False)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def check_imgs(self, imgs: torch.Tensor) -> None:
        """Raise ValueError unless imgs is (N, in_chans, img_size, img_size)."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(imgs.shape)}")

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches.

        imgs: (N, C, H, W). mask_ratio 0 keeps all L patches (mask all 0,
        ids_restore = arange); otherwise see :func:`random_masking`. Returns
        latent: (N, 1 + K, D), CLS first, after the final norm;
        mask: (N, L) float32, 1 = masked; ids_restore: (N, L) int64.
        """
        self.check_imgs(imgs)
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2)
        x = x + self.pos_embed
        n = x.shape[0]
        if mask_ratio == 0.0:
            mask = torch.zeros(n, self.num_patches, device=x.device, dtype=torch.float32)
            ids_restore = torch.arange(self.num_patches, device=x.device).repeat(n, 1)
        else:
            x, mask, ids_restore = random_masking(x, mask_ratio, generator)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = self.blocks(x)
        return self.norm(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> normed tokens of the whole image, (N, 1 + L, D), CLS first."""
        return self.forward(imgs, 0.0)[0]

    def cls_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> CLS token of the whole image, (N, D)."""
        return self.forward_features(imgs)[:, 0]

    def pooled_features(self, imgs: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """imgs: (N, C, H, W) -> features of the whole image by :func:`pool_tokens`."""
        return pool_tokens(self.forward_features(imgs), pooling)

    def feature_dim(self, pooling: str = "cls") -> int:
        """Width of :meth:`pooled_features` for ``pooling``."""
        check_pooling(pooling)
        return 2 * self.embed_dim if pooling == "cls+mean" else self.embed_dim


# How a whole image's tokens become one feature vector for probing: the CLS token (as in
# MAE's probes), the mean of the patch tokens, or both side by side.
POOLINGS = ("cls", "mean", "cls+mean")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def pool_tokens(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """tokens: (N, 1 + L, D), CLS first -> (N, D) ("cls", "mean") or (N, 2 D) ("cls+mean")."""
    check_pooling(pooling)
    if pooling == "cls":
        return tokens[:, 0]
    mean = tokens[:, 1:].mean(1)
    return mean if pooling == "mean" else torch.cat([tokens[:, 0], mean], dim=1)


class MAE(nn.Module):
    """Masked autoencoder: :class:`ViTEncoder` plus a transformer decoder predicting patches.

    Decoder: optional ``decoder_embed`` projection, ``mask_token``, position
    embedding over CLS + L slots, ``decoder_depth`` blocks, optional
    ``decoder_norm``, ``decoder_pred = Linear(D_dec, p*p*C)``; the CLS output is dropped.
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(
            img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
            embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, pos_embed=config.pos_embed)
        width = config.decoder_width
        projected = config.decoder_embed_dim is not None
        self.decoder_embed = nn.Linear(config.embed_dim, width) if projected else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        _make_pos_embed(self, "decoder_pos_embed", config.pos_embed, config.num_patches + 1,
                        width, config.grid_size, with_cls=True)
        self.decoder_blocks = nn.Sequential(*[
            Block(width, config.decoder_num_heads, mlp_ratio=config.mlp_ratio,
                  qkv_bias=config.qkv_bias)
            for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS) if projected else nn.Identity()
        self.decoder_pred = nn.Linear(width, config.patch_dim)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> (N, L, p*p*C), values in (row, column, channel) order."""
        self.encoder.check_imgs(imgs)
        return patchify(imgs, self.config.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, L, p*p*C) -> imgs (N, C, H, W); inverse of :meth:`patchify`."""
        expected = (self.config.num_patches, self.config.patch_dim)
        if x.dim() != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected patches of shape (N, {expected[0]}, {expected[1]}), "
                             f"got {tuple(x.shape)}")
        return unpatchify(x, self.config.patch_size, self.config.in_chans)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       generator: torch.Generator | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, L, D) -> x_masked (N, K, D), mask (N, L) 1 = masked, ids_restore (N, L).

        See the module-level :func:`random_masking`.
        """
        return random_masking(x, mask_ratio, generator)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: torch.Generator | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (N, C, H, W) -> latent (N, 1 + K, D), mask (N, L) 1 = masked, ids_restore (N, L)."""
        return self.encoder(imgs, mask_ratio, generator)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + K, D), ids_restore: (N, L) -> pred (N, L, p*p*C) for every patch."""
        x = self.decoder_embed(latent)
        n, tokens, width = x.shape
        num_patches = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(n, num_patches + 1 - tokens, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
        x = torch.cat([x[:, :1], patches], dim=1)
        x = x + self.decoder_pos_embed
        x = self.decoder_blocks(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]

    def forward_loss(self, target: torch.Tensor, pred: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over masked patches only (over all
        patches when none is masked).

        target: (N, C, H, W), raw pixels or a filtered image; pred: (N, L, p*p*C);
        mask: (N, L), 1 = masked. Returns a scalar.
        """
        loss = ((pred - self.patchify(target)) ** 2).mean(dim=-1)
        masked = mask.sum()
        return torch.where(masked > 0, (loss * mask).sum() / masked.clamp_min(1), loss.mean())  # no host sync

    def forward(self, imgs: torch.Tensor, target: torch.Tensor | None = None,
                mask_ratio: float | None = None, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (N, C, H, W) input; target: (N, C, H, W), default imgs.

        Returns loss (scalar), pred (N, L, p*p*C), mask (N, L) 1 = masked.
        mask_ratio defaults to the config's and must lie in [0, 1) (0: every patch visible).
        """
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} is outside [0, 1) (0: every patch visible)")
        target = imgs if target is None else target
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(target, pred, mask), pred, mask


class ViTClassifier(nn.Module):
    """Classifier on the CLS token of a (pre-trained) :class:`ViTEncoder`, whose modules it shares."""

    def __init__(self, encoder: ViTEncoder, num_classes: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W), all L patches visible -> logits (N, num_classes)."""
        return self.head(self.head_drop(self.encoder.cls_features(imgs)))


def set_attention(module: nn.Module, kernel: str) -> nn.Module:
    """Choose how every timm ``Attention`` in ``module`` computes softmax(q k^T / sqrt(d)) v.

    ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``, a fused kernel (flash
    attention on CUDA and on CPU); ``"math"``: written out, the (N, heads, L, L) attention
    matrix materialised and both products plain matmuls (under autocast, bf16 ones). The
    maths is the same and so are the weights; which is faster depends on the device and
    precision (``lowvar_mae.train.resolve_attention``). Returns ``module``.
    """
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel must be one of {ATTENTION_KERNELS}, got {kernel!r}")
    switched = 0
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = kernel == "sdpa"
            switched += 1
    if not switched:
        raise ValueError(f"{type(module).__name__} has no timm Attention modules to switch")
    return module


def attention_kernel(module: nn.Module) -> str:
    """The kernel the Attention modules of ``module`` use: "sdpa", "math" or "mixed"."""
    kinds = {"sdpa" if m.fused_attn else "math" for m in module.modules() if hasattr(m, "fused_attn")}
    if not kinds:
        raise ValueError(f"{type(module).__name__} has no timm Attention modules")
    return kinds.pop() if len(kinds) == 1 else "mixed"


def build_mae(config_or_preset_name: MAEConfig | str, **overrides: Any) -> MAE:
    """MAE from a config or a preset name, with fields replaced by ``overrides``."""
    if isinstance(config_or_preset_name, str):
        config = get_config(config_or_preset_name, **overrides)
    else:
        config = replace(config_or_preset_name, **overrides)
    return MAE(config)


# ---------------------------------------------------------------- timm's VisionTransformer

# The architecture timm's create_model builds an encoder of this file from: a named ViT whose
# size is overridden by timm_kwargs (pretrained=False: nothing is downloaded).
TIMM_ARCH = "vit_tiny_patch16_224"


def timm_kwargs(encoder: ViTEncoder) -> dict[str, Any]:
    """Keyword arguments of timm's ``VisionTransformer`` (``timm.create_model(TIMM_ARCH,
    pretrained=False, **kwargs)``) with the same computation as ``encoder``: its image
    and patch size, width, depth, heads; a CLS token without position embedding
    (``no_embed_class``), the final norm, no head (``num_classes=0``), CLS pooling."""
    block = encoder.blocks[0]
    return {"img_size": encoder.img_size, "patch_size": encoder.patch_size, "in_chans": encoder.in_chans,
            "embed_dim": encoder.embed_dim, "depth": len(encoder.blocks), "num_heads": block.attn.num_heads,
            "mlp_ratio": block.mlp.fc1.out_features / encoder.embed_dim, "qkv_bias": block.attn.qkv.bias is not None,
            "class_token": True, "no_embed_class": True, "global_pool": "token", "num_classes": 0}


def timm_state_dict(encoder: ViTEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under the names of timm's ``VisionTransformer`` (a fixed sincos
    position table is written out as ``pos_embed``), contiguous float32 CPU tensors."""
    state = {}
    for name, tensor in encoder.state_dict().items():
        key = name.replace("patch_embed.", "patch_embed.proj.", 1) if name.startswith("patch_embed.") else name
        state[key] = tensor
    state["pos_embed"] = encoder.pos_embed.detach()
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
