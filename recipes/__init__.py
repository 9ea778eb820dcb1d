"""Built-in recipes, registered lazily as ``module:Class`` so that listing them imports no torch."""

BUILTIN: dict[str, str] = {
    "resnet_finetune": "recipes.resnet_finetune:ResNetFinetune",
    "sequence": "recipes.sequence:Sequence",
    "yesno": "recipes.yesno:YesNo",
}
