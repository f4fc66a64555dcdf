"""Experiment loggers: Lightning CSV always, Weights & Biases online or as offline files.

W&B never prompts and never hangs here: with no API key or no route to the W&B server the
run is written offline (``wandb sync <run dir>/wandb/offline-run-*`` uploads it later), and
that is said once. One W&B run per job: the runner finishes it at the end of every job, so
multirun jobs never share a run; jobs of one sweep share a W&B group.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from smfexp.utils.net import reachable, wandb_url

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"


def wandb_online_possible(timeout: float = 2.0) -> tuple[bool, str]:
    """(can go online, reason if not) - an API key and a reachable server are both needed."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return False, f"WANDB_MODE={mode}"
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        netrc = Path.home() / ".netrc"
        has_key = netrc.is_file() and WANDB_HOST in netrc.read_text(errors="ignore")
    if not has_key:
        return False, "no W&B API key (run `wandb login` or set WANDB_API_KEY)"
    url = wandb_url()
    if not reachable(url, timeout):
        return False, f"{urlparse(url).hostname} is unreachable"
    return True, ""


def _wandb_logger(conf: dict[str, Any], run_meta: dict[str, Any]) -> WandbLogger:
    offline = conf.pop("offline", "auto")
    if str(offline) == "auto":
        online, why = wandb_online_possible()
        offline = not online
        if offline:
            log.warning("W&B: writing offline run files (%s); upload later with `wandb sync`",
                        why)
    os.environ.setdefault("WANDB_SILENT", "true")
    group = conf.pop("group", "auto")
    tags = conf.pop("tags", "auto")
    Path(conf.get("save_dir", ".")).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        offline=bool(offline),
        group=run_meta.get("group") if group == "auto" else group,
        tags=run_meta.get("tags") if tags == "auto" else list(tags or []),
        name=conf.pop("name", None) or run_meta.get("name"),
        config=run_meta.get("config"),
        settings={"silent": True, "console": "off"},
        **conf,
    )


def build_loggers(settings: dict[str, dict[str, Any]],
                  run_meta: dict[str, Any]) -> list[Logger]:
    """The loggers of the ``logger`` group (``csv``, ``wandb``: their settings by name)."""
    loggers: list[Logger] = []
    for name, node in settings.items():
        if node is None:
            continue
        conf = dict(node)
        if name == "csv":
            loggers.append(CSVLogger(**conf))
        elif name == "wandb":
            loggers.append(_wandb_logger(conf, run_meta))
        else:
            raise ValueError(f"logger {name!r} is not known; valid: csv, wandb")
    return loggers


def finish_loggers(loggers: list[Logger], summary: dict[str, Any],
                   results: dict[str, Any]) -> None:
    """Put the before/after/delta numbers in the W&B summary and a table; close the run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment
            run.summary.update(summary)
            rows = [[probe, metric, value, results.get("after", {}).get(probe, {}).get(metric),
                     results.get("delta", {}).get(probe, {}).get(metric)]
                    for probe, metrics in sorted((results.get("before") or {}).items())
                    for metric, value in sorted(metrics.items())]
            table = wandb.Table(columns=["probe", "metric", "before", "after", "delta"],
                                data=rows)
            run.log({"results": table})
            run.finish()
        else:
            logger.finalize("success")
