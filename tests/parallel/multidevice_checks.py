"""Shared pieces of the multi-device tests: a tiny model, its batch, meshes, and what the
compiled HLO says about collectives (the parser lives in ``benchmarks/hlo_collectives.py``).

Only the ``multidevice`` tests import this; they run with 8 fake CPU devices (conftest.py).
"""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from benchmarks import hlo_collectives
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.sleep_lm import SleepLM
from sleepjax.parallel.data_parallel import jit_train_step
from sleepjax.parallel.mesh import make_mesh
from sleepjax.parallel.multihost import make_global_batch
from sleepjax.parallel.state_shardings import train_state_shardings
from sleepjax.training.config import OptimConfig
from sleepjax.training.optimizer import make_optimizer
from sleepjax.training.state import init_train_state
from sleepjax.training.train_step import make_train_step

# Tiny model: heads (4) divisible by every model-axis size tested; 17 tokens with window 8 =
# two full windows that sleep (a scan of length 2) plus one more token; 3 passes = a sleep scan
# of length 2, so neither loop is folded away by XLA and both show up in the HLO.
MODEL = dict(vocab_size=16, d_model=32, layer_pattern="AG", attn_heads=4, attn_head_dim=8,
             gdn_heads=4, gdn_head_dim=8, mlp_hidden=64, gdn_chunk_size=4)
SLEEP = dict(window=8, passes=3)
BATCH, SEQ = 8, 17
# (data, model) or (data, fsdp, model): pure data parallelism, model parallelism, FSDP
MESHES = ((8, 1), (2, 4), (2, 2, 2))
OPS_FILES = ("sleepjax/ops/", "pallas_kernels/")


def build(gdn_impl="chunked", passes=SLEEP["passes"]):
    model_cfg = ModelConfig(**MODEL, gdn_impl=gdn_impl)
    model = SleepLM(model_cfg, SleepConfig(**{**SLEEP, "passes": passes}))
    optimizer = make_optimizer(OptimConfig(warmup_fraction=0.0, muon_lr=0.02, adam_lr=0.01), 10)
    return model_cfg, model, optimizer


def make_batch(seq=SEQ):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, MODEL["vocab_size"], size=(BATCH, seq + 1)).astype(np.int32)
    mask = (rng.random((BATCH, seq)) < 0.7).astype(np.float32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mask}


def mesh_of(shape):
    data, fsdp, model = shape if len(shape) == 3 else (shape[0], 1, shape[1])
    return make_mesh({"data": data, "fsdp": fsdp, "model": model},
                        devices=jax.devices()[:data * fsdp * model])


def mesh_name(shape):
    return "x".join(str(n) for n in shape)


def max_diffs(a, b):
    """(max abs diff, max |diff| / (max |ref| + 1e-12)) over all leaves of two pytrees."""
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(la) == len(lb)
    abs_d = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                for x, y in zip(la, lb))
    scale = max(float(np.max(np.abs(np.asarray(y, np.float64)), initial=0.0)) for y in lb)
    return abs_d, abs_d / (scale + 1e-12)


def loop_report(compiled_text):
    """Collectives of a compiled module: bytes by kind, and the while loops that contain any,
    with the GDN-recurrence loops (built in sleepjax/ops or pallas_kernels) counted apart."""
    module = hlo_collectives.HloModule(compiled_text)
    loops = module.while_loops()
    recurrence = hlo_collectives.loops_in(loops, file_substrings=OPS_FILES)
    return {
        "bytes_by_kind": module.bytes_by_kind(),
        "num_recurrence_loops": len(recurrence),
        "recurrence_loops_with_collectives": [lp.name for lp in recurrence if lp.has_collectives],
        "loops_with_collectives": [f"{lp.name} ({lp.function}): {dict(lp.collectives)}"
                                   for lp in loops if lp.has_collectives],
    }


def _train_step_on(mesh, model_cfg, train_step, state_host, batch_host, abstract_state):
    shardings = train_state_shardings(abstract_state, mesh, model_cfg)
    state = jax.device_put(state_host, shardings)
    batch = make_global_batch(batch_host, mesh)
    step = jit_train_step(train_step, shardings, mesh, donate=False)
    with jax.set_mesh(mesh):
        compiled = step.jitted.lower(state, batch).compile()
    new_state, metrics = compiled(state, batch)
    kept = all(a.sharding.is_equivalent_to(s, a.ndim)
               for a, s in zip(jax.tree.leaves(new_state), jax.tree.leaves(shardings)))
    return new_state, metrics, compiled.as_text(), kept


def _is_forward_kernel(eqn) -> bool:
    """A ``pallas_call`` of the op's forward kernel (``gated_delta_rule_fwd_*``); the backward
    kernel's shard_map carries the forward's saved chunk states, not the op's six operands."""
    return "_fwd_" in str(eqn.params.get("name", ""))


def _contains_forward_kernel(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call" and _is_forward_kernel(eqn):
            return True
        if any(_contains_forward_kernel(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


def _contains_primitive(jaxpr, name):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            return True
        if any(_contains_primitive(sub, name) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


def kernel_shard_map_in_specs(fn, *args):
    """Inputs of every innermost ``shard_map`` that wraps the op's forward ``pallas_call`` in
    ``fn(*args)``'s jaxpr: one list per shard_map of ``[spec, global shape, per-device shape]``
    (other shard_maps -- the backward kernel's, JAX's own for partitionable PRNG -- are
    ignored)."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            subs = list(jax.extend.core.jaxprs_in_params(eqn.params))
            if eqn.primitive.name == "shard_map" and any(_contains_forward_kernel(j) for j in subs):
                # The innermost such shard_map is the op's own (an outer one may be the
                # training step's data-parallel shard_map).
                before = len(found)
                for sub in subs:
                    visit(sub)
                if len(found) > before:
                    continue
                body = eqn.params["jaxpr"]
                found.append([[str(spec), list(outer.aval.shape), list(inner.aval.shape)]
                              for spec, outer, inner in zip(eqn.params["in_specs"], eqn.invars,
                                                            body.invars)])
                continue
            for sub in subs:
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def step_on_meshes(gdn_impl="chunked", meshes=MESHES, reference_impl="chunked", seq=SEQ,
                   passes=SLEEP["passes"]):
    """One training step on each mesh and on one device (no mesh at all): the reference loss,
    the parameter bytes, and per mesh the differences to the reference and the HLO report."""
    ref_cfg, ref_model, optimizer = build(reference_impl, passes)
    state_host = jax.device_get(jax.jit(lambda r, t: init_train_state(ref_model, optimizer, r, t))(
        jax.random.PRNGKey(0), jnp.zeros((1, seq), jnp.int32)))
    batch_host = make_batch(seq)
    ref_state, ref_metrics = jax.jit(make_train_step(ref_model, optimizer))(state_host, batch_host)
    ref_state, ref_metrics = jax.device_get((ref_state, ref_metrics))
    model_cfg, model, _ = build(gdn_impl, passes)
    train_step = make_train_step(model, optimizer)
    abstract_state = jax.eval_shape(lambda: state_host)
    results = {"reference_loss": float(ref_metrics["loss"]), "meshes": {},
               "param_bytes": int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state_host.params)))}
    for shape in meshes:
        mesh = mesh_of(shape)
        new_state, metrics, hlo_text, kept = _train_step_on(
            mesh, model_cfg, train_step, state_host, batch_host, abstract_state)
        abs_p, rel_p = max_diffs(new_state.params, ref_state.params)
        abs_o, rel_o = max_diffs(new_state.opt_state, ref_state.opt_state)
        row = results["meshes"][mesh_name(shape)] = {
            "loss": float(metrics["loss"]),
            "loss_abs_diff": abs(float(metrics["loss"]) - float(ref_metrics["loss"])),
            "grad_norm_rel_diff": abs(float(metrics["grad_norm"]) - float(ref_metrics["grad_norm"]))
            / float(ref_metrics["grad_norm"]),
            "params_max_abs_diff": abs_p, "params_max_rel_diff": rel_p,
            "opt_state_max_abs_diff": abs_o, "opt_state_max_rel_diff": rel_o,
            "step": int(new_state.step),
            "shardings_kept": kept,
            **loop_report(hlo_text),
        }
        if gdn_impl == "pallas":
            # How the kernel is wrapped: each shard_map's in_specs as traced in the real step.
            shardings = train_state_shardings(abstract_state, mesh, model_cfg)
            with jax.set_mesh(mesh):
                row["pallas_shard_map_in_specs"] = kernel_shard_map_in_specs(
                    train_step, jax.device_put(state_host, shardings),
                    make_global_batch(batch_host, mesh))
    return results
