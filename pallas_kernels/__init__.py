"""Pallas kernels of sleepjax (Levanter-style layout: one folder per op with
``api`` / ``reference`` / ``pallas_tpu`` / ``pallas_gpu`` modules)."""
