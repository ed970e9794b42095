"""tf.distribute for training: picking the strategy, the chief, where each worker
writes, synchronised BatchNorm.

Strategies (`make_strategy`):
  one_device    one GPU (the first visible) or the CPU.
  mirrored      the GPUs of this machine (`num_gpus` of them, default all), or, with
                `cpu_replicas=N` and no GPU, N logical CPU devices (tests and benchmarks).
  multi_worker  MultiWorkerMirroredStrategy over the cluster of `TF_CONFIG` (every worker runs
                the same command with its own `task`); each worker's GPUs are its replicas.
  auto          multi_worker when TF_CONFIG names a cluster of more than one task, mirrored when
                several GPUs are visible, one_device otherwise.

Checkpoints under multi-worker: every worker takes part in a save (variables may need a
collective read), but only the chief writes into the real directory; the others write into a
temporary directory of their own (`worker_directory`) that is removed after each save.
"""
import json
import os

import numpy as np
import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def tf_config():
    """The parsed TF_CONFIG ({} when unset). Raises ValueError on malformed JSON."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return parsed


def cluster_size(config=None):
    """Number of tasks (chief + workers) TF_CONFIG names, 0 when unset."""
    config = tf_config() if config is None else config
    cluster = config.get("cluster", {})
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


def _check_tf_config(config):
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError("TF_CONFIG has no 'cluster' (e.g. {\"worker\": [\"host1:port\", \"host2:port\"]})")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError("TF_CONFIG has no 'task' with 'type' and 'index' (this worker's place in the cluster)")
    jobs = cluster.get(task["type"])
    if jobs is None:
        raise ValueError(f"TF_CONFIG task type {task['type']!r} is not a job of the cluster {sorted(cluster)}")
    if not 0 <= int(task["index"]) < len(jobs):
        raise ValueError(f"TF_CONFIG task index {task['index']} is outside the {len(jobs)} "
                         f"{task['type']} address(es)")


def set_cpu_replicas(count):
    """Splits the CPU into `count` logical devices. Must run before TensorFlow initialises its
    devices (before any op runs); raises RuntimeError otherwise."""
    cpus = tf.config.list_physical_devices("CPU")
    existing = tf.config.get_logical_device_configuration(cpus[0])
    want = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    if existing is not None and len(existing) == count:
        return
    tf.config.set_logical_device_configuration(cpus[0], want)


def resolve_strategy_name(name, num_gpus_visible, num_gpus=None, cpu_replicas=None, config=None):
    """The strategy `auto` stands for (others unchanged): multi_worker when TF_CONFIG names a
    cluster of more than one task, mirrored with several GPUs (or cpu_replicas > 1), else
    one_device."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    config = tf_config() if config is None else config
    if cluster_size(config) > 1:
        return "multi_worker"
    gpus = num_gpus_visible if num_gpus is None else min(num_gpus, num_gpus_visible)
    if gpus > 1 or (not num_gpus_visible and (cpu_replicas or 0) > 1):
        return "mirrored"
    return "one_device"


def chief_task(cluster):
    """(type, index) of the chief of a cluster dict: the `chief` job, else worker 0."""
    return ("chief", 0) if cluster.get("chief") else ("worker", 0)


def make_strategy(name="auto", num_gpus=None, cpu_replicas=None, communication="auto"):
    """A tf.distribute strategy by name (see the module docstring).

    Args:
      name: auto | one_device | mirrored | multi_worker.
      num_gpus: mirrored: use GPUs 0..num_gpus-1 (default all visible); one_device: ignored.
      cpu_replicas: mirrored without GPUs: that many logical CPU devices (set before TF starts).
      communication: multi_worker all-reduce: auto | ring | nccl.
    Raises:
      ValueError: unknown name, more GPUs asked for than visible, multi_worker without TF_CONFIG.
    """
    config = tf_config()
    gpus = tf.config.list_physical_devices("GPU")
    if num_gpus is not None and num_gpus > len(gpus):
        raise ValueError(f"--num_gpus {num_gpus}: only {len(gpus)} GPU(s) visible")
    if num_gpus is not None and num_gpus < 1:
        raise ValueError(f"--num_gpus must be >= 1, got {num_gpus}")
    if cpu_replicas is not None and cpu_replicas < 1:
        raise ValueError(f"--cpu_replicas must be >= 1, got {cpu_replicas}")
    name = resolve_strategy_name(name, len(gpus), num_gpus, cpu_replicas, config)
    if name == "multi_worker":
        if not config:
            raise ValueError("the multi_worker strategy needs TF_CONFIG (the cluster and this worker's task); "
                             "see docs/cluster.md")
        _check_tf_config(config)
        implementation = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                          "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                          "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}
        if communication not in implementation:
            raise ValueError(f"communication must be one of {sorted(implementation)}, got {communication!r}")
        options = tf.distribute.experimental.CommunicationOptions(implementation=implementation[communication])
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "mirrored":
        if gpus:
            count = len(gpus) if num_gpus is None else num_gpus
            return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(count)])
        if cpu_replicas:
            set_cpu_replicas(cpu_replicas)
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    device = "/gpu:0" if gpus else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def strategy_name(strategy):
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.OneDeviceStrategy):
        return "one_device"
    return type(strategy).__name__


def task_of(strategy):
    """(task_type, task_id) of this worker; ("worker", 0) outside multi-worker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return "worker", 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy):
    """The chief: the `chief` task, or worker 0 when the cluster has no chief job; True for
    single-worker strategies."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return task_of(strategy) == chief_task(strategy.cluster_resolver.cluster_spec().as_dict())


def worker_directory(directory, strategy):
    """Where this worker writes what it is asked to save: `directory` on the chief, a
    temporary `directory/.tmp_worker_<type>_<id>` elsewhere (removed after each save by
    `TrainingCheckpoints.save`)."""
    if is_chief(strategy):
        return directory
    task_type, task_id = task_of(strategy)
    return os.path.join(directory, f".tmp_worker_{task_type}_{task_id}")


def model_fingerprint(model):
    """A short hash of every variable of `model` (shapes and values, in the model's variable
    order; not the names, which Keras suffixes differently when a process builds several models),
    to compare the weights that workers or runs ended with. Under multi-worker, every worker must
    call it (reading replica-local statistics may be collective)."""
    import hashlib
    digest = hashlib.sha256()
    for variable in model.variables:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def enable_sync_batch_norm(model):
    """Makes every trained BatchNorm of `model` normalise with the statistics of the global
    batch (all replicas) during training: lhrcnn ConvBN layers (`bn_sync`) and Keras
    BatchNormalization layers (`synchronized`, unfused). Returns how many were switched."""
    from lhrcnn.backbones.layers import ConvBN
    from lhrcnn.keras import keras
    count = 0
    for layer in model.submodules:
        if isinstance(layer, ConvBN):
            layer.bn_sync = True
            count += 1
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            layer.fused = False
            count += 1
    return count


def build_with_backbone_precision(build_network, policy):
    """Builds a detector (`build_network()` -> an unbuilt TwoStageDetector) whose backbone runs
    under a Keras mixed-precision policy ("mixed_float16" or "mixed_bfloat16"): the backbone's
    layers compute in half precision with float32 variables; every other layer (RPN, neck, R-CNN
    head, the custom ops) is set back to float32 before it creates its variables, and the
    detector casts the features to float32, so the heads and the losses stay in float32.
    Returns the built detector."""
    from lhrcnn.keras import keras
    keras.mixed_precision.set_global_policy(policy)
    try:
        detector = build_network()  # the functional backbone creates its variables here
    finally:
        keras.mixed_precision.set_global_policy("float32")
    backbone = {id(layer) for layer in [detector.backbone] + list(detector.backbone.submodules)}
    for layer in [detector] + list(detector.submodules):
        if isinstance(layer, keras.layers.Layer) and id(layer) not in backbone:
            if layer.built:
                raise ValueError(f"layer {layer.name} was built before its precision was set")
            layer._set_dtype_policy("float32")
    return detector.build_with_dummy_input()
