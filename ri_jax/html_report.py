"""An interactive, self-contained HTML report of interpretations (one ``index.html``).

The page needs no server, no network and no CDN: every image is embedded as a
base64 PNG and the CSS and JavaScript are inline, so it works straight from the
file system (``file://``). Per input it shows the input with its prediction (and
true label; misclassified inputs are flagged), the polytope in plain words, and
groups of related images (for RI: the covered references ranked by Eq. 6), each
image with the heat maps of every method computed at the input and reused on it.
Controls at the top: which heat map is overlaid (or none), a filter by predicted
class, a filter for misclassified inputs; clicking an image enlarges it.

* ``Report`` / ``ReportInput`` / ``ReportGroup`` / ``ReportImage``: what a page shows.
* ``render_html(report)``: the page as a string (pure).
* ``write_report(out, report)``: writes ``out/index.html``.
* ``explanations_report(explanations)``: the report of ``ri_jax.explain``'s answer.
* ``case_study_input(...)``: one case study (the blocks of ``plots.case_study_figure``).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image

from ri_jax.files import atomic_write_text, display_name
from ri_jax.plots import DISTANCE_NOTE, HEATMAP_CMAP, HEATMAP_NOTE, CaseBlock, overlay


NO_OVERLAY = "image only"


class ReportImage(NamedTuple):
    """One image and the heat maps drawn on it.

    Attributes:
      image: [S, S, 3] raw image in [0, 1].
      title: first caption line (e.g. the file name).
      caption: second caption line (e.g. rank, distance, labels).
      heatmaps: method → [S, S] map in [0, 1] drawn on this image.
      notes: method → a caption line shown only with that method's map (e.g. a score).
      misclassified: flag the image (its prediction differs from its label).
    """

    image: np.ndarray
    title: str
    caption: str = ""
    heatmaps: Mapping[str, np.ndarray] = {}
    notes: Mapping[str, str] = {}
    misclassified: bool = False


class ReportGroup(NamedTuple):
    """A row of images related to an input (e.g. the references its polytope covers)."""

    name: str
    images: Sequence[ReportImage]
    note: str = ""


class ReportInput(NamedTuple):
    """One input and everything shown about it.

    Attributes:
      image: the input (``misclassified`` set when its prediction is wrong).
      predicted_class: the model's prediction.
      probability: its softmax probability.
      true_class: the label, or None when unknown.
      description: the interpretation in plain words (e.g. ``Explanation.describe()``).
      groups: image rows under the input.
    """

    image: ReportImage
    predicted_class: str
    probability: float
    true_class: str | None
    description: str
    groups: Sequence[ReportGroup]

    @property
    def misclassified(self) -> bool:
        return self.true_class is not None and self.true_class != self.predicted_class


class Report(NamedTuple):
    """A page: a title, a few lines of explanation, and the inputs.

    Attributes:
      title: page title.
      intro: paragraph under the title (the run: model, data, settings).
      methods: heat-map methods offered by the toggle, the first shown at load.
      inputs: the ``ReportInput``s.
      notes: lines explaining the captions (shown under the controls).
    """

    title: str
    intro: str
    methods: Sequence[str]
    inputs: Sequence[ReportInput]
    notes: Sequence[str] = ()


def png_data_uri(image) -> str:
    """``data:image/png;base64,...`` of a [S, S, 3] image in [0, 1] (clipped)."""
    arr = np.asarray(image, np.float64)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image: expected [S, S, 3], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image: contains NaN or inf")
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _method_key(report: Report, method: str) -> str:
    return "none" if method == NO_OVERLAY else f"m{list(report.methods).index(method)}"


def _esc(text: str) -> str:
    """HTML-escaped text, undecodable bytes of file names shown as ``\\xNN`` (a page is UTF-8)."""
    return html.escape(display_name(text))


def _cell(report: Report, item: ReportImage, *, is_input: bool = False) -> str:
    esc = _esc
    unknown = sorted(set(item.heatmaps) - set(report.methods))
    if unknown:
        raise ValueError(f"heatmaps: methods {unknown} are not among the report's methods "
                         f"{list(report.methods)}")
    layers = [(NO_OVERLAY, item.image)] + [
        (m, overlay(item.image, item.heatmaps[m])) for m in report.methods if m in item.heatmaps]
    imgs = "".join(
        f'<img class="layer" data-method="{_method_key(report, m)}" alt="{esc(item.title)} '
        f'({esc(m)})" src="{png_data_uri(im)}">' for m, im in layers)
    missing = [m for m in report.methods if m not in item.heatmaps]
    imgs += "".join(f'<div class="layer nomap" data-method="{_method_key(report, m)}">no '
                    f'{esc(m)} map</div>' for m in missing)
    notes = "".join(f'<span class="note" data-method="{_method_key(report, m)}">{esc(t)}</span>'
                    for m, t in item.notes.items() if m in report.methods)
    classes = "cell" + (" input-cell" if is_input else "") + (" flagged" if item.misclassified else "")
    flag = '<span class="badge">misclassified</span>' if item.misclassified else ""
    return (f'<figure class="{classes}"><div class="stack">{imgs}</div><figcaption>'
            f'<b>{esc(item.title)}</b><br>{esc(item.caption)}{flag}{notes}</figcaption></figure>')


def _section(report: Report, index: int, item: ReportInput) -> str:
    esc = _esc
    truth = "" if item.true_class is None else f", true {item.true_class}"
    flag = ' <span class="badge">misclassified</span>' if item.misclassified else ""
    groups = "".join(
        f'<div class="group"><h3>{esc(g.name)}</h3>'
        + (f'<p class="gnote">{esc(g.note)}</p>' if g.note else "")
        + (f'<div class="row">{"".join(_cell(report, im) for im in g.images)}</div>' if g.images
           else '<p class="gnote">(no image)</p>') + "</div>" for g in item.groups)
    return (f'<section class="input" id="input-{index}" data-predicted="{esc(item.predicted_class)}"'
            f' data-misclassified="{int(item.misclassified)}">'
            f'<h2>{esc(item.image.title)}: predicted {esc(item.predicted_class)} '
            f'(p = {item.probability:.2f}){esc(truth)}{flag}</h2>'
            f'<p class="polytope">{esc(item.description)}</p>'
            f'<div class="body">{_cell(report, item.image, is_input=True)}'
            f'<div class="groups">{groups}</div></div></section>')


def _colour_scale() -> str:
    stops = ", ".join(
        "rgb({:.0f},{:.0f},{:.0f}) {:.0f}%".format(*(255 * np.asarray(colormaps[HEATMAP_CMAP](v)[:3])),
                                                   100 * v) for v in np.linspace(0, 1, 11))
    return f"linear-gradient(to right, {stops})"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:8px 16px;z-index:2}
h1{font-size:18px;margin:4px 0}h2{font-size:15px;margin:0 0 4px}h3{font-size:13px;margin:6px 0 2px}
.intro,.notes{margin:2px 0;color:#444;font-size:13px}.notes p{margin:0}
.controls{display:flex;flex-wrap:wrap;gap:16px;align-items:center;margin-top:6px}
fieldset{border:1px solid #ccc;padding:2px 8px;margin:0}legend{font-size:12px;color:#555}
.scale{display:inline-flex;align-items:center;gap:4px;font-size:12px}
.scale i{display:inline-block;width:120px;height:10px;background:SCALE}
main{padding:8px 16px}section.input{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:10px;margin:10px 0}.polytope{margin:0 0 6px;color:#333}
.body{display:flex;gap:16px;align-items:flex-start}.row{display:flex;flex-wrap:wrap;gap:8px}
figure.cell{margin:0;width:136px;font-size:11px}.stack img,.stack .nomap{width:128px;height:128px;
border:4px solid transparent;cursor:zoom-in;image-rendering:auto;display:block}
.stack .nomap{cursor:default;background:#eee;color:#777;display:flex;align-items:center;
justify-content:center;box-sizing:border-box}
.input-cell .stack img{border-color:#1a9850}.flagged .stack img{border-color:#d73027}
.badge{background:#d73027;color:#fff;border-radius:3px;padding:0 4px;margin-left:4px;font-size:11px}
figcaption .badge{display:table;margin:1px 0}figcaption{overflow-wrap:anywhere}
.note{display:block;color:#555}.gnote{margin:0;color:#666;font-size:12px}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.8);display:flex;flex-direction:column;
align-items:center;justify-content:center;z-index:5;cursor:zoom-out}#lightbox[hidden]{display:none}
#lightbox img{width:min(80vh,80vw);height:min(80vh,80vw);image-rendering:auto;background:#fff}
#lightbox p{color:#fff;margin:8px}
"""

_JS = """
(function(){
  const body=document.body, sections=[...document.querySelectorAll('section.input')];
  function showMethod(key){body.dataset.method=key;}
  document.querySelectorAll('input[name=method]').forEach(r=>r.addEventListener('change',
    e=>showMethod(e.target.value)));
  const cls=document.getElementById('class-filter'), mis=document.getElementById('misclassified-filter'),
        count=document.getElementById('count');
  function filter(){
    let shown=0;
    for(const s of sections){
      const ok=(!cls.value||s.dataset.predicted===cls.value)&&(!mis.checked||s.dataset.misclassified==='1');
      s.hidden=!ok; if(ok) shown++;
    }
    count.textContent=shown+' of '+sections.length+' inputs shown';
  }
  cls.addEventListener('change',filter); mis.addEventListener('change',filter);
  const box=document.getElementById('lightbox'), big=box.querySelector('img'), cap=box.querySelector('p');
  document.querySelectorAll('img.layer').forEach(im=>im.addEventListener('click',()=>{
    const fig=im.closest('figure').querySelector('figcaption');
    big.src=im.src; big.alt=im.alt; cap.textContent=im.alt+': '+fig.innerText.replace(/\\n+/g,' · ');
    box.hidden=false;}));
  box.addEventListener('click',()=>{box.hidden=true;});
  document.addEventListener('keydown',e=>{if(e.key==='Escape') box.hidden=true;});
  showMethod(document.querySelector('input[name=method]:checked').value); filter();
})();
"""


def render_html(report: Report) -> str:
    """The whole page as one HTML string (no external resource).

    Args:
      report: what to show; ``report.methods`` must name every heat map used.

    Returns:
      The HTML text.
    """
    if not report.inputs:
        raise ValueError("report.inputs: need at least one input")
    if NO_OVERLAY in report.methods or len(set(report.methods)) != len(report.methods):
        raise ValueError(f"report.methods: expected distinct names other than {NO_OVERLAY!r}, "
                         f"got {list(report.methods)}")
    esc = _esc
    options = [NO_OVERLAY, *report.methods]
    default = report.methods[0] if report.methods else NO_OVERLAY
    radios = "".join(
        f'<label><input type="radio" name="method" value="{_method_key(report, m)}"'
        f'{" checked" if m == default else ""}> {esc(m)}</label> ' for m in options)
    classes = sorted({i.predicted_class for i in report.inputs})
    select = '<option value="">all classes</option>' + "".join(
        f'<option value="{esc(c)}">{esc(c)}</option>' for c in classes)
    # Only the layer of the chosen method is visible.
    rules = "".join(f'body[data-method="{k}"] .layer:not([data-method="{k}"]){{display:none}}'
                    f'body[data-method="{k}"] .note:not([data-method="{k}"]){{display:none}}'
                    for k in (_method_key(report, m) for m in options))
    notes = "".join(f"<p>{esc(n)}</p>" for n in report.notes)
    sections = "".join(_section(report, i, item) for i, item in enumerate(report.inputs))
    css = _CSS.replace("SCALE", _colour_scale()) + rules
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{esc(report.title)}</title><style>{css}</style>'
        f'</head><body data-method="{_method_key(report, default)}"><header>'
        f'<h1>{esc(report.title)}</h1><p class="intro">{esc(report.intro)}</p>'
        f'<div class="controls"><fieldset><legend>heat map</legend>{radios}</fieldset>'
        f'<label>predicted class <select id="class-filter">{select}</select></label>'
        '<label><input type="checkbox" id="misclassified-filter"> misclassified only</label>'
        '<span class="scale">0 <i></i> 1 importance</span><span id="count"></span></div>'
        f'<div class="notes">{notes}<p>Click an image to enlarge it (Esc closes).</p></div>'
        f'</header><main>{sections}</main>'
        '<div id="lightbox" hidden><img alt=""><p></p></div>'
        f'<script>{_JS}</script></body></html>')


def write_report(out: str | os.PathLike, report: Report, *, filename: str = "index.html",
                 overwrite: bool = False) -> Path:
    """Writes ``render_html(report)`` to ``out/filename``.

    Args:
      out: folder (created if missing).
      report: the ``Report``.
      filename: the page's file name.
      overwrite: replace an existing page (otherwise an existing file is an error).

    Returns:
      The page's path.
    """
    path = Path(out) / filename
    if path.exists() and not overwrite:
        raise FileExistsError(f"out: {path} exists; choose another folder or pass overwrite=True")
    return atomic_write_text(path, render_html(report))  # whole or not at all


def explanations_report(explanations: Any, *, title: str | None = None) -> Report:
    """The report of ``ri_jax.explain``'s answer: RI and Grad-CAM maps on the covered references.

    Args:
      explanations: ``ri_jax.api.Explanations``, from ``ri_jax.explain`` (this module does
        not import ``ri_jax.api``, which imports it).
      title: page title (default: says what the page shows).

    Returns:
      ``Report`` with methods ``("RI", "Grad-CAM")``.
    """
    cfg = explanations.config
    inputs = []
    for e in explanations:
        truth = "label unknown" if e.true_class is None else f"true {e.true_class}"
        refs = [ReportImage(
            image=r.image, title=r.name,
            caption=f"#{r.rank} d = {r.distance:.3g} · true {r.true_class or 'unknown'} · pred "
                    f"{r.predicted_class} {r.probability:.2f}",
            heatmaps={"RI": r.heatmap, "Grad-CAM": r.gradcam_heatmap},
            misclassified=r.misclassified) for r in e.similar]
        inputs.append(ReportInput(
            image=ReportImage(e.image, e.name, f"input · {truth} · pred {e.predicted_class} "
                                               f"{e.probability:.2f}",
                              {"RI": e.heatmap, "Grad-CAM": e.gradcam_heatmap},
                              misclassified=bool(e.misclassified)),
            predicted_class=e.predicted_class, probability=e.probability, true_class=e.true_class,
            description=e.describe()[:1].upper() + e.describe()[1:] + ".",
            groups=[ReportGroup(f"The {len(refs)} most similar covered training images "
                                "(ranked by Eq. 6 distance d)", refs)]))
    intro = (f"Model {cfg['model']}, data {cfg['data']}: {cfg['num_references']:,} training "
             f"images as references, |Q| = {cfg['num_boundaries']} sampled boundaries, seed "
             f"{cfg['seed']}.")
    notes = [HEATMAP_NOTE, "Grad-CAM: its channel weights computed at the input and reused "
             "unchanged on each reference (the paper's extension, §6.1).", DISTANCE_NOTE]
    return Report(title=title or "Representative interpretations", intro=intro,
                  methods=("RI", "Grad-CAM"), inputs=inputs, notes=notes)


def _title_and_caption(text: str) -> tuple[str, str]:
    first, _, rest = text.partition("\n")
    return first, rest.replace("\n", " · ")


def case_study_input(blocks: Sequence[CaseBlock], *, name: str, predicted_class: str,
                     probability: float, true_class: str | None, description: str) -> ReportInput:
    """One case study as a report input: the blocks drawn by ``plots.case_study_figure``.

    Every block starts with the input itself (its first image); the input's cell takes each
    method's map and caption from the first block that has the method, and each block
    becomes a group of its other images.

    Args:
      blocks: the ``CaseBlock``s of one input.
      name: the input's file name.
      predicted_class, probability, true_class: the input's prediction and label.
      description: the interpretation in plain words.

    Returns:
      ``ReportInput``; the report's methods must include every method of the blocks.
    """
    if not blocks:
        raise ValueError("blocks: need at least one block")
    maps, notes = {}, {}
    for block in blocks:
        for method, method_maps in block.method_maps.items():
            maps.setdefault(method, np.asarray(method_maps)[0])
            notes.setdefault(method, block.method_captions[method][0])
    wrong = true_class is not None and true_class != predicted_class
    first = blocks[0]
    head = ReportImage(np.asarray(first.images)[0], name, first.captions[0].replace("\n", " · "),
                       maps, notes, misclassified=wrong)
    groups = []
    for block in blocks:
        flagged = block.flagged or [False] * len(block.images)
        groups.append(ReportGroup(block.name, [
            ReportImage(np.asarray(block.images)[i], *_title_and_caption(block.captions[i]),
                        {m: np.asarray(v)[i] for m, v in block.method_maps.items()},
                        {m: c[i] for m, c in block.method_captions.items()},
                        misclassified=bool(flagged[i]))
            for i in range(1, len(block.images))]))
    return ReportInput(head, predicted_class, probability, true_class, description, groups)

