"""Image classification on synthetic images, as a recipe (``benchmarks/gpu_profile.py``).

The images are random uint8 tensors held in memory (no decoding: the profile measures the
training step, not JPEG decoding); the step converts them to normalised floats on the device.
``HOOK[0](model)`` is called at the start of every training step (the profile times with it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from launcher.config import DataSection, ModelSection
from recipes.base import Recipe

HOOK: list = [lambda model: None]
MEAN, STD = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)


class ImageModel(ModelSection):
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    channels_last: bool = False


class ImageData(DataSection):
    size: int = Field(512, ge=1, description="number of synthetic images")
    image_size: int = Field(224, ge=8)
    classes: int = Field(1000, ge=2)


def synthetic_images(size: int, image_size: int, classes: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (size, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (size,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


_NORM: dict = {}  # device -> (mean, std): made once (a host-to-device copy per step would stall)


def prepare(x, channels_last: bool):
    """uint8 NCHW on the device -> normalised float (channels-last if asked)."""
    import torch

    if x.device not in _NORM:
        _NORM[x.device] = tuple(torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (MEAN, STD))
    mean, std = _NORM[x.device]
    x = (x.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ImageBench(Recipe):
    name = "image_bench"
    description = "torchvision ResNet on synthetic in-memory images (benchmarks)"
    Model = ImageModel
    Data = ImageData

    def build_model(self):
        import torch
        import torchvision

        model = getattr(torchvision.models, self.cfg.model.arch)(weights=None, num_classes=self.cfg.data.classes)
        return model.to(memory_format=torch.channels_last) if self.cfg.model.channels_last else model

    def build_datasets(self):
        d = self.cfg.data
        return synthetic_images(d.size, d.image_size, d.classes), None

    def step(self, model, batch):
        import torch

        HOOK[0](model)
        x, y = batch
        logits = model(prepare(x, self.cfg.model.channels_last))
        loss = torch.nn.functional.cross_entropy(logits, y)
        n = y.shape[0]
        return loss, {"loss": loss.detach() * n, "count": n}
