"""``python -m smfexp.evaluate``: score a model on the configured probes and write eval.json.

Example: ``python -m smfexp.evaluate eval.protocol=harness eval.probes=[medmcqa] eval.limit=100``
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from smfexp import __version__
from smfexp.eval.encode import resolve_max_length
from smfexp.models.loading import load_model
from smfexp.tasks import load_probe_data, primary_metric, score_probe
from smfexp.utils.io import atomic_write_json
from smfexp.validate import validate_evaluate_config

log = logging.getLogger(__name__)

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def load_for_eval(cfg: DictConfig) -> tuple[Any, Any]:
    """The model of ``cfg.model``, with ``cfg.checkpoint`` (a run's trained artifact) applied."""
    model, tokenizer = load_model(cfg.model)
    if cfg.get("checkpoint"):
        from smfexp.models.trained import load_trained

        model, _ = load_trained(model, cfg.checkpoint)
    return model, tokenizer


def format_table(results: dict[str, dict[str, float]], protocol: str) -> str:
    """A small aligned table; the primary metric of each probe is starred."""
    lines = [f"{'probe':<10} {'metric':<22} {'value':>12}", "-" * 46]
    for probe, metrics in results.items():
        lead = primary_metric(probe, protocol)[0]
        for name, value in metrics.items():
            star = "*" if name == lead else " "
            lines.append(f"{probe:<10} {star}{name:<21} {value:>12.4f}")
    return "\n".join(lines)


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Load, score every probe, write ``output_dir / cfg.output`` atomically; return it."""
    ecfg = validate_evaluate_config(cfg)  # one-line errors before the model loads
    t_start = time.perf_counter()
    model, tokenizer = load_for_eval(cfg)
    results: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for probe in ecfg.probes:
        data = load_probe_data(probe, ecfg)
        t0 = time.perf_counter()
        results[probe] = score_probe(probe, model, tokenizer, data.rows, ecfg)
        seconds[probe] = round(time.perf_counter() - t0, 3)
        sources[probe] = data.source
        log.info("%s: %s (%.1f s)", probe, results[probe], seconds[probe])
    meta = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "checkpoint": cfg.get("checkpoint"),
        "protocol": ecfg.protocol,
        "limit": ecfg.limit,
        "chat_template": ecfg.chat_template,
        "precision": ecfg.precision,
        "batch_size": ecfg.batch_size,
        "max_length": resolve_max_length(model, tokenizer, ecfg.max_length),
        "data_source": sources,
        "primary_metric": {p: list(primary_metric(p, ecfg.protocol)) for p in ecfg.probes},
        "seconds": seconds,
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "eval_config": ecfg.to_dict(),
        "versions": {
            "smfexp": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    out: dict[str, Any] = {**results, "_meta": meta}
    path = atomic_write_json(output_dir / str(cfg.output), out)
    print(format_table(results, ecfg.protocol))
    print(f"wrote {path}")
    return out


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from smfexp.errors import friendly_errors

    with friendly_errors():
        run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
