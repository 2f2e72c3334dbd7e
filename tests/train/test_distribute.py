"""strokeseg.train.distribute: TF_CONFIG parsing, precision policy, global batches, and a real
two-process MultiWorkerMirroredStrategy run of model.fit on CPU."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from strokeseg.errors import ConfigError
from strokeseg.train import distribute
from strokeseg.train.distribute import (
    choose_strategy,
    global_batches,
    patch_multi_worker_reduce,
    precision_policy,
    set_precision,
    strategy_scope,
    tf_config,
    worker_info,
)

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")


def cluster_config(task_type="worker", index=0, workers=2, chief=False) -> str:
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


# ---------------------------------------------------------------------------------- TF_CONFIG

def test_no_tf_config_means_single_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config() is None
    assert worker_info() == (None, 0, True, 1)
    monkeypatch.setenv("TF_CONFIG", "   ")
    assert worker_info() == (None, 0, True, 1)


@pytest.mark.parametrize("task_type, index, chief, expected", [
    ("worker", 0, False, ("worker", 0, True, 2)),
    ("worker", 1, False, ("worker", 1, False, 2)),
    ("chief", 0, True, ("chief", 0, True, 3)),
    ("worker", 0, True, ("worker", 0, False, 3)),
])
def test_worker_info(monkeypatch, task_type, index, chief, expected):
    monkeypatch.setenv("TF_CONFIG", cluster_config(task_type, index, chief=chief))
    assert worker_info() == expected


@pytest.mark.parametrize("raw, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "'cluster'"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "non-empty list"),
    ('{"cluster": {"worker": ["h:1"]}}', "'task'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}', "task index 1"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}', "task index '0'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": true}}', "task index True"),
    ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}', "'ps'"),
    ('{"cluster": {"evaluator": ["h:1"]}, "task": {"type": "evaluator", "index": 0}}', "'worker'"),
    ('{"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}', "at most one"),
])
def test_bad_tf_config_is_a_config_error(monkeypatch, raw, fragment):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ConfigError, match="TF_CONFIG") as caught:
        worker_info()
    assert fragment in str(caught.value)
    with pytest.raises(ConfigError):  # before any strategy is created
        choose_strategy()


def test_default_strategy_without_tf_config_or_gpu(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: MirroredStrategy is expected instead")
    strategy = choose_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert patch_multi_worker_reduce(strategy) is strategy
    assert not hasattr(strategy, "_strokeseg_reduce_patched")
    with strategy_scope(strategy):
        pass


def test_non_tensorflow_backend_has_no_strategy(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert choose_strategy() is None
    with strategy_scope(None):
        pass


# ---------------------------------------------------------------------------------- precision

def test_precision_policy_resolution(monkeypatch):
    monkeypatch.setattr(distribute, "_gpu_visible", lambda: False)
    assert precision_policy("auto") == "float32"
    monkeypatch.setattr(distribute, "_gpu_visible", lambda: True)
    assert precision_policy("auto") == "mixed_float16"
    for name in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert precision_policy(name) == name


@pytest.mark.parametrize("name", ["float16", "bfloat16", "AUTO", "", None])
def test_unknown_precision_is_a_config_error(name):
    with pytest.raises(ConfigError, match="precision must be one of"):
        precision_policy(name)


def test_set_precision_sets_global_policy_and_loss_scaling(monkeypatch, restore_policy):
    monkeypatch.setattr(distribute, "_gpu_visible", lambda: False)
    assert set_precision("auto") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert set_precision("mixed_float16") == "mixed_float16"
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, dtype="float32")(keras.layers.Conv2D(2, 1)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    # Keras 3 wraps the optimizer itself under mixed_float16 (compile(auto_scale_loss=True)).
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


# ---------------------------------------------------------------------------------- global batches

def toy_batches(n: int, batch: int = 3) -> tf.data.Dataset:
    """n batches of (images (batch, 2, 2, 1), masks (batch, 2, 2, 1)); image values encode (k, j)."""
    images = np.arange(n * batch, dtype=np.float32).reshape(n, batch, 1, 1, 1) * np.ones((1, 1, 2, 2, 1), np.float32)
    masks = (images % 2 == 0).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, masks))


def as_list(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_global_batches_concatenates_consecutive_batches_in_order():
    original = as_list(toy_batches(7))
    grouped = global_batches(toy_batches(7), 2)
    assert grouped.element_spec[0].shape.as_list() == [6, 2, 2, 1]  # static: TF reads it
    assert grouped.element_spec[1].shape.as_list() == [6, 2, 2, 1]
    result = as_list(grouped)
    assert len(result) == 3  # the 7th batch is dropped by default
    for step, (x, y) in enumerate(result):
        np.testing.assert_array_equal(x, np.concatenate([original[2 * step][0], original[2 * step + 1][0]]))
        np.testing.assert_array_equal(y, np.concatenate([original[2 * step][1], original[2 * step + 1][1]]))
    policy = grouped.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_global_batches_keeps_remainder_on_request():
    original = as_list(toy_batches(7))
    result = as_list(global_batches(toy_batches(7), 3, drop_remainder=False))
    assert [x.shape[0] for x, _ in result] == [9, 9, 3]
    np.testing.assert_array_equal(result[-1][0], original[-1][0])


def test_global_batches_single_replica_is_identity():
    dataset = toy_batches(4)
    assert global_batches(dataset, 1) is dataset


@pytest.mark.parametrize("replicas", [0, -1, 1.5, True])
def test_global_batches_rejects_bad_replica_count(replicas):
    with pytest.raises(ConfigError, match="replicas"):
        global_batches(toy_batches(2), replicas)


# ---------------------------------------------------------------------------------- two workers

def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(tmp_path: Path, script: Path, arguments, count: int = 2, timeout: float = 240) -> None:
    """``count`` local worker processes of ``script`` (MWMS over 127.0.0.1), each with its own
    TF_CONFIG and ``arguments(index)``; fails with the workers' logs unless all exit with 0."""
    ports = free_ports(count)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    try:
        for index in range(count):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            logs.append(open(tmp_path / f"worker{index}.log", "wb"))
            processes.append(subprocess.Popen([sys.executable, str(script), *map(str, arguments(index))], env=env,
                                              cwd=REPO, stdout=logs[-1], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    report = "\n".join(f"--- worker {i} (rc {p.returncode}) ---\n"
                       + (tmp_path / f"worker{i}.log").read_text(errors="replace")[-3000:]
                       for i, p in enumerate(processes))
    assert all(p.returncode == 0 for p in processes), report


def test_two_cpu_workers_train_identically_with_fit(tmp_path):
    """Two local processes, MWMS over 127.0.0.1, one short epoch of model.fit each."""
    outputs = [tmp_path / f"worker{index}.npz" for index in range(2)]
    run_workers(tmp_path, WORKER, lambda index: [outputs[index]])
    assert all(path.exists() for path in outputs)

    w0, w1 = (np.load(path) for path in outputs)
    for w in (w0, w1):
        assert bool(w["mwms"])
        assert int(w["replicas"]) == 2 and int(w["n_workers"]) == 2
        assert str(w["precision"]) == "float32"
        assert int(w["iterations"]) == 3  # 6 per-replica batches = 3 global steps
    assert bool(w0["is_chief"]) and not bool(w1["is_chief"])
    assert list(w0["names"]) == list(w1["names"])
    n = len(w0["names"])
    changed = False
    for i in range(n):
        np.testing.assert_array_equal(w0[f"final_{i}"], w1[f"final_{i}"], err_msg=str(w0["names"][i]))
        np.testing.assert_array_equal(w0[f"initial_{i}"], w1[f"initial_{i}"], err_msg=str(w0["names"][i]))
        changed |= not np.array_equal(w0[f"initial_{i}"], w0[f"final_{i}"])
    assert changed, "training did not change any weight"
    assert float(w0["loss"]) == float(w1["loss"])
    # global_batches + DATA sharding: worker 0 trains on batches 0, 2, 4 and worker 1 on 1, 3, 5,
    # each given whole and unchanged.
    expected = {0: [0, 2, 4], 1: [1, 3, 5]}
    for worker, w in enumerate((w0, w1)):
        np.testing.assert_allclose(w["seen"], [[k + j / 10 for j in range(4)] for k in expected[worker]], atol=1e-6)


def test_two_cpu_workers_train_a_real_run_to_identical_weights(prepared_workdir, tmp_path):
    """The real training loop (stage-06 arrays, tf.data, checkpoints) under MWMS with two local
    workers: one short epoch; the chief's and the other worker's checkpoints are identical."""
    folder = tmp_path / "run"
    run_workers(tmp_path, Path(__file__).with_name("training_worker.py"), lambda index: [prepared_workdir, folder])
    chief, other = (sorted(f.glob("checkpoint_epoch*.npz")) for f in (folder, folder / ".worker-1"))
    assert [p.name for p in chief] == [p.name for p in other] == ["checkpoint_epoch0001.npz"]
    with np.load(chief[0]) as a, np.load(other[0]) as b:
        assert a.files == b.files
        for name in a.files:  # weights, batch-norm statistics, optimizer moments and step count
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    history = pd.read_csv(folder / "history.csv")
    assert list(history["epoch"]) == [1] and (folder / "best.keras").is_file()
    assert not (folder / ".worker-1" / "best.keras").exists()  # only the chief publishes


def test_the_training_log_line_says_devices_strategy_and_precision(monkeypatch):
    monkeypatch.setattr(distribute, "_gpu_visible", lambda: False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    line = distribute.training_environment("auto", require_gpu=False)
    assert "CPU:0" in line and "the default strategy (one replica)" in line
    assert line.endswith("precision: float32 on CPU (training.precision=auto)")


def test_require_gpu_without_a_gpu_stops_the_training_stage_with_one_line(monkeypatch, prepared_workdir, capsys):
    from strokeseg import cli

    monkeypatch.setattr(distribute, "_gpu_visible", lambda: False)
    with pytest.raises(ConfigError, match=r"no GPU is visible .*\(make venv GPU=1\)"):
        distribute.training_environment("auto", require_gpu=True)
    before = sorted(p.name for p in prepared_workdir.iterdir())
    assert cli.main(["training", "--workdir", str(prepared_workdir), "--quiet",
                     "--set", "training.require_gpu=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.require_gpu is set but no GPU is visible" in err[0]
    assert sorted(p.name for p in prepared_workdir.iterdir()) == before       # nothing was written
