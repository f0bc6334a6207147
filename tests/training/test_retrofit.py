"""Starting a run from other weights (init section), inserting GDN blocks, freezing groups."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleepjax.models import init_params
from sleepjax.training import initialization, warm_start
from sleepjax.training.checkpointing import load_params
from sleepjax.training.config import OptimConfig, validate_config
from sleepjax.training.optimizer import make_optimizer
from sleepjax.training.param_groups import trainable_labels
from sleepjax.training.trainer import train_and_evaluate

from support.training import tiny_config

# One worker runs the module (the first run its retrofits start from trains once).
pytestmark = pytest.mark.xdist_group("test_retrofit")

STEPS = 3
RUN = {"train__steps": STEPS, "train__checkpoint_every": 0, "train__eval_examples": 16,
       "optim__warmup_fraction": 0.0}


def _flat(tree):
    return {"/".join(str(k.key) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _initial_params(cfg):
    rc = validate_config(cfg)
    init_rng, _ = jax.random.split(jax.random.PRNGKey(rc.train.seed))
    return init_params(rc.model, init_rng)


def _assert_frozen_and_trained(before, after, trainable_prefixes):
    before, after = _flat(before), _flat(after)
    assert before.keys() == after.keys()
    for path in before:
        if path.startswith(trainable_prefixes):
            assert not np.array_equal(before[path], after[path]), f"{path} did not train"
        else:
            assert np.array_equal(before[path], after[path]), f"{path} is frozen but changed"


def test_frozen_params_get_no_moments_and_no_updates():
    params = _initial_params(tiny_config())
    optim = OptimConfig(trainable=("blocks_1/gdn", r"final_\w+"), warmup_fraction=0.0)
    labels = _flat(trainable_labels(params, optim.trainable))
    assert labels["blocks_1/gdn/wq"] == labels["final_norm/scale"] == "trainable"
    assert labels["blocks_1/mlp/w_up"] == labels["blocks_0/attn/wq"] == "frozen"
    opt = make_optimizer(optim, 10)
    state = opt.init(params)
    # optimiser state holds arrays for trainable parameters only (and scalar counters)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        name = jax.tree_util.keystr(path)
        if leaf.ndim and "ns_coeffs" not in name:   # (Muon's Newton-Schulz constants)
            assert "'final_norm'" in name or ("'blocks_1'" in name and "'gdn'" in name), name
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, state, params)
    for path, u in _flat(updates).items():
        assert np.any(u) == path.startswith(("blocks_1/gdn", "final_norm")), path


@pytest.fixture(scope="module")
def first_run(compilation_cache_dir, tmp_path_factory):
    """A tiny run that trains only ``blocks_1/gdn``: ``(cfg, workdir, result)``."""
    cfg = tiny_config(optim__trainable=("blocks_1/gdn",), **RUN)
    workdir = str(tmp_path_factory.mktemp("first"))
    return cfg, workdir, train_and_evaluate(cfg, workdir)


def test_training_with_trainable_groups(first_run):
    cfg, _, result = first_run
    _assert_frozen_and_trained(_initial_params(cfg), result["params"], ("blocks_1/gdn",))


def test_trainable_validation():
    with pytest.raises(ValueError, match=r"^optim.trainable: \['blocks_7'\] select") as info:
        validate_config(tiny_config(optim__trainable=("blocks_1", "blocks_7")))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^optim.trainable: 'blocks_\(' is not a regex"):
        validate_config(tiny_config(optim__trainable=("blocks_(",)))
    # "blocks_1" selects whole components: not blocks_10/..., nor a part of a name
    with pytest.raises(ValueError, match="^optim.trainable"):
        validate_config(tiny_config(optim__trainable=("blocks_1/gd",)))
    validate_config(tiny_config(optim__trainable=(r"blocks_\d+/(attn|gdn)", "embed")))


def _fake_checkpoint(tmp_path, monkeypatch, cfg):
    """A 'Hugging Face directory' whose loader is monkeypatched (sleepjax.pretrained is written
    elsewhere): config ``cfg``, parameters ``init_params(cfg, PRNGKey(42))``."""
    path = tmp_path / "hf"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "fake"}))
    params = init_params(cfg, jax.random.PRNGKey(42))
    monkeypatch.setattr(initialization, "pretrained_model_config", lambda p: cfg)
    monkeypatch.setattr(initialization, "load_pretrained_params", lambda p: (params, cfg))
    return str(path), params


def test_checkpoint_dir_architecture_vocab_and_insertion(tmp_path, monkeypatch):
    source = validate_config(tiny_config()).model
    source = source.replace(d_model=48, layer_pattern="AGA", dtype="float32")
    path, params = _fake_checkpoint(tmp_path, monkeypatch, source)
    cfg = tiny_config(init__checkpoint_dir=path, init__insert_gdn_at=(1, 4),
                      init__insert_with_mlp=True, model__dtype="bfloat16",
                      optim__trainable=(r"blocks_(1|4)",), model__d_model=256,
                      model__layer_pattern="AGAG")
    # (d_model left at the ModelConfig default: taken from the source)
    rc = validate_config(cfg)
    assert rc.model.layer_pattern == "AGGAG" and rc.model.d_model == 48
    assert rc.model.dtype == "bfloat16"    # a non-architecture key of the run's own
    # the explicit config saved with the run validates on its own, without the source
    explicit = initialization.explicit_model_section(cfg, rc.model)
    assert explicit.model.layer_pattern == "AGGAG"
    assert validate_config(explicit).model == rc.model
    # step-0 parameters: the source's blocks moved, the new ones zero-output init_params blocks
    init_rng = jax.random.split(jax.random.PRNGKey(0))[0]
    start = warm_start.initial_params(rc.init, rc.model, init_rng)
    for old, new in ((0, 0), (1, 2), (2, 3)):
        for a, b in zip(jax.tree.leaves(params[f"blocks_{old}"]),
                        jax.tree.leaves(start[f"blocks_{new}"])):
            assert a is b
    assert not np.any(start["blocks_1"]["gdn"]["wo"]) and not np.any(start["blocks_4"]["mlp"]["w_down"])
    fresh = init_params(rc.model, init_rng)["blocks_4"]["gdn"]["wq"]
    np.testing.assert_array_equal(start["blocks_4"]["gdn"]["wq"], fresh)

    # errors name the key, one line each
    def fails(match, **overrides):
        with pytest.raises(ValueError, match=match) as info:
            validate_config(tiny_config(**{"model__layer_pattern": "AGAG", "model__d_model": 256,
                                           **overrides}))
        assert "\n" not in str(info.value), str(info.value)

    fails(r"^model.d_model: 64 conflicts with the architecture from init.checkpoint_dir \(48\)",
          init__checkpoint_dir=path, model__d_model=64)
    fails(r"^model.layer_pattern: 'AGA' conflicts .* \('AGGAG'\)", init__checkpoint_dir=path,
          init__insert_gdn_at=(1, 4), init__insert_with_mlp=True, model__layer_pattern="AGA")
    fails(r"^init.insert_gdn_at: .* \[0, 4\)", init__checkpoint_dir=path, init__insert_gdn_at=(5,))
    fails(r"^init.insert_gdn_at: needs init.checkpoint_dir", init__insert_gdn_at=(1,))
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(r"^init.checkpoint_dir: no config.json in", init__checkpoint_dir=str(empty))
    fails(r"^init.checkpoint_dir: no such directory", init__checkpoint_dir=str(tmp_path / "nope"))
    fails(r"^init.from_run: set either it or init.checkpoint_dir", init__checkpoint_dir=path,
          init__from_run=path)
    fails(r"^init.from_run: .* holds no checkpoint", init__from_run=str(empty))
    monkeypatch.setattr(initialization, "pretrained_model_config",
                        lambda p: dataclasses.replace(source, vocab_size=source.vocab_size - 1))
    fails(r"^init.checkpoint_dir: the source's vocab_size \d+ is smaller than the task's",
          init__checkpoint_dir=path)


def test_from_run_with_inserted_block_and_frozen_groups(first_run, tmp_path):
    """Warm-up-then-continue: run 1 trains; run 2 starts from its final parameters with a new
    GDN block, trains only that block; its saved config stands alone."""
    _, first_dir, first = first_run
    second_dir = str(tmp_path / "second")
    cfg = tiny_config(init__from_run=first_dir, init__insert_gdn_at=(1,),
                      init__insert_with_mlp=True, optim__trainable=("blocks_1",),
                      model__layer_pattern="AGG", **RUN)   # (or left at its default)
    rc = validate_config(cfg)
    assert rc.model.layer_pattern == "AGG"
    init_rng = jax.random.split(jax.random.PRNGKey(0))[0]
    start = warm_start.initial_params(rc.init, rc.model, init_rng)
    moved = {"blocks_0": "blocks_0", "blocks_2": "blocks_1", "embed": "embed",
             "final_norm": "final_norm"}
    for new, old in moved.items():    # step 0 = run 1's final parameters (+ the new block)
        for a, b in zip(jax.tree.leaves(start[new]), jax.tree.leaves(first["params"][old])):
            np.testing.assert_array_equal(a, b)
    second = train_and_evaluate(cfg, second_dir)
    _assert_frozen_and_trained(start, second["params"], ("blocks_1/",))
    with open(os.path.join(second_dir, "config.json")) as f:
        assert json.load(f)["model"]["layer_pattern"] == "AGG"
    loaded = load_params(second_dir)
    assert loaded.model.layer_pattern == "AGG" and loaded.step == STEPS
    again = train_and_evaluate(cfg, second_dir)    # a finished run: resumes, nothing to do
    assert again["steps_run"] == 0


def test_attention_only_source_takes_the_runs_gdn_shape(tmp_path, monkeypatch):
    """Route 2: 'g' blocks into an attention-only model (a Llama's loaded config carries
    ModelConfig's default GDN shape); the run's model section shapes the new blocks."""
    tiny = validate_config(tiny_config()).model
    source = tiny.replace(layer_pattern="AAA", gdn_heads=4, gdn_head_dim=64)
    path, params = _fake_checkpoint(tmp_path, monkeypatch, source)
    cfg = tiny_config(init__checkpoint_dir=path, init__insert_gdn_at=(1, 3),
                      model__layer_pattern="AGAG", model__gdn_heads=2, model__gdn_head_dim=8,
                      optim__trainable=("blocks_1/gdn", "blocks_3"))
    rc = validate_config(cfg)
    assert rc.model.layer_pattern == "AgAgA"
    assert (rc.model.gdn_heads, rc.model.gdn_head_dim) == (2, 8)
    start = warm_start.initial_params(rc.init, rc.model, jax.random.PRNGKey(1))
    assert start["blocks_1"]["gdn"]["wq"].shape == (tiny.d_model, 16)
    assert "mlp" not in start["blocks_3"] and not np.any(start["blocks_3"]["gdn"]["wo"])
    assert start["blocks_4"] is params["blocks_2"]
    with pytest.raises(ValueError, match="^model.layer_pattern"):   # nothing to remember with
        validate_config(tiny_config(init__checkpoint_dir=path, model__layer_pattern="AGAG"))


def test_frozen_params_are_constants_of_the_loss():
    """With ``trainable`` the train step differentiates the trainable parameters only: the
    frozen ones' weight gradients are not computed, and the gradient norm is the trainable
    parameters' part of the full gradient."""

    from sleepjax.models import SleepLM
    from sleepjax.training.param_groups import freeze_untrainable, is_trainable
    from sleepjax.training.state import TrainState
    from sleepjax.training.loss import reduce_answer_loss, token_losses
    from sleepjax.training.train_step import make_train_step

    cfg = tiny_config()
    rc = validate_config(cfg)
    model = SleepLM(rc.model, rc.sleep)
    params = _initial_params(cfg)
    patterns = ("blocks_1/gdn",)
    rng = np.random.RandomState(0)
    batch = {"inputs": jnp.asarray(rng.randint(0, 3, (2, rc.seq_len)), jnp.int32),
             "targets": jnp.asarray(rng.randint(0, 3, (2, rc.seq_len)), jnp.int32),
             "loss_mask": jnp.ones((2, rc.seq_len), jnp.float32)}

    def loss(p):
        ce, correct, _ = token_losses(model, p, batch)
        return reduce_answer_loss(ce, correct, batch["loss_mask"])[0]

    full = _flat(jax.grad(loss)(params))
    expected_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for path, g in full.items()
                                if is_trainable(path, patterns)))
    frozen_grads = _flat(jax.grad(lambda p: loss(freeze_untrainable(p, patterns)))(params))
    for path, g in frozen_grads.items():
        assert np.any(g) == is_trainable(path, patterns), path
    opt = make_optimizer(OptimConfig(trainable=patterns), 10)
    state = TrainState(step=jnp.asarray(0), params=params, opt_state=opt.init(params),
                       rng=jax.random.PRNGKey(0))
    _, metrics = jax.jit(make_train_step(model, opt, trainable=patterns))(state, batch)
    np.testing.assert_allclose(float(metrics["grad_norm"]), expected_norm, rtol=1e-5)
    assert float(metrics["grad_norm"]) < 0.99 * np.sqrt(sum(np.sum(g ** 2) for g in full.values()))
