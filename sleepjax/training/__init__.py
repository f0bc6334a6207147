"""Config-driven training of sleepjax models.

* :mod:`~sleepjax.training.config` -- the experiment ConfigDict layout and ``validate_config``;
* :mod:`~sleepjax.training.optimizer` -- Muon + AdamW, clipping, warmup-stable-decay schedule;
* :mod:`~sleepjax.training.state` / :mod:`~sleepjax.training.train_step` -- the pure step;
* :mod:`~sleepjax.training.evaluate` -- exact-match accuracy by difficulty;
* :mod:`~sleepjax.training.checkpointing` -- orbax checkpoints with the grain iterator state;
* :mod:`~sleepjax.training.trainer` -- ``train_and_evaluate(cfg, workdir)``;
* :mod:`~sleepjax.training.logging` / :mod:`~sleepjax.training.plots` -- outputs.

The command-line entry points are ``python -m sleepjax.train`` and ``python -m sleepjax.sweep``.
"""
