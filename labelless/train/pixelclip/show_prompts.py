"""What did the class prompts learn? ``labelless train show-prompts``.

For a trained PixelCLIP run (its latest checkpoint, or a checkpoint file):

- every learned cluster prompt (k of them) is compared with the text embeddings of a
  vocabulary (a packaged class list such as ``ade150``, a labels file, or
  ``"road,car|automobile,sky"``) by cosine similarity; the ``top`` nearest class
  names per cluster go to ``clusters.json`` (and a table on stdout);
- on sample images, the student's dense features (image squashed to the training
  resolution) are compared with every cluster embedding; the argmax over clusters,
  upsampled bilinearly to the image, is the cluster map, saved as an index PNG
  (``<stem>_clusters.png``, value = cluster id) and as an overlay whose legend names
  each cluster by its nearest class (``<stem>_overlay.png``);
- a t-SNE map (PixelCLIP's Fig. 5; scikit-learn's ``TSNE``) of the k prompt embeddings
  beside the vocabulary's K class embeddings, all k + K placed together in 2-D, each
  prompt labelled with its nearest class name (cosine): ``prompts_tsne.png`` and the
  coordinates in ``prompts_tsne.json``.

t-SNE choices (the paper gives none): cosine distances (the embeddings are compared by
cosine everywhere else), PCA initialisation and a fixed seed (the same run gives the same
map), perplexity ``min(30, (n - 1) / 3)`` for n = k + K points unless given: scikit-learn's
30 where there are points enough, and always below n (scikit-learn requires perplexity < n).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from labelless.errors import SettingError
from labelless.fileio import atomic_write_text
from labelless.io import expand_images


def read_vocabulary(spec: str) -> list:
    """A packaged class list (``ade150``), a labels file, or ``"a,b|c"`` on the command line."""
    from labelless.vocab.classnames import CLASSNAME_LISTS, HARNESS_LISTS, load_classnames
    from labelless.vocab.encode import parse_labels, read_labels_file

    if spec in CLASSNAME_LISTS or spec in HARNESS_LISTS:
        return load_classnames(spec)
    if Path(spec).is_file():
        return read_labels_file(spec)
    classes = parse_labels(spec)
    if not classes:
        raise SettingError(f"vocabulary {spec!r} is neither a class list ({', '.join(CLASSNAME_LISTS)}), "
                         "a file, nor comma-separated names")
    return classes


def nearest_classes(clusters: torch.Tensor, classes: torch.Tensor, names: list[str],
                    top: int = 5) -> list[list[dict]]:
    """For each of the k cluster embeddings (``k×D``), the ``top`` class embeddings
    (``K×D``, all L2-normalised) of highest cosine: ``[[{"name", "cosine"}, ...], ...]``."""
    sims = clusters.float() @ classes.float().t()  # k×K
    vals, idx = sims.topk(min(top, len(names)), dim=1)
    return [[{"name": names[j], "cosine": round(float(v), 4)} for v, j in zip(vr, ir.tolist())]
            for vr, ir in zip(vals, idx)]


@torch.no_grad()
def cluster_map(model, image: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``3×H×W`` → ``H×W`` long: the cluster of highest cosine at every pixel."""
    x = image.to(model.student.mean.device).float().unsqueeze(0) / 255.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    cos = model.cluster_logits(x)  # 1×k×h×w
    cos = F.interpolate(cos, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return cos[0].argmax(0).cpu()


def tsne_points(prompts: torch.Tensor, classes: torch.Tensor, perplexity: float | None = None,
                seed: int = 0) -> tuple[torch.Tensor, float]:
    """2-D t-SNE of the prompt embeddings ``k×D`` and the class embeddings ``K×D`` together →
    (``(k + K)×2`` float64 coordinates, prompts first; the perplexity used: module docstring)."""
    from labelless.errors import require

    manifold = require("sklearn.manifold", "the t-SNE map of show-prompts")
    x = torch.cat([F.normalize(prompts.float(), dim=-1), F.normalize(classes.float(), dim=-1)]).detach().cpu().numpy()
    n = x.shape[0]
    if n < 2:
        raise SettingError("a t-SNE map needs at least 2 embeddings")
    perplexity = min(30.0, (n - 1) / 3) if perplexity is None else float(perplexity)
    if not 0 < perplexity < n:
        raise SettingError(f"--tsne-perplexity must be above 0 and below the {n} points (prompts + classes), "
                           f"got {perplexity}")
    tsne = manifold.TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(x)).double(), perplexity


def save_tsne(points: torch.Tensor, near: list[list[dict]], names: list[str], out: Path, meta: dict) -> dict:
    """``prompts_tsne.json`` (coordinates, each prompt's nearest names) and ``prompts_tsne.png``
    (classes grey, prompts coloured and labelled with their nearest class) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(near)
    data = {**meta, "prompts": [{"cluster": i, "x": float(points[i, 0]), "y": float(points[i, 1]),
                                 "nearest": [n["name"] for n in near[i]]} for i in range(k)],
            "classes": [{"name": name, "x": float(p[0]), "y": float(p[1])} for name, p in zip(names, points[k:])]}
    atomic_write_text(out / "prompts_tsne.json", json.dumps(data, indent=2))
    fig, ax = plt.subplots(figsize=(9, 9))
    ax.scatter(points[k:, 0], points[k:, 1], s=14, c="0.6", label="class embeddings")
    for name, p in zip(names, points[k:]):
        ax.annotate(name, (float(p[0]), float(p[1])), fontsize=6, color="0.4")
    ax.scatter(points[:k, 0], points[:k, 1], s=40, c=range(k), cmap="tab20", marker="*", label="learned prompts")
    for i in range(k):
        ax.annotate(f"{i}: {near[i][0]['name']}", (float(points[i, 0]), float(points[i, 1])), fontsize=7)
    ax.set_title(f"t-SNE of {k} learned prompts and {len(names)} class embeddings (perplexity {meta['perplexity']:.3g})")
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "prompts_tsne.png", dpi=150)
    plt.close(fig)
    return {"png": "prompts_tsne.png", "json": "prompts_tsne.json"}


def show_prompts(run: str | os.PathLike, vocabulary: str, out: str | os.PathLike,
                 images: list[str] | None = None, templates: str = "imagenet_select", top: int = 5,
                 max_images: int | None = 8, device: str = "cpu", tsne: bool = True,
                 tsne_perplexity: float | None = None, seed: int = 0) -> dict:
    """Write ``out/clusters.json``, the cluster maps of ``images`` and (``tsne``) the t-SNE map;
    returns the JSON dict."""
    from labelless.errors import ImageError
    from labelless.io import load_image
    from labelless.train.pixelclip.build import load_run
    from labelless.visualize import save_index_png, save_overlay
    from labelless.vocab.encode import build_vocabulary

    model, cfg, state = load_run(run, device)
    classes = read_vocabulary(vocabulary)
    vocab = build_vocabulary(model.student, classes, templates)
    with torch.no_grad():
        clusters = model.cluster_embeddings()
    near = nearest_classes(clusters, vocab.class_embeddings(), vocab.names, top)
    k = clusters.shape[0]
    legend = [f"{i}: {near[i][0]['name']}" for i in range(k)]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tsne_files = None
    if tsne:
        points, perplexity = tsne_points(clusters, vocab.class_embeddings(), tsne_perplexity, seed)
        tsne_files = save_tsne(points, near, vocab.names, out, {"perplexity": perplexity, "seed": seed,
                                                                  "metric": "cosine", "vocabulary": vocabulary})
    pixels = torch.zeros(k, dtype=torch.long)
    shown = []
    for path in expand_images(images or [])[:max_images]:
        try:
            image = load_image(path)
        except ImageError as e:
            print(f"skipped: {e}")
            continue
        labels = cluster_map(model, image, cfg.resolution)
        pixels += torch.bincount(labels.flatten(), minlength=k)
        shown.append({
            "image": str(path),
            "clusters": save_index_png(labels, out / f"{path.stem}_clusters.png", k).name,
            "overlay": save_overlay(image, labels, legend, out / f"{path.stem}_overlay.png").name,
            "clusters_present": sorted(int(c) for c in labels.unique()),
        })
    total = max(int(pixels.sum()), 1)
    result = {
        "run": str(run), "step": int(state["step"]), "model": cfg.model, "vocabulary": vocabulary,
        "templates": templates, "num_clusters": k,
        "clusters": [{"cluster": i, "nearest": near[i], "pixel_fraction": round(int(pixels[i]) / total, 4)}
                     for i in range(k)],
        "images": shown, "tsne": tsne_files,
    }
    atomic_write_text(out / "clusters.json", json.dumps(result, indent=2))
    return result


def format_clusters(result: dict) -> str:
    """A plain-text table: cluster, share of pixels on the sample images, nearest names."""
    lines = [f"{'cluster':>7}  {'pixels':>6}  nearest classes (cosine)"]
    for c in result["clusters"]:
        names = ", ".join(f"{n['name']} ({n['cosine']:.2f})" for n in c["nearest"])
        lines.append(f"{c['cluster']:>7}  {100 * c['pixel_fraction']:5.1f}%  {names}")
    return "\n".join(lines)
