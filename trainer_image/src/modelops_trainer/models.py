"""Networks: torchvision architectures by name, sized to the dataset, with optional initial weights.

Nothing is downloaded: torchvision builds the network with random weights, and initial weights
come only from `model.weightsUri` (checked against `model.weightsDigest`). Those may be an
ImageNet state dict (its 1000-way classifier is dropped and a new one trained) or a checkpoint
of this program. A grayscale dataset gets a one-channel stem; RGB stem weights are summed over
their input channels to fit it, which keeps what they detect.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torchvision  # type: ignore[import-untyped]
from torch import nn

from modelops_trainer import storage
from modelops_trainer.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)


def build_model(architecture: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A randomly initialised torchvision `architecture` with `num_classes` outputs."""
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if architecture.startswith("vit_"):
        patch = int(architecture.rsplit("_", 1)[-1])
        if image_size % patch:
            raise ConfigError(f"{architecture} needs an image size divisible by {patch}; the dataset has {image_size}")
        kwargs["image_size"] = image_size
    elif architecture in {"googlenet", "inception_v3"}:
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    elif architecture == "maxvit_t":
        kwargs["input_size"] = (image_size, image_size)
    try:
        model: nn.Module = torchvision.models.get_model(architecture, **kwargs)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"cannot build {architecture} for {image_size}x{image_size} images: {exc}") from exc
    if in_channels != 3:
        _adapt_stem(model, in_channels)
    return model


def _adapt_stem(model: nn.Module, in_channels: int) -> None:
    """Replace the first 3-channel convolution by one taking `in_channels`."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                groups=1,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ConfigError(
        f"cannot find the input convolution of {type(model).__name__} to adapt it to {in_channels} channel(s)"
    )


def load_weights(model: nn.Module, uri: str, digest: str, *, num_classes: int, cache_dir: Path | None) -> None:
    """Load initial weights into `model`: verified, classifier replaced when sized for other classes."""
    try:
        path = storage.fetch_verified(uri, digest, what="initial weights", cache_dir=cache_dir)
    except (FileNotFoundError, OSError) as exc:
        raise WeightsError(f"cannot read initial weights {uri}: {exc}") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"initial weights {uri} are not a torch state dict: {exc}") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]  # a checkpoint of this program
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"initial weights {uri} must be a state dict (parameter name → tensor)")
    state, replaced = _fit_state(model, loaded, uri=uri, num_classes=num_classes)
    model.load_state_dict(state, strict=False)
    if replaced:
        log.info("initial weights loaded; classifier trained anew", extra={"replaced": replaced})
    else:
        log.info("initial weights loaded")


def _fit_state(
    model: nn.Module, loaded: dict[str, torch.Tensor], *, uri: str, num_classes: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The loaded tensors that fit `model` (stem adapted), and the classifier keys left to train."""
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    replaced: list[str] = []
    for name, value in loaded.items():
        key = name.removeprefix("module.").removeprefix("_orig_mod.")
        target = own.get(key)
        if target is None:
            raise WeightsError(f"initial weights {uri} hold {key!r}, which {type(model).__name__} does not have")
        if value.shape == target.shape:
            state[key] = value
        elif value.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1 and value.shape[0] == target.shape[0]:
            state[key] = value.sum(dim=1, keepdim=True)  # RGB stem → grayscale stem
        elif target.ndim >= 1 and target.shape[0] == num_classes and value.shape[1:] == target.shape[1:]:
            replaced.append(key)  # the classifier of another task: trained anew
        else:
            raise WeightsError(
                f"initial weights {uri}: {key} has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}"
            )
    missing = sorted(set(own) - set(state) - set(replaced))
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"initial weights {uri} lack {len(missing)} tensors of the model, e.g. {missing[:3]}")
    return state, replaced


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
