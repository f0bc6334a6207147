"""Mesh config, logical-axis rules and spec resolution, activation hints, the data-parallel
wrapper and host plumbing on one device (no compile).

Shardings are derived against ``jax.sharding.AbstractMesh`` so that the rules can be checked
for any mesh shape without the devices; the multi-device behaviour is in test_multidevice.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from sleepjax.models.config import ModelConfig
from sleepjax.models.params import PARAM_RULES
from sleepjax.parallel import activations, data_parallel, logical_axes, mesh as device_mesh, multihost
from sleepjax.parallel.state_shardings import stream_state_partition_specs


def abstract_mesh(data, model, fsdp=1):
    return AbstractMesh((data, fsdp, model), device_mesh.MESH_AXES)


@functools.lru_cache(maxsize=None)
def tiny_params(cfg: ModelConfig):
    """Abstract parameters of the real model (traced once per config, no compile)."""
    from sleepjax.models.sleep_lm import SleepLM
    from sleepjax.models.config import SleepConfig
    model = SleepLM(cfg, SleepConfig(window=4, passes=2))
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 5), jnp.int32))["params"]


CFG = ModelConfig(vocab_size=16, d_model=32, layer_pattern="AG", attn_heads=4, attn_head_dim=8,
                  gdn_heads=4, gdn_head_dim=8, mlp_hidden=64)


# --------------------------------------------------------------------------- mesh config

def test_mesh_config_resolves_wildcard():
    assert device_mesh.validate_mesh_config(device_mesh.mesh_config_defaults(), num_devices=8) == {
        "data": 8, "fsdp": 1, "model": 1}
    assert device_mesh.validate_mesh_config({"data": -1, "model": 4}, num_devices=8) == {
        "data": 2, "fsdp": 1, "model": 4}
    assert device_mesh.validate_mesh_config({"data": 2, "fsdp": 2, "model": 2}, num_devices=8)["fsdp"] == 2


@pytest.mark.parametrize("mesh_cfg, key", [
    ({"data": 3}, "mesh.data"),                         # 3 devices asked, 8 present
    ({"data": -1, "model": 3}, "mesh.data"),            # 3 does not divide 8
    ({"data": -1, "model": -1}, "mesh.model"),          # two wildcards
    ({"data": 0}, "mesh.data"),
    ({"data": -1, "model": 2.0}, "mesh.model"),
    ({"data": -1, "model": True}, "mesh.model"),
    ({"data": -1, "pipeline": 2}, "pipeline"),
])
def test_mesh_config_errors_name_the_key(mesh_cfg, key):
    with pytest.raises(ValueError, match=key):
        device_mesh.validate_mesh_config(mesh_cfg, num_devices=8)


def test_make_mesh_on_one_device():
    mesh = device_mesh.make_mesh(device_mesh.mesh_config_defaults())
    assert mesh.axis_names == device_mesh.MESH_AXES
    assert mesh.devices.size == jax.device_count()


def test_heads_must_divide_model_axis():
    mesh = abstract_mesh(2, 4)
    with pytest.raises(ValueError, match="model.gdn_heads"):
        device_mesh.validate_model_for_mesh(
            ModelConfig(vocab_size=16, d_model=32, layer_pattern="G", gdn_heads=6, gdn_head_dim=8), mesh)
    with pytest.raises(ValueError, match="model.attn_heads"):
        device_mesh.validate_model_for_mesh(
            ModelConfig(vocab_size=16, d_model=32, layer_pattern="AG", attn_heads=2, attn_head_dim=16,
                        gdn_heads=4, gdn_head_dim=8), mesh)
    device_mesh.validate_model_for_mesh(CFG, mesh)
    # the per-leaf rules also refuse to cut a head: A_log [H=6] over model=4
    with pytest.raises(ValueError, match="A_log"):
        logical_axes.tree_partition_specs(
            {"blocks_0": {"gdn": {"A_log": jax.ShapeDtypeStruct((6,), jnp.float32)}}}, mesh, PARAM_RULES)


# --------------------------------------------------------------------------- param rules

def test_every_parameter_gets_the_declared_spec():
    params = tiny_params(CFG)
    specs = {logical_axes.path_to_str(p): s for p, s in jax.tree_util.tree_leaves_with_path(
        logical_axes.tree_partition_specs(params, abstract_mesh(2, 4, fsdp=1), PARAM_RULES),
        is_leaf=lambda x: isinstance(x, P))}
    expected = {
        "embed/embedding": P("model"),                      # vocab over model
        "blocks_0/attn/wq": P(None, "model"), "blocks_0/attn/wk": P(None, "model"),
        "blocks_0/attn/wv": P(None, "model"), "blocks_0/attn/wo": P("model"),
        "blocks_1/gdn/wq": P(None, "model"), "blocks_1/gdn/wg": P(None, "model"),
        "blocks_1/gdn/wa": P(None, "model"), "blocks_1/gdn/wb": P(None, "model"),
        "blocks_1/gdn/wo": P("model"), "blocks_1/gdn/conv_q": P(None, "model"),
        "blocks_1/gdn/A_log": P("model"), "blocks_1/gdn/dt_bias": P("model"),
        "blocks_1/gdn/out_norm/scale": P(),
        "blocks_0/mlp/w_gate": P(None, "model"), "blocks_0/mlp/w_up": P(None, "model"),
        "blocks_0/mlp/w_down": P("model"),
        "blocks_0/mixer_norm/scale": P(), "final_norm/scale": P(),
    }
    for path, spec in expected.items():
        assert specs[path] == spec, (path, specs[path])
    # every leaf was assigned (no KeyError above) and only model/None appear on this mesh
    assert set(specs) >= set(expected)


def test_fsdp_shards_the_model_dim_and_falls_back_when_indivisible():
    params = tiny_params(CFG)
    specs = logical_axes.tree_partition_specs(params, abstract_mesh(1, 2, fsdp=4), PARAM_RULES)
    assert specs["blocks_0"]["attn"]["wq"] == P("fsdp", "model")
    assert specs["blocks_0"]["attn"]["wo"] == P("model", "fsdp")
    assert specs["embed"]["embedding"] == P("model", "fsdp")
    # a vocabulary of 6 is not split over model=4: replicated, not an error
    odd = {"embed": {"embedding": jax.ShapeDtypeStruct((6, 32), jnp.float32)}}
    specs = logical_axes.tree_partition_specs(odd, abstract_mesh(2, 4), PARAM_RULES)
    assert specs["embed"]["embedding"] == P()


def test_optimizer_state_follows_its_parameter():
    params = tiny_params(CFG)
    opt_state = jax.eval_shape(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init,
                               params)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
             "opt_state": opt_state, "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    specs = logical_axes.tree_partition_specs(state, abstract_mesh(2, 4), PARAM_RULES)
    adam = specs["opt_state"][1][0]
    assert adam.mu["blocks_1"]["gdn"]["wo"] == specs["params"]["blocks_1"]["gdn"]["wo"] == P("model")
    assert adam.nu["blocks_0"]["mlp"]["w_up"] == P(None, "model")
    assert adam.count == P() and specs["step"] == P() and specs["rng"] == P()


def test_batch_and_stream_state_specs():
    mesh = abstract_mesh(2, 4, fsdp=1)
    assert logical_axes.batch_spec(mesh) == P("data")
    assert logical_axes.batch_spec(abstract_mesh(2, 2, fsdp=2)) == P(("data", "fsdp"))
    from sleepjax import inference
    from sleepjax.models.config import SleepConfig
    state = jax.eval_shape(lambda: inference.init_state(
        CFG, SleepConfig(window=4, passes=2, eviction="sliding"), 8))
    specs = stream_state_partition_specs(state, mesh)
    caches = specs.carry.caches
    assert caches["blocks_1"].fast_weights == P("data", "model")     # S [B, H, K, V]
    assert caches["blocks_0"].keys == P("data", None, "model")       # [B, L, H, D]
    assert specs.carry.previous_kv["blocks_0"][1] == P("data", None, "model")
    for stream in ("q", "k", "v"):                                    # [B, W-1, H*D], heads-major
        assert caches["blocks_1"].conv[stream] == P("data", None, "model")
    assert specs.loop_input == P("data") and specs.position == P()
    assert specs.sleep_passes == P("data") and specs.carry.previous_visible == P()


def test_constrain_is_a_noop_without_mesh():
    x = jnp.ones((4, 2))
    assert activations.constrain(x, ("batch", None)) is x
    assert activations.activation_mesh_axes("heads", 4) is None


def test_activation_mesh_axes_follow_the_logical_rules():
    mesh = abstract_mesh(2, 4, fsdp=1)
    assert activations.activation_mesh_axes("batch", 8, mesh) == "data"
    assert activations.activation_mesh_axes("heads", 4, mesh) == "model"
    assert activations.activation_mesh_axes("batch", 8, abstract_mesh(2, 1, fsdp=2)) == ("data", "fsdp")
    assert activations.activation_mesh_axes("length", 8, mesh) is None
    with pytest.raises(ValueError, match="heads"):
        activations.activation_mesh_axes("heads", 6, mesh)


def test_manual_axes_are_left_out_of_specs():
    # Inside data_parallel's shard_map the "data" axis is manual: arrays there are one data
    # shard, so specs (constrain, the Pallas op's shard_map) may only name the other axes.
    manual = jax.sharding.AxisType.Manual, jax.sharding.AxisType.Auto, jax.sharding.AxisType.Auto
    mesh = AbstractMesh((2, 2, 4), device_mesh.MESH_AXES, axis_types=manual)
    assert logical_axes.manual_axes(mesh) == {"data"}
    assert logical_axes.manual_axes(abstract_mesh(2, 4)) == frozenset()
    assert activations.activation_mesh_axes("batch", 8, mesh) == "fsdp"
    assert activations.activation_mesh_axes("heads", 4, mesh) == "model"
    assert logical_axes.logical_to_spec(("batch", None, "heads"), (4, 3, 8), mesh) == P("fsdp", None, "model")


def test_data_parallel_and_batch_psum_are_identities_without_a_mesh():
    def per_shard(params, batch):
        return data_parallel.batch_psum({"sum": jnp.sum(batch * params)})
    wrapped = data_parallel.data_parallel(per_shard)
    out = wrapped(jnp.float32(2.0), jnp.arange(4.0))
    assert float(out["sum"]) == 12.0


def test_host_shard_info_single_process():
    assert multihost.host_shard_info() == (0, 1)
    assert multihost.host_shard_info(device_mesh.make_mesh(device_mesh.mesh_config_defaults())) == (0, 1)


def test_initialize_distributed_is_a_noop_for_one_process():
    assert multihost.initialize_distributed(environ={}) == (0, 1)
    assert multihost.initialize_distributed("localhost:1234", 1, 0) == (0, 1)      # a job of one process
    with pytest.raises(ValueError, match="num_processes"):
        multihost.initialize_distributed(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match="process_id"):
        multihost.initialize_distributed(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "SLEEPJAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="SLEEPJAX_PROCESS_ID"):
        multihost.initialize_distributed(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "SLEEPJAX_NUM_PROCESSES": "2",
                                           "SLEEPJAX_PROCESS_ID": "x"})
    with pytest.raises(ValueError, match="process_id"):
        multihost.initialize_distributed("localhost:1234", 2, 5)


def test_make_global_batch_single_host():
    mesh = device_mesh.make_mesh(device_mesh.mesh_config_defaults())
    batch = multihost.make_global_batch({"inputs": np.arange(6).reshape(2, 3)}, mesh)
    np.testing.assert_array_equal(np.asarray(batch["inputs"]), np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="scalar"):
        multihost.make_global_batch({"x": np.float32(1)}, mesh)
