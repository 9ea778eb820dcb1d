"""Config layering, value parsing, validation errors, the config hash and resume-safe diffs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launcher import config as cfgmod
from launcher.cli import resolve_from_argv
from launcher.errors import ConfigError, LaunchError
from launcher.recipe_loader import load_recipe
from tests.conftest import TINY

RESNET = load_recipe("resnet_finetune")
TINY_CLS = load_recipe(TINY)


def resolve(*pairs: str, files: list[dict] | None = None, recipe: str = "resnet_finetune"):
    """Resolve ``recipe`` with ``key=value`` strings (as on the command line)."""
    cls = RESNET if recipe == "resnet_finetune" else TINY_CLS
    overrides = [cfgmod.split_override(p) for p in pairs]
    return cfgmod.resolve(cls, files or [], [("recipe", recipe), *overrides])


def config_error(*pairs: str, **kw) -> str:
    with pytest.raises(ConfigError) as exc:
        resolve(*pairs, **kw)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- layering


def test_schema_defaults_apply_where_nothing_else_sets_a_key():
    cfg = resolve(recipe=TINY)
    # Tiny sets neither: schema defaults.
    assert cfg.train.momentum == 0.9
    assert cfg.train.optimizer == "sgd"
    assert cfg.checkpoint.keep_last == 2
    assert cfg.dist.procs == 1


def test_recipe_defaults_override_schema_defaults():
    cfg = resolve(recipe=TINY)
    assert cfg.train.lr == 0.05  # schema default is 0.1
    assert cfg.train.epochs == 2  # schema default is 1
    assert cfg.train.batch_size == 8  # schema default is 64
    r = resolve()
    assert r.train.scheduler == "cosine"  # schema default is none
    assert r.checkpoint.monitor == "val/acc" and r.checkpoint.mode == "max"


def test_config_file_overrides_recipe_defaults_and_keeps_the_rest():
    cfg = resolve(recipe=TINY, files=[{"train": {"lr": 0.2}}])
    assert cfg.train.lr == 0.2
    # Deep merge: the other recipe defaults of train.* survive.
    assert cfg.train.epochs == 2
    assert cfg.train.batch_size == 8


def test_later_config_files_override_earlier_ones():
    first = {"train": {"lr": 0.2, "batch_size": 4}, "run": {"seed": 7}}
    second = {"train": {"lr": 0.3}}
    cfg = resolve(recipe=TINY, files=[first, second])
    assert cfg.train.lr == 0.3
    assert cfg.train.batch_size == 4
    assert cfg.run.seed == 7
    assert resolve(recipe=TINY, files=[second, first]).train.lr == 0.2


def test_key_value_overrides_config_files():
    cfg = resolve("train.lr=0.4", recipe=TINY, files=[{"train": {"lr": 0.2, "batch_size": 4}}])
    assert cfg.train.lr == 0.4
    assert cfg.train.batch_size == 4


def test_later_key_value_wins():
    assert resolve("train.lr=0.2", "train.lr=0.3").train.lr == 0.3


def test_cli_layers_by_kind_not_by_position(tmp_path):
    a = write(tmp_path / "a.yaml", "train:\n  lr: 0.2\n  batch_size: 4\n  epochs: 3\n")
    b = write(tmp_path / "b.yaml", "train:\n  lr: 0.3\n")
    # key=value given *before* the config files still wins; b.yaml (later) beats a.yaml.
    tokens = ("train.epochs=5", "recipe=resnet_finetune", f"config={a}", f"config={b}")
    spec, cls, cfg, overrides = resolve_from_argv(tokens, [])
    assert spec == "resnet_finetune" and cls is RESNET
    assert cfg.train.epochs == 5
    assert cfg.train.lr == 0.3
    assert cfg.train.batch_size == 4
    assert overrides == [("train.epochs", "5")]


def test_recipe_can_come_from_a_config_file(tmp_path):
    f = write(tmp_path / "exp.yaml", "recipe: resnet_finetune\ntrain:\n  lr: 0.02\n")
    spec, cls, cfg, _ = resolve_from_argv((f"config={f}",), [])
    assert spec == "resnet_finetune" and cls is RESNET
    assert cfg.recipe == "resnet_finetune"
    assert cfg.train.lr == 0.02


def test_a_mapping_for_a_section_merges_into_it():
    # `train={lr: 0.01}` sets train.lr; the recipe's scheduler, epochs, weight decay stay
    default = resolve()
    cfg = resolve("train={lr: 0.01}")
    assert cfg.train.lr == 0.01
    assert cfg.train.scheduler == default.train.scheduler == "cosine"
    assert cfg.train.epochs == default.train.epochs and cfg.train.batch_size == default.train.batch_size
    nested = resolve("train.early_stopping={patience: 7}", "train.early_stopping.monitor=val/loss")
    assert nested.train.early_stopping.patience == 7 and nested.train.early_stopping.monitor == "val/loss"
    # a later key=value still wins, and so does a later mapping
    assert resolve("train={lr: 0.01}", "train.lr=0.02").train.lr == 0.02
    assert resolve("train.lr=0.02", "train={lr: 0.03}").train.lr == 0.03
    # a plain dict-valued key (not a section) is replaced, not merged
    tree: dict = {"model": {"w": {"a": 1}}}
    cfgmod.set_dotted(tree, "model.w", {"b": 2})
    assert tree == {"model": {"w": {"b": 2}}}


def test_option_shorthands_are_layered_like_key_values():
    _, _, cfg, _ = resolve_from_argv(
        ("recipe=resnet_finetune",),
        [("dist.procs", "2", "--procs 2"), ("train.precision", "bf16-mixed", "--precision bf16-mixed")],
    )
    assert cfg.dist.procs == 2
    assert cfg.train.precision == "bf16-mixed"


# --------------------------------------------------------------------------- value parsing


def test_string_keys_stay_verbatim():
    cfg = resolve("run.name=007", "data.root=0123")
    assert cfg.run.name == "007"
    assert cfg.data.root == "0123"
    assert cfg.model.weights == "none"


def test_scientific_notation_is_a_float():
    cfg = resolve("train.lr=1e-3", "train.weight_decay=5E-4", "train.min_lr=.5e-5")
    assert cfg.train.lr == pytest.approx(0.001) and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(5e-4)
    assert cfg.train.min_lr == pytest.approx(5e-6)


def test_lists_ints_and_bools_are_parsed():
    cfg = resolve(
        "train.scheduler=multistep",
        "train.milestones=[10,20]",
        "train.epochs=3",
        "run.deterministic=true",
        "log.backends=[jsonl]",
        "train.betas=[0.8,0.99]",
    )
    assert cfg.train.milestones == [10, 20]
    assert cfg.train.epochs == 3
    assert cfg.run.deterministic is True
    assert cfg.log.backends == ["jsonl"]
    assert cfg.train.betas == (0.8, 0.99)


def test_numbers_stay_lax_where_that_is_safe():
    # YAML 1.1 reads `1e-3` (no dot) and quoted digits as strings: still numbers for number keys
    cfg = resolve(recipe=TINY, files=[{"train": {"lr": "1e-3", "epochs": "3"}, "run": {"name": 7}}])
    assert cfg.train.lr == 0.001 and cfg.train.epochs == 3
    assert cfg.run.name == "7"  # numbers for strings
    assert resolve("train.lr=1").train.lr == 1.0  # an int for a float
    assert resolve("run.seed=4294967295").run.seed == 2**32 - 1  # numpy's largest seed
    assert resolve("run.deterministic=true", "data.pin_memory=false").data.pin_memory is False


def test_bounds_errors_name_the_key_and_an_example():
    assert config_error("train.lr=.inf") == "bad value train.lr=inf: Input should be a finite number; e.g. train.lr=0.1"
    assert "e.g. train.betas=[0.9,0.999]" in config_error("train.betas=[.nan,0.9]")
    assert config_error("train.epochs=false").endswith("Input should be a number, not true/false; e.g. train.epochs=1")
    assert "e.g. train.max_steps=null" in config_error("train.max_steps=")
    msg = config_error("train.lr=" + "1" * 400)
    assert len(msg) < 200 and "..." in msg  # a huge value is shortened, still one line


def test_null_clears_optional_keys():
    cfg = resolve("train.grad_clip=1.0", "train.grad_clip=null", "data.num_classes=null", "run.name=null")
    assert cfg.train.grad_clip is None
    assert cfg.data.num_classes is None
    assert cfg.run.name is None
    assert resolve("train.max_steps=~").train.max_steps is None


def test_parse_value_directly():
    cls = cfgmod.config_class(RESNET)
    assert cfgmod.parse_value(cls, "run.name", "007") == "007"
    assert cfgmod.parse_value(cls, "run.name", "null") is None
    assert cfgmod.parse_value(cls, "run.output_dir", "null") == "null"  # plain str: verbatim
    assert cfgmod.parse_value(cls, "train.lr", "1e-3") == 0.001
    assert cfgmod.parse_value(cls, "train.epochs", "3") == 3
    assert cfgmod.parse_value(cls, "train.milestones", "[10, 20]") == [10, 20]
    assert cfgmod.parse_value(cls, "train.grad_clip", "null") is None


def test_split_override():
    assert cfgmod.split_override("train.lr=0.1") == ("train.lr", "0.1")
    assert cfgmod.split_override("run.name=a=b") == ("run.name", "a=b")
    assert cfgmod.split_override("run.name=") == ("run.name", "")
    for bad in ("train.lr", "=3", ""):
        with pytest.raises(ConfigError, match="expected key=value"):
            cfgmod.split_override(bad)


# --------------------------------------------------------------------------- errors


def test_config_error_is_a_launch_error():
    assert issubclass(ConfigError, LaunchError)


def test_unknown_key_suggests_the_close_key():
    msg = config_error("train.lrr=0.1")
    assert "'train.lrr'" in msg
    assert "did you mean train.lr?" in msg


def test_bare_leaf_key_suggests_its_section():
    msg = config_error("lr=0.1")
    assert "'lr'" in msg
    assert "did you mean train.lr?" in msg


def test_unknown_key_without_a_close_match_points_at_show_config():
    msg = config_error("zzz.qqq=1")
    assert "unknown config key 'zzz'" in msg
    assert "--show-config" in msg
    assert "did you mean" not in msg


def test_unknown_recipe_specific_key_suggests_within_the_recipe():
    msg = config_error("model.arh=resnet34")
    assert "did you mean model.arch?" in msg


def test_wrong_type():
    msg = config_error("train.epochs=abc")
    assert "train.epochs" in msg and "abc" in msg
    assert "integer" in msg


@pytest.mark.parametrize(
    ("pair", "needle"),
    [
        ("train.lr=-0.1", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.momentum=1.0", "train.momentum"),
        ("train.precision=fp8", "train.precision"),
        ("dist.device=tpu", "dist.device"),
        ("model.arch=resnet19", "model.arch"),
        ("run.name=a/b", "run.name"),
        ("train.milestones=[20,10]", "increasing"),
    ],
)
def test_bad_values(pair, needle):
    msg = config_error(pair)
    assert needle in msg


def test_negative_lr_message_names_the_bound():
    msg = config_error("train.lr=-1")
    assert msg.startswith("bad value train.lr=-1:")
    assert "greater than 0" in msg


def test_multistep_needs_milestones():
    msg = config_error("train.scheduler=multistep")
    assert "train.scheduler=multistep needs train.milestones" in msg
    # ... and is fine with them.
    assert resolve("train.scheduler=multistep", "train.milestones=[5]").train.milestones == [5]


def test_unknown_log_backend():
    msg = config_error("log.backends=[jsonl,mlflow]")
    assert "unknown log backend 'mlflow'" in msg
    assert all(b in msg for b in ("jsonl", "console", "wandb", "tensorboard"))


def test_several_problems_are_counted_on_one_line():
    msg = config_error("train.lr=-1", "train.epochs=0", "train.batch_size=0")
    assert "(and 2 more problems)" in msg
    assert "(and 1 more problem)" in config_error("train.lr=-1", "train.epochs=0")


def test_recipe_check_errors_are_config_errors():
    msg = config_error("data.num_classes=5")
    assert "data.num_classes=5" in msg and "10 classes" in msg


def test_bad_yaml_file(tmp_path):
    f = write(tmp_path / "bad.yaml", "train:\n  lr: 0.1\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError) as exc:
        cfgmod.load_yaml_file(f)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "not valid YAML" in msg and f in msg
    assert "(line " in msg


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not found") as exc:
        cfgmod.load_yaml_file(missing)
    assert missing in str(exc.value)
    # A directory is not a config file either.
    with pytest.raises(ConfigError, match="is a directory"):
        cfgmod.load_yaml_file(str(tmp_path))


@pytest.mark.parametrize("text", ["- a\n- b\n", "42\n", "just a string\n"])
def test_config_file_must_be_a_mapping(tmp_path, text):
    f = write(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        cfgmod.load_yaml_file(f)


@pytest.mark.parametrize("text", ["", "\n", "# train:\n#   lr: 0.1\n"])
def test_empty_config_file_is_refused(tmp_path, text):
    f = write(tmp_path / "empty.yaml", text)
    with pytest.raises(ConfigError, match=r"is empty \(or only comments\)") as exc:
        cfgmod.load_yaml_file(f)
    assert f in str(exc.value) and "\n" not in str(exc.value)


def test_explicitly_empty_mapping_and_empty_sections_set_nothing(tmp_path):
    assert cfgmod.load_yaml_file(write(tmp_path / "a.yaml", "{}\n")) == {}
    # `train:` with every key commented out, an empty nested section, `recipe:` left blank
    layer = cfgmod.load_yaml_file(write(tmp_path / "b.yaml", "recipe:\ntrain:\n  early_stopping:\n# lr: 1\nrun:\n"))
    assert layer == {"train": {}}
    assert resolve(recipe=TINY, files=[layer]).train.lr == 0.05


def test_utf8_bom_and_merge_keys_are_fine(tmp_path):
    f = tmp_path / "bom.yaml"
    f.write_bytes("\ufefftrain:\n  lr: 0.3\n".encode())
    assert cfgmod.load_yaml_file(str(f)) == {"train": {"lr": 0.3}}
    # a key given next to `<<:` overrides the merged one: not a duplicate
    text = "train: &t\n  lr: 0.2\n  epochs: 3\nrun:\n  seed: 1\nlog: {}\n"
    layer = cfgmod.load_yaml_file(write(tmp_path / "m.yaml", text))
    assert layer["train"] == {"lr": 0.2, "epochs": 3}
    from launcher import yamlio

    assert yamlio.load("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")["other"] == {"x": 3, "y": 2}


def test_yaml_refuses_duplicates_cycles_bombs_and_deep_nesting():
    from launcher import yamlio

    with pytest.raises(yamlio.RefusedYAML, match=r"sets 'a.b' twice") as exc:
        yamlio.load("a:\n  b: 1\n  c: 2\n  b: 3\n")
    assert exc.value.where == " (lines 2 and 4)"
    with pytest.raises(yamlio.RefusedYAML, match="alias inside the value it names"):
        yamlio.load("a: &x {b: *x}\n")
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    with pytest.raises(yamlio.RefusedYAML, match="expands to more than"):
        yamlio.load(laughs)
    with pytest.raises(yamlio.RefusedYAML, match="nests deeper"):
        yamlio.load("a: " + "[" * 150 + "]" * 150)
    # aliases within the limit are fine, and are plain YAML
    assert yamlio.load("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}


def test_config_file_over_the_size_limit_is_refused(tmp_path):
    f = write(tmp_path / "big.yaml", "train:\n  lr: 0.1\n" + "#" * cfgmod.MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=r"big.yaml is \d+ bytes"):
        cfgmod.load_yaml_file(f)


def test_unknown_key_in_a_config_file_is_reported(tmp_path):
    f = write(tmp_path / "exp.yaml", "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'; did you mean train.lr\?"):
        resolve_from_argv(("recipe=resnet_finetune", f"config={f}"), [])


# --------------------------------------------------------------------------- YAML round trip


def test_to_yaml_round_trips():
    cfg = resolve("train.lr=1e-3", "run.name=007", "train.scheduler=multistep", "train.milestones=[10,20]")
    back = yaml.safe_load(cfgmod.to_yaml(cfg))
    assert back["run"]["name"] == "007"
    assert back["train"]["lr"] == 0.001
    assert back["train"]["milestones"] == [10, 20]
    again = cfgmod.validate(cfgmod.config_class(RESNET), back)
    assert again == cfg


def test_fast_yaml_reads_and_writes_what_pyyaml_does_and_only_the_safe_subset():
    from launcher import yamlio

    cfg = resolve("run.name=007", "train.milestones=[10,20]", "log.wandb.tags=[a b, 'x: y']", "train.lr=1e-3")
    plain = cfgmod.to_plain(cfg)
    assert yamlio.dump(plain) == yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)
    text = yamlio.dump(plain)
    assert yamlio.load(text) == yaml.safe_load(text) == plain
    for raw in ("0.1", "1e-3", "[1, 2]", "null", "'007'", "yes", "{a: 1}"):
        assert yamlio.load(raw) == yaml.safe_load(raw), raw
    with pytest.raises(yamlio.YAMLError):
        yamlio.load("!!python/object/apply:os.system ['true']")


# --------------------------------------------------------------------------- hash and diffs


def test_config_hash_is_stable():
    assert cfgmod.config_hash(resolve()) == cfgmod.config_hash(resolve())
    assert len(cfgmod.config_hash(resolve())) == 8


@pytest.mark.parametrize(
    "pair",
    [
        "log.quiet=true",
        "log.backends=[jsonl]",
        "checkpoint.keep_last=5",
        "checkpoint.every_steps=10",
        "data.num_workers=4",
        "run.name=foo",
        "run.output_dir=elsewhere",
    ],
)
def test_config_hash_ignores_operational_keys(pair):
    assert cfgmod.config_hash(resolve(pair)) == cfgmod.config_hash(resolve())


@pytest.mark.parametrize(
    "pair", ["train.lr=0.01", "train.epochs=2", "model.arch=resnet34", "run.seed=1", "data.root=/other/data"]
)
def test_config_hash_changes_with_results_keys(pair):
    assert cfgmod.config_hash(resolve(pair)) != cfgmod.config_hash(resolve())


def test_split_diff_separates_safe_from_unsafe():
    old = cfgmod.to_plain(resolve())
    new = cfgmod.to_plain(resolve("train.epochs=9", "train.lr=0.01", "log.quiet=true"))
    diff = cfgmod.diff_configs(old, new)
    assert set(diff) == {"train.epochs", "train.lr", "log.quiet"}
    assert diff["train.lr"] == (RESNET.defaults["train"]["lr"], 0.01)
    unsafe, safe = cfgmod.split_diff(diff)
    assert set(unsafe) == {"train.lr"}
    assert set(safe) == {"train.epochs", "log.quiet"}
    assert safe["train.epochs"] == (RESNET.defaults["train"]["epochs"], 9)


def test_identical_configs_have_no_diff():
    assert cfgmod.diff_configs(cfgmod.to_plain(resolve()), cfgmod.to_plain(resolve())) == {}


def test_resolve_does_not_mutate_recipe_defaults_or_file_layers():
    before = yaml.safe_dump(RESNET.defaults)
    layer = {"train": {"batch_size": 4}, "model": {"arch": "resnet34"}}
    with pytest.raises(ConfigError):
        resolve("train.lrr=1")
    resolve("train.lr=0.3", "model.weights=DEFAULT", files=[layer])
    assert yaml.safe_dump(RESNET.defaults) == before
    assert layer == {"train": {"batch_size": 4}, "model": {"arch": "resnet34"}}
    # A later resolve in the same process sees the pristine defaults.
    cfg = resolve()
    assert cfg.train.lr == RESNET.defaults["train"]["lr"]
    assert cfg.model.weights == "none"
