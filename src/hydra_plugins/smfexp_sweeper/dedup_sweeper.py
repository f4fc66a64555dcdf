"""``hydra/sweeper=smfexp``: Hydra's basic sweeper minus duplicate jobs.

``--multirun method=smf,lora,full selector=tfidf,kl`` would run LoRA and full finetuning
twice each (they have no selector). Here, for methods listed in ``selector_free_methods``,
the ``selector`` overrides are dropped and identical jobs are run once.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class DedupSweeperConf:
    _target_: str = "hydra_plugins.smfexp_sweeper.dedup_sweeper.DedupSweeper"
    # no `from __future__ import annotations` here: Hydra's plugin scan needs real types
    max_batch_size: Optional[int] = None  # noqa: UP045
    params: Optional[dict[str, str]] = None  # noqa: UP045
    selector_free_methods: list[str] = field(default_factory=lambda: ["lora", "full"])


ConfigStore.instance().store(group="hydra/sweeper", name="smfexp", node=DedupSweeperConf,
                             provider="smfexp")


def dedup_jobs(jobs: list[list[str]], selector_free: set[str], default_method: str | None
               ) -> list[list[str]]:
    """Drop selector overrides from jobs of selector-free methods, then drop repeats."""
    seen: set[tuple[str, ...]] = set()
    kept: list[list[str]] = []
    for job in jobs:
        method = default_method
        for item in job:
            if item.startswith("method="):
                method = item.split("=", 1)[1]
        if method in selector_free:
            job = [o for o in job if not o.lstrip("+~").startswith("selector")]
        key = tuple(job)
        if key not in seen:
            seen.add(key)
            kept.append(job)
    return kept


class DedupSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None,
                 selector_free_methods: list[str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.selector_free = set(selector_free_methods or [])

    def split_arguments(self, overrides: Any, max_batch_size: int | None  # type: ignore[override]
                        ) -> list[list[list[str]]]:
        batches = BasicSweeper.split_arguments(overrides, None)
        default_method = None
        if self.config is not None and "method" in self.config:
            default_method = self.config.method.get("name")
        jobs = dedup_jobs(batches[0] if batches else [], self.selector_free, default_method)
        if max_batch_size is None:
            return [jobs]
        return [list(c) for c in BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size)]
