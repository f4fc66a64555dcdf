"""The CUDA check behind ``benchmarks/gpu_check.py`` (its entry point), one job per module.

- :mod:`gpu.env`: finding smfexp, installing missing dependencies from carried wheels
  (offline), the child processes' environment;
- :mod:`gpu.plan`: every size and target (GPU run vs ``--dry-run``), the time budget;
- :mod:`gpu.sections`: a section of the results file and the guard that runs it;
- :mod:`gpu.device_tests`: 1. the device tests (pytest in a child);
- :mod:`gpu.runs`: 2. the short training runs (``smfexp.train experiment=smoke``);
- :mod:`gpu.steps`: 3. training step time and peak memory;
- :mod:`gpu.throughput`: 4. eval throughput;
- :mod:`gpu.device`: timing and model helpers that 3 and 4 share;
- :mod:`gpu.markdown`: the results file.

Nothing here imports smfexp at module level: ``env.prepare_imports`` must run first.
"""
