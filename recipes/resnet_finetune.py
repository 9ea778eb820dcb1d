"""ResNet fine-tuning (image classification).

Run it:  launch recipe=resnet_finetune                 (digits, CPU, no download)
         launch recipe=resnet_finetune data.name=image_folder data.root=/data/pets data.num_classes=37 \
                model.weights=DEFAULT train.backbone_lr_mult=0.1

torch and torchvision are imported inside methods only, so ``launch --list`` stays instant.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from launcher.config import DataSection, ModelSection
from launcher.errors import ConfigError, LaunchError
from launcher.torch_classes import TORCHVISION_CLASSIFIERS
from recipes._datasets import SOURCES, torchvision_split
from recipes._splits import split_indices, stratified
from recipes.base import Recipe

# every torchvision classification model and its weights (kept equal to torchvision by a test)
WEIGHTS = TORCHVISION_CLASSIFIERS
ARCHS = tuple(WEIGHTS)
RESNETS = ("resnet", "resnext", "wide_resnet")  # families with layer1..layer4 (FSDP's units)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Fixed number of classes of the built-in sources (None: any).
SOURCE_CLASSES = {"digits": 10, "cifar10": 10, "mnist": 10, "fashion_mnist": 10, "fake": None, "image_folder": None}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_IMAGES = 1797  # scikit-learn's digits, held in memory at data.image_size (3 float32 channels)
DIGITS_MAX_SIZE = 256  # 1,797 x 3 x 256 x 256 floats = 1.4 GB


class ResNetModel(ModelSection):
    arch: str = Field("resnet18", description="any torchvision classification model (resnet50, vit_b_16, ...)")
    weights: str = Field(
        "none", description="none | a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) | a local file"
    )
    freeze_backbone: bool = Field(False, description="train the classification head only")
    head_dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the classification head")
    channels_last: bool = False

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in WEIGHTS:
            import difflib

            close = difflib.get_close_matches(arch, list(WEIGHTS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            families = sorted({re.sub(r"\d+$", "", a.split("_")[0]) for a in WEIGHTS} - {"wide"} | {"wide_resnet"})
            raise ValueError(
                f"model.arch={arch} is no torchvision classification model; {hint}families: {', '.join(families)} "
                "(torchvision.models.list_models() lists every name)"
            )
        return arch


# data.augment presets (training only): (random resized crop, hflip, rotation, colour jitter)
AUGMENT = {"none": (False, 0.0, 0.0, 0.0), "standard": (True, 0.5, 0.0, 0.0), "strong": (True, 0.5, 15.0, 0.4)}


class ResNetData(DataSection):
    name: Literal["digits", "image_folder", "cifar10", "mnist", "fashion_mnist", "fake"] = "digits"
    augment: Optional[Literal["none", "standard", "strong"]] = Field(
        None,
        description="training augmentation: none | standard (random resized crop, horizontal flip) | strong "
        "(+ rotation 15, colour jitter 0.4); default standard for image files and cifar10, none for digits and fake",
    )
    hflip: Optional[float] = Field(
        None, ge=0, le=1, description="probability of a horizontal flip (overrides the preset)"
    )
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    rotation: Optional[float] = Field(None, ge=0, le=180, description="random rotation up to this many degrees")
    color_jitter: Optional[float] = Field(
        None, ge=0, le=1, description="brightness/contrast/saturation jitter strength"
    )
    crop_scale: Optional[tuple[float, float]] = Field(
        None, description="random resized crop's area range, e.g. [0.5, 1.0] (turns the crop on)"
    )

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v):
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"data.crop_scale={list(v)}: give [min, max] with 0 < min <= max <= 1, e.g. [0.5, 1.0]")
        return v

    num_classes: Optional[int] = Field(None, ge=2, description="default: from the data")
    # 16: below it ResNet's later stages see a 1x1 map (it halves the size five times) and learn
    # nothing more; 4096: one such image is 200 MB as 3 float32 channels before any activation
    # (ResNets are trained at 224-512), and a typo such as 100000 would ask for terabytes.
    image_size: int = Field(32, ge=16, le=4096, description="square input size (16..4096)")
    split_seed: int = Field(0, description="seed of the train/val/test split (digits, fake; image_folder without val/)")
    fake_size: int = Field(512, ge=2, description="number of FakeData images")
    skip_bad: bool = Field(
        False,
        description="image_folder: skip image files that cannot be decoded (found before training) instead of failing",
    )


def _weights_kind(value: str) -> str:
    """'none' | 'name' | 'file'."""
    if value.lower() == "none":
        return "none"
    if os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(value).exists():
        return "file"
    return "name"


def _class_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_images(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class index) of every image file under ``split_dir/<class>/`` (sub-folders too,
    links followed), in torchvision's ImageFolder order. Needs no torch or PIL."""
    samples = []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(split_dir / name, followlinks=True)):
            samples.extend((os.path.join(folder, f), label) for f in sorted(files) if _is_image(f))
    return samples


class ResNetFinetune(Recipe):
    description = (
        "torchvision classifier fine-tuning (ResNet-18 by default); data: digits (default, no download), image_folder, "
        "cifar10, mnist, fashion_mnist, fake"
    )
    Model = ResNetModel
    Data = ResNetData
    head = ["fc."]
    shard_units = ("layer1", "layer2", "layer3", "layer4")  # --strategy fsdp: a unit per stage, then the root
    metric_names = ("loss", "acc")  # train/ and val/ (the base class's metrics(): correct -> acc)
    classification = True  # train.loss, label_smoothing, data.class_weights, data.sampling apply
    input_suffixes = IMAGE_EXTENSIONS  # launch predict: image files, or folders of them
    # 5 epochs: the val accuracy on digits that the README's recipe table states
    defaults = {
        "train": {
            "epochs": 5,
            "batch_size": 64,
            "optimizer": "adamw",
            "lr": 0.002,
            "weight_decay": 0.05,
            "scheduler": "cosine",
            "log_every": 5,
        },
        "checkpoint": {"monitor": "val/acc", "mode": "max"},
    }

    # ------------------------------------------------------------------ pre-flight (no torch)
    @classmethod
    def check(cls, cfg) -> None:
        d, m = cfg.data, cfg.model
        super().check(cfg)
        fixed = SOURCE_CLASSES[d.name]
        if d.name == "image_folder":
            found = cls._check_image_folder(Path(d.root), d.skip_bad)
            fixed = len(found)
        elif d.skip_bad:
            raise ConfigError(f"data.skip_bad applies to data.name=image_folder only (data.name={d.name}); drop it")
        if d.test_fraction > 0 and d.name in ("image_folder", "cifar10", "mnist", "fashion_mnist"):
            where = (
                f"{d.root}/test/<class>/" if d.name == "image_folder" else "none (its test set is the validation split)"
            )
            raise ConfigError(
                f"data.test_fraction applies to digits and fake; data.name={d.name} takes its test split from {where}; drop it"
            )
        if d.name == "digits" and d.image_size > DIGITS_MAX_SIZE:
            gb = DIGITS_IMAGES * 3 * d.image_size**2 * 4 / 1e9
            raise ConfigError(
                f"data.image_size={d.image_size} with data.name=digits would hold {gb:.0f} GB of images in memory "
                f"(all {DIGITS_IMAGES:,} 8x8 digits, upscaled); use data.image_size <= {DIGITS_MAX_SIZE}"
            )
        if fixed is not None and d.num_classes is not None and d.num_classes != fixed:
            raise ConfigError(
                f"data.num_classes={d.num_classes} but data.name={d.name} has {fixed} classes; "
                f"drop data.num_classes or set it to {fixed}"
            )
        kind = _weights_kind(m.weights)
        if kind != "none" and m.init != "default":
            raise ConfigError(
                f"model.init={m.init} would overwrite model.weights={m.weights}; drop one (init is for training from scratch)"
            )
        if kind == "name":
            name = m.weights.split(".")[-1]
            known = WEIGHTS[m.arch]
            if name != "DEFAULT" and name not in known:
                raise ConfigError(
                    f"unknown weights {m.weights!r} for {m.arch}; use none, DEFAULT, {', '.join(known)} or a local file path"
                )
        elif kind == "file" and not Path(m.weights).is_file():
            raise ConfigError(
                f"weights file {m.weights} not found; pass model.weights=<path to a state_dict file> or none"
            )

    @staticmethod
    def image_folder_dirs(root: Path) -> dict[str, Path]:
        """The split folders of an image folder that are there (train, val, test), or the folder
        itself as train when it holds class folders directly (validation then comes from
        data.val_fraction of each class)."""
        found = {split: root / split for split in ("train", "val", "test") if (root / split).is_dir()}
        if not found and root.is_dir() and _class_dirs(root):
            return {"train": root}
        return found

    @classmethod
    def _check_image_folder(cls, root: Path, skip_bad: bool = False) -> list[str]:
        layout = "class subfolders (or train/ and val/ or test/ of them)"
        if not root.is_dir():
            raise ConfigError(f"data.root={root} does not exist; data.name=image_folder needs a folder with {layout}")
        dirs = cls.image_folder_dirs(root)
        present = tuple(dirs)
        if "train" not in present:
            raise ConfigError(
                f"{root / 'train'} is missing; data.name=image_folder needs {root}/train/<class>/ (with {root}/val/ "
                f"and/or {root}/test/), or {root}/<class>/ (validation is then data.val_fraction of each class)"
            )
        splits = {}
        for split in present:
            sub = dirs[split]
            classes = _class_dirs(sub)
            if not classes:
                raise ConfigError(f"{sub} has no class folders; put images in {sub}/<class name>/")
            splits[split] = classes
        for other in present[1:]:
            if splits["train"] != splits[other]:
                only_t = sorted(set(splits["train"]) - set(splits[other]))
                only_o = sorted(set(splits[other]) - set(splits["train"]))
                raise ConfigError(
                    f"train and {other} classes differ in {root} (only in train: {only_t or '-'}; only in {other}: "
                    f"{only_o or '-'}); make every split hold the same class folders"
                )
        classes = splits["train"]
        for split in present:
            sub = dirs[split]
            samples = _scan_images(sub, classes)
            if not samples:
                raise ConfigError(f"{sub} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")
            if split == "train":
                used = sorted({classes[label] for _, label in samples})
                if len(used) < 2:
                    raise ConfigError(
                        f"data.name=image_folder needs at least 2 classes (sub-folders with images); found "
                        f"{len(used)}: {', '.join(used)} in {sub}; add a folder of images for each other class"
                    )
                empty = [c for c in classes if c not in used]
                if empty:
                    raise ConfigError(
                        f"{sub}/{empty[0]} has no images ({len(empty)} class folder(s) without any); "
                        f"put images in it or remove it from {', '.join(f'{x}/' for x in present)}"
                    )
            if not skip_bad:
                _check_files(samples)
        return classes

    # ------------------------------------------------------------------ parts
    def num_classes(self) -> int:
        d = self.cfg.data
        if d.num_classes is not None:
            return d.num_classes
        if d.name == "image_folder":
            return len(_class_dirs(self.image_folder_dirs(Path(d.root))["train"]))  # (each holds images: check())
        return SOURCE_CLASSES[d.name] or 10

    def export_info(self):
        d = self.cfg.data
        s = d.image_size
        info = {"classes": None, "input": f"(batch, 3, {s}, {s}) float"}
        if d.name == "image_folder":
            info["classes"] = _class_dirs(self.image_folder_dirs(Path(d.root))["train"])
        elif d.name == "digits":
            info["classes"] = [str(i) for i in range(10)]
        elif d.name in SOURCES:
            info["classes"] = list(SOURCES[d.name][2])
        if d.name == "digits":
            info["preprocessing"] = f"8x8 grey digit / 16, bilinear to {s}x{s}, (x - 0.5) / 0.5, 3 equal channels"
        elif d.name in ("mnist", "fashion_mnist"):
            info["preprocessing"] = f"grey, resized to {s}x{s}, 3 equal channels, (x - 0.5) / 0.5"
        else:
            info["preprocessing"] = {"resize": int(round(s * 256 / 224)), "center_crop": s,
                                     "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}  # fmt: skip
        return info

    def read_input(self, path: str):
        """An image file of any size, as validation sees its images: resized and centre-cropped
        (digits: made grey and scaled to data.image_size, like the 8x8 digits)."""
        if getattr(self, "_predict_tf", None) is None:
            name = self.cfg.data.name
            self._predict_tf = (
                self._digits_transform() if name == "digits"
                else self._grey_transforms()[1] if name in ("mnist", "fashion_mnist")
                else self._transforms()[1]
            )  # fmt: skip
        from PIL import Image

        with Image.open(path) as image:  # (what cannot be decoded raises: launch predict names the file)
            return [(self._predict_tf(image.convert("RGB")), -1)]

    def _digits_transform(self):
        from torchvision import transforms

        s = self.cfg.data.image_size
        return transforms.Compose([
            transforms.Grayscale(3), transforms.Resize((s, s), antialias=True), transforms.ToTensor(),
            transforms.Normalize((0.5,) * 3, (0.5,) * 3),
        ])  # fmt: skip

    def build_model(self):
        import torch
        import torchvision

        from recipes._vision import check_input_size, find_head, wrap_head

        m, s = self.cfg.model, self.cfg.data.image_size
        extra = {}
        if m.arch in ("googlenet", "inception_v3"):
            extra = {"aux_logits": False, "init_weights": True}  # (one output: no auxiliary heads)
        elif m.arch.startswith("vit_"):
            extra = {"image_size": s}
        elif m.arch == "maxvit_t":
            extra = {"input_size": (s, s)}
        model = torchvision.models.get_model(m.arch, weights=None, num_classes=self.num_classes(), **extra)
        head = find_head(model)
        kind = _weights_kind(m.weights)
        if kind != "none":
            state = self._pretrained_state(m.arch, m.weights, kind)
            self._load_backbone(model, state, m.arch, m.weights, head)
        if m.head_dropout:
            wrap_head(model, head, torch.nn.Dropout(m.head_dropout))
        # the head: train.backbone_lr_mult scales the rest, model.freeze_backbone freezes it
        self.head = [head + "."]
        self.shard_units = ("layer1", "layer2", "layer3", "layer4") if m.arch.startswith(RESNETS) else ()
        if m.freeze_backbone:
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(self.head[0]))
        check_input_size(model, s, f"model.arch={m.arch}")
        if m.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    @staticmethod
    def _pretrained_state(arch: str, weights: str, kind: str) -> dict:
        import torch
        import torchvision

        if kind == "file":
            from launcher.weights import load_state_file

            return load_state_file(weights)
        enum = torchvision.models.get_model_weights(arch)
        w = enum.DEFAULT if weights.split(".")[-1] == "DEFAULT" else enum[weights.split(".")[-1]]
        try:
            return w.get_state_dict(progress=False)
        except OSError as e:  # URLError is an OSError: no network, DNS, proxy...
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise ConfigError(
                f"could not download {w} ({getattr(e, 'reason', e)}); fetch {w.url} on a machine with network "
                f"and pass model.weights=/path/to/{Path(w.url).name} (or put it in {hub})"
            ) from None

    @staticmethod
    def _load_backbone(model, state: dict, arch: str, source: str, head: str) -> None:
        """Every weight but the head's (and the auxiliary heads' that the model leaves out)."""
        own = model.state_dict()
        prefix = head + "."
        backbone = {
            k: v
            for k, v in state.items()
            if not k.startswith(prefix) and (k in own or not k.startswith(("AuxLogits.", "aux1.", "aux2.")))
        }
        missing = [k for k in own if not k.startswith(prefix) and k not in backbone]
        unexpected = [k for k in backbone if k not in own]
        wrong = [k for k in backbone if k in own and tuple(backbone[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            example = (missing or unexpected or wrong)[0]
            raise ConfigError(
                f"model.weights={source} is not a state_dict for {arch} ({len(missing)} missing, "
                f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped keys, e.g. {example!r}); "
                f"pass weights saved from a torchvision {arch}"
            )
        model.load_state_dict(backbone, strict=False)

    def build_datasets(self):
        d = self.cfg.data
        return getattr(self, f"_data_{d.name}")()

    def _data_digits(self):
        import torch
        from sklearn.datasets import load_digits

        d = self.cfg.data
        digits = load_digits()  # 1,797 real 8x8 images shipped inside scikit-learn
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = torch.nn.functional.interpolate(x, size=(d.image_size, d.image_size), mode="bilinear", align_corners=False)
        x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
        y = torch.tensor(digits.target, dtype=torch.long)
        train, val, test = _split(torch.utils.data.TensorDataset(x, y), d)
        randoms = self._random_transforms(resize=False)
        if randoms:  # on the [0, 1] image, then normalised again
            from torchvision import transforms

            tf = transforms.Compose([transforms.Normalize((-1.0,) * 3, (2.0,) * 3), *randoms,
                                     transforms.Normalize((0.5,) * 3, (0.5,) * 3)])  # fmt: skip
            train = Transformed(train, tf)
        return train, val, test

    def _data_fake(self):
        from torchvision import datasets, transforms

        d = self.cfg.data
        tail = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]

        def fake(randoms):
            return datasets.FakeData(
                size=d.fake_size, image_size=(3, d.image_size, d.image_size), num_classes=self.num_classes(),
                transform=transforms.Compose([*randoms, *tail]), random_offset=d.split_seed,
            )  # fmt: skip

        train, val, test = _split(fake([]), d)
        randoms = self._random_transforms(resize=False)
        if randoms:  # the same images, with training's random transforms
            import torch

            train = torch.utils.data.Subset(fake(randoms), train.indices)
        return train, val, test

    def augmentation(self) -> tuple[tuple[float, float] | None, float, float, float, float]:
        """(crop scale or None, hflip, vflip, rotation, colour jitter) of training: the preset
        (data.augment; by default standard for image files, none for in-memory digits and fake)
        with the individual keys over it."""
        d = self.cfg.data
        preset = d.augment or ("standard" if d.name in ("image_folder", "cifar10") else "none")
        crop, hflip, rotation, jitter = AUGMENT[preset]
        scale = d.crop_scale or ((0.08, 1.0) if crop else None)
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return scale, pick(d.hflip, hflip), d.vflip, pick(d.rotation, rotation), pick(d.color_jitter, jitter)

    def _random_transforms(self, resize: bool) -> list:
        """The random part of training's transform (torchvision v1 transforms on PIL images or
        tensors; the runtime seeds each batch, so resume is exact)."""
        from torchvision import transforms

        s = self.cfg.data.image_size
        scale, hflip, vflip, rotation, jitter = self.augmentation()
        out = []
        if scale is not None:
            out.append(transforms.RandomResizedCrop(s, scale=scale, antialias=True))
        elif resize:
            out += [transforms.Resize(int(round(s * 256 / 224)), antialias=True), transforms.CenterCrop(s)]
        if hflip:
            out.append(transforms.RandomHorizontalFlip(hflip))
        if vflip:
            out.append(transforms.RandomVerticalFlip(vflip))
        if rotation:
            out.append(transforms.RandomRotation(rotation))
        if jitter:
            out.append(transforms.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        return out

    def _transforms(self):
        from torchvision import transforms

        s = self.cfg.data.image_size
        norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train = transforms.Compose([*self._random_transforms(resize=True), transforms.ToTensor(), norm])
        val = transforms.Compose(
            [
                transforms.Resize(int(round(s * 256 / 224)), antialias=True),
                transforms.CenterCrop(s),
                transforms.ToTensor(),
                norm,
            ]
        )
        return train, val

    def _data_image_folder(self):
        """train/ + val/ (+ test/), or train/ (+ test/), or one folder of class folders, with
        validation drawn from train (``data.val_fraction`` of each class, under ``data.split_seed``)."""
        d = self.cfg.data
        dirs = self.image_folder_dirs(Path(d.root))
        classes = _class_dirs(dirs["train"])
        train_tf, val_tf = self._transforms()
        samples = {}
        for split, folder in dirs.items():
            found = _scan_images(folder, classes)
            if d.skip_bad:
                # Up front, so the dataset has the same length in every attempt (exact resume)
                # and on every rank: the same files fail each time.
                found = _decodable(found, folder)
            if not found:
                raise ConfigError(f"{folder} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")
            samples[split] = found
        if "val" not in samples:
            kept, held = stratified([label for _, label in samples["train"]], d.val_fraction, d.split_seed)
            train = samples["train"]
            samples["train"], samples["val"] = [train[i] for i in kept], [train[i] for i in held]
        return (
            ImageFiles(samples["train"], train_tf),
            ImageFiles(samples["val"], val_tf) if samples["val"] else None,
            ImageFiles(samples["test"], val_tf) if "test" in samples else None,
        )

    def _data_cifar10(self):
        """CIFAR-10's training set, and its test set as the validation split."""
        d = self.cfg.data
        train_tf, val_tf = self._transforms()
        train = torchvision_split("cifar10", d.root, True, d.download, train_tf)
        return train, torchvision_split("cifar10", d.root, False, d.download, val_tf)

    def _grey_transforms(self):
        """(train, val) for 28x28 grey digits/clothes: 3 equal channels at data.image_size, (x - 0.5) / 0.5."""
        from torchvision import transforms

        s = self.cfg.data.image_size
        head = [transforms.Grayscale(3), transforms.Resize((s, s), antialias=True)]
        tail = [transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
        return (transforms.Compose([*head, *self._random_transforms(resize=False), *tail]),
                transforms.Compose([*head, *tail]))  # fmt: skip

    def _data_mnist(self):
        """MNIST's training set, and its test set as the validation split (as CIFAR-10's)."""
        d = self.cfg.data
        train_tf, val_tf = self._grey_transforms()
        train = torchvision_split(d.name, d.root, True, d.download, train_tf)
        return train, torchvision_split(d.name, d.root, False, d.download, val_tf)

    _data_fashion_mnist = _data_mnist

    # ------------------------------------------------------------------ the step
    def step(self, model, batch):
        import torch

        x, y = batch
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = self.classification_loss(logits, y)
        n = y.shape[0]
        sums = {
            "loss": loss.detach() * n,
            "correct": (logits.detach().argmax(1) == y).sum(),
            "count": n,
        }
        return loss, sums


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _check_files(samples: list[tuple[str, int]]) -> None:
    """What a stat can tell (in the parent, before anything starts): files of 0 bytes, and
    links or files that cannot be read."""
    bad = []
    for path, _ in samples:
        try:
            if os.stat(path).st_size == 0:
                bad.append((path, "is empty (0 bytes)"))
        except OSError as e:
            bad.append((path, f"cannot be read ({e.strerror or type(e).__name__})"))
    if bad:
        path, why = bad[0]
        more = f" (and {len(bad) - 1} more such files)" if len(bad) > 1 else ""
        raise ConfigError(
            f"image file {path} {why}{more}; remove or replace it, or pass data.skip_bad=true to skip such files"
        )


class UnreadableImage(LaunchError):
    """An image file that fails to decode during training: the run fails with this one line.

    Raised in a DataLoader worker process, torch re-raises it in the training process as
    ``UnreadableImage(<its report, the worker's traceback included>)``; only our line is kept."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Traceback" in message:
            lines = [line for line in message.splitlines() if marker in line]
            if lines:
                message = lines[-1].split(marker, 1)[1]
        super().__init__(message)


def load_image(path: str):
    """The RGB image in ``path`` (any PIL mode converted), or UnreadableImage naming the file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise UnreadableImage(
            f"cannot decode image file {path} ({_reason(e)}); remove or replace it, "
            "or pass data.skip_bad=true to skip the files that do not decode"
        ) from None


def _reason(e: BaseException) -> str:
    message = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _decodes(path: str) -> str | None:
    """None if ``path`` decodes, else why not. JPEGs are decoded at 1/8 scale (``draft``),
    which reads every byte (a truncated file fails) at about a third of the cost."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except Exception as e:
        return _reason(e)
    return None


def _decodable(samples: list[tuple[str, int]], where: Path) -> list[tuple[str, int]]:
    """``samples`` without the files that do not decode, with one warning line if any."""
    kept, bad = [], []
    for path, label in samples:
        why = _decodes(path)
        if why is None:
            kept.append((path, label))
        else:
            bad.append((path, why))
    if bad:
        path, why = bad[0]
        print(
            f"warning: data.skip_bad: skipped {len(bad)} of {len(samples)} image files in {where} that do not "
            f"decode; first: {path} ({why})",
            file=sys.stderr,
            flush=True,
        )
    return kept


class ImageFiles:
    """Map-style dataset of ``(image tensor, class index)`` over a fixed list of files. Picklable
    (loader worker processes)."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(load_image(path)), label


class Transformed:
    """``(transform(x), y)`` of a dataset of tensors (digits' training augmentation); draws from
    torch's generator, which the runtime seeds per batch."""

    def __init__(self, dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform
        self.targets = [int(y) for y in dataset.dataset.tensors[1][dataset.indices].tolist()]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return self.transform(x), y


def _split(ds, d):
    """Deterministic (train, val, test) of ``ds`` by ``data.val_fraction`` / ``data.test_fraction``
    that depends only on ``data.split_seed`` (not on run.seed); an empty split is None."""
    import torch

    parts = split_indices(len(ds), d.val_fraction, d.test_fraction, d.split_seed)
    train, val, test = (torch.utils.data.Subset(ds, idx) if idx else None for idx in parts)
    if train is None:
        raise ConfigError(f"data.val_fraction and data.test_fraction leave none of the {len(ds)} samples for training")
    return train, val, test
