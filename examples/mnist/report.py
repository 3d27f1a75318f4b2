"""``report.md``: the study's numbers and figures, in Markdown (figures as relative PNGs)."""

from __future__ import annotations

from pathlib import Path

from .methods import LOCALISATION


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def write_report(path: Path, r: dict, settings) -> None:
    """Write the Markdown report for the result dictionary ``r`` (see ``metrics.json``)."""
    b, i = r["baseline"], r["improved"]
    pg, sn, cv = r["pointing_game"], r["sanity"], r["cam_vs_gradcam"]
    lb = {e["method"]: e for e in r["leaderboard"]["summary"]}
    gc, rnd = lb.get("gradcam", {}), lb["random"]
    fig = r["figures"]
    v = r["versions"]
    shift_key = next(k for k in b if k.startswith("shifted_test_accuracy"))
    max_shift = settings.max_shift_px
    full = r.get("mode") == "full"
    lines: list[str] = []
    add = lines.append

    add("# MNIST with camlib: train, explain the mistakes, improve, check the explanations\n")
    if r["quick"]:
        add(
            "> **Quick smoke run** (`--quick`): a few thousand training images, one epoch per "
            "model and small explanation subsets. The numbers only show that every stage "
            "runs; run without `--quick` for the real study.\n"
        )
    add(
        f"Reproduce: `python -m examples.mnist --data-root DATA --out OUT --seed {r['seed']}"
        f"{' --quick' if r['quick'] else ' --full' if full else ''}`"
        f"{' (`make demo-full`)' if full else '' if r['quick'] else ' (`make demo`)'}. "
        f"{r['n_train']:,} training images (of {r['n_train_available']:,} in the data files), "
        f"{r['n_test']:,} test images, seed {r['seed']}, {v['torch_threads']} torch thread(s); "
        f"torch {v['torch']}, torchvision {v['torchvision']}, camlib {v['camlib']}. "
        f"Total wall time {r['total_seconds']:.0f} s ({r['total_cpu_seconds']:.0f} s of CPU "
        "time, all threads). Numbers repeat exactly for the same seed, "
        "thread count and library versions (another thread count changes the order of "
        "floating-point sums, which can move an accuracy by a tenth of a percent or two). "
        f"Every number below is also in "
        f"`metrics.json` (accuracies there are fractions in [0, 1]; here they are percent).\n"
    )

    add("## Summary\n")
    add("| | result | goal | met |")
    add("| --- | --- | --- | --- |")
    add(
        f"| baseline test accuracy | {pct(b['test_accuracy'])} | >= 98.0 % | "
        f"{check(b['test_accuracy'] >= 0.98)} |"
    )
    add(
        f"| improved test accuracy | {pct(i['test_accuracy'])} | >= 99.2 % | "
        f"{check(i['test_accuracy'] >= 0.992)} |"
    )
    if gc:
        add(
            f"| pointing game, Grad-CAM (one translated digit, true class) | "
            f"{pct(gc['pointing_game'], 1)} | >= 90 %, random map "
            f"{pct(rnd['pointing_game'], 1)} | {check(gc['pointing_game'] >= 0.9)} |"
        )
    td = {e["method"]: e for e in r["two_digit"]["summary"]}.get("gradcam")
    if td:
        add(
            f"| two digits per canvas, Grad-CAM's maximum on the explained class's digit | "
            f"{pct(td['pointing_game'], 1)} | >= 90 %, class-agnostic <= 50 % | "
            f"{check(td['pointing_game'] >= 0.9)} |"
        )
    gc_corr = sn["gradcam_randomization_rank_corr"]
    add(
        f"| randomisation rank corr., Grad-CAM | {num(gc_corr)} | abs <= 0.5 | "
        f"{check(gc_corr is not None and abs(gc_corr) <= 0.5)} |"
    )
    add(
        f"| randomisation rank corr., Guided Backprop | "
        f"{num(sn['guided_backprop_randomization_rank_corr'])} | (reported) | |"
    )
    add(
        f"| CAM vs Grad-CAM x h*w, max relative difference | {cv['max_rel_diff']:.1e} | ~0 "
        f"(float32) | {check(cv['max_rel_diff'] < 1e-3)} |"
    )
    if gc:
        add(
            f"| deletion AUC, Grad-CAM vs random map (lower is better) | "
            f"{num(gc['deletion'])} vs {num(rnd['deletion'])} | below random | "
            f"{check(gc['deletion'] < rnd['deletion'])} |"
        )
        add(
            f"| insertion AUC, Grad-CAM vs random map (higher is better) | "
            f"{num(gc['insertion'])} vs {num(rnd['insertion'])} | above random | "
            f"{check(gc['insertion'] > rnd['insertion'])} |"
        )
    add(
        f"| best of {len(lb) - 2} methods on the leaderboard (section 6) | "
        f"{r['leaderboard']['methods'][0]} | | |"
    )
    add("")

    # 1. baseline
    add("## 1. The baseline\n")
    add(
        "The classic small ConvNet: `Conv2d(1, 12, 5) -> ReLU -> MaxPool2d(2) -> Flatten -> "
        f"Linear(12*12*12, 10)` ({b['n_parameters']:,} parameters), trained "
        f"{b['train_config']['epochs']} epochs with AdamW and a one-cycle schedule "
        f"(max lr {b['train_config']['max_lr']}, batch {b['train_config']['batch_size']}), no "
        f"augmentation, cross-entropy on the logits.\n"
    )
    add(
        f"**Test accuracy {pct(b['test_accuracy'])}** ({b['test_errors']} errors in "
        f"{r['n_test']:,}). When every test digit is moved by a random whole-pixel shift of up "
        f"to {max_shift} px in each direction it falls to **{pct(b[shift_key])}**.\n"
    )
    add(f"![Training curves]({fig['training_curves']})\n")
    add(
        "*Training curves of both models. The training figures are running averages over "
        "each epoch's batches (augmented ones for the improved model), the test figures are "
        "measured after each epoch. The improved model's losses include label smoothing "
        "(0.1), which puts a floor under its training loss and keeps its test loss above the "
        "baseline's although it makes fewer errors. The test set is only watched, never used "
        "to choose a model or a setting.*\n"
    )
    add(f"![Confusion matrices and per-class accuracy]({fig['confusion']})\n")
    add("| digit | " + " | ".join(str(d) for d in range(10)) + " |")
    add("| --- |" + " --- |" * 10)
    for name, res in (("baseline", b), ("improved", i)):
        pc = res["per_class_accuracy"]
        add(f"| {name} | " + " | ".join(f"{100 * pc[str(d)]:.1f}" for d in range(10)) + " |")
    add("\n*Per-class test accuracy (%), i.e. the recall of each digit.*\n")

    # 2. mistakes
    add("## 2. Why did it get these wrong?\n")
    bm = b["mistakes"]
    add(
        "The baseline's most confident mistakes, drawn by the library's gallery "
        '`camlib.viz.mistakes(model, inputs, labels, method="gradcam", k=..., '
        "target_layer=...)`: each group of three panels shows the digit (its test index and "
        "true label), then Grad-CAM for the **predicted** class (with the model's probability "
        'for it) and for the **true** class side by side ("why 7 and not 1"). Grad-CAM '
        f"explains layer `{b['layer']}` (24x24, upsampled bilinearly).\n"
    )
    if bm["n_shown"]:
        add(f"![Baseline mistakes]({fig['baseline_mistakes']})\n")
    if bm.get("n_mistakes"):
        ep, et = bm["gradcam_empty_map_fraction_pred"], bm["gradcam_empty_map_fraction_true"]
        add(
            f"Over all {bm['n_mistakes']} mistakes, the Grad-CAM of the predicted class is empty "
            f"(zero everywhere) for {pct(ep, 0)} of them and that of the true class for "
            f"{pct(et, 0)}; where both exist their mean rank correlation is "
            f"{num(bm['gradcam_pred_vs_true_rank_corr_mean'], 2)}"
            + (
                " - the model reads *different* parts of the digit as evidence for the two classes"
                if (bm["gradcam_pred_vs_true_rank_corr_mean"] or 0) < 0.3
                else ""
            )
            + ". What the maps show:\n"
        )
        add(
            "* **Speckled evidence on stroke fragments.** A single 5x5 layer sees edges and "
            "short pieces of stroke, not the shape of a digit, and the maps are scattered over "
            "such pieces."
        )
        if ep >= 0.1:
            add(
                "* **Often no map at all for the winning class**, even at p = 1.00. This is a "
                "property of the head, not of camlib: Grad-CAM weighs channel k by the "
                "*spatial average* of dy^c/dA^k, but behind Flatten + Linear that gradient is "
                "a position-by-position template W^c[k, i, j]; its positive and negative parts "
                "cancel in the average, and the final ReLU leaves nothing. The model's evidence "
                "is *where* ink is (and is not), which this summary cannot express."
            )
        add(
            "* **Position matters more than shape.** Where a map lights up the empty frame "
            'around a digit, the linear layer is using "no ink at this position" as '
            "evidence. Templates tied to positions are fragile: when every test digit is moved "
            f"by a random shift of up to {max_shift} px, accuracy drops from "
            f"{pct(b['test_accuracy'])} to {pct(b[shift_key])}.\n"
        )

    # 3. improved
    add("## 3. An improved model, guided by the maps\n")
    ic = i["train_config"]
    add("What the maps suggested, and what changed:\n")
    add(
        "* evidence should count wherever it appears -> **global average pooling + a linear "
        "head** instead of Flatten + Linear (which also makes CAM applicable and lets the "
        "model run on larger canvases, used in the pointing game below);"
    )
    c1, c2, c3 = i["channels"]
    add(
        "* the maps light up stroke fragments -> **deeper features** with larger receptive "
        f"fields: 3x3 convolutions {c1} -> ({c2}, {c2}) -> {c3} channels with BatchNorm, two "
        "max-pools, a 7x7 final feature map;"
    )
    add(
        "* off-centre and slanted digits fail -> **light augmentation** on whole batches "
        "in torch (random rotation up to 10 degrees, scale +-10 %, shift up to 2 px, with "
        "`F.affine_grid`/`F.grid_sample`);"
    )
    add(
        f"* a sensible schedule: {ic['optimizer'].upper() if ic['optimizer'] == 'sgd' else 'AdamW'}"
        f"{' (Nesterov momentum 0.9)' if ic['optimizer'] == 'sgd' else ''} with a one-cycle "
        f"learning rate (max {ic['max_lr']}), weight decay {ic['weight_decay']}, "
        f"label smoothing {ic['label_smoothing']}, {ic['epochs']} epochs, batch "
        f"{ic['batch_size']}.\n"
    )
    add(
        f"The improved model has {i['n_parameters']:,} parameters. **Test accuracy "
        f"{pct(i['test_accuracy'])}** ({i['test_errors']} errors, "
        f"{b['test_errors']} for the baseline); under random shifts of up to {max_shift} px: "
        f"**{pct(i[shift_key])}** (baseline {pct(b[shift_key])}).\n"
    )
    im = i["mistakes"]
    if im["n_shown"]:
        add(f"![Improved model mistakes]({fig['improved_mistakes']})\n")
        add(
            "Its most confident remaining mistakes, explained the same way (Grad-CAM of layer "
            f"`{i['layer']}`, 7x7, upsampled). With the GAP head Grad-CAM is exactly CAM "
            "(section 4): each map is the per-position contribution to the class logit, so the "
            "predicted-class and true-class maps show where the model found evidence for each "
            f"reading of the digit. Over all {im['n_mistakes']} mistakes the predicted-class map "
            f"is empty for {pct(im['gradcam_empty_map_fraction_pred'], 0)} of them (baseline "
            f"{pct(b['mistakes'].get('gradcam_empty_map_fraction_pred'), 0)}).\n"
        )

    # 4. CAM vs Grad-CAM
    add("## 4. CAM and Grad-CAM agree on a GAP + linear head\n")
    add(
        "With logits y^c = (1/hw) sum_ij sum_k w^c_k A^k_ij + b^c, the Grad-CAM channel "
        "weight is alpha^c_k = (1/hw) sum_ij dy^c/dA^k_ij = w^c_k / hw, so "
        "**CAM = Grad-CAM x h*w** exactly, before normalisation (and identical after it).\n"
    )
    add(f"![CAM vs Grad-CAM]({fig['cam_vs_gradcam']})\n")
    add(
        f"On {cv['n_images']:,} test digits (h*w = {cv['h_times_w']}): max relative "
        f"difference **{cv['max_rel_diff']:.1e}** ({cv['definition']}); after upsampling and "
        f"min-max normalisation the maps differ by at most "
        f"{cv['max_abs_diff_normalized_maps']:.1e}. On the {pg['canvas_size']}x"
        f"{pg['canvas_size']} canvases of the pointing game (h*w = "
        f"{(pg['canvas_size'] // 4) ** 2}) the same identity holds to "
        f"{pg['cam_vs_gradcam_max_rel_diff_on_canvas']:.1e}. Only float32 rounding remains.\n"
    )

    # 5. checks
    add("## 5. Are the explanations right?\n")
    add("All the checks use the batched, torch-only functions of `camlib.metrics`.\n")
    _pointing(add, pg, fig)
    if "two_digit" in r:
        _two_digit(add, r["two_digit"], fig)
    add("### Sanity check: model-parameter randomisation (Adebayo et al., 2018)\n")
    add(
        f"For {sn['n_images']} test digits, maps of the trained model are compared with maps "
        "of the same architecture after re-initialising its weights, one layer at a time from "
        "the output back (cascading randomisation); the last stage has every weight "
        "re-initialised. The statistic is the Spearman rank correlation per image "
        "(`metrics.rank_correlation`, average ranks for ties), averaged over images; Guided "
        "Backprop maps are taken as |value| summed over channels, as is customary. A method "
        "that explains *the model* must change when the model is destroyed.\n"
    )
    add("| stage | Grad-CAM | Guided Backprop |")
    add("| --- | --- | --- |")
    for stage, c in sn["cascade"].items():
        add(f"| {stage} | {num(c['gradcam'])} | {num(c['guided_backprop'])} |")
    add("")
    und = sn["gradcam_undefined_constant_maps"]
    gbp_corr = sn["guided_backprop_randomization_rank_corr"]
    verdict = (
        "Grad-CAM passes the test: its maps change completely with the weights."
        if gc_corr is not None and abs(gc_corr) <= 0.5
        else "Grad-CAM does **not** pass the test here: its maps survive randomisation."
    )
    if gbp_corr is not None and gbp_corr > 0.5:
        gbp_text = (
            "Guided Backprop stays strongly correlated with its trained-model maps even "
            "with random weights: as Adebayo et al. found, it largely reconstructs the "
            "input's edges, so it says little about what the model learnt."
        )
    else:
        gbp_text = (
            "Guided Backprop's correlation falls only once the lower blocks are "
            "re-initialised too (see the table): while the convolutional layers keep "
            "their weights it mostly reconstructs the digit's edges, whatever the head."
        )
    add(
        f"Fully re-initialised: Grad-CAM **{num(gc_corr)}** (mean |rho| "
        f"{num(sn['gradcam_randomization_abs_rank_corr'])}), Guided Backprop "
        f"**{num(gbp_corr)}**. "
        + (
            f"{und} Grad-CAM maps of the random model were constant (all zero after the ReLU) "
            "and have no rank correlation; they are left out of the mean. "
            if und
            else ""
        )
        + f"{verdict} {gbp_text}\n"
    )
    add(f"![Sanity check panel]({fig['sanity_panel']})\n")
    add(f"![Sanity check curve]({fig['sanity_curve']})\n")
    _methods(add, r, fig)

    # 7. timings
    add("## 7. Timings\n")
    add(
        f"Time per stage on this machine ({v['cpu_count']} CPUs, {v['torch_threads']} torch "
        "thread(s)): wall time (`time.perf_counter`) and the CPU time of all the process's "
        "threads (`time.process_time`). On a machine shared with other work the wall time "
        "grows with the load; the CPU time much less.\n"
    )
    add("| stage | wall s | CPU s |")
    add("| --- | ---: | ---: |")
    for name, sec in r["timings_s"].items():
        add(f"| {name} | {sec:.1f} | {r['cpu_seconds'][name]:.1f} |")
    add(f"| **total** | **{r['total_seconds']:.1f}** | **{r['total_cpu_seconds']:.1f}** |")
    add("")
    epochs = ", ".join(f"{x:.1f}" for x in i["history"]["epoch_seconds"])
    add(f"Improved model, wall seconds per epoch (training + test evaluation): {epochs}.\n")

    add("## Files\n")
    add(
        "* `metrics.json`: every number above (accuracies as fractions), training histories, "
        "confusion matrices, the leaderboards' summary rows, timings, versions."
    )
    add(
        "* `leaderboard.md`, `leaderboard.csv`, `per_image.csv`, `leaderboard.png`: the "
        "leaderboard of section 6 (`Leaderboard.save`; every metric of every image in "
        "`per_image.csv`); `two_digit/`: the same for the two-digit test."
    )
    add(
        "* `baseline.pt`, `improved.pt`: `torch.load(path)` gives a dict with `state_dict`, "
        "`architecture` (`BaselineNet` / `ImprovedNet` in `examples/mnist/models.py`), "
        "`test_accuracy`, `seed` and the input normalisation (mean 0.1307, std 0.3081)."
    )
    if r["n_train"] < r["n_train_available"]:
        add(
            f"\nThis run trained on {r['n_train']:,} of the {r['n_train_available']:,} training "
            "images in the data files; `make demo-full` (`--full`) trains on all of them, for "
            "longer, and ranks the methods on more images."
        )
    elif full and r["n_train"] < 60000:
        add(
            f"\nNote: this run trained on {r['n_train']:,} images; with the full 60,000-image "
            "MNIST training set (what torchvision downloads) expect both models to do a little "
            "better; that was not measured here."
        )
    path.write_text("\n".join(lines) + "\n")


def _pointing(add, pg: dict, fig: dict) -> None:
    """The one-digit pointing game, and plainly what it does and does not show."""
    n, size = pg["n_images"], pg["canvas_size"]
    counts = pg["canvas_predicted_class_counts"]
    top = max(range(10), key=lambda d: counts[d])
    share = counts[top] / n
    add("### Pointing game on translated MNIST\n")
    add(
        f"Each of {n:,} test digits is pasted at a random position on a blank {size}x{size} "
        "canvas; the improved (fully convolutional) model runs on it unchanged. Grad-CAM "
        "explains the **true class** (not the predicted one); a hit is when the map's maximum "
        "falls inside the tight box around the digit's ink (`metrics.pointing_game`, no "
        f"tolerance): **{pct(pg['gradcam'], 1)}**, where a uniformly random point hits "
        f"{pct(pg['random_baseline'], 1)} (the box's share of the canvas, "
        "`metrics.box_area_fraction`). Section 6 plays the same game, and three more "
        "localisation scores, with every method.\n"
    )
    misses = pg["gradcam_misses_by_true_class"]
    cell = pg.get("map_cell_px", 4)
    if sum(misses):
        worst = max(range(10), key=lambda d: misses[d])
        add(
            f"Of the {sum(misses)} Grad-CAM misses, {misses[worst]} are {worst}s"
            + (
                " - thin digits whose box is only a few pixels wide, narrower than one cell of "
                f"the layer's map ({cell}x{cell} pixels)"
                if worst == 1
                else ""
            )
            + f". With a tolerance of {cell} px (one map cell) the hit rate is "
            f"{pct(pg['gradcam_tolerance_one_cell'], 1)}.\n"
        )
    everyone = "every one" if counts[top] == n else pct(share, 1)
    add(
        "**What this test shows, and what it does not.** On these canvases the model "
        f'predicts "{top}" for {everyone} of the {n:,} digits'
        + (f" ({counts[top]:,} of {n:,})" if counts[top] != n else "")
        + f' (a blank canvas is a "{pg["blank_canvas_predicted_class"]}" too), so its '
        f"accuracy on them, {pct(pg['canvas_accuracy'], 1)}, is "
        + ("just the share of 1s among the digits" if top == 1 and share == 1 else "low")
        + f". The true class ranks {num(pg.get('canvas_true_class_rank_mean'), 1)} of 10 on "
        f"average among the logits (top 3 for {pct(pg.get('canvas_true_class_top3'), 0)}). "
        "Global *average* pooling divides the digit's evidence by the canvas area, so on a "
        "canvas four times larger than the training images the logits are dominated by "
        "what the model makes of the empty background.\n"
    )
    add(
        "* It **shows** that the evidence the model finds *for the digit's class* is located "
        "on the digit, not on the background: CAM and Grad-CAM read each position's "
        "contribution to that class's logit, which the average does not move."
    )
    add(
        "* It does **not** explain the model's decisions on these canvases (the explained "
        "class is not the predicted one), and it does **not** show that a method is "
        "class-discriminative: with a single object on a blank canvas, a map that lights "
        "up any ink scores well, whatever class it is asked about. The two-digit test "
        "below is the class-discriminative check.\n"
    )
    add(f"![Pointing game]({fig['pointing']})\n")


def _two_digit(add, td: dict, fig: dict) -> None:
    """The class-discriminative test, ranked by camlib.evaluate."""
    rows = {e["method"]: e for e in td["summary"]}
    mv = td["model"]
    add("### Two digits: are the maps class-discriminative?\n")
    add(
        f"{td['n_canvases']:,} canvases of {td['canvas_size']}x{td['canvas_size']} pixels carry "
        "two test digits of **different** classes at random places whose ink boxes are at "
        f"least {td['min_gap_px']} px apart. Each canvas is explained twice, once for each "
        "digit's class, by every method: one `camlib.evaluate` call on the canvases repeated "
        "(targets: the first digits' classes, then the second's; boxes: that digit's box), "
        "scored by the pointing game (the map's maximum inside *that* digit's box, no "
        "tolerance) and the energy pointing game (the share of the map's mass inside it). "
        "A map that ignores the class (the same map for both) can hit at most one of the two "
        "digits, so it scores at most 50 %. A random point hits "
        f"{pct(td['random_point'], 1)}. The model itself puts both digits' classes in its top "
        f"2 for {pct(mv['top2_are_the_two'], 0)} of the canvases and predicts one of them for "
        f"{pct(mv['predicted_one_of_the_two'], 0)}.\n"
    )
    add(td["markdown"])
    both = td["both_hit"]
    add(
        "Both maps of a canvas on their own digit (the per-image pointing-game values): "
        + ", ".join(f"{name} {pct(both[name], 1)}" for name in td["methods"][:5])
        + "; "
        + ", ".join(
            f"{name} {pct(both[name], 1)}" for name in ("eigencam", "random") if name in both
        )
        + ".\n"
    )
    gc = rows.get("gradcam")
    if gc:
        add(
            f"Grad-CAM hits {pct(gc['pointing_game'], 1)}: goal >= 90 %, "
            f"{'met' if gc['pointing_game'] >= 0.9 else '**not met**'}."
            + _contrast_text(rows)
            + "\n"
        )
    add(f"![Two-digit test: every method]({fig['two_digit_leaderboard']})\n")
    add(f"![Two-digit test: examples]({fig['two_digit']})\n")


def _methods(add, r: dict, fig: dict) -> None:
    """Every method ranked by camlib.evaluate: the leaderboard and its figure."""
    lb = r["leaderboard"]
    rows = {e["method"]: e for e in lb["summary"]}
    loc = [m for m in lb["metrics"] if m in LOCALISATION]
    add("## 6. Every method side by side: the leaderboard\n")
    add(
        f"Every registered method ({len(lb['methods']) - 2} here) on the improved model's "
        "layer `block3` (Guided Backprop: the input), ranked by `camlib.evaluate`, with two "
        "baseline rows that know nothing about the model: a random map and a centred "
        "Gaussian blob. Two evaluations make one table (`Leaderboard.from_rows` on their "
        "per-image rows): the first "
        f"{lb['n_digits']:,} 28x28 test digits for faithfulness (deletion and insertion in "
        f"{lb['steps']} steps to and from a black canvas, average drop, increase in "
        "confidence), sanity (rank correlation with the maps of the fully re-initialised "
        "model, SSIM with the map of a random other class: lower is better), complexity "
        "(sparseness, entropy) and cost (milliseconds and forward passes per map); and the "
        f"first {lb['n_canvases']:,} translated digits of section 5 for localisation ("
        + ", ".join(loc)
        + ": the pointing and energy games on the digit's box, relevance mass and rank on "
        'its ink). On the canvases the model predicts "1" for almost everything (section '
        "5), so faithfulness, which follows the class probability, is measured on the "
        "digits alone. Every map explains the true class; signed maps count as |value| "
        "summed over channels. Rows are sorted by their mean rank over the faithfulness and "
        "localisation columns.\n"
    )
    if lb["skipped"]:
        add(
            "Left out of this run for time: "
            + ", ".join(f"`{m}`" for m in lb["skipped"])
            + " (SS-CAM and IS-CAM cost 35 and 10 forward passes per channel and map, SESS "
            "about 200 times Grad-CAM; `make demo-full` ranks them too).\n"
        )
    if lb["dropped"]:
        add(
            "Dropped because they raised on this model: "
            + "; ".join(f"`{k}`: {v}" for k, v in lb["dropped"].items())
            + "\n"
        )
    add(lb["markdown"])
    add(f"![Leaderboard]({fig['leaderboard']})\n")
    best, gc, rnd = lb["methods"][0], rows.get("gradcam"), rows["random"]
    text = [f"**{best}** ranks first."]
    if gc:
        place = lb["methods"].index("gradcam") + 1
        text.append(
            f"Grad-CAM ranks {place} of {len(lb['methods'])}: deletion {num(gc['deletion'])} "
            f"(random map {num(rnd['deletion'])}), insertion {num(gc['insertion'])} "
            f"({num(rnd['insertion'])}), pointing game {pct(gc['pointing_game'], 1)} "
            f"({pct(rnd['pointing_game'], 1)})."
        )
    beaten = [
        m
        for m in lb["methods"]
        if m not in ("random", "gaussian")
        and lb["methods"].index(m) > lb["methods"].index("random")
    ]
    if beaten:
        text.append("Ranked below the random map: " + ", ".join(f"`{m}`" for m in beaten) + ".")
    eig = rows.get("eigencam")
    if eig and eig.get("pointing_game", 1) < 0.5:
        text.append(
            f"Eigen-CAM points at the digit for only {pct(eig['pointing_game'], 1)} of the "
            "canvases: most positions of a 56x56 canvas are empty, so the first principal "
            "component of the layer's activations is the background's pattern."
        )
    add(" ".join(text) + "\n")
    add(
        f"*ms_per_map* is the wall time of each method's call on the {lb['n_digits']} test "
        "digits (one batch) divided by their number, on a machine other work may share: "
        "compare methods by their ratio. "
        "*forwards_per_map* counts the images the model's forward saw per map (the "
        "gradient methods also run one backward pass).\n"
    )


def _contrast_text(rows: dict) -> str:
    """What the contrasts (Guided Backprop, Eigen-CAM) did in the two-digit test."""
    parts = []
    gbp, eig = rows.get("guided_backprop"), rows.get("eigencam")
    if eig:
        parts.append(
            f"Eigen-CAM is class-agnostic by construction (one map for both classes), so it "
            f"scores {pct(eig['pointing_game'], 1)}."
        )
    if gbp and gbp["pointing_game"] <= 0.6:
        parts.append(
            f"Guided Backprop, the usual non-discriminative contrast, scores "
            f"{pct(gbp['pointing_game'], 1)}: its maps reconstruct the digits whatever the class."
        )
    elif gbp:
        parts.append(
            f"Guided Backprop, usually the non-discriminative contrast, scores "
            f"{pct(gbp['pointing_game'], 1)} here: in this small network the class enters the "
            "guided gradient through which of the last layer's channels get a positive "
            "gradient, and those channels are specific enough to the digit. Its "
            "class-insensitivity (Adebayo et al., 2018; Nie et al., 2018) is a finding about "
            "deep networks; do not read this result as a licence to use it as a class "
            "explanation."
        )
    return " " + " ".join(parts) if parts else ""
