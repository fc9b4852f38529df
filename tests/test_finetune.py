"""Fine-tuning: `train --init_from` loads a run's weights (fc8 new when the classes differ),
`--trainable_from` freezes the layers before it, and a resumed run does not reload."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import finetune, rundir
from alexnet_tf.config import WEIGHT_LAYERS
from alexnet_tf.finetune import freeze_before
from alexnet_tf.model import build_alexnet
from alexnet_tf.train_step import make_replica_step
from alexnet_tf.training import TrainConfig, train

BASE = dict(dataset="synthetic", synthetic_examples=64, batch_size=16, epochs=1, steps_per_epoch=2,
            learning_rate=0.01, verbose=0)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("finetune") / "source")
    train(TrainConfig(model="cifar", num_classes=3, model_dir=model_dir, **BASE))
    return model_dir


def layer_weights(path, num_classes):
    model = build_alexnet("cifar", num_classes)
    model.load_weights(path)
    return {name: model.get_layer(name).get_weights() for name in WEIGHT_LAYERS}


def test_frozen_layers_stay_bit_identical_and_fc8_is_new(source_run, tmp_path):
    model_dir = str(tmp_path / "tuned")
    train(TrainConfig(model=None, num_classes=4, init_from=source_run, trainable_from="conv4",
                      weight_decay=0.01, model_dir=model_dir, **BASE))
    before = layer_weights(os.path.join(source_run, "best.weights.h5"), 3)
    after = layer_weights(os.path.join(model_dir, "latest.weights.h5"), 4)
    for name in ("conv1", "conv2", "conv3"):
        for a, b in zip(after[name], before[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    for name in ("conv4", "conv5", "fc6", "fc7"):
        assert not np.array_equal(after[name][0], before[name][0]), name
    assert after["fc8"][0].shape == (1024, 4)
    info = rundir.read_run_info(model_dir)
    assert info["variant"] == "cifar" and info["trainable_from"] == "conv4"
    assert info["init_from"]["weights"].endswith("best.weights.h5")


def test_same_classes_load_every_layer_and_other_names_renew_fc8(source_run):
    init = finetune.read_init_source(source_run)
    model = build_alexnet("cifar", 3, seed=123)
    message = finetune.load_init_weights(model, init, list(init.class_names))
    assert "fc8 is new" not in message
    source = build_alexnet("cifar", 3)
    source.load_weights(init.weights)
    for a, b in zip(model.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = build_alexnet("cifar", 3, seed=123)
    message = finetune.load_init_weights(other, init, ["x", "y", "z"])
    assert "fc8 is new" in message
    assert not np.array_equal(other.get_layer("fc8").get_weights()[0],
                              source.get_layer("fc8").get_weights()[0])
    np.testing.assert_array_equal(other.get_layer("fc7").get_weights()[0],
                                  source.get_layer("fc7").get_weights()[0])


def _filter_gradients_in_step(trainable_from):
    model = build_alexnet("cifar", 3, lrn_implementation="builtin")
    freeze_before(model, trainable_from)
    import keras
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = make_replica_step(model, optimizer, variant="cifar", global_batch=4, top_k=3)
    strategy = tf.distribute.get_strategy()
    fn = tf.function(lambda x, y, s: strategy.run(step, args=(x, y, s)))
    graph = fn.get_concrete_function(tf.TensorSpec([4, 32, 32, 3], tf.uint8),
                                     tf.TensorSpec([4], tf.int32), tf.TensorSpec([], tf.int64)).graph
    ops = [op.type for g in [graph] + [f.graph for f in graph._functions.values()
                                      if hasattr(f, "graph")] for op in g.get_operations()]
    return sum(t == "Conv2DBackpropFilter" for t in ops)


def test_frozen_layers_have_no_kernel_gradient_ops():
    # cifar has five convolutions; frozen from conv4 on only conv4 and conv5 get one.
    assert _filter_gradients_in_step(None) == 5
    assert _filter_gradients_in_step("conv4") == 2
    assert _filter_gradients_in_step("fc6") == 0


def test_resumed_fine_tuning_does_not_reload_init_from(source_run, tmp_path, capsys):
    copy = str(tmp_path / "source-copy")
    shutil.copytree(source_run, copy)
    model_dir = str(tmp_path / "tuned")
    config = TrainConfig(model=None, num_classes=4, init_from=copy, trainable_from="fc6",
                         model_dir=model_dir, **dict(BASE, verbose=1))
    train(config)
    shutil.rmtree(copy)  # a resume that read it again would fail
    capsys.readouterr()
    summary = train(TrainConfig(**{**config.__dict__, "epochs": 2}))
    out = capsys.readouterr().out
    assert "Resuming from" in out and "Initialised" not in out
    assert summary["epochs"] == 2


def test_init_from_errors(source_run, tmp_path):
    with pytest.raises(ValueError, match="--model=owt differs"):
        train(TrainConfig(model="owt", init_from=source_run, model_dir=str(tmp_path / "a"), **BASE))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(TrainConfig(model=None, init_from=str(tmp_path / "nothing"),
                          model_dir=str(tmp_path / "b"), **BASE))
