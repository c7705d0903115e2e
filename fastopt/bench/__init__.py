"""Benchmarks: kernel throughput against NumPy, ``torch.optim`` and memory bandwidth.

* :mod:`.measure`: timing (median of repeats over loops of at least ``min_time``) and a
  thread-count context manager.
* :mod:`.triad`: the STREAM-style triad ``a = b + s*c``, the bandwidth yardstick.
* :mod:`.cases`: one :class:`~.cases.Case` per rule: bytes moved per element and how to
  build and call the kernel, ``opt.step()``, the NumPy reference and ``torch.optim``.
  The ``fastopt bench`` command and the asv suite (``asv_bench/``) both read them.
* :mod:`.suites`: the measurements (kernel table, whole-step/model rows, serial vs
  parallel threshold), as plain dicts.
* :mod:`.loops`: whole training-loop iterations, timed in alternating blocks.
* :mod:`.mixed`: the one-pass mixed-precision offload step against the unscale / fp32 step
  / cast sequences of torch and DeepSpeed; :mod:`.offload_loop`: the offload training
  loop around it, end to end (``fastopt bench --mixed [--baselines deepspeed]``).
* :mod:`.report`: text tables. :mod:`.cli`: the ``fastopt bench`` command.
"""
