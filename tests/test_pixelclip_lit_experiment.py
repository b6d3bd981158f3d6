"""experiments/pixelclip_lit_camvid: its configs load, summarize.py's paired statistics, and
ceiling.py's mask-averaged labels against a written-out loop."""

import importlib.util
import json
import statistics

import pytest
import torch
from conftest import REPO

from labelless.train.clip.config import ClipConfig
from labelless.train.config import load_config
from labelless.train.pixelclip.config import PixelCLIPConfig

EXP = REPO / "experiments" / "pixelclip_lit_camvid"


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configs_load_at_the_lit_resolution():
    lit = load_config(ClipConfig, EXP / "lit.yaml")
    pc = load_config(PixelCLIPConfig, EXP / "pixelclip_lit.yaml")
    assert lit.image_tower and lit.locks_image and lit.image_size == 112
    # PixelCLIP crops are the LiT input and the eval windows (112 px at 2/3 of short side 168)
    assert pc.resolution == pc.crop_size == lit.image_size and pc.short_side * 2 == pc.crop_size * 3
    assert pc.finetune == "attention" and pc.masks == "store"


def _write_seed(d, base, tuned, images=101, setup=None):
    setup = setup or {"dataset": "camvid", "split": "val", "mode": "pixelclip", "protocol": {"name": "slide"},
                      "templates": "a photo of {}"}
    for name, v in (("eval_base", base), ("eval_tuned", tuned)):
        (d / name).mkdir(parents=True)
        (d / name / "results.json").write_text(json.dumps({**setup, "num_images": images, "num_skipped": 0,
                                                           "mIoU": v}))
    c = {m: {view: {"mIoU": v + k} for k, view in enumerate(("per_pixel", "mask_avg", "oracle"))}
         for m, v in (("base", base), ("tuned", tuned))}
    (d / "ceiling_val.json").write_text(json.dumps(c))


def test_summarize_paired_gains(tmp_path):
    summ = _module(EXP / "summarize.py")
    base, tuned = [20.0, 18.0, 22.5], [21.0, 21.0, 22.0]
    for s, (b, t) in enumerate(zip(base, tuned)):
        _write_seed(tmp_path / "lit" / f"seed{s}", b, t)
    assert summ.main([str(tmp_path), str(tmp_path / "out"), "--models", "lit", "--seeds", "0", "1", "2"]) == 0
    r = json.loads((tmp_path / "out" / "results.json").read_text())["models"]["lit"]
    gains = [t - b for b, t in zip(base, tuned)]
    assert r["gain"]["mean"] == pytest.approx(statistics.fmean(gains))
    assert r["gain"]["std"] == pytest.approx(statistics.stdev(gains))
    assert r["base"]["std"] == pytest.approx(statistics.stdev(base))
    assert r["ceiling"]["base_mask_avg"]["mean"] == pytest.approx(statistics.fmean(base) + 1)
    md = (tmp_path / "out" / "results.md").read_text()
    assert f"**{statistics.fmean(gains):+.2f} ± {statistics.stdev(gains):.2f}**" in md


def test_summarize_refuses_partial_or_unequal_scoring(tmp_path):
    summ = _module(EXP / "summarize.py")
    _write_seed(tmp_path / "tiny" / "seed0", 10.0, 11.0, images=60)
    with pytest.raises(SystemExit, match="expected all 101"):
        summ.summarize_model(tmp_path, "tiny", [0])
    _write_seed(tmp_path / "lit" / "seed0", 10.0, 11.0)
    _write_seed(tmp_path / "lit" / "seed1", 10.0, 11.0, setup={"dataset": "camvid", "split": "val", "mode": "maskclip",
                                                              "protocol": {}, "templates": "a photo of {}"})
    with pytest.raises(SystemExit, match="not scored the same way"):
        summ.summarize_model(tmp_path, "lit", [0, 1])


def test_ceiling_mask_average_matches_a_loop():
    ceiling = _module(REPO / "experiments" / "pixelclip_camvid" / "ceiling.py")
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(5, 7, 9, generator=g)
    masks = torch.zeros(3, 7, 9, dtype=torch.bool)
    masks[0, :4] = True
    masks[1, 3:, :5] = True  # overlaps mask 0 on row 3: the later mask wins
    # mask 2 empty: ignored
    want = sim.argmax(0).clone()
    for m in masks:
        if m.any():
            want[m] = sim[:, m].mean(1).argmax()
    assert torch.equal(ceiling.mask_average(sim, masks), want)


def test_experiment_scripts_parse():
    """Every experiment and benchmark shell script is valid bash (``bash -n``): they run for 45 min
    and more, or on a lent GPU machine once, so a syntax error should not wait for the last stage."""
    import subprocess

    scripts = sorted((REPO / "experiments").rglob("*.sh")) + sorted((REPO / "benchmarks").glob("*.sh"))
    assert EXP / "run.sh" in scripts and EXP / "common.sh" in scripts
    assert REPO / "benchmarks" / "gpu_check.sh" in scripts
    for script in scripts:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
