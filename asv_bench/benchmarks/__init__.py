"""fastopt's asv benchmarks. The cases (which configuration of each rule, its bytes per
element, how to build buffers and call the kernel, ``opt.step()``, the NumPy reference
and torch.optim) come from :mod:`fastopt.bench.cases`, the same source ``fastopt bench``
reads."""
