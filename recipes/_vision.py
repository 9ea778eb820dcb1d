"""Generic parts of torchvision classifiers for the image recipe (imports torch: imported lazily)."""

from __future__ import annotations

import torch
from torch import nn

from launcher.errors import ConfigError, first_line


def find_head(model: nn.Module) -> str:
    """The qualified name of a classifier's output layer: its last ``nn.Linear`` in module order
    (``fc``, ``classifier.6``, ``heads.head``, ``head``, ...), or the last ``nn.Conv2d`` where
    there is no Linear (SqueezeNet's ``classifier.1``)."""
    linear = conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear = name
        elif isinstance(module, nn.Conv2d):
            conv = name
    head = linear or conv
    if not head:
        raise ConfigError(f"{type(model).__name__} has no Linear or Conv2d layer to classify with")
    return head


def wrap_head(model: nn.Module, head: str, before: nn.Module) -> None:
    """Put ``before`` (e.g. a Dropout) in front of the head: ``head`` becomes Sequential(before, head)."""
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Sequential(before, getattr(parent, child)))


def check_input_size(model: nn.Module, size: int, what: str) -> None:
    """One forward of a blank image of ``size`` (eval mode, no gradients): an architecture that
    cannot take that size is one line before training, not a crash at its first step."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"{what} cannot take data.image_size={size} images ({first_line(e, 160)}); use a larger data.image_size "
            "(224 is what ImageNet models are trained at)"
        ) from None
    finally:
        model.train(was)
