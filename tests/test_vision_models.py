"""model.arch: any torchvision classifier, its head found generically, fine-tuning keys
(freeze_backbone, backbone_lr_mult, head_dropout, model.freeze, model.init) for the families
users fine-tune, pretrained weights from a file loaded into all but the head."""

from __future__ import annotations

import pytest
import torch

from launcher.config import resolve
from launcher.recipe_loader import load_recipe
from tests.conftest import launch_here

RESNET = load_recipe("resnet_finetune")
FAMILIES = {  # arch -> its head's name
    "resnet18": "fc",
    "vgg11": "classifier.6",
    "densenet121": "classifier",
    "mobilenet_v3_small": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "convnext_tiny": "classifier.2",
    "vit_b_32": "heads.head",
    "swin_t": "head",
    "squeezenet1_1": "classifier.1",
    "regnet_x_400mf": "fc",
}


def _recipe(*pairs: str):
    cfg = resolve(
        RESNET, [], [("recipe", "resnet_finetune"), ("data.image_size", "32"), *(p.split("=", 1) for p in pairs)]
    )
    return RESNET(cfg), cfg


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_head_is_found_and_fine_tuning_keys_act_on_it(arch):
    from launcher.runtime.optim import param_groups

    recipe, cfg = _recipe(f"model.arch={arch}", "model.freeze_backbone=true", "model.head_dropout=0.3")
    model = recipe.build_model()
    head = FAMILIES[arch]
    assert recipe.head == [head + "."]
    assert isinstance(model.get_submodule(head)[0], torch.nn.Dropout)  # Dropout, then the head
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(head + ".") for n in trainable)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # train.backbone_lr_mult: the head at train.lr, the rest scaled
    recipe, cfg = _recipe(f"model.arch={arch}", "train.backbone_lr_mult=0.1", "train.lr=0.5")
    model = recipe.build_model()
    groups = param_groups(model, cfg.train, recipe.head)
    heads = {id(p) for n, p in model.named_parameters() if n.startswith(FAMILIES[arch] + ".")}
    for g in groups:
        in_head = {id(p) in heads for p in g["params"]}
        assert len(in_head) == 1 and g["lr"] == (0.5 if in_head == {True} else pytest.approx(0.05))


def test_pretrained_weights_from_a_file_fill_everything_but_the_head(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    source = torchvision.models.mobilenet_v3_small()  # 1000 classes
    path = tmp_path / "mnv3.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    recipe, _ = _recipe("model.arch=mobilenet_v3_small", f"model.weights={path}")
    model = recipe.build_model()
    got, want = model.state_dict(), source.state_dict()
    assert got["classifier.3.weight"].shape == (10, 1024)
    assert all(got[k].equal(want[k]) for k in want if not k.startswith("classifier.3."))


def test_freeze_and_init(tmp_path):
    from launcher.errors import ConfigError
    from launcher.runtime.worker import freeze, initialise

    recipe, _ = _recipe()
    model = recipe.build_model()
    freeze(model, ["conv1", "bn1", "layer1."])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.split(".")[0] in ("conv1", "bn1", "layer1")}
    with pytest.raises(ConfigError, match="did you mean layer2"):
        freeze(model, ["layr2"])
    torch.manual_seed(0)
    initialise(model, "orthogonal")
    w = model.fc.weight  # (10, 512): orthonormal rows
    torch.testing.assert_close(w @ w.T, torch.eye(10), atol=1e-5, rtol=0)
    assert model.fc.bias.abs().sum() == 0 and model.bn1.weight.eq(1).all()  # biases zero, norms kept


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["model.arch=resnt50"], "did you mean resnet50?"),
        (["model.arch=vgg11", "model.weights=IMAGENET1K_V2"], "unknown weights"),
        (["model.init=kaiming_normal", "model.weights=DEFAULT"], "would overwrite model.weights"),
        (["model.arch=inception_v3", "train.max_steps=1"], "cannot take data.image_size=32"),
        (["model.freeze=[layr1]", "train.max_steps=1"], "did you mean layer1?"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = launch_here(["recipe=resnet_finetune", "run.name=bad", "log.quiet=true", *args, "--device", "cpu"], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "runs" / "resnet_finetune" / "bad").exists()


def test_another_family_trains_end_to_end(tmp_path):
    r = launch_here(["recipe=resnet_finetune", "model.arch=mobilenet_v3_small", "model.freeze_backbone=true",
                     "train.max_steps=3", "run.name=m", "log.quiet=true", "--device", "cpu"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    import json

    summary = json.loads((tmp_path / "runs" / "resnet_finetune" / "m" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["parameters"]["trainable"] == 1024 * 10 + 10
