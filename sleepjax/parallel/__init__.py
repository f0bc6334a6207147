"""Where arrays live: the device mesh, sharding rules and multi-device / multi-host plumbing.

One module per concern (import them directly; this package re-exports nothing):

* :mod:`~sleepjax.parallel.mesh` -- the ``mesh`` config section, the (data, fsdp, model) mesh,
  the check that heads divide the model axis;
* :mod:`~sleepjax.parallel.logical_axes` -- logical array axes -> mesh axes, PartitionSpecs of
  arrays and pytrees from ordered rule tables;
* :mod:`~sleepjax.parallel.state_shardings` -- shardings of the parameters (rules derived from
  the declarations in :mod:`sleepjax.models.params`), the TrainState and the streaming state;
* :mod:`~sleepjax.parallel.activations` -- ``constrain`` and ``activation_mesh_axes`` under the
  active mesh, for traced model and kernel code;
* :mod:`~sleepjax.parallel.data_parallel` -- the data-parallel ``shard_map`` (gradients summed
  once) and ``jit_train_step``;
* :mod:`~sleepjax.parallel.multihost` -- ``initialize_distributed``, each host's data shard,
  host batches -> global arrays.
"""
