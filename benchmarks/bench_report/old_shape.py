"""Sections 6-9 of the report, the old shape (issue 5: random-token 8 x 256 batches,
16K-slot retrofitted memories): forward pass, training step, SMF scaling with the table size,
and peak memory."""

from __future__ import annotations

from mdtable import GiB, fgib, table
from suite_plan import SELECTORS, SHORT, Settings

from .cells import fx, ok, ratio, status
from .results import Results

# issue #5 / #8 targets
T_SMF_BF16_VS_FULL_FP32 = 0.35
T_SMF_VS_FULL = 0.6
T_SMF_VS_LORA = 0.9
T_SCALING = 1.2
T_RSS_HEADROOM_GB = 2.0


def old_note(s: Settings) -> str:
    return (
        f"> Old shape (issue 5, before the fact stream): random-token {s.batch}x{s.seq} "
        f"batches and `conf/memory/default.yaml` memories (n_keys {s.small_keys}, knn 16, "
        f"random values). Today's runs have the shape of sections 1-5."
    )


def forward(rep: Results) -> list[str]:
    s = rep.s
    layers = next(
        (
            r.get("layers")
            for k, r in rep.res.items()
            if k.startswith("forward/retrofitted") and r.get("layers")
        ),
        "?",
    )
    out = [
        "## 6. Forward pass (old shape)",
        "",
        old_note(rep.s),
        "",
        f"Inference forward (`torch.inference_mode`, logits included) of a {s.batch}x"
        f"{s.seq}-token batch. Retrofitted = `conf/memory/default.yaml` memories "
        f"(n_keys {s.small_keys}: {s.small_keys**2:,} slots/layer) at blocks {layers}. "
        f"bf16 = `torch.autocast(bfloat16)` over fp32 weights.",
        "",
    ]
    rows = []
    for prec in ("fp32", "bf16"):
        for name in ("base", "retrofitted"):
            key = f"forward/{name}/{prec}"
            base = rep.wall(f"forward/base/{prec}")
            fp32 = rep.wall(f"forward/{name}/fp32")
            rows.append(
                [
                    name,
                    prec,
                    *rep.cells(key),
                    fx(ratio(rep.wall(key), base)),
                    fx(ratio(rep.wall(key), fp32)),
                    fgib(rep.rss(key)),
                ]
            )
    out += table(
        [
            "model",
            "precision",
            "median wall (s)",
            "median CPU (s)",
            "vs base (same precision)",
            "vs fp32 (same model)",
            "peak RSS (GiB)",
        ],
        rows,
        "---|---|" + "---:|" * 5,
    )
    return out


def train(rep: Results) -> list[str]:
    s = rep.s
    out = [
        "## 7. Training step (old shape)",
        "",
        old_note(rep.s),
        "",
        f"One optimizer step (forward + backward + update) on the same {s.batch}x{s.seq}"
        f"-token batch through the real method modules and a Lightning Trainer "
        f"(`conf/method/*.yaml`, grad_accum 1; SMF: `conf/memory/default.yaml`, top_t "
        f"512, RowSparseSGD; LoRA: rank 16 on q,k,v,o,gate,up,down; full: AdamW). "
        f"bf16 = Lightning `bf16-mixed` (fp32 master weights). tfidf/kl read "
        f"**synthetic random background counts** (no background pass).",
        "",
    ]
    rows = []
    for prec in ("fp32", "bf16"):
        for name in [*(f"smf/{sel}" for sel in SELECTORS), "lora", "full"]:
            key = f"train/{name}/{prec}"
            r = rep.r(key) or {}
            w = rep.wall(key)
            rows.append(
                [
                    name,
                    prec,
                    f"{r['trainable']:,}" if "trainable" in r else "n/a",
                    *rep.cells(key),
                    fx(ratio(w, rep.wall(f"train/full/{prec}"))),
                    fx(ratio(w, rep.wall(f"train/lora/{prec}"))),
                    fx(ratio(w, rep.wall("train/full/fp32"))),
                    fgib(rep.rss(key)),
                ]
            )
    out += table(
        [
            "method",
            "precision",
            "trainable params",
            "median wall (s)",
            "median CPU (s)",
            "vs full (same precision)",
            "vs LoRA (same precision)",
            "vs full fp32",
            "peak RSS (GiB)",
        ],
        rows,
        "---|---|" + "---:|" * 7,
    )
    out += ["Targets (issue #5), ratios of median wall times:", ""]
    checks = [
        ("bf16 SMF step / fp32 full step", "bf16", "full", "fp32", T_SMF_BF16_VS_FULL_FP32),
        ("SMF / full, fp32", "fp32", "full", "fp32", T_SMF_VS_FULL),
        ("SMF / full, bf16", "bf16", "full", "bf16", T_SMF_VS_FULL),
        ("SMF / LoRA, fp32", "fp32", "lora", "fp32", T_SMF_VS_LORA),
        ("SMF / LoRA, bf16", "bf16", "lora", "bf16", T_SMF_VS_LORA),
    ]
    rows = []
    for label, p_smf, ref, p_ref, target in checks:
        cells = [label]
        for sel in SELECTORS:
            x = ratio(rep.wall(f"train/smf/{sel}/{p_smf}"), rep.wall(f"train/{ref}/{p_ref}"))
            cells.append("n/a" if x is None else f"{x:.3f}x ({ok(x, x <= target)})")
        rows.append([*cells, f"<= {target}"])
    out += table(
        ["ratio", *(f"SMF {sel}" for sel in SELECTORS), "target"],
        rows,
        "---|" + "---:|" * (len(SELECTORS) + 1),
    )
    return out


def scaling(rep: Results) -> list[str]:
    s = rep.s
    lo, hi = s.small_keys, s.large_keys
    out = [
        "## 8. SMF scaling (old shape)",
        "",
        old_note(rep.s),
        "",
        f"Does the SMF step cost depend on the table size? n_keys {lo} ({lo**2:,} slots"
        f"/layer) vs {hi} ({hi**2:,} slots/layer). Whole SMF training steps (tfidf, "
        f"synthetic background, {SHORT[s.scaling_precision]}, same batch as section 2) "
        f"with the row-sparse value optimizers (SGD is the method default; "
        f"`row_sparse+ckpt` = SGD with `method.gradient_checkpointing=true`, activations "
        f"recomputed in backward) and with the flawed `dense_masked` update "
        f"(`DenseMaskedAdamW`, what reference implementations do). Value tables = all "
        f"memory layers, fp32.",
        "",
    ]
    rows = []
    for update, opt in (
        ("row_sparse", "sgd"),
        ("row_sparse", "adam"),
        ("row_sparse+ckpt", "sgd"),
        ("dense_masked", "adamw"),
    ):
        for keys in (lo, hi):
            key = f"scaling/{update}/{opt}/{keys}"
            r = rep.r(key) or {}
            tables = r.get("tables_bytes")
            rss = rep.rss(key)
            rows.append(
                [
                    update,
                    opt,
                    f"{keys} ({keys**2:,})",
                    fgib(tables),
                    *rep.cells(key),
                    fx(ratio(rep.wall(key), rep.wall(f"scaling/{update}/{opt}/{lo}"))),
                    fgib(rss),
                    fgib(None if rss is None or tables is None else rss - tables),
                ]
            )
    out += table(
        [
            "update",
            "optimizer",
            "n_keys (slots/layer)",
            "value tables (GiB)",
            "median wall (s)",
            "median CPU (s)",
            f"vs n_keys {lo}",
            "peak RSS (GiB)",
            "peak RSS - tables (GiB)",
        ],
        rows,
        "---|---|" + "---:|" * 7,
    )
    out += [
        f"The update alone (`bench_sparse_update.py`'s case: one table, v_dim "
        f"{s.update_dim}, real sparse gradient of {s.batch}x{s.seq} tokens x 4 heads x "
        f"16 knn reads spread over the table, t = {min(s.top_t, lo**2)} most-read rows "
        f"selected), median of {s.runs} `step()` calls after {max(s.warmup, 1)} warm-up, "
        f"{s.update_threads or 'default'} torch thread(s):",
        "",
    ]
    rows = []
    for opt, name in (
        ("sgd", "RowSparseSGD (momentum 0.9)"),
        ("adam", "RowSparseAdam"),
        ("dense", "DenseMaskedAdamW (dense_masked)"),
    ):
        for keys in (lo, hi):
            key = f"update/{opt}/{keys}"
            r = rep.r(key) or {}
            st = status(rep.r(key))
            t = r.get("median_s") if not st else None
            t_lo = (rep.r(f"update/{opt}/{lo}") or {}).get("median_s")
            rows.append(
                [
                    name,
                    f"{keys**2:,}",
                    fgib(r.get("tables_bytes")),
                    st or f"{t * 1e3:.4g}",
                    fx(ratio(t, t_lo)),
                    st or f"{r['state_bytes'] / 2**20:.1f}",
                    fgib(rep.rss(key)),
                ]
            )
    out += table(
        [
            "optimizer",
            "rows",
            "table (GiB)",
            "median step (ms)",
            f"vs {lo**2:,} rows",
            "optimizer state (MiB)",
            "peak RSS (GiB)",
        ],
        rows,
        "---|" + "---:|" * 6,
    )
    rows = []
    for label, key_lo, key_hi, val in (
        (
            "SMF step, row-sparse SGD",
            f"scaling/row_sparse/sgd/{lo}",
            f"scaling/row_sparse/sgd/{hi}",
            rep.wall,
        ),
        (
            "SMF step, row-sparse Adam",
            f"scaling/row_sparse/adam/{lo}",
            f"scaling/row_sparse/adam/{hi}",
            rep.wall,
        ),
        (
            "update alone, RowSparseSGD",
            f"update/sgd/{lo}",
            f"update/sgd/{hi}",
            lambda k: (rep.r(k) or {}).get("median_s"),
        ),
        (
            "update alone, RowSparseAdam",
            f"update/adam/{lo}",
            f"update/adam/{hi}",
            lambda k: (rep.r(k) or {}).get("median_s"),
        ),
    ):
        x = ratio(val(key_hi), val(key_lo))
        rows.append(
            [
                f"{label}: {hi**2:,} / {lo**2:,} slots",
                fx(x),
                f"<= {T_SCALING}",
                ok(x, x is not None and x <= T_SCALING),
            ]
        )
    out += table(["target (issue #5)", "value", "target", "ok"], rows, "---|---:|---:|---|")
    return out


def memory(rep: Results) -> list[str]:
    s = rep.s
    hi = s.large_keys
    out = [
        "## 9. Peak memory (RSS, old shape)",
        "",
        old_note(rep.s),
        "",
        "Every table above has each configuration's peak RSS (its own child process; "
        "`getrusage(RUSAGE_SELF).ru_maxrss`, imported libraries included). An idle "
        "child (imports only) is the floor:",
        "",
    ]
    rows = [
        [
            "idle child (the suite's imports only)",
            "n/a",
            fgib(rep.rss("idle")),
            "n/a",
            "n/a",
            "n/a",
        ]
    ]
    for update, opt in (
        ("row_sparse", "sgd"),
        ("row_sparse", "adam"),
        ("row_sparse+ckpt", "sgd"),
        ("dense_masked", "adamw"),
    ):
        key = f"scaling/{update}/{opt}/{hi}"
        r = rep.r(key)
        if r is None:
            continue
        tables = r.get("tables_bytes")
        rss = rep.rss(key)
        extra = None if rss is None or tables is None else rss - tables
        cell = status(r) or fgib(rss)
        rows.append(
            [
                f"SMF step, {update} {opt}, {hi**2:,} slots/layer",
                fgib(tables),
                cell,
                fgib(extra),
                f"<= tables + {T_RSS_HEADROOM_GB:g} GiB",
                ok(extra, extra is not None and extra <= T_RSS_HEADROOM_GB * GiB),
            ]
        )
    out += table(
        [
            "configuration",
            "value tables (GiB)",
            "peak RSS (GiB)",
            "peak RSS - tables (GiB)",
            "target (issue #5)",
            "ok",
        ],
        rows,
        "---|---:|---:|---:|---:|---|",
    )
    peaks = []
    for sec in ("forward", "train", "scaling", "update", "eval"):
        keyed = [(rep.rss(k), k) for k in rep.res if k.startswith(sec + "/")]
        keyed = [(v, k) for v, k in keyed if v is not None]
        if keyed:
            v, k = max(keyed)
            peaks.append([sec, k, fgib(v)])
    if peaks:
        out += ["Largest peak per section:", ""]
        out += table(["section", "configuration", "peak RSS (GiB)"], peaks, "---|---|---:|")
    return out
