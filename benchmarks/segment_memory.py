"""Peak memory and time of the whole ``labelless segment`` command on one large photo.

    python benchmarks/segment_memory.py [--size 8000x6000] [--classes ade150] [--model ViT-B-16]
                                        [--protocol squash] [--bg-threshold P] [--device cpu]

Writes a smooth synthetic photo of the given size (JPEG), runs ``labelless segment`` on it in
a subprocess with the class list (150 ADE words by default) and random weights
(``--pretrained none``: the memory does not depend on the values), and prints the peak RSS
of that process (``ru_maxrss`` of the child) and its wall time, then one ``RESULT {json}``
line. The plain computation (all class maps at full size before the argmax) would need
K×H×W×4 bytes for the scores alone; that figure is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_photo(path: Path, width: int, height: int) -> Path:
    """A smooth colour field (gradients + a few blobs), saved as JPEG without holding floats."""
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (255 * xs).astype(np.uint8)
    img[..., 1] = (255 * ys).astype(np.uint8)
    img[..., 2] = (127 + 127 * np.sin(9 * xs) * np.cos(7 * ys)).astype(np.uint8)
    Image.fromarray(img).save(path, quality=90)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT")
    ap.add_argument("--classes", default="ade150", help="a packaged class list")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--protocol", default="squash")
    ap.add_argument("--bg-threshold", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    labels = REPO / "labelless" / "vocab" / "classnames" / f"{args.classes}.txt"
    k = sum(1 for ln in labels.read_text().splitlines() if ln.strip())
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photo(Path(tmp) / "photo.jpg", width, height)
        cmd = [sys.executable, "-m", "labelless", "segment", str(photo), "--labels-file", str(labels),
               "--model", args.model, "--pretrained", "none", "--protocol", args.protocol, "--device", args.device,
               "--out", str(Path(tmp) / "out")]
        if args.bg_threshold is not None:
            cmd += ["--bg-threshold", str(args.bg_threshold)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    plain_gb = k * width * height * 4 / 1e9
    print(f"segment {width}×{height} ({width * height / 1e6:.0f} MP), {k} classes, {args.model} {args.protocol}: "
          f"peak RSS {peak_mb:.0f} MB, {seconds:.1f} s (the K×H×W scores alone would be {plain_gb:.1f} GB)")
    print("RESULT " + json.dumps({"width": width, "height": height, "classes": k, "model": args.model,
                                  "protocol": args.protocol, "bg_threshold": args.bg_threshold,
                                  "peak_rss_mb": round(peak_mb), "seconds": round(seconds, 1),
                                  "plain_scores_gb": round(plain_gb, 1)}))


if __name__ == "__main__":
    main()
