"""Built-in recipes, registered lazily as ``module:Class`` so that listing them imports no torch."""

BUILTIN: dict[str, str] = {
    "resnet_finetune": "recipes.resnet_finetune:ResNetFinetune",
    "sequence": "recipes.sequence:Sequence",
    "yesno": "recipes.yesno:YesNo",
}

# A `recipes/` folder of the user's (in the working directory, or anywhere on sys.path) adds its
# modules to this package: `recipe=recipes.mine:Mine` finds ./recipes/mine.py, while the built-ins
# above are never shadowed (this package comes first; see launcher/__init__.py).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
