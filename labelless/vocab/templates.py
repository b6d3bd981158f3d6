"""Prompt template sets: ``single``, ``imagenet_select`` (PixelCLIP's 8) and
``imagenet80`` (the 80 ImageNet templates of OpenAI's CLIP notebook).

Each template has one ``{}`` where the class name goes.
"""

from __future__ import annotations

from labelless.errors import SettingError

SINGLE = ("a photo of a {}.",)

# PixelCLIP "imagenet_select" (pixelclip/third_party/imagenet_templates.py of the
# official code): 7 of OpenAI's ImageNet templates + the scene template.
IMAGENET_SELECT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "A photo of a {} in the scene",
)


def _imagenet80() -> tuple[str, ...]:
    from open_clip import OPENAI_IMAGENET_TEMPLATES  # callables: name -> text

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


TEMPLATE_SETS = {"single": lambda: SINGLE, "imagenet_select": lambda: IMAGENET_SELECT,
                 "imagenet80": _imagenet80}


def get_templates(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A named set, a path to a text file (one template per line), or a list of templates."""
    from pathlib import Path

    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return TEMPLATE_SETS[spec]()
        path = Path(spec)
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise SettingError(f"cannot read template file {path}: {type(e).__name__}: {e}") from e
            spec = [line.strip() for line in text.splitlines() if line.strip()]
        elif "{}" in spec:
            spec = [spec]
        else:
            raise SettingError(f"unknown template set {spec!r}: choose {', '.join(TEMPLATE_SETS)}, "
                               "a file with one template per line, or a template containing '{}'")
    templates = tuple(spec)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise SettingError(f"every template needs exactly one '{{}}' placeholder; bad: {bad or 'none given'}")
    return templates
