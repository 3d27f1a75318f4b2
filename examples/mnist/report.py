"""``report.md``: the study's numbers and figures, in Markdown (figures as relative PNGs)."""

from __future__ import annotations

from pathlib import Path


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
    da, ia, di = r["deletion_auc"], r["insertion_auc"], r["deletion_insertion"]
    fig = r["figures"]
    v = r["versions"]
    shift_key = next(k for k in b if k.startswith("shifted_test_accuracy"))
    max_shift = settings.max_shift_px
    full = not r["quick"]
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
        f"{' --quick' if r['quick'] else ''}`. "
        f"{r['n_train']:,} training images (of {r['n_train_available']:,} in the data files), "
        f"{r['n_test']:,} test images, seed {r['seed']}, {v['torch_threads']} torch thread(s); "
        f"torch {v['torch']}, torchvision {v['torchvision']}, camlib {v['camlib']}. "
        f"Total wall time {r['total_seconds']:.0f} s. Numbers repeat exactly for the same seed, "
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
    add(
        f"| pointing game, Grad-CAM (translated digits) | {pct(pg['gradcam'], 1)} | >= 90 %, "
        f"random point {pct(pg['random_baseline'], 1)} | {check(pg['gradcam'] >= 0.9)} |"
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
    add(
        f"| deletion AUC, Grad-CAM vs random (lower is better) | {num(da['gradcam'])} vs "
        f"{num(da['random'])} | below random | {check(da['gradcam'] < da['random'])} |"
    )
    add(
        f"| insertion AUC, Grad-CAM vs random (higher is better) | {num(ia['gradcam'])} vs "
        f"{num(ia['random'])} | above random | {check(ia['gradcam'] > ia['random'])} |"
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
        "For the baseline's most confident mistakes, each group of five panels shows the digit with its "
        "true and predicted label and the model's confidence, then Grad-CAM for the "
        '**predicted** class and for the **true** class side by side ("why 7 and not 1"), '
        "then Guided Grad-CAM (Guided Backprop x Grad-CAM, grey = 0, bright = positive "
        "evidence, dark = negative) for both. Grad-CAM explains layer "
        f"`{b['layer']}` (24x24, upsampled bilinearly).\n"
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
    add("All three checks use the batched, torch-only functions of `camlib.metrics`.\n")
    add("### Pointing game on translated MNIST\n")
    add(
        f"Each of {pg['n_images']:,} test digits is pasted at a random position on a blank "
        f"{pg['canvas_size']}x{pg['canvas_size']} canvas; the improved (fully convolutional) "
        f"model runs on it unchanged and classifies {pct(pg['canvas_accuracy'], 1)} of them "
        "correctly"
        + (" (see the note below)" if pg["canvas_accuracy"] < 0.5 else "")
        + ". The maps explain the **true class**; a hit is when the map's maximum "
        "falls inside the tight box around the digit's ink (`metrics.pointing_game`, no "
        "tolerance). A uniformly random point hits with probability equal to the box's "
        "share of the canvas (`metrics.box_area_fraction`). The energy share is the fraction "
        "of the map's mass inside the box (`metrics.box_energy_fraction`).\n"
    )
    add("| map | hit rate | energy inside box |")
    add("| --- | --- | --- |")
    add(f"| Grad-CAM | {pct(pg['gradcam'], 1)} | {pct(pg['gradcam_energy_in_box'], 1)} |")
    add(f"| CAM | {pct(pg['cam'], 1)} | {pct(pg['cam_energy_in_box'], 1)} |")
    add(
        f"| random point / uniform map | {pct(pg['random_baseline'], 1)} | "
        f"{pct(pg['random_baseline'], 1)} |"
    )
    add("")
    misses = pg["gradcam_misses_by_true_class"]
    if sum(misses):
        worst = max(range(10), key=lambda d: misses[d])
        add(
            f"Of the {sum(misses)} Grad-CAM misses, {misses[worst]} are {worst}s"
            + (
                " - thin digits whose box is only a few pixels wide, narrower than one cell of "
                "the 14x14 map (4x4 pixels)"
                if worst == 1
                else ""
            )
            + f". With a tolerance of 4 px (one map cell) the hit rate is "
            f"{pct(pg['gradcam_tolerance_4px'], 1)}.\n"
        )
    if pg["canvas_accuracy"] < 0.5:
        counts = pg["canvas_predicted_class_counts"]
        top = max(range(10), key=lambda d: counts[d])
        add(
            f"Note the canvas accuracy: on {pg['canvas_size']}x{pg['canvas_size']} canvases the "
            f'model predicts "{top}" for {pct(counts[top] / pg["n_images"], 0)} of the digits '
            f'(a blank canvas is a "{pg["blank_canvas_predicted_class"]}" too). Global '
            "*average* pooling divides the digit's evidence by the canvas area, so on a canvas "
            "four times larger than the training images the logits are dominated by what the "
            "model makes of empty background - "
            + (
                "which it learnt as evidence for a 1, the thinnest, emptiest digit. "
                if top == 1
                else f"which it learnt as evidence for a {top}. "
            )
            + "The maps are not affected: CAM is the per-position contribution, "
            "and the true class's evidence still sits on the digit. Training on translated "
            "canvases, or global max pooling, would fix the classification; it is not needed "
            "for localisation.\n"
        )
    add(f"![Pointing game]({fig['pointing']})\n")
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
    add("### Deletion and insertion (faithfulness)\n")
    add(
        f"For {di['n_images']} test digits, pixels are ranked by the map (most salient first) "
        f"and, in {di['steps']} equal steps, **deleted** (set to black) from the digit, or "
        "**inserted** into an all-black canvas; the curve follows the softmax probability of "
        "the true class (`metrics.deletion_curve`, `metrics.insertion_curve`; AUC by the "
        "trapezoidal rule on [0, 1], `metrics.auc`). A faithful map makes the probability "
        "fall fast on deletion (low AUC) and rise fast on insertion (high AUC). The starting "
        "canvas is black rather than blurred because black is what MNIST's background is.\n"
    )
    add("| map | deletion AUC (lower is better) | insertion AUC (higher is better) |")
    add("| --- | --- | --- |")
    names = {
        "gradcam": "Grad-CAM",
        "guided_backprop": "Guided Backprop (abs)",
        "random": "random map",
    }
    for key, name in names.items():
        add(f"| {name} | {num(da[key])} | {num(ia[key])} |")
    add("")
    add(f"![Deletion and insertion curves]({fig['deletion_insertion']})\n")

    # 6. timings
    add("## 6. Timings\n")
    add(
        f"Wall time per stage on this machine ({v['cpu_count']} CPUs, {v['torch_threads']} "
        "torch thread(s)):\n"
    )
    add("| stage | seconds |")
    add("| --- | --- |")
    for name, sec in r["timings_s"].items():
        add(f"| {name} | {sec:.1f} |")
    add(f"| **total** | **{r['total_seconds']:.1f}** |")
    add("")
    epochs = ", ".join(f"{x:.1f}" for x in i["history"]["epoch_seconds"])
    add(f"Improved model, seconds per epoch (training + test evaluation): {epochs}.\n")

    add("## Files\n")
    add(
        "* `metrics.json`: every number above (accuracies as fractions), training histories, "
        "confusion matrices, timings, versions."
    )
    add(
        "* `baseline.pt`, `improved.pt`: `torch.load(path)` gives a dict with `state_dict`, "
        "`architecture` (`BaselineNet` / `ImprovedNet` in `examples/mnist/models.py`), "
        "`test_accuracy`, `seed` and the input normalisation (mean 0.1307, std 0.3081)."
    )
    if full and r["n_train"] < 60000:
        add(
            f"\nNote: this run trained on {r['n_train']:,} images; with the full 60,000-image "
            "MNIST training set (what torchvision downloads) expect both models to do a little "
            "better; that was not measured here."
        )
    path.write_text("\n".join(lines) + "\n")
