"""One source for every setting: the flags come from TrainConfig, each choice list is written
once, recipes resolve with explicit flags on top."""

import ast
import dataclasses
import glob
import os
import subprocess
import sys

import pytest

from alexnet_tf import config as cfg
from helpers import ROOT


def _choice_lists() -> dict:
    """The module-level tuples of strings in config.py, by name."""
    return {name: value for name, value in vars(cfg).items()
            if name.isupper() and isinstance(value, tuple) and value
            and all(isinstance(v, str) for v in value)}


def _source_files() -> list:
    files = [os.path.join(ROOT, "main.py")]
    for folder in ("alexnet_tf", "data_pipeline", "export", "bench"):
        files += glob.glob(os.path.join(ROOT, folder, "*.py"))
    return [f for f in files if not f.endswith(os.path.join("alexnet_tf", "config.py"))]


def test_each_choice_list_is_written_once():
    lists = {value: name for name, value in _choice_lists().items() if len(value) > 1}
    assert {"VARIANT_NAMES", "DATASETS", "INITS", "LRN_IMPLEMENTATIONS", "STRATEGIES", "PRECISIONS",
            "WEIGHT_LAYERS", "QUANTIZATIONS"} <= set(lists.values())
    repeated = []
    for path in _source_files():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)) and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                values = tuple(e.value for e in node.elts)
                if values in lists:
                    repeated.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {lists[values]}")
    assert not repeated, repeated


def test_library_lists_agree_with_config():
    from alexnet_tf import model
    assert tuple(model.VARIANTS) == cfg.VARIANT_NAMES
    assert {spec.default_init for spec in model.VARIANTS.values()} <= set(cfg.INITS)


def test_every_train_field_is_a_flag_with_its_default_and_choices():
    import main
    fields = {f.name: f for f in dataclasses.fields(cfg.TrainConfig)}
    flags = {f.field: f for f in cfg.train_flags()}
    assert set(fields) - set(flags) == {"verbose"}
    for name, flag in flags.items():
        absl_flag = main.FLAGS[flag.name]
        assert absl_flag.default == fields[name].default, name
        choices = fields[name].metadata["choices"]
        if choices:
            assert list(absl_flag.parser.enum_values) == list(choices), name
        assert flag.name in main.command_flags("train")


def _parsed(*argv):
    import main
    main.FLAGS.unparse_flags()
    main.FLAGS(["main.py", *argv])
    try:
        return main.train_config()
    finally:
        main.FLAGS.unparse_flags()


def test_recipe_with_flags_on_top():
    config = _parsed("train", "--recipe=cifar10", "--epochs=3", "--lrn_impl=builtin")
    assert config.recipe == "cifar10"
    assert config.epochs == 3 and config.lrn_implementation == "builtin"
    assert (config.learning_rate, config.lr_schedule, config.label_smoothing, config.ema_decay) == (
        0.04, "cosine", 0.1, 0.998)
    long = _parsed("train", "--recipe=cifar10-long", "--learning_rate=0.02")
    assert (long.epochs, long.cutout, long.weight_decay, long.learning_rate) == (100, 12, 0.001, 0.02)
    plain = _parsed("train", "--epochs=2")
    assert plain == dataclasses.replace(cfg.TrainConfig(), epochs=2)


def test_finetune_recipe_takes_the_variant_of_its_source():
    config = _parsed("train", "--recipe=finetune", "--init_from=runs/x", "--data_dir=photos")
    assert config.model is None and config.trainable_from == "fc6" and config.dataset == "folder"
    assert _parsed("train", "--recipe=cifar10", "--init_from=runs/x").model == "cifar"


def test_unknown_recipe_or_setting():
    with pytest.raises(ValueError, match="Received: recipe='fast'"):
        cfg.recipe_config("fast")
    with pytest.raises(ValueError, match="learning_rat"):
        cfg.recipe_config("cifar10", learning_rat=0.1)


def test_recipes_command_and_recipe_help():
    def run(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    listing = run("recipes")
    assert listing.returncode == 0, listing.stderr
    for name, values in cfg.RECIPES.items():
        assert f"{name}:" in listing.stdout
    assert "--cutout=12" in listing.stdout and "--ema_decay=0.998" in listing.stdout
    help_text = run("train", "--recipe=cifar10-long", "--help").stdout
    epochs = help_text[help_text.index("--epochs:"):].splitlines()[1]
    assert "(default: 100)" in epochs
