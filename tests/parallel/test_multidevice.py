"""Partitioned training / inference / checkpoints on 8 fake CPU devices (marker ``multidevice``;
conftest.py gives them their own process with the device count forced).

Tolerances: the partitioned step reduces in a different order than the single-device step
(per-shard partial sums, then all-reduce), so float32 results agree to rounding, not bitwise:
loss within 1e-5 absolute, parameters / optimiser state within 1e-4 of their largest
magnitude (Muon's Newton-Schulz iterations amplify rounding slightly). Logits of streaming
inference within 1e-4 absolute. Checkpoint round trips are exact.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import multidevice_checks as checks
from sleepjax import inference
from sleepjax.models.config import SleepConfig
from sleepjax.parallel.logical_axes import with_shardings
from sleepjax.parallel.multihost import make_global_batch
from sleepjax.parallel.state_shardings import (params_shardings, stream_state_shardings,
                                               train_state_shardings)
from sleepjax.training.state import init_train_state

pytestmark = pytest.mark.multidevice

LOSS_ATOL = 1e-5
PARAM_RTOL = 1e-4
LOGITS_ATOL = 1e-4


@pytest.fixture(autouse=True)
def eight_devices():
    assert jax.device_count() >= 8, (
        f"{jax.device_count()} device(s): JAX's backend started before tests/parallel/conftest.py "
        f"could force 8 host devices")


def _check_step_matches(name: str, r: dict) -> None:
    assert r["step"] == 1, name
    assert r["loss_abs_diff"] < LOSS_ATOL, (name, r)
    assert r["grad_norm_rel_diff"] < 1e-4, (name, r)
    assert r["params_max_rel_diff"] < PARAM_RTOL, (name, r)
    assert r["opt_state_max_rel_diff"] < PARAM_RTOL, (name, r)
    assert r["shardings_kept"], (name, "the new state must keep the declared shardings")


def _check_recurrence_is_local(name: str, r: dict) -> None:
    # The GDN recurrence loops were found in the HLO and none of them communicates.
    assert r["num_recurrence_loops"] >= 1, (name, r)
    assert r["recurrence_loops_with_collectives"] == [], (name, r)


@pytest.mark.slow
def test_train_step_on_meshes_matches_one_device(capfd):
    result = checks.step_on_meshes()
    assert set(result["meshes"]) == {"8x1", "2x4", "2x2x2"}
    # XLA's SPMD partitioner warns (on stderr, from C++) when it must replicate a tensor to
    # re-shard it. FSDP (2x2x2 splits weights' d_model over fsdp) gathers weights, not activations.
    remat_warnings = [ln[:400] for ln in capfd.readouterr().err.splitlines()
                      if "Involuntary full rematerialization" in ln]
    assert remat_warnings == [], remat_warnings
    for name, r in result["meshes"].items():
        _check_step_matches(name, r)
        _check_recurrence_is_local(name, r)
    # Pure data parallelism: no loop (windows, sleep passes, recurrence, their backward)
    # communicates; the gradients are all-reduced once, outside the loops: one parameter's
    # worth of bytes plus the loss / accuracy / token-count scalars.
    data_parallel = result["meshes"]["8x1"]
    assert data_parallel["loops_with_collectives"] == [], data_parallel
    assert set(data_parallel["bytes_by_kind"]) == {"all-reduce"}, data_parallel
    assert data_parallel["bytes_by_kind"]["all-reduce"] <= result["param_bytes"] + 64, (
        data_parallel["bytes_by_kind"], result["param_bytes"])
    # model parallelism communicates (row-parallel out-projections), so the parser sees it
    assert result["meshes"]["2x4"]["bytes_by_kind"].get("all-reduce", 0) > 0
    # q, k, v are projected and convolved as separate heads-major arrays, so heads over
    # "model" never need re-sharding (a packed q|k|v channel axis caused all-to-alls).
    assert result["meshes"]["2x4"]["bytes_by_kind"].get("all-to-all", 0) == 0, result["meshes"]["2x4"]


def test_streaming_inference_on_mesh_matches_one_device():
    """Streaming inference (wake steps + sleeps) on a (2, 4) mesh == on one device."""
    model_cfg, model, _ = checks.build()
    sleep_cfg = SleepConfig(**checks.SLEEP)
    params = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(1),
                                                jnp.zeros((1, checks.SEQ), jnp.int32))["params"])
    tokens = checks.make_batch()["inputs"]    # 17 tokens: two sleeps fire, then one more wake
    state0 = inference.init_state(model_cfg, sleep_cfg, checks.BATCH)
    ref_logits, ref_state, ref_slept = inference.feed(params, state0, tokens, model_cfg=model_cfg,
                                                      sleep_cfg=sleep_cfg)
    mesh = checks.mesh_of((2, 4))
    params_s = jax.device_put(params, params_shardings(jax.eval_shape(lambda: params), mesh))
    state_s = jax.device_put(state0, stream_state_shardings(jax.eval_shape(lambda: state0), mesh))
    tokens_s = make_global_batch(tokens, mesh)
    with jax.set_mesh(mesh):
        # The jitted function behind inference.feed, compiled once for both the run and its HLO.
        compiled = inference._feed_jit.lower(params_s, state_s, tokens_s, model_cfg=model_cfg,
                                             sleep_cfg=sleep_cfg).compile()
        logits, state, slept = compiled(params_s, state_s, tokens_s)
    assert int(np.sum(np.asarray(slept))) == int(np.sum(np.asarray(ref_slept))) == 2
    assert checks.max_diffs(logits, ref_logits)[0] < LOGITS_ATOL
    assert checks.max_diffs(state.fast_weights, ref_state.fast_weights)[0] < LOGITS_ATOL
    _check_recurrence_is_local("stream 2x4", checks.loop_report(compiled.as_text()))


def test_checkpoint_restores_across_meshes(tmp_path):
    """A TrainState saved on a (4, 2) mesh restores on 1 device, and that copy, saved again,
    restores onto an (8, 1) mesh, with identical values and the requested shardings."""
    import grain
    import ml_collections
    from sleepjax.training.checkpointing import Checkpointer

    model_cfg, model, optimizer = checks.build()
    abstract = jax.eval_shape(lambda: init_train_state(model, optimizer, jax.random.PRNGKey(0),
                                                       jnp.zeros((1, checks.SEQ), jnp.int32)))
    mesh42, mesh1, mesh81 = checks.mesh_of((4, 2)), checks.mesh_of((1, 1)), checks.mesh_of((8, 1))
    sh42 = train_state_shardings(abstract, mesh42, model_cfg)
    # Distinct random values for every leaf (no compile needed; a real init is not the point).
    rng = np.random.default_rng(3)
    reference = jax.tree.map(
        lambda a: (rng.standard_normal(a.shape).astype(a.dtype) if np.issubdtype(a.dtype, np.floating)
                   else rng.integers(0, 1000, size=a.shape).astype(a.dtype)), abstract)
    state42 = jax.device_put(reference, sh42)
    cfg = ml_collections.ConfigDict({"mesh": {"data": 4, "fsdp": 1, "model": 2}})

    def data_iterator():
        return iter(grain.MapDataset.range(16).to_iter_dataset())

    def roundtrip(directory, state, target_mesh):
        target = train_state_shardings(abstract, target_mesh, model_cfg)
        with Checkpointer(directory, keep=1, async_save=False) as ckpt:
            ckpt.save(1, state, data_iterator(), cfg)
            ckpt.wait()
            restored = ckpt.restore(1, with_shardings(abstract, target), data_iterator())
        placed = all(a.sharding.is_equivalent_to(s, a.ndim)
                     for a, s in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))
        return restored, placed

    on_one, placed_on_one = roundtrip(os.path.join(tmp_path, "a"), state42, mesh1)
    on_eight, placed_on_eight = roundtrip(os.path.join(tmp_path, "b"), on_one, mesh81)
    assert sum(1 for s in jax.tree.leaves(sh42) if s.spec != P()) > 0   # really was sharded
    assert checks.max_diffs(on_one, reference)[0] == 0.0
    assert checks.max_diffs(on_eight, reference)[0] == 0.0
    assert placed_on_one and placed_on_eight
    # every leaf spans the 8-device mesh
    assert {len(a.sharding.device_set) for a in jax.tree.leaves(on_eight)} == {8}


@pytest.mark.slow
def test_pallas_gated_delta_rule_inside_partitioned_step():
    """The Pallas gated delta rule (interpret mode on CPU) inside the partitioned step."""
    # One sleeping window + one token and 2 passes: interpret-mode Pallas is slow on CPU.
    result = checks.step_on_meshes(gdn_impl="pallas", meshes=((2, 4),), seq=9, passes=2)
    r = result["meshes"]["2x4"]
    _check_step_matches("pallas 2x4", r)
    # The kernel is wrapped in shard_map (so Mosaic never meets the auto-partitioner) and each
    # device gets its own (batch, head) slice: batch over "data" (2), heads over "model" (4).
    # Replicated in_specs would be correct but would gather q/k/v and run the whole kernel
    # everywhere, so the per-device shapes inside the shard_map are checked too.
    wrapped = r["pallas_shard_map_in_specs"]
    assert wrapped, "the Pallas op was not wrapped in shard_map inside the partitioned step"
    batch, heads = checks.BATCH, checks.MODEL["gdn_heads"]
    for inputs in wrapped:
        # The op's six operands (q, k, v, g, beta, initial_state) come last. JAX's partial
        # evaluation of shard_map under remat may prepend per-device residual scalars
        # (global [8], one element per device), which carry no activations.
        operands, residuals = inputs[-6:], inputs[:-6]
        # Heads are split over "model" by the op's own shard_map. The batch is split over
        # "data" either there or already by the enclosing data-parallel shard_map of the
        # training step (then the operands the op sees are one data shard).
        head_dims = (2, 2, 2, 2, 2, 1)                      # [B,T,H,*] operands; state [B,H,K,V]
        for (spec, _, local_shape), head_dim in zip(operands, head_dims):
            assert "'model'" in spec, inputs
            assert local_shape[0] == batch // 2, (local_shape, inputs)        # data = 2
            assert local_shape[head_dim] == heads // 4, (local_shape, inputs)  # model = 4
        for spec, global_shape, local_shape in residuals:
            assert local_shape == [1], inputs
