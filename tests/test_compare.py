"""``labelless compare`` end to end on tiny random CLIPs and fabricated benchmarks."""

import argparse
import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _fab_datasets import CASES
from conftest import REPO
from PIL import Image

from labelless import cli
from labelless.compare.cells import eval_options, option_argv, plan_cells, same_settings
from labelless.compare.config import load_config
from labelless.compare.table import aggregate, format_markdown
from labelless.errors import ConfigError

TINY = {"model": "tiny-vit", "pretrained": "none", "templates": "single", "short_side": 64, "device": "cpu"}


def _benchmark(root, key: str, seed: int):
    """A fabricated benchmark (``_fab_datasets``) whose images are seeded noise, so that modes differ."""
    case = next(c for c in CASES if c.key == key and c.split == "val")
    case.write(root, case.labels())
    rng = np.random.default_rng(seed)
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".jpg", ".png") and "annot" not in p.parent.name
                       and p.parent.name != "labels"):
        w, h = Image.open(path).size
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _benchmark(root / "pets", "folder", 1)
    _benchmark(root, "camvid", 2)
    return root


def _config(path, data, methods=None, **top):
    cfg = {"title": "tiny", "data_dir": str(data), "defaults": dict(TINY),
           "benchmarks": [{"name": "pets", "dataset": "folder", "data_root": "pets"},
                          {"name": "camvid", "dataset": "camvid", "data_root": "camvid", "split": "val"}],
           "methods": methods or [{"name": "vanilla", "mode": "vanilla"},
                                  {"name": "naclip", "mode": "naclip", "protocol": "slide"}], **top}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def eval_calls(monkeypatch):
    """Names of the cells that eval's command function ran for (the real function runs)."""
    calls, real = [], cli.cmd_eval

    def counting(args):
        calls.append(args.out)
        return real(args)

    monkeypatch.setattr(cli, "cmd_eval", counting)  # build_parser binds func=cmd_eval when it runs
    return calls


def _json(path):
    return json.loads(path.read_text())


def test_table_equals_the_cells_and_a_direct_eval(tmp_path, data):
    cfg = _config(tmp_path / "c.yaml", data)
    out = tmp_path / "out"
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 0
    table = _json(out / "compare.json")
    md = (out / "compare.md").read_text()
    assert table["benchmarks"] == ["pets", "camvid"] and [r["method"] for r in table["rows"]] == ["vanilla", "naclip"]
    seen = []
    for row in table["rows"]:
        vals = []
        for b in ("pets", "camvid"):
            res = _json(out / "cells" / f"{row['method']}__none__{b}" / "results.json")
            assert row["mIoU"][b] == res["mIoU"]
            vals.append(res["mIoU"])
        assert row["average"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert f"| {row['method']} | none | {vals[0]:.2f} | {vals[1]:.2f} | {np.mean(vals):.2f} |" in md
        seen += vals
    assert len(set(seen)) > 1  # the cells differ, so a swapped cell would show

    direct = tmp_path / "direct"
    assert cli.main(["eval", "--dataset", "camvid", "--data-root", str(data / "camvid"), "--split", "val",
                     "--model", "tiny-vit", "--pretrained", "none", "--templates", "single", "--short-side", "64",
                     "--device", "cpu", "--mode", "naclip", "--protocol", "slide", "--out", str(direct)]) == 0
    ref = _json(direct / "results.json")
    cell = next(c for c in table["cells"] if c["cell"] == "naclip__none__camvid")
    assert cell["metrics"]["mIoU"] == ref["mIoU"] and cell["per_class"] == ref["per_class"]
    # the settings of the cell, read from its results.json (logit scale from its arguments)
    s = cell["settings"]
    assert s["protocol"] == ref["protocol"] and s["protocol"]["name"] == "slide" and s["protocol"]["short_side"] == 64
    assert (s["mode"], s["templates"], s["synonyms"], s["logit_scale"], s["bg_threshold"]) == (
        "naclip", "single", "mean", 100.0, None)
    assert table["columns"]["camvid"]["dataset"] == "camvid" and "mode" not in table["columns"]["camvid"]
    assert Image.open(out / "compare.png").size[0] > 300
    assert load_config(out / "config.yaml").methods == load_config(cfg).methods  # the resolved config reads back


def test_resume_skips_done_cells_and_reruns_a_changed_one(tmp_path, data, eval_calls):
    cfg = _config(tmp_path / "c.yaml", data)
    out = tmp_path / "out"
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert len(eval_calls) == 4
    cells = out / "cells"
    stamp = {d.name: (d / "results.json").stat().st_mtime_ns for d in cells.iterdir()}
    first = _json(out / "compare.json")

    eval_calls.clear()
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert eval_calls == []
    assert {d.name: (d / "results.json").stat().st_mtime_ns for d in cells.iterdir()} == stamp
    assert _json(out / "compare.json")["rows"] == first["rows"]

    # a cell run by an eval without some option (here: no --seed) is the same while that option is at its default
    for d in cells.iterdir():
        record = _json(d / "cell.json")
        del record["settings"]["seed"]
        (d / "cell.json").write_text(json.dumps(record))
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert eval_calls == []

    _config(cfg, data, methods=[{"name": "vanilla", "mode": "vanilla"},
                                {"name": "naclip", "mode": "naclip", "protocol": "slide", "templates": "imagenet80"}])
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.split("/")[-1] for p in eval_calls) == [".naclip__none__camvid.partial",
                                                            ".naclip__none__pets.partial"]
    for name, t in stamp.items():
        changed = (cells / name / "results.json").stat().st_mtime_ns != t
        assert changed == name.startswith("naclip")
    assert _json(cells / "naclip__none__pets" / "results.json")["templates"] == "imagenet80"


def test_a_failing_cell_is_recorded_and_the_others_finish(tmp_path, data, eval_calls, capsys):
    missing = tmp_path / "no_such_weights.pt"
    cfg = _config(tmp_path / "c.yaml", data, methods=[{"name": "vanilla", "mode": "vanilla"},
                                                      {"name": "broken", "pretrained": str(missing)}])
    out = tmp_path / "out"
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert "broken__none__pets failed" in capsys.readouterr().out
    table = _json(out / "compare.json")
    broken = next(r for r in table["rows"] if r["method"] == "broken")
    assert broken["status"] == {"pets": "failed", "camvid": "failed"} and broken["average"] is None
    assert all(v is not None for v in table["rows"][0]["mIoU"].values())
    err = next(c for c in table["cells"] if c["cell"] == "broken__none__pets")["error"]
    assert "no_such_weights.pt" in err
    assert "| broken | none | failed | failed | — |" in (out / "compare.md").read_text()
    d = out / "cells" / "broken__none__pets"
    assert not (d / "results.json").exists() and _json(d / "cell.json")["status"] == "failed"

    eval_calls.clear()  # the failed cells are tried again, the done ones are not
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert len(eval_calls) == 2 and all("broken" in p for p in eval_calls)


def test_an_interrupt_leaves_no_results_and_the_next_run_completes(tmp_path, data, monkeypatch):
    real = cli.cmd_eval

    def interrupted(args):
        code = real(args)  # results.json is written, then the run is stopped
        if "naclip__none__pets" in args.out:
            raise KeyboardInterrupt
        return code

    monkeypatch.setattr(cli, "cmd_eval", interrupted)
    cfg = _config(tmp_path / "c.yaml", data)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["compare", str(cfg), "--out", str(out), "--quiet"])
    cells = out / "cells"
    assert (cells / "vanilla__none__camvid" / "results.json").is_file()
    assert not (cells / "naclip__none__pets").exists() and not (cells / "naclip__none__camvid").exists()

    calls = []
    monkeypatch.setattr(cli, "cmd_eval", lambda args: calls.append(args.out) or real(args))
    assert cli.main(["compare", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert len(calls) == 2 and all("naclip" in p for p in calls)
    assert (cells / "naclip__none__pets" / "results.json").is_file() and not list(cells.glob(".*partial"))


def test_a_bug_in_a_cell_is_recorded_with_its_traceback(tmp_path, data, monkeypatch):
    real = cli.cmd_eval

    def crashing(args):
        code = real(args)  # results.json is written, then the cell dies
        if "naclip" in args.out:
            raise RuntimeError("boom")
        return code

    monkeypatch.setattr(cli, "cmd_eval", crashing)
    out = tmp_path / "out"
    assert cli.main(["compare", str(_config(tmp_path / "c.yaml", data)), "--out", str(out), "--quiet"]) == 1
    d = out / "cells" / "naclip__none__camvid"
    assert not (d / "results.json").exists() and _json(d / "cell.json")["error"] == "RuntimeError: boom"
    assert "Traceback" in (d / "eval.log").read_text()
    assert (out / "cells" / "vanilla__none__camvid" / "results.json").is_file()
    assert not list((out / "cells").glob(".*partial"))


def test_only_and_dry_run(tmp_path, data, eval_calls, capsys):
    cfg = _config(tmp_path / "c.yaml", data)
    out = tmp_path / "out"
    assert cli.main(["compare", str(cfg), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert eval_calls == [] and not out.exists()
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("labelless eval")]
    assert len(commands) == 4 and "4 cell(s), 4 selected, 4 to run" in text
    naclip_camvid = next(c for c in commands if "naclip__none__camvid" in c)

    assert cli.main(["compare", str(cfg), "--out", str(out), "--only", "naclip", "--quiet"]) == 0
    assert len(eval_calls) == 2 and all("naclip" in p for p in eval_calls)
    table = _json(out / "compare.json")
    assert table["counts"] == {"done": 2, "failed": 0, "not run": 2}
    assert table["rows"][0]["status"] == {"pets": "not run", "camvid": "not run"}
    assert "| vanilla | none | — | — | — |" in (out / "compare.md").read_text()
    # the printed command is the cell: run as it is, it gives the cell's results
    argv = shlex.split(naclip_camvid)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "by_hand")
    assert cli.main(argv) == 0
    by_hand = _json(tmp_path / "by_hand" / "results.json")
    assert by_hand["mIoU"] == _json(out / "cells" / "naclip__none__camvid" / "results.json")["mIoU"]
    assert cli.main(["compare", str(cfg), "--out", str(out), "--only", "nothing*"]) == 2
    assert "matches no cell" in capsys.readouterr().err


@pytest.mark.parametrize("change, says", [
    (lambda c: c["methods"][1].update(protcol="slide"), ["methods 'naclip'", "unknown key 'protcol'", "short_side"]),
    (lambda c: c.pop("benchmarks"), ["no benchmarks"]),
    (lambda c: c["benchmarks"][0].pop("data_root"), ["benchmarks[0]", "data_root"]),
    (lambda c: c["methods"][0].update(protocol="bogus"), ["cell vanilla__none__pets", "invalid choice: 'bogus'"]),
    (lambda c: c["methods"][0].update(dataset="voc20"), ["methods[0] (vanilla)", "belongs to a benchmark"]),
    (lambda c: c["methods"][0].update(out="x"), ["'out' cannot be set here"]),
    (lambda c: c["methods"][0].update(save_predictions="yes"), ["switch", "true or false"]),
    (lambda c: c["methods"][0].update(split="val"), ["method 'vanilla' and benchmark 'camvid' both set split"]),
    (lambda c: c["methods"][1].update(name="vanilla"), ["used twice"]),
    (lambda c: c["methods"][1].update(name="a__b"), ["no '__'"]),
    (lambda c: c.update(method=[]), ["unknown key(s) method"]),
])
def test_a_bad_config_fails_naming_the_file(tmp_path, data, capsys, change, says):
    path = _config(tmp_path / "bad.yaml", data)
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert cli.main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and err.count("\n") == 1
    for s in says:
        assert s in err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_bad_files_and_values(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("methods: [a\n")
    assert cli.main(["compare", str(tmp_path / "broken.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err


def _fake_eval_parser(calls):
    """An eval parser with a --preset (as eval will have), a switch and a many-valued option."""
    p = argparse.ArgumentParser(prog="labelless eval")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default=None, choices=["mmseg", "pixelclip"])
    p.add_argument("--short-side", type=int, default=None)
    p.add_argument("--save-predictions", action="store_true")
    p.add_argument("--masks", nargs="+", default=None)
    p.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=lambda args: calls.append(args) or 0)
    return p


def test_presets_go_to_evals_preset_option(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "presets": [None, "mmseg", "pixelclip"], "defaults": {"short-side": 336},
        "benchmarks": [{"dataset": "voc20", "data_root": "d"}],
        "methods": [{"name": "m", "save_predictions": True, "masks": ["a", "b"]}]}, sort_keys=False))
    cells = plan_cells(load_config(path), _fake_eval_parser([]))
    assert [c.name for c in cells] == ["m__none__voc20", "m__mmseg__voc20", "m__pixelclip__voc20"]
    assert list(cells[0].argv) == ["--short-side=336", "--dataset=voc20", "--data-root=d", "--save-predictions",
                                   "--masks", "a", "b"]
    assert list(cells[1].argv[-2:]) == ["--preset", "mmseg"] and "--preset" not in cells[0].argv
    assert [c.settings["preset"] for c in cells] == [None, "mmseg", "pixelclip"]
    assert cells[1].settings["short_side"] == 336 and cells[1].settings["masks"] == ["a", "b"]
    path.write_text(path.read_text().replace("pixelclip", "sseg"))
    with pytest.raises(ConfigError, match=r"c\.yaml: cell m__sseg__voc20: argument --preset: invalid choice"):
        plan_cells(load_config(path), _fake_eval_parser([]))


def test_presets_need_evals_preset_option(tmp_path):
    path = _config(tmp_path / "c.yaml", tmp_path, presets=[None, "mmseg"])
    eval_parser = _eval_parser()
    if "preset" in eval_options(eval_parser):  # once eval has --preset, the preset reaches it
        assert [c.settings["preset"] for c in plan_cells(load_config(path), eval_parser)] == [None, None, "mmseg", "mmseg"] * 2  # method, then preset, then benchmark
    else:
        with pytest.raises(ConfigError, match="c.yaml: presets .*mmseg.* need eval's --preset"):
            plan_cells(load_config(path), eval_parser)


def test_option_argv_maps_keys_to_eval_options_by_name():
    actions = eval_options(_fake_eval_parser([]))
    assert option_argv({"short_side": -1, "save_predictions": False, "preset": None}, actions, "f") == [
        "--short-side=-1"]
    assert option_argv({"antialias": True}, actions, "f") == ["--antialias"]
    assert option_argv({"antialias": False}, actions, "f") == ["--no-antialias"]
    assert option_argv({"save_predictions": True}, actions, "f") == ["--save-predictions"]
    ns = _fake_eval_parser([]).parse_args(["--dataset=d", "--data-root=r", "--out=o", "--no-antialias"])
    assert ns.antialias is False
    with pytest.raises(ConfigError, match="f: 'short_side' .* takes one value"):
        option_argv({"short_side": [1, 2]}, actions, "f")
    with pytest.raises(ConfigError, match=r"f: unknown key 'shortside'.*antialias, data_root, dataset, masks, preset, save"):
        option_argv({"shortside": 1}, actions, "f")


def _cell(method, bench, status, miou=None, preset="none", **settings):
    results = None if miou is None else {"mIoU": miou, "pAcc": 50.0, "mAcc": 40.0, "fwIoU": 30.0,
                                         "per_class": {"a": miou}, "num_images": 3, "seconds": 1.0,
                                         "protocol": {"name": "slide", "short_side": 448, "input_size": 224,
                                                      "stride": 112}, **settings}
    return {"cell": f"{method}__{preset}__{bench}", "method": method, "preset": preset, "benchmark": bench,
            "status": status, "error": "bad weights" if status == "failed" else None,
            "settings": {"logit_scale": 50.0, "refine": "masks"}, "results": results}


def test_aggregate_is_a_function_of_the_cell_results():
    cells = [_cell("a", "voc", "done", 40.0, templates="t80"), _cell("a", "ade", "done", 10.5, templates="t80"),
             _cell("b", "voc", "done", 30.0, templates="single"), _cell("b", "ade", "failed"),
             _cell("c", "voc", "not run"), _cell("c", "ade", "done", 7.0, templates="t80")]
    t = aggregate(cells, "T")
    assert t["benchmarks"] == ["voc", "ade"] and [r["method"] for r in t["rows"]] == ["a", "b", "c"]
    assert t["rows"][0]["mIoU"] == {"voc": 40.0, "ade": 10.5} and t["rows"][0]["average"] == (40.0 + 10.5) / 2
    assert t["rows"][1]["average"] is None and t["rows"][1]["status"]["ade"] == "failed"
    assert t["rows"][2]["mIoU"] == {"voc": None, "ade": 7.0} and t["rows"][2]["average"] is None
    assert t["counts"] == {"done": 4, "failed": 1, "not run": 1}
    assert t["columns"]["voc"]["protocol"]["short_side"] == 448 and "templates" not in t["columns"]["voc"]
    assert t["columns"]["ade"]["templates"] == "t80"
    s = t["cells"][0]["settings"]
    assert (s["logit_scale"], s["refine"], s["templates"]) == (50.0, "masks", "t80") and "per_class" not in s
    assert aggregate(cells, "T") == t and cells[0]["results"]["mIoU"] == 40.0  # pure: same input, same table
    md = format_markdown(t)
    assert "| a | none | 40.00 | 10.50 | 25.25 |" in md and "| b | none | 30.00 | failed | — |" in md
    assert "| c | none | — | 7.00 | — |" in md and "- `b__none__ade`: bad weights" in md
    assert "| a__none__voc | 3 | — | — | — | slide | 448 | 224 / 112 | t80 | — | 50 | — | masks | — |" in md
    assert not math.isnan(t["rows"][0]["average"])


def _eval_parser():
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]


@pytest.mark.parametrize("path", ["configs/compare_camvid.yaml", "experiments/compare_camvid/compare.yaml"])
def test_shipped_configs_plan(path):
    cells = plan_cells(load_config(REPO / path, data_dir="/data"), _eval_parser())
    assert cells and all(c.settings["data_root"] == "/data/camvid" and c.settings["split"] == "val" for c in cells)
    assert len({c.name for c in cells}) == len(cells)


def _experiment_config(tmp_path, dino) -> Path:
    """experiments/compare_camvid/compare.yaml as run.sh writes it, its trained tiny CLIP
    replaced by a random one (the other models are not needed by the cells the test runs)."""
    from labelless.models.clip import build_clip, save_checkpoint

    models = tmp_path / "models"
    torch.manual_seed(0)
    save_checkpoint(build_clip("tiny-vit", None), models / "clip" / "clip.pt")
    text = (REPO / "experiments/compare_camvid/compare.yaml").read_text()
    path = tmp_path / "compare.yaml"
    path.write_text(text.replace("@MODELS@", str(models)).replace("@DINO@", str(dino)))
    return path


def test_experiment_config_on_camvid_val(camvid_root, dinov2_small, tmp_path):
    """The experiment's cells of one CLIP: a plain mode, ProxyCLIP with the real DINOv2-S, PAMR
    and ground-truth mask classification, on 2 CamVid val images."""
    out = tmp_path / "out"
    only = ["clip-naclip", "clip-proxyclip-dinov2s", "clip-pixelclip+pamr", "clip-pixelclip+gt-masks"]
    assert cli.main(["compare", str(_experiment_config(tmp_path, dinov2_small)), "--out", str(out),
                     "--data-dir", str(camvid_root.parent), "--limit", "2", "--only", *only, "--quiet"]) == 0
    table = _json(out / "compare.json")
    assert table["counts"]["done"] == 4 and table["counts"]["failed"] == 0
    cells = {c["cell"]: c for c in table["cells"]}
    naclip = cells["clip-naclip__none__camvid"]
    assert naclip["num_images"] == 2 and naclip["settings"]["protocol"]["stride"] == 32
    assert len(naclip["per_class"]) == 11
    proxy = _json(out / "cells" / "clip-proxyclip-dinov2s__none__camvid" / "results.json")
    assert proxy["mode"] == "proxyclip" and proxy["vfm"] == str(dinov2_small)
    gt = _json(out / "cells" / "clip-pixelclip+gt-masks__none__camvid" / "results.json")
    assert gt["refine"]["method"] == "masks" and gt["refine"]["masks"]["source"] == "gt"
    assert _json(out / "cells" / "clip-pixelclip+pamr__none__camvid" / "results.json")["refine"]["method"] == "pamr"


def test_same_settings_takes_options_missing_from_a_record_at_evals_default():
    defaults = {"mode": "auto", "refine": None, "seed": 0}
    assert same_settings({"mode": "naclip", "seed": 0}, {"mode": "naclip", "seed": 0, "refine": None}, defaults)
    assert not same_settings({"mode": "naclip", "seed": 0}, {"mode": "naclip", "seed": 0, "refine": "pamr"}, defaults)
    assert not same_settings({"mode": "naclip", "seed": 1}, {"mode": "naclip", "seed": 0}, defaults)
    assert same_settings({"mode": "naclip", "gone": 3}, {"mode": "naclip"}, defaults)  # an option eval dropped


def test_same_settings_takes_two_spellings_of_one_folder(tmp_path, monkeypatch):
    (tmp_path / "data" / "camvid").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    spelled = str(tmp_path / "repo" / ".." / "data" / "camvid")
    assert same_settings({"data_root": "../data/camvid"}, {"data_root": spelled}, {})
    assert not same_settings({"data_root": "../data/camvid"}, {"data_root": str(tmp_path / "repo")}, {})
    assert not same_settings({"data_root": "../data/gone"}, {"data_root": str(tmp_path / "data" / "gone")}, {})
