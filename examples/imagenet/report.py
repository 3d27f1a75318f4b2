"""``report.md``: the example's predictions, figures and canvas measurements in Markdown."""

from __future__ import annotations

from pathlib import Path


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f} %"


def write_report(path: Path, r: dict) -> None:
    """Write the Markdown report for the result dictionary ``r`` (see ``metrics.json``)."""
    v, fig, cv = r["versions"], r["figures"], r["canvas"]
    methods = r["methods"]
    lines: list[str] = []
    add = lines.append

    add("# ImageNet photos with camlib: EfficientNet-Lite0, every method, class by class\n")
    if r["quick"]:
        add(
            "> **Quick run** (`--quick`): two photos and two methods, to check that every "
            "step runs. Run without `--quick` for every photo and every method.\n"
        )
    st = r["settings"]
    args = " --quick" if r["quick"] else ""
    if not r["quick"] and st.get("methods") is not None:
        args += " --methods " + " ".join(st["methods"])
    add(
        f"Reproduce: `python -m examples.imagenet --out OUT{args}`"
        f"{'' if args else ' (`make imagenet`)'}. Model: {r['model']}, input 224 x 224 scaled as (RGB - 127) / 128 "
        f"after resizing the shorter side to 224 and centre-cropping. Layer explained: "
        f"`{r['layer']}` (the head's 7 x 7 x 1280 feature map after its ReLU6; "
        f"`_swish` also runs in the stem, so `@-1` names its last call). "
        f"torch {v['torch']}, camlib {v['camlib']}, {v['torch_threads']} thread(s); "
        f"total wall time {r['total_seconds']:.0f} s. Every number is also in `metrics.json`.\n"
    )

    if "home_cat" in fig:
        add(f"![The cat, explained for its top class]({fig['home_cat']})\n")
    add("## Predictions\n")
    add("| photo | what it shows | top-1 | p | next four |")
    add("| --- | --- | --- | ---: | --- |")
    for name, p in r["photos"].items():
        t = p["top5"]
        rest = ", ".join(f"{c['name']} {c['p']:.2f}" for c in t[1:])
        add(f"| {name} | {p['what']} | **{t[0]['name']}** | {t[0]['p']:.2f} | {rest} |")
    add("")
    if "overview" in fig:
        add(
            "Each photo's top class, with Grad-CAM (red: where the evidence for the class lies) "
            "and Guided Grad-CAM (the Guided Backprop gradient masked by Grad-CAM: the "
            "fine edges and textures that raise the class score; grey is zero):\n"
        )
        add(f"![Overview: top class per photo]({fig['overview']})\n")

    add(f"## Top-{r['top_k']} classes, every method\n")
    add(
        "One figure per photo: a row per class (the model's top "
        f"{r['top_k']}, with their probabilities), a column per method. "
        "A class-discriminative method draws different maps for different classes where "
        "their evidence lies in different places; for near-synonyms (three kinds of cat) "
        "it highlights the same object with different weight on its parts. The next "
        "section measures how class-discriminative each method is.\n"
    )
    slow = [m for m in methods if any(m not in p["methods"] for p in r["photos"].values())]
    if slow:
        add(
            "The perturbation methods "
            + ", ".join(f"`{m}`" for m in slow)
            + " cost one forward pass per channel of the layer (1280 here) for every map, so "
            "they are run only on "
            + ", ".join(f"`{n}`" for n, p in r["photos"].items() if slow[0] in p["methods"])
            + " and the two-photo canvas.\n"
        )
    add(
        "Guided Backprop and Guided Grad-CAM panels are scaled by the 99.5th percentile of "
        "|g| and clipped, so that a few extreme pixels do not leave the rest mid-grey.\n"
    )
    for name in r["photos"]:
        add(f"### {name}\n")
        add(f"![{name}: top classes by method]({fig[f'photo_{name}']})\n")

    left, right = cv["photos"]
    cls = cv["classes"]
    add("## Two photos, two classes\n")
    add(
        f"The central strips of `{left}` and `{right}` pasted side by side on one 224 x 224 "
        f"input, in both orders. Each half's class - the model's top-1 on that photo alone: "
        f"**{cls[left]['name']}** and **{cls[right]['name']}** - is explained in turn. A "
        "class-discriminative map puts its mass in the half that holds its photo. 'Share' is "
        "the map's mass (the [0, 1] map, or |g| summed over colour channels for the signed "
        "maps) in that half; 'peak' says whether the map's maximum lies there.\n"
    )
    for key, o in cv["orders"].items():
        top5 = ", ".join(f"{c['name']} {c['p']:.2f}" for c in o["top5"])
        add(f"- `{key}`: top-5 {top5}")
    add("")
    add(
        "| method | "
        + " | ".join(
            f"{n} share ({o.split(' left')[0]} left)"
            for o in cv["orders"]
            for n in cv["orders"][o]["methods"][methods[0]]
        )
        + " | mean share | peaks in own half |"
    )
    add("| --- | " + " | ".join("---:" for _ in range(2 * len(cv["orders"]) + 2)) + " |")
    for m in methods:
        cells, peaks = [], 0
        for o in cv["orders"].values():
            for n in o["methods"][m]:
                cells.append(pct(o["methods"][m][n]["share_in_own_half"]))
                peaks += o["methods"][m][n]["peak_in_own_half"]
        add(
            f"| `{m}` | "
            + " | ".join(cells)
            + f" | **{pct(cv['mean_share_in_own_half'][m])}** | {peaks} / {len(cells)} |"
        )
    add("")
    add("50 % is no preference for either half.\n")
    add(f"![Two photos side by side, each class explained]({fig['canvas']})\n")

    if "leaderboard" in r:
        _leaderboard(add, r["leaderboard"], fig)

    add("## Time per method\n")
    add("Wall time of all of each method's calls for the figures (every photo and the canvas):\n")
    add("| method | seconds |")
    add("| --- | ---: |")
    for m, t in r["method_seconds"].items():
        add(f"| `{m}` | {t:.1f} |")
    add("")
    if "leaderboard" in r:
        add(f"The leaderboard took {r['leaderboard']['seconds']:.0f} s.\n")
    path.write_text("\n".join(lines), encoding="utf-8")


def _leaderboard(add, lb: dict, fig: dict) -> None:
    """Every method ranked by camlib.evaluate on the photos, with the hand-drawn boxes."""
    rows = {e["method"]: e for e in lb["summary"]}
    n = len(lb["photos"])
    add("## Which map to trust here: every method ranked\n")
    add(
        f"`camlib.evaluate` explains each of the {n} photos for the model's top class with "
        f"every method ({len(lb['methods']) - 2} here) and two baselines that know nothing "
        "about the model (a random map and a centred Gaussian blob), and scores every map: "
        "faithfulness (deletion from a black image and insertion into a blurred one, 20 steps; "
        "average drop and increase in confidence), localisation against a box drawn by hand "
        "around the object of each photo (`examples/imagenet/boxes.csv`, in the 224 x 224 "
        "input), sanity (the maps' rank correlation with those of the fully re-initialised "
        "model, and their SSIM with the map of a random other class: lower is better), "
        "complexity and cost. Rows are sorted by their mean rank over the faithfulness and "
        "localisation columns; the intervals are 95 % bootstrap intervals over the photos, "
        f"wide with {n} photos: read the order of close rows as a tie.\n"
    )
    add("| photo | box (x0, y0, x1, y1) | object |")
    add("| --- | --- | --- |")
    for name, b in lb["boxes"].items():
        add(f"| {name} | {', '.join(str(c) for c in b['box'])} | {b['object']} |")
    add("")
    why = {
        "perturbation": "one forward pass per channel of the layer, 1280 here, several for "
        "SS-CAM and IS-CAM, per map and per re-explanation",
        "transformers only": "it reads attention maps",
        "concept maps (evaluate scores one map per image)": "it returns K concept maps per "
        "image, and the metrics score one map",
        "not asked for": "not in `--leaderboard`",
    }
    parts = [
        ", ".join(f"`{m}`" for m in names) + f" ({why[k]})"
        for k, names in lb["left_out"].items()
        if names
    ]
    if parts:
        add(
            "Not ranked here: "
            + "; ".join(parts)
            + ". `--leaderboard NAME ...` ranks any list of methods.\n"
        )
    if lb["dropped"]:
        add(
            "Dropped because they raised on this model: "
            + "; ".join(f"`{k}`: {v}" for k, v in lb["dropped"].items())
            + "\n"
        )
    add(lb["markdown"])
    if "leaderboard" in fig:
        add(f"![Every method ranked on the photos]({fig['leaderboard']})\n")
    best, rnd, gauss = lb["methods"][0], rows["random"], rows["gaussian"]
    text = [f"**{best}** ranks first."]
    gc = rows.get("gradcam")
    if gc:
        place = lb["methods"].index("gradcam") + 1
        text.append(
            (f"Grad-CAM ranks {place} of {len(lb['methods'])}; its" if place > 1 else "Its")
            + f" maximum falls in the box for {pct(gc['pointing_game'])} of the photos "
            f"(random map {pct(rnd['pointing_game'])}, centred blob "
            f"{pct(gauss['pointing_game'])})."
        )
    below = lb["methods"][lb["methods"].index("random") + 1 :]
    below = [m for m in below if m not in ("random", "gaussian")]
    if below:
        text.append("Ranked below the random map: " + ", ".join(f"`{m}`" for m in below) + ".")
    if lb["methods"].index("gaussian") < len(lb["methods"]) // 2:
        text.append(
            "The centred blob ranks in the upper half: the objects of these photos sit near "
            "the centre, which is why a localisation score needs this baseline beside it."
        )
    add(" ".join(text) + "\n")
