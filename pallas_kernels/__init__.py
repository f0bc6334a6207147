"""Kernels, Levanter-style: one self-contained folder per op (``api`` dispatcher,
``reference``, ``xla``, ``pallas_tpu``, ``pallas_gpu``). Nothing here imports sleepjax."""
