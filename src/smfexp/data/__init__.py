"""Benchmarks and corpora: one source layer (local data dir or hub), one collator, DataModules."""
