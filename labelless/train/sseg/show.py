"""What did S-Seg learn? ``labelless train sseg-show``: for sample images, the predicted
masks, the pseudo-masks they are matched to, and the labels the text encoder gives them.

Per image (squashed to the model's training side, as in training): DINO k-means
pseudo-masks (``dino_model``, K = ``k``, as ``masks=dino`` makes them), the N predicted
masks of the last decoder layer, the Hungarian matching of training (Dice + focal cost),
and for every matched prediction the vocabulary class of highest probability
(softmax(logit_scale · cos)). Written: ``<stem>_sseg.png`` (image | pseudo-masks |
matched predictions, coloured like their pseudo-mask | the semantic map with a legend)
and ``sseg_show.json`` (per image: per matched pair the pseudo-mask, the prediction, their
Dice, the class and its probability).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.fileio import atomic_path, atomic_write_text


def _colour(ids: np.ndarray, n: int) -> np.ndarray:
    from labelless.visualize import palette

    pal = np.concatenate([palette(max(n, 1)), np.zeros((1, 3), np.uint8)])
    return pal[np.where(ids < 0, n, ids)]


@torch.no_grad()
def explain_image(model, image: torch.Tensor, dino, vocab, k: int = 8, seed: int = 0) -> dict:
    """One uint8 ``3×H×W`` image → pseudo-mask ids, matched prediction ids and labels
    (all ``S×S`` at the model's side) and the per-pair records."""
    from labelless.masks.online import padded_kmeans_masks
    from labelless.scorers import semantic_inference
    from labelless.train.losses import dice_loss
    from labelless.train.matching import match_masks

    side = model.image_size[0]
    x = F.interpolate(image[None].float() / 255, size=(side, side), mode="bilinear", align_corners=False)
    pseudo, valid = padded_kmeans_masks(dino, (x * 255).round().to(torch.uint8), k, cosine=True, seed=seed)
    pseudo = pseudo[0][valid[0]].float()  # K×S×S
    logits, emb = model.mask_predictions(model.normalize(x))
    logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)[0]  # N×S×S
    rows, cols = match_masks(logits.flatten(1), pseudo.flatten(1))
    cos = vocab.similarity(emb.transpose(1, 2)[..., None])[0, :, :, 0]  # K_cls×N
    probs = (model.logit_scale * cos).softmax(0)
    pseudo_ids = pseudo.argmax(0).numpy()
    matched = torch.full((side, side), -1, dtype=torch.long)
    pairs = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        on = logits[r].sigmoid() > 0.5
        matched[on & (matched < 0)] = c
        p, cls = probs[:, r].max(0)
        pairs.append({"pseudo_mask": c, "prediction": r, "class": vocab.names[int(cls)], "probability": round(float(p), 4),
                      "dice": round(1 - float(dice_loss(logits[r:r + 1].flatten(1), pseudo[c:c + 1].flatten(1), 1)), 4)})
    semantic = semantic_inference(logits[None], emb, vocab, model.logit_scale)[0].argmax(0)
    return {"image": (x[0] * 255).round().byte().permute(1, 2, 0).numpy(), "pseudo": pseudo_ids,
            "matched": matched.numpy(), "semantic": semantic.numpy(), "pairs": pairs, "k": int(pseudo.shape[0])}


def save_picture(result: dict, names: list[str], path: Path) -> Path:
    """Image | pseudo-masks | matched predictions | semantic map with a legend, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from labelless.visualize import palette

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = [(result["image"], "image"), (_colour(result["pseudo"], result["k"]), "pseudo-masks (DINO k-means)"),
              (_colour(result["matched"], result["k"]), "matched predictions (>0.5)"),
              (_colour(result["semantic"], len(names)), "labels (text encoder)")]
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    present = sorted(set(np.unique(result["semantic"]).tolist()))
    cols = palette(len(names))
    axes[3].legend(handles=[Patch(color=cols[c] / 255, label=names[c]) for c in present], loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def show_sseg(checkpoint: str, images: list[str], vocabulary: str, out: str, dino_model: str, k: int = 8,
              templates: str = "a photo of {}", max_images: int = 8) -> dict:
    """Pictures and ``sseg_show.json`` for up to ``max_images`` images (module docstring)."""
    from labelless.errors import ImageError
    from labelless.io import expand_images, load_image
    from labelless.masks.dino import load_dino
    from labelless.models.sseg import load_sseg
    from labelless.train.pixelclip.show_prompts import read_vocabulary
    from labelless.vocab.encode import build_vocabulary

    model, dino = load_sseg(checkpoint), load_dino(dino_model)
    vocab = build_vocabulary(model, read_vocabulary(vocabulary), templates)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = []
    for path in expand_images(images)[:max_images]:
        try:
            image = load_image(path)
        except ImageError as e:
            print(f"skipped: {e}")
            continue
        result = explain_image(model, image, dino, vocab, k)
        picture = save_picture(result, vocab.names, out_dir / f"{path.stem}_sseg.png")
        shown.append({"image": str(path), "picture": picture.name, "pseudo_masks": result["k"], "pairs": result["pairs"]})
    report = {"checkpoint": str(checkpoint), "vocabulary": vocabulary, "templates": templates, "images": shown}
    atomic_write_text(out_dir / "sseg_show.json", json.dumps(report, indent=2))
    return report
