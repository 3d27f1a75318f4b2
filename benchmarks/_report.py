"""Goals, Markdown table, console summary and plots for ``benchmarks/throughput.py``."""

from __future__ import annotations

import statistics
from pathlib import Path

MEM_FLOOR_MIB = 16.0
"""Memory goals are judged only where the no-grad forward needs at least this much: below
it (MNIST) the resident-memory figures are page- and allocator-granular noise."""

RESNETS = ("resnet18", "resnet50")

NOISY = 1.25
"""A ratio whose rounds spread by more than this factor is flagged as noisy."""

# (id, statement, numerator, denominator, what, limit, models or None for all)
#   limit: a number, or {"cpu": ..., "cuda": ...} where the goal depends on the device
#   what = "ratio_max": the worst (largest) per-config median of t_num / t_den must be <= limit
#          "speedup_min": the worst (smallest) per-config median of t_num / t_den must be >= limit
#          "mem_max": the largest per-config peak_num / peak_den must be <= limit
GOALS = [
    (
        "time-lb",
        "camlib Grad-CAM time <= 1.05x the lower bound (every model, batch, resolution)",
        "camlib_gradcam",
        "lower_bound",
        "ratio_max",
        1.05,
        None,
    ),
    (
        "pgc-resnet",
        "camlib Grad-CAM >= 3x faster than pytorch-grad-cam on the ResNets",
        "pgc_gradcam",
        "camlib_gradcam",
        "speedup_min",
        3.0,
        RESNETS,
    ),
    (
        "pgc-mnist",
        "camlib Grad-CAM >= 2x faster than pytorch-grad-cam on the MNIST net",
        "pgc_gradcam",
        "camlib_gradcam",
        "speedup_min",
        2.0,
        ("mnist",),
    ),
    (
        "captum-e2e",
        "camlib Grad-CAM faster than Captum end to end (Captum also finds the top class)",
        "captum_gradcam_top",
        "camlib_gradcam",
        "speedup_min",
        1.0,
        None,
    ),
    (
        "captum-given",
        "(info) camlib Grad-CAM faster than Captum even when Captum is given the classes",
        "captum_gradcam",
        "camlib_gradcam",
        "speedup_min",
        1.0,
        None,
    ),
    (
        "torchcam",
        "camlib Grad-CAM not slower than torchcam",
        "camlib_gradcam",
        "torchcam_gradcam",
        "ratio_max",
        1.0,
        None,
    ),
    (
        "mem-gradcam",
        f"camlib Grad-CAM peak memory <= 1.25x a no-grad forward (where that is >= {MEM_FLOOR_MIB:.0f} MiB)",
        "camlib_gradcam",
        "nograd_forward",
        "mem_max",
        1.25,
        None,
    ),
    (
        "mem-cam",
        f"camlib CAM peak memory <= 1.25x a no-grad forward (where that is >= {MEM_FLOOR_MIB:.0f} MiB)",
        "camlib_cam",
        "nograd_forward",
        "mem_max",
        1.25,
        None,
    ),
    (
        "moon-time",
        "moonshot: camlib Grad-CAM time within 10% of a no-grad forward",
        "camlib_gradcam",
        "nograd_forward",
        "ratio_max",
        1.10,
        None,
    ),
    (
        "moon-mem",
        f"moonshot: camlib Grad-CAM peak memory within 10% of a no-grad forward (where that is >= {MEM_FLOOR_MIB:.0f} MiB)",
        "camlib_gradcam",
        "nograd_forward",
        "mem_max",
        1.10,
        None,
    ),
    (
        "guided",
        "camlib Guided Grad-CAM >= 1.3x faster than Captum's GuidedGradCam",
        "captum_guided_gradcam",
        "camlib_guided_gradcam",
        "speedup_min",
        1.3,
        None,
    ),
    # issue 9: the method family
    *[
        (
            f"grad-{key}",
            f"camlib {label} time <= 1.05x camlib Grad-CAM",
            f"camlib_{key}",
            "camlib_gradcam",
            "ratio_max",
            1.05,
            None,
        )
        for key, label in (
            ("gradcampp", "Grad-CAM++"),
            ("xgradcam", "XGrad-CAM"),
            ("layercam", "LayerCAM"),
            ("hirescam", "HiResCAM"),
        )
    ],
    (
        "eigencam",
        "camlib Eigen-CAM time <= 1.05x a no-grad forward",
        "camlib_eigencam",
        "nograd_forward",
        "ratio_max",
        1.05,
        None,
    ),
    (
        "scorecam-floor",
        "camlib Score-CAM time <= 1.10x its floor (the batched no-grad forwards it needs)",
        "camlib_scorecam",
        "scorecam_floor",
        "ratio_max",
        1.10,
        None,
    ),
    (
        "ablationcam-floor",
        "camlib Ablation-CAM time <= 1.10x its floor (the batched no-grad forwards it needs)",
        "camlib_ablationcam",
        "ablationcam_floor",
        "ratio_max",
        1.10,
        None,
    ),
    (
        "scorecam-pgc",
        "camlib Score-CAM faster than pytorch-grad-cam's ScoreCAM (same inputs and batch_size; "
        "on CUDA >= 5x)",
        "pgc_scorecam",
        "camlib_scorecam",
        "speedup_min",
        {"cpu": 1.0, "cuda": 5.0},
        None,
    ),
    (
        "ablationcam-pgc",
        "camlib Ablation-CAM faster than pytorch-grad-cam's AblationCAM (same inputs and "
        "batch_size; on CUDA >= 5x)",
        "pgc_ablationcam",
        "camlib_ablationcam",
        "speedup_min",
        {"cpu": 1.0, "cuda": 5.0},
        None,
    ),
    (
        "scorecam-mem",
        "camlib Score-CAM peak memory bounded by batch_size, not by C: a layer with twice the "
        "channels needs <= 1.25x the peak memory at the same batch_size",
        "camlib_scorecam",
        None,
        "mem_study",
        1.25,
        None,
    ),
    (
        "vit-pgc",
        "(info) vit_b_16 Grad-CAM (automatic token layout) faster than pytorch-grad-cam's "
        "(documented reshape_transform)",
        "pgc_gradcam",
        "camlib_gradcam",
        "speedup_min",
        1.0,
        ("vit_b_16",),
    ),
]

# Each method's floor: the least work it can do (the first of these measured in its run).
_GRADIENT = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam_elementwise",
             "eigengradcam", "segeigencam", "finercam", "refinecam")  # fmt: skip
FLOORS: dict[str, tuple[str, ...]] = {
    **{m: ("lower_bound",) for m in _GRADIENT},
    **{m: ("nograd_forward",) for m in ("cam", "eigencam", "kpcacam", "fem", "randomcam", "dff")},
    "scorecam": ("scorecam_floor",),
    "ablationcam": ("ablationcam_floor",),
    "sscam": ("sampled_score_floor",),
    "iscam": ("sampled_score_floor",),
    "smoothgradcampp": ("smoothgrad_floor",),
    "shapleycam": ("shapley_floor",),
    "fullgrad": ("input_gradient_floor",),
    "guided_backprop": ("input_gradient_floor",),
    "guided_gradcam": ("input_gradient_floor",),
    "sess": ("sess_floor",),
    "legrad": ("legrad_floor",),
}

ROUND2 = {
    # method: (label, limit over its floor or None for information only, why)
    "gradcam_elementwise": ("Grad-CAM element-wise", 1.05, None),
    "eigengradcam": ("EigenGrad-CAM", None, "an eigen-decomposition per image"),
    "segeigencam": ("Seg-Eigen-CAM", None, "an eigen-decomposition per image"),
    "finercam": ("Finer-CAM", 1.05, None),
    "refinecam": ("RefineCAM", None, "the backward to the earlier layer"),
    "kpcacam": ("KPCA-CAM", None, "a P x P kernel eigen-decomposition per image"),
    "fem": ("FEM", 1.10, None),
    "randomcam": ("Random-CAM", 1.10, None),
    "dff": ("DFF", None, "300 NMF updates"),
    "shapleycam": ("Shapley-CAM", 1.10, None),
    "fullgrad": ("FullGrad", None, "the gradients and rescales of every biased layer"),
    "sscam": ("SS-CAM", 1.10, None),
    "iscam": ("IS-CAM", 1.10, None),
    "smoothgradcampp": ("Smooth Grad-CAM++", 1.10, None),
    "sess": ("SESS", None, "pasting, fusing and blurring the patch maps"),
    "legrad": ("LeGrad", None, "the backward to the attention probabilities"),
}
"""Issue 18's methods: the floor goal each is held to (None: reported for information)."""

ROUND2_PEERS = {
    "gradcam_elementwise": ("pgc",), "eigengradcam": ("pgc",), "segeigencam": ("pgc",),
    "kpcacam": ("pgc",), "fem": ("pgc",), "shapleycam": ("pgc",), "fullgrad": ("pgc",),
    "dff": ("pgc",), "randomcam": ("pgc",), "sscam": ("torchcam",), "iscam": ("torchcam",),
    "smoothgradcampp": ("torchcam",), "finercam": ("pgc", "torchcam"), "sess": ("pgc",),
    "refinecam": ("pgc", "torchcam"), "legrad": ("torchcam",),
}  # fmt: skip
PEER_PREFIX = {"pgc": "pytorch-grad-cam", "torchcam": "torchcam", "captum": "Captum"}


def _key(method: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in method.replace("++", "pp"))


GOALS += [
    (
        f"floor-{m}",
        ("" if limit else "(info) ")
        + f"camlib {label} time <= {limit or 1.10:.2f}x its floor ({FLOORS[m][0].replace('_', ' ')})"
        + (f"; the floor leaves out {why}" if why else ""),
        f"camlib_{_key(m)}",
        FLOORS[m][0],
        "ratio_max",
        limit or 1.10,
        None,
    )
    for m, (label, limit, why) in ROUND2.items()
] + [
    (
        f"{peer}-{m}",
        f"camlib {ROUND2[m][0]} faster than {PEER_PREFIX[peer]}'s",
        f"{peer}_{_key(m)}",
        f"camlib_{_key(m)}",
        "speedup_min",
        1.0,
        None,
    )
    for m, peers in ROUND2_PEERS.items()
    for peer in peers
]

# plotting order and style
STYLE = {
    "lower_bound": ("black", "-", "o"),
    "nograd_forward": ("0.55", "-", "s"),
    "camlib_gradcam": ("tab:blue", "-", "o"),
    "camlib_cam": ("tab:cyan", "-", "^"),
    "camlib_guided_gradcam": ("tab:purple", "-", "D"),
    "pgc_gradcam": ("tab:red", "--", "v"),
    "captum_gradcam": ("tab:orange", "--", "<"),
    "captum_gradcam_top": ("tab:brown", "--", ">"),
    "torchcam_gradcam": ("tab:green", "--", "P"),
    "captum_guided_gradcam": ("tab:pink", "--", "X"),
}


def _cfg_name(cfg: dict) -> str:
    run = f" (run {cfg['run'] + 1})" if cfg.get("run") is not None else ""
    return f"{cfg['model']}@{cfg['resolution']} batch {cfg['batch']}{run}"


def pair_ratio(cfg: dict, num: str, den: str) -> dict | None:
    """Median (min, max) over rounds of the per-round time ratio t_num / t_den."""
    rows = cfg["contenders"]
    if num not in rows or den not in rows:
        return None
    values = [
        a / b
        for a, b in zip(rows[num]["seconds_per_call"], rows[den]["seconds_per_call"], strict=True)
    ]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def mem_ratio(cfg: dict, num: str, den: str) -> float | None:
    rows = cfg["contenders"]
    if num not in rows or den not in rows:
        return None
    a, b = rows[num]["peak_extra_mib"], rows[den]["peak_extra_mib"]
    if a is None or b is None or b < MEM_FLOOR_MIB:
        return None
    return a / b


def study_ratios(study: dict | None, key: str = "camlib_scorecam") -> list[dict]:
    """Per batch_size: peak memory at the widest layer over the narrowest (same batch_size)."""
    if not study:
        return []
    rows = [r for r in study["rows"] if r["contender"] == key and r["peak_extra_mib"]]
    out = []
    for bs in sorted({r["batch_size"] for r in rows}):
        at = sorted((r for r in rows if r["batch_size"] == bs), key=lambda r: r["channels"])
        if len(at) >= 2 and at[0]["peak_extra_mib"] > 0:
            out.append(
                {
                    "config": f"{study['model']}@{study['resolution']} batch_size {bs}: "
                    f"{at[-1]['layer']} ({at[-1]['channels']} ch) {at[-1]['peak_extra_mib']:.1f} "
                    f"MiB vs {at[0]['layer']} ({at[0]['channels']} ch) "
                    f"{at[0]['peak_extra_mib']:.1f} MiB",
                    "value": at[-1]["peak_extra_mib"] / at[0]["peak_extra_mib"],
                    "spread": None,
                }
            )
    return out


def evaluate_goals(
    results: list[dict], device: str = "cpu", study: dict | None = None
) -> list[dict]:
    goals = []
    for gid, text, num, den, what, limit, models in GOALS:
        if isinstance(limit, dict):
            limit = limit["cuda" if device.startswith("cuda") else "cpu"]
        per_config = study_ratios(study, num) if what == "mem_study" else []
        for cfg in results if what != "mem_study" else []:
            if models is not None and cfg["model"] not in models:
                continue
            if what == "mem_max":
                value = mem_ratio(cfg, num, den)
                spread = None
            else:
                r = pair_ratio(cfg, num, den)
                value = None if r is None else r["median"]
                spread = None if r is None else [r["min"], r["max"]]
            if value is not None:
                per_config.append({"config": _cfg_name(cfg), "value": value, "spread": spread})
        goal = {
            "id": gid,
            "goal": text,
            "numerator": num,
            "denominator": den,
            "test": what,
            "limit": limit,
            "per_config": per_config,
        }
        if not per_config:
            goal.update(result="n/a", worst=None, note="not measured (contender or data missing)")
        else:
            pick = max if what in ("ratio_max", "mem_max", "mem_study") else min
            worst = pick(per_config, key=lambda p: p["value"])
            ok = (
                worst["value"] <= limit
                if what in ("ratio_max", "mem_max", "mem_study")
                else worst["value"] >= limit
            )
            if what == "speedup_min" and limit == 1.0:
                ok = worst["value"] > limit
            result = "PASS" if ok else "FAIL"
            if text.startswith("(info)"):
                result = "info: yes" if ok else "info: no"
            goal.update(
                result=result,
                worst=worst,
                best=(min if pick is max else max)(per_config, key=lambda p: p["value"]),
            )
        goals.append(goal)
    return goals


def build_report(
    meta: dict,
    results: list[dict],
    notes: list[str],
    study: dict | None = None,
    runs: list[dict] | None = None,
) -> dict:
    disagreements, by_design = [], []
    for cfg in results:
        for key, row in cfg["contenders"].items():
            a = row["agreement"]
            if a is not None and a["ok"] is False:
                disagreements.append({"config": _cfg_name(cfg), "contender": key, **a})
            elif a is not None and a.get("status") == "differs by design":
                by_design.append({"config": _cfg_name(cfg), "contender": key, **a})
    return {
        "meta": meta,
        "runs": runs,
        "notes": notes,
        "agreement": {
            "ok": not disagreements,
            "min_r_required": meta["settings"]["agreement_min_r"],
            "disagreements": disagreements,
            "by_design": by_design,
            "pairs": agreement_pairs(results),
        },
        "goals": evaluate_goals(results, meta["device"], study),
        "results": results,
        "scorecam_memory": study,
    }


def agreement_pairs(results: list[dict]) -> list[dict]:
    """Per (contender, reference) pair over every configuration: the smallest Pearson r, the
    largest difference of the normalised maps, and the status (worst one seen)."""
    pairs: dict[str, dict] = {}
    rank = {"agree": 0, "no reference": 0, "differs by design": 1, "DISAGREE": 2}
    for cfg in results:
        for key, row in cfg["contenders"].items():
            a = row["agreement"]
            if a is None or a.get("reference") is None:
                continue
            p = pairs.setdefault(
                key,
                {"contender": key, "label": row["label"], "reference": a["reference"],
                 "min_r": None, "max_diff": None, "status": "agree", "by_design": None,
                 "configs": 0},
            )  # fmt: skip
            p["configs"] += 1
            if a.get("min_r") is not None:
                p["min_r"] = a["min_r"] if p["min_r"] is None else min(p["min_r"], a["min_r"])
            if a.get("max_diff") is not None:
                p["max_diff"] = (
                    a["max_diff"] if p["max_diff"] is None else max(p["max_diff"], a["max_diff"])
                )
            status = a.get("status", "agree" if a["ok"] else "DISAGREE")
            if rank.get(status, 2) > rank.get(p["status"], 0):
                p["status"] = status
            if a.get("by_design"):
                p["by_design"] = a["by_design"]
    return list(pairs.values())


# --------------------------------------------------------------------------------------
# text


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 10**digits:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def _spread(s: dict | None, suffix: str = "") -> str:
    if s is None:
        return "-"
    return f"{_num(s['median'])}{suffix} ({_num(s['min'])}..{_num(s['max'])})"


def _goal_measure(g: dict) -> str:
    if g["worst"] is None:
        return g.get("note", "-")
    unit = "x" if g["test"] != "speedup_min" else "x faster"
    w = g["worst"]
    text = f"worst {w['value']:.2f}{unit} ({w['config']}"
    if w["spread"]:
        lo, hi = w["spread"]
        text += f"; rounds {lo:.2f}..{hi:.2f}"
        if lo > 0 and hi / lo > NOISY:
            text += f", noisy: rounds differ by more than {NOISY - 1:.0%}"
    text += ")"
    if len(g["per_config"]) > 1:
        text += f"; best {g['best']['value']:.2f} ({g['best']['config']})"
    return text


def _agree_cell(a: dict | None) -> str:
    if a is None:
        return "-"
    status = a.get("status", "agree" if a["ok"] else "DISAGREE")
    if a.get("min_r") is None:
        return f"**NO** ({a.get('note')})" if a["ok"] is False else status
    word = {"agree": "yes", "DISAGREE": "**NO**", "differs by design": "by design"}[status]
    return f"{word} (r {a['min_r']:.6f}, diff {_num(a.get('max_diff'), 2)})"


def _run_header(meta: dict) -> list[str]:
    m, v, s = meta["machine"], meta["versions"], meta["settings"]
    lines = [f"- date: {meta['date']} (wall time {meta['wall_seconds']:.0f} s)"]
    dev = meta["device"] + (f" ({m['gpu']}, CUDA {m.get('cuda')})" if "gpu" in m else "")
    lines.append(
        f"- device: {dev}; CPU: {m['cpu']}, {m['logical_cores']} logical cores "
        f"({m['usable_cores']} usable), {m['memory_gib']} GiB RAM"
    )
    loads = [
        f"{when} {', '.join(f'{x:.2f}' for x in m[key])}"
        for when, key in (("start", "load_average_at_start"), ("end", "load_average_at_end"))
        if m.get(key)
    ]
    lines.append(
        f"- torch threads: {meta['threads']}; load average (1, 5, 15 min) at {'; at '.join(loads)}"
    )
    lines.append(
        "- versions: "
        + ", ".join(f"{k} {val if val else '(not installed)'}" for k, val in v.items())
    )
    lines.append(
        f"- rounds: {s['rounds']}, block >= {s['block_seconds']} s, "
        f"memory: {s['memory'] or 'not measured'}"
    )
    if meta.get("camlib_git"):
        lines.append(f"- camlib checkout: {meta['camlib_git']}")
    lines.append(f"- command: `{meta['command']}`")
    return lines


def _floor_of(method: str, rows: dict) -> str | None:
    return next((k for k in FLOORS.get(method, ()) if k in rows), None)


def method_table(results: list[dict]) -> list[str]:
    """Per configuration: every camlib method's time, its ratio to its floor and to each peer
    (median over rounds of the per-round ratio), and the peers' agreement."""
    lines = [
        "## Every method against its floor and its peers",
        "",
        "Per configuration and run: camlib's time per call (median over rounds), the median "
        "(min..max) over rounds of its per-round time over its floor's (the least work the "
        "method can do: see the README), and each peer's time over camlib's (> 1: camlib is "
        "faster) with the agreement of the peer's maps with camlib's (min Pearson r of the "
        "normalised maps, largest difference).",
        "",
    ]
    for cfg in results:
        rows = cfg["contenders"]
        mine = [r for r in rows.values() if r["group"] == "camlib"]
        if not mine:
            continue
        loads = [ld[0] for ld in cfg.get("load_average_per_round") or [] if ld]
        load = f" (1-minute load average per round: {', '.join(f'{x:.1f}' for x in loads)})"
        lines += [
            f"### {_cfg_name(cfg)}{load if loads else ''}",
            "",
            "| method | ms per call | floor | time / floor | peer: peer time / camlib time, maps |",
            "| --- | ---: | --- | ---: | --- |",
        ]
        for row in mine:
            key = next(k for k, r in rows.items() if r is row)
            ms = statistics.median(row["seconds_per_call"]) * 1e3
            floor = _floor_of(row["method"], rows)
            ratio = pair_ratio(cfg, key, floor) if floor else None
            peers = []
            for pk, pr in rows.items():
                if pr["group"] != "peer" or pr["method"] != row["method"]:
                    continue
                speed = pair_ratio(cfg, pk, key)
                a = pr["agreement"]
                agree = "not compared" if a is None else _agree_cell(a)
                peers.append(f"{pr['label']}: {_spread(speed, 'x')}, {agree}")
            lines.append(
                f"| {row['label'].removeprefix('camlib ')} | {_num(ms)} | "
                f"{rows[floor]['label'] if floor else '-'} | {_spread(ratio, 'x')} | "
                f"{'; '.join(peers) or '-'} |"
            )
        lines.append("")
    return lines


def markdown(report: dict) -> str:
    meta, results = report["meta"], report["results"]
    lines = ["# camlib throughput benchmark", ""]
    runs = report.get("runs") or [meta]
    if len(runs) == 1:
        lines += _run_header(meta)
    else:
        lines.append(
            f"{len(runs)} runs merged (`--merge`): every ratio is taken within one run, "
            "whose number follows each configuration."
        )
        for i, run in enumerate(runs):
            lines += ["", f"Run {i + 1}:", ""] + _run_header(run)
        lines.append("")
    for note in report["notes"]:
        lines.append(f"- note: {note}")
    lines += ["", "## Goals", "", "| goal | measured | result |", "| --- | --- | --- |"]
    for g in report["goals"]:
        lines.append(f"| {g['goal']} | {_goal_measure(g)} | **{g['result']}** |")
    lines += [
        "",
        "Time ratios are medians over rounds of the per-round ratio (the two contenders "
        "timed in the same round); 'worst' is the least favourable configuration.",
        "",
    ]
    agr = report["agreement"]
    lines += ["## Agreement of the maps", ""]
    lines.append(
        "Each contender's maps against its reference's, on the same batch, each image's map "
        f"normalised (min-max; signed maps: divided by the largest |value|): the smallest "
        f"per-image Pearson r and the largest |difference| over every configuration. "
        f"'agree' means r > {agr['min_r_required']} in every configuration; 'differs by "
        "design' marks a peer whose formula differs on purpose (reported, not failed)."
    )
    lines += ["", "| contender | reference | configs | min r | max diff | result |",
              "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for p in agr.get("pairs", []):
        result = p["status"]
        if result == "DISAGREE":
            result = "**DISAGREE**"
        elif result == "differs by design":
            result = f"differs by design: {p['by_design']}"
        r = "-" if p["min_r"] is None else f"{p['min_r']:.6f}"
        lines.append(
            f"| {p['label']} | {_label(results, p['reference'])} | {p['configs']} | {r} | "
            f"{_num(p['max_diff'], 2)} | {result} |"
        )
    if not agr["ok"]:
        lines += ["", f"**Disagreements** (per-image Pearson r <= {agr['min_r_required']}):", ""]
        for d in agr["disagreements"]:
            lines.append(
                f"- {d['config']}: {d['contender']} vs {d['reference']}: min r = "
                f"{_num(d['min_r'], 6)}, images {d.get('bad_images')} {d.get('note', '')}"
            )
    study = report.get("scorecam_memory")
    if study:
        lines += [
            "",
            "## Score-CAM peak memory against batch_size and layer width",
            "",
            f"{study['model']} at {study['resolution']}x{study['resolution']}, "
            f"{study['images']} images; peak extra memory of one call (MiB). The wider "
            "layer needs twice the masked forward passes; bounded by batch_size means the "
            "same peak for both layers at a given batch_size."
            + (f" Allocator: {study['allocator']}." if study.get("allocator") else ""),
            "",
            "| contender | layer (channels) | batch_size | peak extra MiB |",
            "| --- | --- | ---: | ---: |",
        ]
        for r in study["rows"]:
            lines.append(
                f"| {_label(results, r['contender'])} | {r['layer']} ({r['channels']}) | "
                f"{r['batch_size']} | {_num(r['peak_extra_mib'])} |"
            )
    lines += ["", *method_table(results)]
    lines += [
        "",
        "## Results",
        "",
        "images/s and time ratios: median over rounds (min..max). Peak memory: extra over "
        "the memory in use before the call (CPU: resident set; CUDA: allocated).",
        "",
    ]
    groups: dict[tuple[str, int, int | None], list[dict]] = {}
    for cfg in results:
        groups.setdefault((cfg["model"], cfg["resolution"], cfg.get("run")), []).append(cfg)
    for (model, res, run), cfgs in groups.items():
        tag = "" if run is None else f", run {run + 1}"
        lines.append(f"### {model} at {res}x{res} (layer `{cfgs[0]['layer']}`{tag})")
        lines.append("")
        lines.append(
            "| batch | contender | images/s | time / lower bound | time / no-grad fwd "
            "| peak extra MiB | memory / no-grad fwd | maps agree (min r, max diff) |"
        )
        lines.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for cfg in cfgs:
            rows = cfg["contenders"]
            ng_mem = rows.get("nograd_forward", {}).get("peak_extra_mib")
            for row in rows.values():
                mem = row["peak_extra_mib"]
                memr = f"{mem / ng_mem:.2f}x" if mem is not None and ng_mem else "-"
                agree = _agree_cell(row["agreement"])
                lines.append(
                    f"| {cfg['batch']} | {row['label']} | {_spread(row['images_per_s'])} | "
                    f"{_spread(row['ratio_to_lower_bound'], 'x')} | {_spread(row['ratio_to_nograd'], 'x')} | "
                    f"{_num(mem)} | {memr} | {agree} |"
                )
        walls = [
            f"batch {c['batch']}: {c['wall_seconds']:.0f} s" for c in cfgs if "wall_seconds" in c
        ]
        if walls:
            lines += [
                "",
                "Wall time of the measurement (all contenders): " + ", ".join(walls) + ".",
            ]
        lines.append("")
    plots = report.get("plots", [])
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            lines.append(f"![{p}]({p})")
            lines.append("")
    return "\n".join(lines) + "\n"


def console_summary(report: dict) -> str:
    out = []
    for cfg in report["results"]:
        out.append(_cfg_name(cfg))
        for row in cfg["contenders"].values():
            a = row["agreement"]
            agree = "" if a is None else a.get("status", "")
            lb = row["ratio_to_lower_bound"]
            out.append(
                f"  {row['label']:40s} {row['images_per_s']['median']:10.1f} img/s  "
                f"{lb['median'] if lb else float('nan'):6.2f}x lb  "
                f"{_num(row['peak_extra_mib']):>8s} MiB  {agree}"
            )
    out.append("goals:")
    for g in report["goals"]:
        out.append(f"  [{g['result']}] {g['goal']}: {_goal_measure(g)}")
    if not report["agreement"]["ok"]:
        out.append("MAPS DISAGREE: see results.md")
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# plots


def _series(cfgs: list[dict], key: str, get) -> tuple[list, list, list, list]:
    xs, ys, lo, hi = [], [], [], []
    for cfg in cfgs:
        row = cfg["contenders"].get(key)
        if row is None:
            continue
        val = get(row)
        if val is None or (not isinstance(val, dict) and val <= 0):
            continue  # nothing to draw on a log axis
        if isinstance(val, dict):
            xs.append(cfg["batch"])
            ys.append(val["median"])
            lo.append(val["median"] - val["min"])
            hi.append(val["max"] - val["median"])
        else:
            xs.append(cfg["batch"])
            ys.append(val)
            lo.append(0.0)
            hi.append(0.0)
    return xs, ys, lo, hi


def _by_model(results: list[dict]) -> dict[str, list[dict]]:
    """Configurations per model at its base resolution (28 for MNIST, else 224 if run)."""
    out: dict[str, list[dict]] = {}
    seen = set()
    for cfg in results:  # merged runs: the first run's configuration of each
        if (cfg["model"], cfg["resolution"], cfg["batch"]) in seen:
            continue
        seen.add((cfg["model"], cfg["resolution"], cfg["batch"]))
        out.setdefault(cfg["model"], []).append(cfg)
    for model, cfgs in out.items():
        resolutions = sorted({c["resolution"] for c in cfgs})
        base = 224 if 224 in resolutions else resolutions[0]
        out[model] = [c for c in cfgs if c["resolution"] == base]
    return out


def _keys(results: list[dict]) -> list[str]:
    """The Grad-CAM family's contenders (those in STYLE), in STYLE's order: the line plots
    draw these; every method is in methods.png."""
    seen = {key for cfg in results for key in cfg["contenders"]}
    return [k for k in STYLE if k in seen]


def _grid(plt, n: int):
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _label(results: list[dict], key: str) -> str:
    for cfg in results:
        if key in cfg["contenders"]:
            return cfg["contenders"][key]["label"]
    return key


def _line_plot(results, title, ylabel, get, path, *, skip=(), hlines=(), logy=True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_model = _by_model(results)
    keys = [k for k in _keys(results) if k not in skip]
    fig, axes = _grid(plt, len(by_model))
    drawn = False
    for ax, (model, cfgs) in zip(axes, by_model.items(), strict=False):
        for key in keys:
            xs, ys, lo, hi = _series(cfgs, key, get)
            if not xs:
                continue
            color, ls, marker = STYLE.get(key, (None, "-", "o"))
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                color=color,
                linestyle=ls,
                marker=marker,
                capsize=3,
                label=_label(results, key),
                markersize=5,
            )
            drawn = True
        for y, style in hlines:
            ax.axhline(y, color="0.3", linestyle=style, linewidth=0.8)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        res = cfgs[0]["resolution"] if cfgs else ""
        ax.set_title(f"{model} ({res}x{res})")
        ax.grid(True, which="both", alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title)
    rows = (len(by_model) + 1) // 2
    fig.tight_layout(rect=(0, 0.05 + 0.08 / rows, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _resolution_plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # several resolutions of one model in one run (merged runs are not compared)
    models = [
        m
        for m in dict.fromkeys(c["model"] for c in results)
        if any(
            len({c["resolution"] for c in results if (c["model"], c.get("run")) == (m, run)}) > 1
            for run in {c.get("run") for c in results}
        )
    ]
    if not models:
        return None
    panels = [
        (m, b) for m in models for b in sorted({c["batch"] for c in results if c["model"] == m})
    ]
    fig, axes = _grid(plt, len(panels))
    for ax, (model, batch) in zip(axes, panels, strict=False):
        cfgs = sorted(
            (c for c in results if c["model"] == model and c["batch"] == batch),
            key=lambda c: c["resolution"],
        )
        for key in _keys(results):
            xs = [c["resolution"] for c in cfgs if key in c["contenders"]]
            ys = [
                c["contenders"][key]["images_per_s"]["median"]
                for c in cfgs
                if key in c["contenders"]
            ]
            if xs:
                color, ls, marker = STYLE.get(key, (None, "-", "o"))
                ax.plot(
                    xs, ys, color=color, linestyle=ls, marker=marker, label=_label(results, key)
                )
        ax.set_yscale("log")
        ax.set_xticks(sorted({c["resolution"] for c in cfgs}))
        ax.set_xlabel("input resolution (pixels per side)")
        ax.set_ylabel("images / s")
        ax.set_title(f"{model}, batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Throughput against input resolution")
    rows = (len(panels) + 1) // 2
    fig.tight_layout(rect=(0, 0.05 + 0.08 / rows, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


LIB_COLOURS = {"camlib": "tab:blue", "pytorch-grad-cam": "tab:red", "torchcam": "tab:green",
               "captum": "tab:orange"}  # fmt: skip


def _methods_plot(results, path):
    """One panel per model@resolution at its smallest batch: time per call of every method,
    camlib beside each peer's version; the no-grad forward, the lower bound and the
    perturbation floors as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple, dict] = {}
    for cfg in results:
        key = (cfg["model"], cfg["resolution"], cfg.get("run"))
        if key not in panels or cfg["batch"] < panels[key]["batch"]:
            panels[key] = cfg
    cfgs = [c for c in panels.values() if any(r.get("method") for r in c["contenders"].values())]
    if not cfgs:
        return None
    heights = []
    for cfg in cfgs:
        methods = {r["method"] for r in cfg["contenders"].values() if r.get("method")}
        heights.append(len(methods) + 1)
    fig, axes = plt.subplots(
        len(cfgs), 1, figsize=(9, sum(0.5 * h + 0.9 for h in heights)),
        gridspec_kw={"height_ratios": heights}, squeeze=False,
    )  # fmt: skip
    for ax, cfg in zip(axes[:, 0], cfgs, strict=True):
        rows = cfg["contenders"]
        methods = list(
            dict.fromkeys(
                r["method"] for r in rows.values() if r.get("method") and r["group"] != "bound"
            )
        )
        libs = ["camlib", "pytorch-grad-cam", "torchcam", "captum"]
        width = 0.8 / len(libs)
        for j, lib in enumerate(libs):
            ys, xs = [], []
            for i, m in enumerate(methods):
                found = [
                    r for k, r in rows.items()
                    if r.get("method") == m and r["group"] != "bound"
                    and (r["peer"] == lib if lib != "camlib" else r["group"] == "camlib")
                    and not k.endswith("_top")
                ]  # fmt: skip
                if found:
                    t = statistics.median(found[0]["seconds_per_call"]) * 1e3
                    ys.append(i + (j - (len(libs) - 1) / 2) * width)
                    xs.append(t)
            if xs:
                ax.barh(ys, xs, height=width, color=LIB_COLOURS[lib], label=lib)
        for key, style in (("nograd_forward", ":"), ("lower_bound", "--")):
            if key in rows:
                t = statistics.median(rows[key]["seconds_per_call"]) * 1e3
                ax.axvline(t, color="0.3", linestyle=style, linewidth=1, label=rows[key]["label"])
        floors = (("scorecam_floor", "tab:purple"), ("ablationcam_floor", "tab:brown"),
                  ("sampled_score_floor", "tab:olive"), ("smoothgrad_floor", "tab:cyan"),
                  ("shapley_floor", "tab:pink"), ("input_gradient_floor", "tab:gray"),
                  ("sess_floor", "gold"), ("legrad_floor", "tab:red"))  # fmt: skip
        for key, colour in floors:
            if key in rows:
                t = statistics.median(rows[key]["seconds_per_call"]) * 1e3
                ax.axvline(t, color=colour, linestyle="-.", linewidth=1, label=rows[key]["label"])
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per call (median over rounds)")
        run = "" if cfg.get("run") is None else f" (run {cfg['run'] + 1})"
        ax.set_title(
            f"{cfg['model']} at {cfg['resolution']}x{cfg['resolution']}, batch {cfg['batch']}{run}"
        )
        ax.grid(True, axis="x", which="both", alpha=0.3)
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Every method: camlib beside the peers' versions")
    fig.tight_layout(rect=(0, 0.06, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _memory_study_plot(study, path):
    """Score-CAM peak memory against batch_size, one line per (contender, layer)."""
    if not study:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    styles = {"camlib_scorecam": ("tab:blue", "o"), "scorecam_floor": ("0.4", "s"),
              "pgc_scorecam": ("tab:red", "v")}  # fmt: skip
    names = {"camlib_scorecam": "camlib ScoreCAM", "scorecam_floor": "Score-CAM floor",
             "pgc_scorecam": "pytorch-grad-cam ScoreCAM"}  # fmt: skip
    for key, (colour, marker) in styles.items():
        for layer, ls in zip(
            dict.fromkeys(r["layer"] for r in study["rows"]), ("--", "-"), strict=False
        ):
            pts = sorted(
                (r["batch_size"], r["peak_extra_mib"], r["channels"])
                for r in study["rows"] if r["contender"] == key and r["layer"] == layer
            )  # fmt: skip
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, marker=marker,
                        linestyle=ls, label=f"{names[key]}, {layer} ({pts[0][2]} ch)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch_size (masked inputs per forward pass)")
    ax.set_ylabel("peak extra memory (MiB)")
    ax.set_title(
        f"Score-CAM memory, {study['model']} at {study['resolution']}, {study['images']} image(s)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_all(report: dict, out_dir: Path) -> list[str]:
    results = report["results"]
    device = report["meta"]["device"]
    made = [
        _line_plot(
            results,
            f"Throughput ({device}, {report['meta']['threads']} threads)",
            "images / s (median over rounds)",
            lambda r: r["images_per_s"],
            out_dir / "throughput.png",
        ),
        _line_plot(
            results,
            "Time per call relative to the lower bound (median, min..max over rounds)",
            "time / lower bound",
            lambda r: r["ratio_to_lower_bound"],
            out_dir / "ratio_to_lower_bound.png",
            skip=("lower_bound",),
            hlines=((1.0, "-"), (1.05, ":")),
        ),
        _line_plot(
            results,
            "Peak extra memory per call"
            + (" (CUDA allocated)" if device.startswith("cuda") else " (CPU resident)"),
            "MiB",
            lambda r: r["peak_extra_mib"],
            out_dir / "memory.png",
        ),
        _resolution_plot(results, out_dir / "resolution.png"),
        _methods_plot(results, out_dir / "methods.png"),
        _memory_study_plot(report.get("scorecam_memory"), out_dir / "scorecam_memory.png"),
    ]
    return [m for m in made if m]
