"""The rows of the benchmarks a DataModule trains on: MedMCQA, TriviaQA, NQ-open.

One module per benchmark: its row normaliser (the canonical row schema), ``load_rows`` (on the
generic IO of :mod:`smfexp.data.sources`) and its split boundaries with the split functions.
They sit here, below :mod:`smfexp.tasks`, because both the DataModules (which rows a run
trains on) and the probes (how the held-out rows are scored) need them; the probes import
them from here, and no DataModule imports a probe.
"""
