"""``labelless demo``: a Gradio web app on the Python API (``labelless/api.py``).

Upload a photo (or pick one of the shipped CamVid examples, ``labelless/examples/``), type
the words (classes separated by commas, synonyms by ``|``), choose the model, the dense
mode, the protocol and the refinement; the app shows the overlay with its legend, each
class's share of the image and its colour, and gives the label map (an index PNG: pixel
value = class index, the legend's ``#``) to download.

Choices made here:

- The models one can pick are the ones the server was started with (``--model`` /
  ``--pretrained``, plus each ``--extra-model MODEL PRETRAINED``): a browser cannot make the
  server read other files (which matters with ``--share``). Every one is loaded before the
  server starts, so weights that cannot be loaded stop ``labelless demo`` with the weights
  message (exit 2) instead of failing in the browser.
- Loaded models are kept in a cache keyed by (model choice, mode), the least recently used
  dropped beyond ``len(choices) + 1`` entries; a protocol or refinement change reuses the
  loaded model (``SegmentationModel.variant``), and so does every request.
- The CLI's inference options (``--templates``, ``--bg-threshold``, ``--batch-size``, …) apply
  to every request; ``--short-side`` / ``--input-size`` / ``--stride`` / ``--feature-size``
  only while the protocol picked is the ``--protocol`` they were given with (another
  protocol takes its own defaults).
- Refinements: ``REFINEMENTS`` maps a name to a refinement of ``labelless.refine``
  (``pamr``, or ``masks`` with the per-image mask source computed for the uploaded photo:
  SLIC superpixels or Felzenszwalb segments, no model needed); an entry added there appears
  in the app.
- Errors the user can fix (a bad image, an empty vocabulary, a mode the model lacks) are
  shown in the page as Gradio errors with labelless's message; anything else is a bug and
  keeps its traceback in the server's log.
- The page uses system fonts (no web fonts fetched), and Gradio's analytics are off.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).parent / "examples"
EXAMPLE_WORDS = "sky, building, road|street, pavement|sidewalk, tree, car, pedestrian|person, bicyclist|cyclist"
PROTOCOL_GEOMETRY = ("short_side", "input_size", "stride", "feature_size")

# refinement name -> the Segmenter options it sets (labelless.load / SegmentationModel.variant)
# name -> (refinement of labelless.refine, mask source of labelless.masks.per_image or None)
REFINEMENTS: dict[str, tuple[str | None, str | None]] = {
    "none": (None, None), "pamr": ("pamr", None),
    "masks: SLIC superpixels": ("masks", "slic"), "masks: Felzenszwalb segments": ("masks", "felzenszwalb")}


def _refinement_options(name: str) -> dict:
    """The ``Segmenter`` options of refinement ``name`` (``REFINEMENTS``)."""
    from labelless.refine import MaskRefinement, PAMRRefinement

    method = REFINEMENTS[name][0]
    return {} if method is None else {"refine": PAMRRefinement() if method == "pamr" else MaskRefinement()}


def example_images() -> list[Path]:
    """The example photos that ship with the package (``labelless/examples/*.jpg``), sorted."""
    return sorted(EXAMPLES_DIR.glob("*.jpg"))


def modes() -> list[str]:
    """The mode choices: ``auto`` and every ViT dense mode (a ConvNeXt has ``vanilla`` only)."""
    from labelless.models.dense import VIT_MODES

    return ["auto", *VIT_MODES]


@dataclass(frozen=True)
class ModelChoice:
    """A model the app offers: an open_clip name (or None: told from the file) + weights."""

    model: str | None
    pretrained: str | None

    @property
    def label(self) -> str:
        return f"{self.model or 'auto'} · {self.pretrained}"


@dataclass
class DemoResult:
    """What one request gives the page."""

    overlay: object  # PIL image with legend
    legend: str  # HTML table: index, colour, class, share
    label_map: Path  # index PNG
    status: str  # one line: model, settings, time
    shares: dict[str, float]


def legend_html(names: list[str], shares: dict[str, float]) -> str:
    """An HTML table, one row per class in index order: index, colour swatch (the overlay's
    palette), name, share of the image in percent."""
    from labelless.visualize import palette

    rows = []
    for i, (name, colour) in enumerate(zip(names, palette(len(names)))):
        hexcol = "#" + "".join(f"{int(c):02x}" for c in colour)
        rows.append(f'<tr class="labelless-class" data-index="{i}"><td>{i}</td>'
                    f'<td><span style="display:inline-block;width:1.2em;height:1.2em;background:{hexcol};'
                    f'border:1px solid #000"></span></td><td class="name">{html.escape(name)}</td>'
                    f'<td class="share">{100 * shares[name]:.1f} %</td></tr>')
    return ('<table class="labelless-legend"><thead><tr><th>#</th><th></th><th>class</th><th>share</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>')


class DemoApp:
    """The models on offer, the loaded-model cache and the request handler (module doc).

    ``load_options``: ``labelless.load`` keywords shared by every model (device, precision,
    templates, bg_threshold, …); ``protocol`` / ``geometry``: the default protocol and its
    ``Protocol`` fields from the command line.
    """

    def __init__(self, choices: list[ModelChoice], load_options: dict | None = None, mode: str = "auto",
                 protocol: str = "squash", geometry: dict | None = None):
        if not choices:
            raise ValueError("a demo needs at least one model choice")
        self.choices = {c.label: c for c in choices}
        self.load_options = dict(load_options or {})
        self.mode, self.protocol, self.geometry = mode, protocol, dict(geometry or {})
        self._models: OrderedDict = OrderedDict()  # (label, mode) -> SegmentationModel
        self._variants: dict = {}  # (label, mode, protocol, refinement) -> SegmentationModel
        self._mask_sources: dict = {}  # mask source spec -> per-image source (REFINEMENTS)
        self._lock = threading.Lock()
        self._outputs = Path(tempfile.mkdtemp(prefix="labelless-demo-"))
        self._requests = 0

    def close(self) -> None:
        shutil.rmtree(self._outputs, ignore_errors=True)

    def preload(self) -> None:
        """Load every model choice in the default mode (weights errors raise here)."""
        for label in self.choices:
            self.model(label, self.mode)

    def model(self, label: str, mode: str):
        """The loaded ``SegmentationModel`` of a choice in ``mode`` (cached, module doc)."""
        from labelless.api import load
        from labelless.errors import SettingError

        if label not in self.choices:
            raise SettingError(f"unknown model {label!r}; choose from {', '.join(self.choices)}")
        key = (label, mode)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            choice = self.choices[label]
            seg = load(choice.model, choice.pretrained, mode, **self.load_options)
            self._models[key] = seg
            while len(self._models) > len(self.choices) + 1:
                old, _ = self._models.popitem(last=False)
                self._variants = {k: v for k, v in self._variants.items() if k[:2] != old}
            return seg

    def segmenter(self, label: str, mode: str, protocol: str, refinement: str):
        """The model of ``(label, mode)`` with ``protocol`` and ``refinement`` (no reload)."""
        from labelless.errors import SettingError

        if refinement not in REFINEMENTS:
            raise SettingError(f"unknown refinement {refinement!r}; choose from {', '.join(REFINEMENTS)}")
        key = (label, mode, protocol, refinement)
        if key not in self._variants:
            base = self.model(label, mode)
            geometry = self.geometry if protocol == self.protocol else {}
            self._variants[key] = base.variant(protocol, **geometry, **_refinement_options(refinement))
        return self._variants[key]

    def segment(self, image, words: str, label: str, mode: str, protocol: str, refinement: str) -> DemoResult:
        """One request: segment ``image`` (what Gradio gives: an ``H×W×3`` uint8 array, or a
        path) with ``words``; LabellessError for what the user can fix."""
        from labelless.api import parse_words
        from labelless.errors import ImageError
        from labelless.visualize import save_index_png

        if image is None:
            raise ImageError("no image: upload one or pick an example")
        parse_words(words or "")  # an empty vocabulary fails before any model work
        seg = self.segmenter(label, mode, protocol, refinement)
        start = time.perf_counter()
        result = seg(image, words, **self._masks(image, refinement, seg.device))
        took = time.perf_counter() - start
        with self._lock:
            self._requests += 1
            folder = self._outputs / f"{self._requests:06d}"
            old = self._outputs / f"{self._requests - 16:06d}"  # keep the last 16 requests' files
        folder.mkdir()
        shutil.rmtree(old, ignore_errors=True)
        label_map = save_index_png(result.labels, folder / "labels.png", len(result.names))
        info = seg.info()
        status = (f"{info.get('model')} · {label.split(' · ', 1)[1]} · mode {info.get('mode') or '-'} · "
                  f"{seg.protocol.name} · {result.labels.shape[1]}×{result.labels.shape[0]} px · "
                  f"{took:.2f} s on {seg.device}")
        return DemoResult(result.overlay(), legend_html(result.names, result.shares), label_map, status,
                          result.shares)

    def _masks(self, image, refinement: str, device) -> dict:
        """``predict``'s ``masks`` for a mask refinement: the photo's masks from its source."""
        spec = REFINEMENTS[refinement][1]
        if spec is None:
            return {}
        from labelless.api import as_image
        from labelless.masks.per_image import build_mask_source

        if spec not in self._mask_sources:
            self._mask_sources[spec] = build_mask_source(spec, device=device)
        return {"masks": self._mask_sources[spec]([as_image(image, "image").to(device)], ["image"], None)}

    def handle(self, image, words, label, mode, protocol, refinement):
        """The Gradio event: ``(overlay, legend, label map, status)``; a LabellessError
        becomes a ``gradio.Error`` (shown in the page) with its message on one line."""
        import gradio as gr

        from labelless.errors import LabellessError, one_line

        try:
            r = self.segment(image, words, label, mode, protocol, refinement)
        except LabellessError as e:
            raise gr.Error(one_line(e)) from e
        return r.overlay, r.legend, str(r.label_map), r.status


def build_blocks(app: DemoApp):
    """The Gradio page of ``app``."""
    import gradio as gr

    from labelless.segment import PROTOCOLS

    with gr.Blocks(title="labelless demo", analytics_enabled=False) as blocks:
        gr.Markdown("## labelless: segment any photo with any words\nClasses separated by commas, synonyms "
                    "by `|` (`road|street`). The label map's pixel values are the legend's `#`.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", image_mode="RGB", label="image", sources=["upload", "clipboard"],
                                 elem_id="image")
                words = gr.Textbox(label="words", value=EXAMPLE_WORDS, elem_id="words")
                with gr.Row():
                    model = gr.Dropdown(list(app.choices), value=next(iter(app.choices)), label="model",
                                        elem_id="model")
                    mode = gr.Dropdown(modes(), value=app.mode, label="mode", elem_id="mode")
                    protocol = gr.Dropdown(list(PROTOCOLS), value=app.protocol, label="protocol",
                                           elem_id="protocol")
                    refine = gr.Dropdown(list(REFINEMENTS), value="none", label="refinement", elem_id="refine")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                if example_images():
                    gr.Examples([[str(p), EXAMPLE_WORDS] for p in example_images()], [image, words],
                                label="examples (CamVid val, CC BY-NC 4.0)")
            with gr.Column():
                overlay = gr.Image(type="pil", format="png", label="overlay", interactive=False, buttons=["download"],
                                   elem_id="overlay")
                legend = gr.HTML(elem_id="legend")
                labels = gr.File(label="label map (index PNG)", interactive=False, elem_id="labels")
                status = gr.Markdown(elem_id="status")
        inputs, outputs = [image, words, model, mode, protocol, refine], [overlay, legend, labels, status]
        button.click(app.handle, inputs, outputs)
        words.submit(app.handle, inputs, outputs)
    return blocks


def add_demo_parser(sub, add_model_args) -> None:
    """``labelless demo``: the model options of ``segment`` (``add_model_args``) + the server's."""
    p = sub.add_parser("demo", help="a web demo (Gradio): segment any photo with any words in a browser")
    p.add_argument("--extra-model", nargs=2, action="append", default=[], metavar=("MODEL", "PRETRAINED"),
                   help="another model to offer (repeatable; MODEL 'auto' for a file that tells its tower)")
    p.add_argument("--server-name", default=None,
                   help="address to listen on (Gradio's default: 127.0.0.1 or $GRADIO_SERVER_NAME; "
                        "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=None, help="port (Gradio's default: 7860 or $GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    add_model_args(p)
    p.set_defaults(func=cmd_demo)


def app_from_args(args) -> DemoApp:
    """The ``DemoApp`` of parsed ``labelless demo`` arguments (nothing loaded yet)."""
    from labelless.presets import explicit_settings, resolve

    choices = [ModelChoice(args.model, args.pretrained)]
    choices += [ModelChoice(None if m == "auto" else m, p) for m, p in args.extra_model]
    # segment's settings: a --preset's dataset-independent ones, then the options given
    settings = resolve(getattr(args, "preset", None), None, explicit_settings(args))
    load_options = dict(device=args.device, cache_dir=args.cache_dir, seed=args.seed, templates=settings["templates"],
                        synonyms=settings["synonyms"], logit_scale=settings["logit_scale"],
                        bg_threshold=settings["bg_threshold"], batch_size=args.batch_size, precision=args.precision,
                        compile=args.compile)
    if getattr(args, "vfm", None) is not None:  # --mode proxyclip's vision foundation model
        load_options.update(vfm=args.vfm, proxy_beta=args.proxy_beta, proxy_gamma=args.proxy_gamma)
    geometry = {k: settings[k] for k in PROTOCOL_GEOMETRY if settings[k] is not None}
    return DemoApp(list(dict.fromkeys(choices)), load_options, args.mode, settings["protocol"], geometry)


def launch(blocks, args) -> None:
    """Serve ``blocks`` until interrupted; a port in use is a SettingError naming it."""
    import gradio as gr

    from labelless.errors import SettingError

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts to fetch
    try:
        blocks.launch(server_name=args.server_name, server_port=args.port, share=args.share,
                      allowed_paths=[str(EXAMPLES_DIR)], theme=theme, show_error=True)
    except OSError as e:
        raise SettingError(f"cannot serve on {args.server_name or '127.0.0.1'}:{args.port or 7860}: {e} "
                           "(another --port?)") from e


def cmd_demo(args) -> int:
    from labelless.errors import require

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    require("gradio", "labelless demo")
    app = app_from_args(args)
    try:
        app.preload()  # weights that cannot be loaded stop here, before the server starts
        launch(build_blocks(app), args)
    finally:
        app.close()
    return 0
