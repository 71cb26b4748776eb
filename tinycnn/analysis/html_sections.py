"""The report page's sections, one function each, from report.json's dict: the summary and
experiments tables, curves, t-SNE, filters, classes, confusions, ensemble gain and ambiguous
images (html.py puts them on one page).
"""

from __future__ import annotations

from html import escape

from tinycnn.ensembles import gain_words

SECTIONS = (
    ("summary", "1. Summary and experiments"),
    ("curves", "2. Training curves"),
    ("tsne", "3. t-SNE of the codes"),
    ("filters", "4. First-layer filters"),
    ("classes", "5. Best and worst classes"),
    ("confusion", "6. Most confused classes"),
    ("ensemble", "7. Ensemble gain"),
    ("ambiguous", "8. Ambiguous training images"),
)


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _img(src: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" src="{escape(src)}" alt="{escape(alt)}">'


def _examples(items: list[dict], caption: str = "predicted") -> str:
    figs = []
    for item in items:
        kind = "right" if item["correct"] else "wrong"
        text = "✓ right" if item["correct"] else f"✗ as {escape(item['predicted'])}"
        if caption == "label":
            text = (
                f"<b>{escape(item['label'])}</b><br>model: {escape(item['predicted'])}<br>"
                f"p(label) {item['label_probability']:.2f}"
            )
        figs.append(
            f'<figure class="ex {kind}" title="{escape(item["file"])}">'
            f"{_img(item['image'], item['label'], '')}<figcaption>{text}</figcaption></figure>"
        )
    return '<div class="strip">' + "".join(figs) + "</div>"


def _section(key: str, body: str) -> str:
    title = dict(SECTIONS)[key]
    return f'<section id="{key}"><h2>{escape(title)}</h2>\n{body}\n</section>\n'


def _paper_cell(row: dict) -> str:
    paper = row.get("paper")
    if not paper:
        return "—"
    return (
        f'<span class="paper" title="{escape(paper["row"])}">{paper["val"]:.1f}% / '
        f"{paper['test']:.1f}%</span><br><small>{escape(paper['row'])}</small>"
    )


def _epochs_cell(row: dict) -> str:
    if row.get("epoch") is None:
        return "—"
    preset = row.get("preset")
    epoch = row["epoch"]
    epoch = f"{epoch:.2f}" if isinstance(epoch, float) and not epoch.is_integer() else int(epoch)
    shown = f"{epoch} of {row['epochs']}" if row.get("epochs") else str(epoch)
    return shown + (f"<br><small>preset {escape(preset)}</small>" if preset else "")


def summary(data: dict) -> str:
    ens = data["ensemble"]
    rows = [*data["experiments"], ens] if len(data["experiments"]) > 1 else data["experiments"]
    body = []
    for r in rows:
        label = escape(r["label"])
        body.append(
            f'<tr><td class="ours" title="{escape(r.get("checkpoint", ""))}">{label}</td>'
            f"<td>{escape(r['model'])}</td>"
            f'<td class="n">{_pct(r.get("tune_top1_error"))}</td>'
            f'<td class="n">{_pct(r.get("tune_top5_error"))}</td>'
            f'<td class="n ours">{_pct(r["val_top1_error"])}</td>'
            f'<td class="n">{_pct(r["val_top5_error"])}</td>'
            f'<td class="n">{_paper_cell(r)}</td>'
            f'<td class="n">{r["params"]:,}</td><td class="n">{_epochs_cell(r)}</td>'
            f'<td class="n">{_duration(r.get("training_seconds"))}</td>'
            f"<td>{escape(r.get('hardware', '—'))}</td></tr>"
        )
    best = ", ".join(escape(c["name"]) for c in data["best"])
    worst = ", ".join(escape(c["name"]) for c in data["worst"])
    members = len(data["experiments"])
    what = "the model" if members == 1 else f"the ensemble of {members} members"
    lead = (
        f"<p>{members} member{'s' * (members > 1)} "
        f"({escape(', '.join(data['members']))}) on <code>{escape(data['data'])}</code>: "
        f"{data['classes']} classes, {data['val_images']} val images. Val top-1 error of {what}: "
        f"<b>{_pct(ens['val_top1_error'])}</b> (top-5 {_pct(ens['val_top5_error'])}). "
        f"Best classes: {best}. Worst classes: {worst}.</p>"
    )
    table = (
        "<table><thead><tr><th>run</th><th>model</th><th class=n>tune top-1</th>"
        "<th class=n>tune top-5</th><th class=n>val top-1</th><th class=n>val top-5</th>"
        "<th class=n>paper val / test</th><th class=n>parameters</th><th class=n>epochs</th>"
        "<th class=n>training time</th><th>hardware</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )
    note = (
        '<p class="note">Errors are top-1 / top-5 error, centre crop. The official val split '
        "is our test set; the tuning split is the part of train a run held out "
        "(data.holdout_per_class), so it plays the part of the paper's val split: the paper's "
        "val / test figures compare with our tune / val columns. The paper's figure is shown "
        "for runs whose config follows a configs/paper preset (any length; the epochs column "
        "says how far the run went). Training time is the snapshot's elapsed training time.</p>"
    )
    return _section("summary", _study_table(data.get("study")) + lead + table + note)


def _study_table(rows: list[dict] | None) -> str:
    """A study's table (tinycnn experiment's table.json): the paper's rows beside ours."""
    if not rows:
        return ""
    body = "".join(
        f"<tr><td class=ours>{escape(r['name'])}</td><td>{escape(str(r['model']))}</td>"
        f'<td class="n">{_pct(r.get("tuning_top1_error"))}</td>'
        f'<td class="n ours">{_pct(r.get("val_top1_error"))}</td>'
        f'<td class="n">{_pct(r.get("paper_val_error"))}</td>'
        f'<td class="n">{_pct(r.get("paper_test_error"))}</td>'
        f'<td class="n">{_signed_points(r.get("gain_vs_best_member"))}</td>'
        f'<td class="n">{_number(r.get("train_pflop"))}</td>'
        f'<td class="n">{_number(r.get("train_minutes"))}</td>'
        f"<td>{escape(str(r.get('hardware') or '—'))}</td></tr>"
        for r in rows
    )
    return (
        "<h3>The paper's table, reproduced</h3><table><thead><tr><th>row</th><th>model</th>"
        "<th class=n>tinycnn tune top-1</th><th class=n>tinycnn val top-1</th>"
        "<th class=n>paper val</th><th class=n>paper test</th><th class=n>ensemble gain</th>"
        "<th class=n>PFLOP</th><th class=n>minutes</th><th>hardware</th></tr></thead><tbody>"
        + body
        + "</tbody></table><p class=note>Top-1 error. The paper's val split compares with our "
        "tuning split, its test split with the official val split. An ensemble's gain is its "
        "best member's val error minus its own; its PFLOP and minutes are its runs'.</p>"
    )


def _signed_points(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.2f} points"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def curves(data: dict) -> str:
    if not data.get("curves_figure"):
        return _section("curves", '<p class="note">No metrics.jsonl: bare checkpoints only.</p>')
    runs = ", ".join(escape(r) for r in data["curves"])
    note = (
        f'<p class="note">Per epoch, for {runs}: training loss and error (solid, over the '
        "epoch's augmented batches, with dropout), val (dashed) and tuning split (dotted), from "
        "each run's metrics.jsonl.</p>"
    )
    return _section("curves", note + _img(data["curves_figure"], "training curves"))


def tsne_section(data: dict) -> str:
    t = data["tsne"]
    note = (
        f'<p class="note">{t["images"]} val images (spread evenly over the classes), their '
        f"{t['code_dims']}-d codes (the input of layer <code>{escape(t['layer'])}</code>, the "
        f"classifier, of <code>{escape(t['model'])}</code>), reduced to {t['pca_dims']} "
        "dimensions by PCA, "
        f"then embedded by {escape(t['implementation'])}, perplexity {t['perplexity']:.0f}, "
        f"in {t['seconds']:.0f} s. Left: coloured by true class. Right: the images themselves, "
        f"each on the {t['grid']}x{t['grid']} grid cell nearest its embedded position (as the "
        "paper's Figure 2).</p>"
    )
    figs = (
        f'<div style="display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start">'
        f'<div style="flex:1 1 480px">{_img(t["scatter"], "t-SNE scatter")}</div>'
        f'<div style="flex:1 1 480px">{_img(t["image_map"], "t-SNE image map")}</div></div>'
    )
    return _section("tsne", note + figs)


def filters(data: dict) -> str:
    f = data["filters"]
    if not f.get("figure"):
        return _section("filters", '<p class="note">This model has no conv layer.</p>')
    out, channels, k, _ = f["shape"]
    note = (
        f'<p class="note">The {out} filters of the first conv layer ({escape(f["layer"])}, '
        f"{channels} channels, {k}x{k}), each enlarged and stretched to the full colour range "
        "on its own (the paper's Figure 4).</p>"
    )
    return _section("filters", note + _img(f["figure"], "first-layer filters"))


def _class_block(row: dict) -> str:
    return (
        f"<h3>{escape(row['name'])} <small>({escape(row['wnid'])}): top-1 accuracy "
        f"{_pct(row['top1_accuracy'], 0)}, top-5 {_pct(row['top5_accuracy'], 0)}</small></h3>"
        + _examples(row["examples"])
    )


def _per_class_table(table: list[dict]) -> str:
    head = (
        '<th data-type="number" class=n>#</th><th>class</th><th>wnid</th>'
        '<th data-type="number" class=n>val images</th>'
        '<th data-type="number" class=n>top-1 accuracy</th>'
        '<th data-type="number" class=n>top-5 accuracy</th>'
        "<th>most often mistaken for</th>"
        '<th data-type="number" class=n>times</th>'
    )
    body = []
    for r in table:
        top1, top5 = r["top1_accuracy"], r["top5_accuracy"]
        body.append(
            f'<tr><td class="n">{r["class"]}</td><td>{escape(r["name"])}</td>'
            f"<td>{escape(r['wnid'])}</td><td class=n>{r['count']}</td>"
            f'<td class="n" data-value="{"" if top1 is None else top1}">{_pct(top1)}</td>'
            f'<td class="n" data-value="{"" if top5 is None else top5}">{_pct(top5)}</td>'
            f"<td>{escape(r['most_confused_with'] or '—')}</td>"
            f"<td class=n>{r['most_confused_count']}</td></tr>"
        )
    return (
        f'<div class="scroll"><table class="sortable" id="per-class"><thead><tr>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def classes(data: dict) -> str:
    who = "the ensemble's" if len(data["experiments"]) > 1 else "the model's"
    note = (
        f'<p class="note">Per-class accuracy of {who} predictions on val (the paper\'s '
        "Figures 5-6: best goldfish, espresso, dugong, monarch, ladybug; worst plunger, pop "
        "bottle, bucket, reel, syringe). Examples: green border = predicted right, red = wrong, "
        "with the class it was taken for; wrong and right in about the class's proportion.</p>"
    )
    best = f"<h3>Best {len(data['best'])}</h3>" + "".join(_class_block(r) for r in data["best"])
    worst = f"<h3>Worst {len(data['worst'])}</h3>" + "".join(_class_block(r) for r in data["worst"])
    table = (
        f'<h3>Every class</h3><p class="note">Click a column header to sort by it '
        f"({len(data['per_class'])} classes).</p>" + _per_class_table(data["per_class"])
    )
    return _section("classes", note + best + worst + table)


def confusion(data: dict) -> str:
    pairs = []
    for pair in data["confused_pairs"]:
        a, b = pair["directions"]
        sides = "".join(
            f'<div style="flex:0 0 440px">{escape(d["true"])} taken for '
            f"{escape(d['predicted'])}: {d['count']}"
            + (_examples(d["examples"]) if d["examples"] else "")
            + "</div>"
            for d in (a, b)
        )
        pairs.append(
            f"<h3>{escape(a['true'])} &harr; {escape(b['true'])} <small>({pair['total']} "
            f'errors)</small></h3><div style="display:flex;flex-wrap:wrap;gap:8px 24px">'
            f"{sides}</div>"
        )
    note = (
        '<p class="note">The class pairs with the most val errors between them (both '
        "directions), with the images that were confused. Below, the confusion matrix, each row "
        "divided by its class's count, the diagonal (correct) left out so that the errors show; "
        "classes are ordered by hierarchical clustering of the symmetrised confusion, so "
        "classes confused with each other sit together.</p>"
    )
    if not pairs:
        pairs = ["<p>No errors between classes.</p>"]
    figure = _img(data["confusion"]["figure"], "confusion matrix")
    return _section("confusion", note + "".join(pairs) + "<h3>Confusion matrix</h3>" + figure)


def ensemble(data: dict) -> str:
    members = data["experiments"]
    if len(members) == 1:
        text = (
            '<p class="note">One model: no ensemble. Name several runs or snapshots '
            "(e.g. <code>RUN@last:3</code>) to see what averaging their probabilities gains.</p>"
        )
        return _section("ensemble", text)
    ens = data["ensemble"]
    rows = "".join(
        f"<tr><td>{escape(m['label'])}</td><td class=n>{_pct(m['val_top1_error'])}</td>"
        f"<td class=n>{_pct(m['val_top5_error'])}</td>"
        f"<td class=n>{100 * (m['val_top1_error'] - ens['val_top1_error']):+.1f}</td></tr>"
        for m in members
    )
    table = (
        "<table><thead><tr><th>member</th><th class=n>val top-1</th><th class=n>val top-5</th>"
        "<th class=n>ensemble's error below it (points)</th></tr></thead><tbody>"
        + rows
        + f"<tr><td class=ours>{escape(ens['label'])}</td><td class='n ours'>"
        f"{_pct(ens['val_top1_error'])}</td><td class=n>{_pct(ens['val_top5_error'])}</td>"
        "<td></td></tr></tbody></table>"
    )
    gain = gain_words(data["ensemble_gain"], "val top-1 error")
    note = (
        f'<p class="note">The ensemble averages its {len(members)} members\' class '
        f"probabilities with equal weights: <b>{gain}</b> (the paper: snapshots ~1 point "
        "lower, 3 models another 1-2).</p>"
    )
    return _section("ensemble", note + table + "<p>" + _img(data["ensemble_figure"], "gain"))


def _scanned(a: dict) -> str:
    if a["scanned"] == a["training_images"]:
        return f"of the {a['scanned']} it trained on"
    return f"of a sample of {a['scanned']} of the {a['training_images']} it trained on"


def ambiguous(data: dict) -> str:
    a = data["ambiguous"]
    note = (
        f'<p class="note">The {len(a["images"])} training images with the highest loss under '
        f"<code>{escape(a['model'])}</code> ({_scanned(a)}, centre crop), "
        "in bold their label, then the model's prediction and the probability it gives the "
        "label: "
        "images whose label the model finds least believable, often ambiguous, mislabelled or "
        "showing several objects (the paper's future work: leave them out). Their file names "
        f'are in <a href="{escape(a["list"])}">{escape(a["list"])}</a>; '
        f"<code>tinycnn train --exclude {escape(a['list'])}</code> drops them from training.</p>"
    )
    return _section("ambiguous", note + _examples(a["images"], caption="label"))
