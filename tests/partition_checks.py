"""Multi-device partitioning checks, run in a subprocess with 8 fake CPU devices.

Usage: ``python tests/partition_checks.py <case> [...]`` with case one of ``train``, ``stream``,
``checkpoint``, ``pallas``. Each case prints one JSON line (prefixed ``RESULT ``) with the
measured differences; ``tests/test_partition_multidevice.py`` asserts on it. The device count
must be forced before JAX starts, which is why this runs in its own process and the rest of
the test suite keeps one device.
"""

from __future__ import annotations

import os

# Backend optimisation level 0 halves CPU compile time; it changes LLVM code generation only, not
# the SPMD partitioning or the collectives these checks look at.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json      # noqa: E402
import pathlib   # noqa: E402
import sys       # noqa: E402

# The repository root (for the top-level pallas_kernels package when run as a script).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import tempfile  # noqa: E402

import jax                # noqa: E402
import jax.extend.core    # noqa: E402,F401  (jaxprs_in_params)
import jax.numpy as jnp   # noqa: E402
import numpy as np        # noqa: E402

from sleepjax import partitioning as pt                      # noqa: E402
from sleepjax.models.config import ModelConfig, SleepConfig  # noqa: E402
from sleepjax.models.sleep_lm import SleepLM                 # noqa: E402
from sleepjax.parallel import hlo_collectives                # noqa: E402
from sleepjax.training.config import OptimConfig             # noqa: E402
from sleepjax.training.optimizer import make_optimizer       # noqa: E402
from sleepjax.training.state import init_train_state         # noqa: E402
from sleepjax.training.train_step import make_train_step     # noqa: E402

# Tiny model: heads (4) divisible by every model-axis size tested; 17 tokens with window 8 =
# two full windows that sleep (a scan of length 2) plus one more token; 3 passes = a sleep scan
# of length 2, so neither loop is folded away by XLA and both show up in the HLO.
MODEL = dict(vocab_size=16, d_model=32, layer_pattern="AG", attn_heads=4, attn_head_dim=8,
             gdn_heads=4, gdn_head_dim=8, mlp_hidden=64, gdn_chunk_size=4)
SLEEP = dict(window=8, passes=3)
BATCH, SEQ = 8, 17
MESHES = ((8, 1), (4, 2), (2, 4), (2, 2, 2))     # (data, model) or (data, fsdp, model)
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
    return pt.make_mesh({"data": data, "fsdp": fsdp, "model": model},
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
    """Collectives in the loops of a compiled module, split into GDN-recurrence loops (built in
    sleepjax/ops or pallas_kernels) and all other loops."""
    module = hlo_collectives.HloModule(compiled_text)
    loops = module.while_loops()
    recurrence = hlo_collectives.loops_in(loops, file_substrings=OPS_FILES)
    return {
        "bytes_by_kind": module.bytes_by_kind(),
        "num_loops": len(loops),
        "num_recurrence_loops": len(recurrence),
        "recurrence_loops_with_collectives": [lp.name for lp in recurrence if lp.has_collectives],
        "leaf_loops_with_collectives": [
            f"{lp.name} ({lp.function})" for lp in loops
            if lp.has_collectives and not _has_nested_loop(module, lp)],
        # Forward-pass loops (window scan, sleep passes) that communicate.
        "forward_loops_with_collectives": [
            f"{lp.name} ({lp.function}): {dict(lp.collectives)}"
            for lp in loops if lp.has_collectives and not lp.in_backward_pass],
        # Collective kinds found in backward-pass loops.
        "backward_loop_collective_kinds": sorted(
            {k for lp in loops if lp.in_backward_pass for k, v in lp.collectives.items() if v}),
        "loops_with_collectives": [f"{lp.name} ({lp.function}): {dict(lp.collectives)}"
                                   for lp in loops if lp.has_collectives],
    }


def _has_nested_loop(module, loop):
    for comp in module.computations.values():
        for instr in comp:
            if instr.name == loop.name:
                body = instr.attrs.split("body=%", 1)[1].split(",", 1)[0].split(" ", 1)[0]
                return _calls_while(module, body, set())
    return False


def _calls_while(module, comp, seen):
    if comp in seen:
        return False
    seen.add(comp)
    for instr in module.computations.get(comp, []):
        if instr.opcode == "while" or any(_calls_while(module, c, seen) for c in instr.called):
            return True
    return False


# --------------------------------------------------------------------------- cases

def _train_step_on(mesh, model_cfg, train_step, state_host, batch_host, abstract_state):
    shardings = pt.train_state_shardings(abstract_state, mesh, model_cfg)
    state = jax.device_put(state_host, shardings)
    batch = pt.make_global_batch(batch_host, mesh)
    step = pt.jit_train_step(train_step, shardings, mesh, donate=False)
    with jax.set_mesh(mesh):
        compiled = step.jitted.lower(state, batch).compile()
    new_state, metrics = compiled(state, batch)
    kept = all(a.sharding.is_equivalent_to(s, a.ndim)
               for a, s in zip(jax.tree.leaves(new_state), jax.tree.leaves(shardings)))
    return new_state, metrics, compiled.as_text(), kept


def _contains_primitive(jaxpr, name):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == name:
            return True
        if any(_contains_primitive(sub, name) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


def kernel_shard_map_in_specs(fn, *args):
    """Inputs of every innermost ``shard_map`` that wraps a ``pallas_call`` in ``fn(*args)``'s jaxpr:
    one list per shard_map of ``[spec, global shape, per-device shape]`` (other shard_maps,
    e.g. JAX's own for partitionable PRNG, are ignored)."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            subs = list(jax.extend.core.jaxprs_in_params(eqn.params))
            if eqn.primitive.name == "shard_map" and any(_contains_primitive(j, "pallas_call") for j in subs):
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


def case_train(gdn_impl="chunked", meshes=MESHES, reference_impl="chunked", seq=SEQ,
               passes=SLEEP["passes"]):
    """One training step on each mesh == the same step on one device (no mesh at all)."""
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
               "param_bytes": int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state_host.params))),
               "batch": BATCH, "gdn_heads": MODEL["gdn_heads"]}
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
            shardings = pt.train_state_shardings(abstract_state, mesh, model_cfg)
            with jax.set_mesh(mesh):
                row["pallas_shard_map_in_specs"] = kernel_shard_map_in_specs(
                    train_step, jax.device_put(state_host, shardings),
                    pt.make_global_batch(batch_host, mesh))
    return results


def case_stream():
    """Streaming inference (wake steps + sleeps) on a (2, 4) mesh == on one device."""
    from sleepjax import inference
    model_cfg, model, _ = build()
    sleep_cfg = SleepConfig(**SLEEP)
    params = jax.device_get(jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, SEQ), jnp.int32))["params"])
    tokens = make_batch()["inputs"]           # 17 tokens: two sleeps fire, then one more wake
    state0 = inference.init_state(model_cfg, sleep_cfg, BATCH)
    ref_logits, ref_state, ref_slept = inference.feed(params, state0, tokens, model_cfg=model_cfg,
                                                      sleep_cfg=sleep_cfg)
    mesh = mesh_of((2, 4))
    params_s = jax.device_put(params, pt.params_shardings(jax.eval_shape(lambda: params), mesh))
    state_sh = pt.stream_state_shardings(jax.eval_shape(lambda: state0), mesh)
    state_s = jax.device_put(state0, state_sh)
    tokens_s = pt.make_global_batch(tokens, mesh)
    with jax.set_mesh(mesh):
        # The jitted function behind inference.feed, compiled once for both the run and its HLO.
        compiled = inference._feed_jit.lower(params_s, state_s, tokens_s, model_cfg=model_cfg,
                                             sleep_cfg=sleep_cfg).compile()
        logits, state, slept = compiled(params_s, state_s, tokens_s)
    hlo_text = compiled.as_text()
    fast_spec = {k: str(v.sharding.spec) for k, v in state.fast_weights.items()}
    return {
        "logits_max_abs_diff": max_diffs(logits, ref_logits)[0],
        "fast_weights_max_abs_diff": max_diffs(state.fast_weights, ref_state.fast_weights)[0],
        "sleeps": int(np.sum(np.asarray(slept))), "ref_sleeps": int(np.sum(np.asarray(ref_slept))),
        "fast_weights_spec_in": {k: str(v.spec) for k, v in state_sh.fast_weights.items()},
        "fast_weights_spec_out": fast_spec,
        **loop_report(hlo_text),
    }


def case_checkpoint():
    """A TrainState saved on a (4, 2) mesh restores on 1 device, and that copy, saved again,
    restores onto an (8, 1) mesh, with identical values and the requested shardings."""
    import grain
    import ml_collections
    from sleepjax.training.checkpointing import Checkpointer

    model_cfg, model, optimizer = build()
    abstract = jax.eval_shape(lambda: init_train_state(model, optimizer, jax.random.PRNGKey(0),
                                                       jnp.zeros((1, SEQ), jnp.int32)))
    mesh42, mesh1, mesh81 = mesh_of((4, 2)), mesh_of((1, 1)), mesh_of((8, 1))
    sh42 = pt.train_state_shardings(abstract, mesh42, model_cfg)
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
        target = pt.train_state_shardings(abstract, target_mesh, model_cfg)
        with Checkpointer(directory, keep=1, async_save=False) as ckpt:
            ckpt.save(1, state, data_iterator(), cfg)
            ckpt.wait()
            restored = ckpt.restore(1, pt.with_shardings(abstract, target), data_iterator())
        placed = all(a.sharding.is_equivalent_to(s, a.ndim)
                     for a, s in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))
        return restored, placed

    with tempfile.TemporaryDirectory() as tmp:
        on_one, placed_one = roundtrip(os.path.join(tmp, "a"), state42, mesh1)
        on_eight, placed_eight = roundtrip(os.path.join(tmp, "b"), on_one, mesh81)
    sharded_leaves_42 = sum(1 for s in jax.tree.leaves(sh42) if s.spec != jax.sharding.PartitionSpec())
    devices_eight = {len(a.sharding.device_set) for a in jax.tree.leaves(on_eight)}
    return {
        "to_one_max_abs_diff": max_diffs(on_one, reference)[0],
        "to_eight_max_abs_diff": max_diffs(on_eight, reference)[0],
        "placed_on_one": placed_one, "placed_on_eight": placed_eight,
        "sharded_leaves_on_4x2": sharded_leaves_42,
        "device_counts_on_eight": sorted(devices_eight),
    }


def case_pallas():
    """The Pallas gated delta rule (interpret mode on CPU) inside the partitioned step."""
    # One sleeping window + one token and 2 passes: interpret-mode Pallas is slow on CPU.
    return case_train(gdn_impl="pallas", meshes=((2, 4),), reference_impl="chunked", seq=9, passes=2)


CASES = {"train": case_train, "stream": case_stream, "checkpoint": case_checkpoint,
         "pallas": case_pallas}


def main(argv):
    if len(argv) != 2 or argv[1] not in CASES:
        raise SystemExit(f"usage: {argv[0]} {{{','.join(CASES)}}}")
    if jax.device_count() != 8:
        raise SystemExit(f"expected 8 host devices, got {jax.device_count()} (XLA_FLAGS not applied?)")
    print("RESULT " + json.dumps(CASES[argv[1]](), default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv)
