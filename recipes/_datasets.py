"""torchvision's downloadable datasets for the built-in recipes, with one-line errors (offline,
not found) instead of torchvision's tracebacks. torch/torchvision are imported inside."""

from __future__ import annotations

from launcher.errors import ConfigError

# data.name -> (torchvision class, what to fetch by hand, class names); NAMES: how people write them
SOURCES = {
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz, extracted into {root}/",
                ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "mnist": ("MNIST", "the four *-ubyte.gz files of MNIST into {root}/MNIST/raw/", tuple(str(i) for i in range(10))),
    "fashion_mnist": ("FashionMNIST", "the four *-ubyte.gz files of Fashion-MNIST into {root}/FashionMNIST/raw/",
                      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot")),
}  # fmt: skip
NAMES = {"cifar10": "CIFAR-10", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def torchvision_split(name: str, root: str, train: bool, download: bool, transform=None):
    """The train (or test) split of torchvision's ``name`` dataset under ``root``."""
    from torchvision import datasets

    cls, by_hand, _ = SOURCES[name]
    try:
        return getattr(datasets, cls)(root, train=train, transform=transform, download=download)
    except OSError as e:  # URLError is an OSError: no network, DNS, proxy
        raise ConfigError(
            f"could not download {NAMES[name]} into data.root={root} ({getattr(e, 'reason', e)}); fetch "
            f"{by_hand.format(root=root)} on a machine with network"
        ) from None
    except RuntimeError as e:  # "Dataset not found", or a failed download torchvision reports so
        fix = "pass data.download=true" if not download else f"fetch {by_hand.format(root=root)}"
        raise ConfigError(
            f"{NAMES[name]} not found in data.root={root} ({str(e).strip().splitlines()[0]}); {fix}"
        ) from None
