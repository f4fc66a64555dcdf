"""Run lm-evaluation-harness itself on the same rows, for parity tests and benchmarks.

Task YAMLs ``include`` the installed built-in task files, so prompts, targets, filters and
metrics are lm_eval's own; only the data source changes, to small jsonl files in the hub
layouts written from canonical rows. Needs the ``dev`` extra (``lm-eval``), imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HUB_SPLIT = {
    "medmcqa": "validation",
    "triviaqa": "validation",
    "nq_open": "validation",
    "gsm8k": "test",
    "wikitext": "test",
}
BUILTIN = {
    "medmcqa": "medmcqa/medmcqa.yaml",
    "triviaqa": "triviaqa/default.yaml",
    "nq_open": "nq_open/nq_open.yaml",
    "gsm8k": "gsm8k/gsm8k.yaml",
    "wikitext": "wikitext/wikitext.yaml",
}


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def hub_rows(probe: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical rows -> the hub dataset layout each built-in task reads."""
    if probe == "medmcqa":
        keys = ("opa", "opb", "opc", "opd")
        return [
            {"question": r["question"], **dict(zip(keys, r["options"], strict=True)),
             "cop": r["answer"]}
            for r in rows
        ]  # fmt: skip
    if probe == "triviaqa":
        return [
            {"question": r["question"], "answer": {"value": r["answer"], "aliases": r["aliases"]}}
            for r in rows
        ]
    if probe == "nq_open":
        return [{"question": r["question"], "answer": r["answers"]} for r in rows]
    if probe == "gsm8k":
        return [{"question": r["question"], "answer": r["answer"]} for r in rows]
    if probe == "wikitext":
        return [{"page": r["page"]} for r in rows]
    raise KeyError(f"no hub layout for probe {probe!r}")


def write_task(
    folder: Path,
    name: str,
    probe: str,
    rows: list[dict[str, Any]],
    body: str | None = None,
) -> str:
    """Write ``{name}.yaml`` + data; ``body`` (YAML) defaults to including the built-in task.

    Zero-shot always (``num_fewshot: 0``; lm_eval's gsm8k would otherwise be 5-shot).
    """
    folder.mkdir(parents=True, exist_ok=True)
    split = HUB_SPLIT[probe]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in hub_rows(probe, rows)))
    if body is None:
        body = f"include: {lm_eval_tasks_dir() / BUILTIN[probe]}\n"
        if probe == "wikitext":
            body += "validation_split: null\n"
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    {split}: {data}\n"
        f"  cache_dir: {folder / 'hf_cache'}\n"
        "training_split: null\n"
        "fewshot_split: null\n"
        "num_fewshot: 0\n" + body
    )
    return name


def run_harness(
    model: Any,
    tokenizer: Any,
    folder: Path,
    tasks: list[str],
    batch_size: int,
    max_length: int | None = None,
    chat: bool = False,
) -> dict[str, Any]:
    """``simple_evaluate`` with ``HFLM`` wrapping the given model object; samples sorted by doc."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=str(next(model.parameters()).device),
        max_length=max_length,
    )
    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        log_samples=True,
        apply_chat_template=chat,
        bootstrap_iters=0,
    )
    if out is None:
        raise RuntimeError("lm_eval returned no results")
    for name in tasks:
        out["samples"][name].sort(key=lambda s: (s["doc_id"], s["filter"]))
    return out


def metric(results: dict[str, Any], task: str, name: str, filt: str = "none") -> float:
    """An aggregate from ``simple_evaluate`` output (``"name,filter"`` keys)."""
    return float(results["results"][task][f"{name},{filt}"])
