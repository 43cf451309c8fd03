"""``python -m instructor report RUN_DIR… --out DIR``: the experiment report the course asks for, from finished
runs. A run folder holds ``BEST_checkpoint_*.pth.tar`` files (anywhere below it) and the JSON files that
``test``/``evaluate`` wrote (matched to checkpoints by their ``checkpoint`` field); PNG figures below it are
included as examples. Writes ``report.md`` with PNG figures beside it and a self-contained ``report.html``.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import os

from captioning.internals.atomic import write_text
from captioning.internals.errors import KitError

HYPER = (
    "decoder",
    "encoder",
    "encoder_weights",
    "embed_dim",
    "attention_dim",
    "decoder_dim",
    "dropout",
    "batch_size",
    "decoder_lr",
    "encoder_lr",
    "fine_tune_encoder",
    "alpha_c",
    "encoded_image_size",
)


def _hyper(cfg, key):
    value = cfg.get(key)
    # a weights file is told by its name; the folder is the run's own
    return os.path.basename(value) if key == "encoder_weights" and isinstance(value, str) else value


def _runs(run_dirs):
    from captioning.checkpoints import load_checkpoint
    from captioning.evaluation.selection import kept_epoch

    runs = []
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            raise KitError(f"run folder '{run_dir}' does not exist")
        tests = []
        for path in glob.glob(os.path.join(run_dir, "**", "*.json"), recursive=True):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "bleu4" in data and "checkpoint" in data:
                tests.append(data)
        for ck in sorted(glob.glob(os.path.join(run_dir, "**", "BEST_checkpoint_*.pth.tar"), recursive=True)):
            try:
                c = load_checkpoint(ck)
            except KitError as e:  # report what can be reported; say what was left out
                print(f"report: skipped {ck}: {e}")
                continue
            test = next((t for t in tests if os.path.basename(t["checkpoint"]) == os.path.basename(ck)), None)
            kept = kept_epoch(c["history"])  # the epoch BEST_ holds (training's rule, not the single highest BLEU-4)
            best = c["history"][kept] if kept is not None else max(c["history"], key=lambda r: r["bleu4"], default={})
            runs.append(
                {
                    "name": f"{os.path.basename(os.path.normpath(run_dir))}/{c['kind']}",
                    "checkpoint": ck,
                    "cfg": c["cfg"],
                    "history": c["history"],
                    "best_epoch": best.get("epoch"),
                    "test": test,
                    "figures": sorted(glob.glob(os.path.join(run_dir, "**", "*.png"), recursive=True)),
                }
            )
    if not runs:
        raise KitError(f"no BEST_checkpoint_*.pth.tar found under {', '.join(run_dirs)}: train first")
    return runs


def _fmt(v, digits=3):
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def make_report(run_dirs, out):
    """Write ``out/report.md``, ``out/report.html`` and figures; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    from captioning.evaluation.figures import save, training_curves

    runs = _runs(run_dirs)
    os.makedirs(out, exist_ok=True)
    md = ["# Experiment report", ""]
    tested = [r for r in runs if r["test"]]
    md += _test_results(tested)
    md += [
        "## Best hyper-parameters",
        "",
        "| model | best epoch | " + " | ".join(HYPER) + " |",
        "|---" * (len(HYPER) + 2) + "|",
    ]
    for r in runs:
        md.append(
            f"| {r['name']} | {r['best_epoch']} | " + " | ".join(_fmt(_hyper(r["cfg"], k), 4) for k in HYPER) + " |"
        )
    curves = save(
        training_curves([r["history"] for r in runs], [r["name"] for r in runs]),
        os.path.join(out, "training_curves.png"),
    )
    md += ["", "## Training curves", "", f"![training curves]({os.path.basename(curves)})", ""]
    md += _examples(tested)
    md += _attention_figures(runs, out)
    md_path = os.path.join(out, "report.md")
    text = "\n".join(md) + "\n"
    write_text(text, md_path)
    _write_html(text, out)
    return md_path


def _test_results(tested):
    """The markdown lines of the test-results table of the runs in ``tested`` (none when it is empty)."""
    if not tested:
        return []
    splits = {(r["test"]["split"], r["test"]["beam_size"]) for r in tested}
    md = [
        f"## Test results ({'; '.join(f'{s} split, beam {b}' for s, b in sorted(splits))})",
        "",
        "| model | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | COCO BLEU-4 | METEOR | ROUGE-L | CIDEr-D | "
        "pointing game (chance) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tested:
        t, c, g = r["test"], r["test"].get("coco") or {}, r["test"].get("grounding")
        gs = f"{g['all']:.2f} ({g['chance']:.2f})" if g and g.get("all") is not None else "—"
        md.append(
            f"| {r['name']} | {_fmt(t['bleu1'])} | {_fmt(t['bleu2'])} | {_fmt(t['bleu3'])} | "
            f"{_fmt(t['bleu4'])} | {_fmt(c.get('bleu4'))} | {_fmt(c.get('meteor'))} | "
            f"{_fmt(c.get('rouge_l'))} | {_fmt(c.get('cider_d'))} | {gs} |"
        )
    md += [
        "",
        "BLEU-1..4: nltk `corpus_bleu` on word indices against all references (the course's numbers). "
        "COCO columns: pycocoevalcap on PTB-tokenised text.",
        "",
    ]
    return md


def _examples(tested):
    """The markdown lines of the example-captions table (first test images) of the tested runs that hold
    captions; says which tested runs have none."""
    with_captions = [r for r in tested if r["test"].get("captions")]
    if len(with_captions) < len(tested):  # e.g. a notebook's test_*.metrics.json holds scores only
        print(
            "report: no example captions for "
            + ", ".join(r["name"] for r in tested if r not in with_captions)
            + " (their test results hold scores only)"
        )
    tested = with_captions
    if not tested:
        return []
    md = [
        "## Examples (first test images)",
        "",
        "| image | " + " | ".join(r["name"] for r in tested) + " |",
        "|---" * (len(tested) + 1) + "|",
    ]
    for i in range(min(5, min(len(r["test"]["captions"]) for r in tested))):
        first = tested[0]["test"]["captions"][i]
        md.append(
            f"| {first.get('image_id', i)}<br>ref: {html.escape(first['references'][0])} | "
            + " | ".join(html.escape(r["test"]["captions"][i]["caption"]) for r in tested)
            + " |"
        )
    md.append("")
    return md


def _attention_figures(runs, out):
    """The markdown lines of the runs' figures (other than training curves), each copied into ``out``."""
    figs = [f for r in runs for f in r["figures"] if "training_curves" not in f]
    if not figs:
        return []
    md = ["## Attention figures", ""]
    for f in dict.fromkeys(figs):
        name = os.path.basename(f)
        target = os.path.join(out, name)
        if os.path.abspath(f) != os.path.abspath(target):
            with open(f, "rb") as src, open(target, "wb") as dst:
                dst.write(src.read())
        md += [f"![{name}]({name})", ""]
    return md


def _write_html(markdown, out):
    """A small markdown-to-HTML rendering (tables, headings, images inlined as base64) — no extra dependency."""
    lines, body, table = markdown.splitlines(), [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            body.append(
                "<table>"
                + "".join(
                    "<tr>"
                    + "".join(f"<{'th' if i == 0 else 'td'}>{c}</{'th' if i == 0 else 'td'}>" for c in row)
                    + "</tr>"
                    for i, row in enumerate(cells)
                )
                + "</table>"
            )
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            with open(os.path.join(out, src), "rb") as fh:
                data = base64.b64encode(fh.read()).decode()
            body.append(f'<p><img style="max-width:100%" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Experiment report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
    path = os.path.join(out, "report.html")
    write_text(page, path)


def register(sub):
    s = sub.add_parser("report", help="experiment report (Markdown + PNG + self-contained HTML) from finished runs")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", required=True)
    s.set_defaults(func=lambda a: print(f"wrote {make_report(a.runs, a.out)}"))
