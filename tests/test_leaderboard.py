"""The cross-method leaderboard: the table expands to every method on the same models, seeds and
training budget; repeats differ by seed and agree when repeated; targets a method does not reach
are flagged, never placed at the target."""
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from harness.aggregate import COLUMNS
from harness.leaderboard import final_points, leaderboard, series_name, settings
from harness.paper_figures import leaderboard_figures
from harness.tables import runs_for
from harness.trainer import Trainer

CONFIG = {"papers": ["leaderboard"], "seeds": [7], "data_dir": "data/downloads", "device": "cpu"}


def runs(scale):
    return runs_for(dict(CONFIG, scale=scale), scale=scale)[1]


def test_every_method_on_every_model_with_the_tables_seeds():
    specs = runs("laptop")
    assert {s.seed for s in specs} == {0, 1}                              # the table's seeds, not the config's
    per_model = Counter(s.model for s in specs)
    assert set(per_model) == {"lenet300-100", "lenet5-caffe", "resnet20"}
    # LCS (2 rows): conv models only; Hoyer-Square's weaker chain (3 rows): the LeNets only; its own
    # chain's extra ratios: 3.0 on every model, 0.05 on ResNet-20
    assert per_model["lenet5-caffe"] == per_model["lenet300-100"] + 4 == per_model["resnet20"] + 4
    lenet = {s.row for s in specs if s.model == "lenet5-caffe" and s.seed == 0}
    for row in ["lenet5-caffe-dense", "lenet5-caffe-gmp-0.5", "lenet5-caffe-gmp-0.96875", "lenet5-caffe-dnw-0.875",
                "lenet5-caffe-admm-prune-0.5", "lenet5-caffe-admm-prune-0.03125", "lenet5-caffe-str-0.1",
                "lenet5-caffe-hoyer_square-0.0001", "lenet5-caffe-hoyer_square-0.0001-std2.0",
                "lenet5-caffe-hoyer_square-1e-05-weak-std0.1",
                "lenet5-caffe-l1-3e-05-std1.5", "lenet5-caffe-tl1-3e-05-std2.5", "lenet5-caffe-hoyer-0.003-std2.0",
                "lenet5-caffe-hoyer_square-0.0001-std3.0",
                "lenet5-caffe-admm-quantize-1bit", "lenet5-caffe-admm-quantize-3bit", "lenet5-caffe-admm-quantize-8bit",
                "lenet5-caffe-admm-joint-1.0x8bit", "lenet5-caffe-admm-joint-0.5x8bit", "lenet5-caffe-admm-joint-0.5x2bit"]:
        assert row in lenet, row
    methods = {s.method for s in specs}
    assert methods >= {"dense", "gmp", "dnw", "str", "l1", "hoyer", "hoyer_square", "tl1", "finetune", "admm", "lcs_p"}
    assert {s.method_args["setting"] for s in specs if s.method == "lcs_p"} == {"unstructured", "quantized"}


@pytest.mark.parametrize("scale", ["laptop", "paper"])
def test_same_start_and_same_training_budget_for_every_row(scale):
    specs = {(s.row, s.seed): s for s in runs(scale)}
    for (row, seed), s in specs.items():
        epochs, chain = 0, s
        while True:
            epochs += chain.train["epochs"]
            if chain.init in (None, "pretrain"):
                break
            chain = specs[(chain.init, seed)]
        budget = {"laptop": 3}.get(scale) or (60 if s.dataset == "cifar10" else 30)
        if s.method == "lcs_p":                                           # from scratch: + the pretraining
            assert chain.init is None and epochs == budget + {"laptop": 3}.get(scale, 100), row
            continue
        assert chain.init == "pretrain", row                              # one dense start for the rest
        if s.method in ("l1", "hoyer", "hoyer_square", "tl1"):
            assert epochs == budget * 2 // 3, row                         # a stage of a chain
        else:
            assert epochs == budget, row


def test_paper_scale_models_and_data():
    pairs = {(s.model, s.dataset, s.train.get("gpus", 1)) for s in runs("paper")}
    assert pairs == {("resnet20", "cifar10", 1), ("resnet56", "cifar10", 1), ("cpreresnet20", "cifar10", 1),
                     ("resnet18", "imagenet", 4), ("resnet50", "imagenet", 4)}


def test_seeds_differ_between_repeats_and_agree_when_repeated(tmp_path):
    spec = next(s for s in runs("smoke") if s.row == "lenet300-100-gmp-0.9375")
    weights = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        run = type(spec)(**{**spec.__dict__, "seed": seed, "init": None})
        Trainer(run, tmp_path / name, log=lambda *_: None).run()
        weights[name] = torch.load(tmp_path / name / "model.pt")["state_dict"]
    same = all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    differ = any(not torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
    assert same and differ


# -- the leaderboard from a made-up tables.csv -----------------------------------------------------
def point(row, method, sparsity, top1, seed=0, bits=32.0, pipeline=None, init="pretrain", level=None,
          level_kind=None, method_args="{}", model="lenet5-caffe"):
    n = 1000
    stored = n if bits < 32 and sparsity == 0 else round(n * (1 - sparsity))
    return dict(scale="laptop", paper="leaderboard", row=row, method=method, model=model, dataset="fashion-mnist",
                seed=seed, top1=top1, sparsity=sparsity, bits=bits, prunable_params=n, nonzero_params=round(n * (1 - sparsity)),
                size_bits=bits * stored, compression=32 * n / (bits * stored), flops=1e6 * (1 - sparsity),
                pipeline=pipeline or f"dense>{method}", init=init, level=level, level_kind=level_kind,
                method_args=method_args, budget="{}", notes="", params=n + 10, dense_flops=1e6)


def table():
    rows = []
    for seed, shift in [(0, 0.0), (1, 1.0)]:
        rows += [point("dense", "dense", 0.0, 90 + shift, seed, pipeline="dense>dense"),
                 point("gmp-0.9", "gmp", 0.9, 88 + shift, seed),                       # measured
                 point("gmp-0.95", "gmp", 0.95, 85 + shift, seed),
                 point("str-a", "str", 0.88, 87 + shift, seed, pipeline="str", init=None),  # brackets 0.9
                 point("str-b", "str", 0.93, 84 + shift, seed, pipeline="str", init=None),
                 point("hs", "hoyer_square", 0.2, 80, seed, pipeline="dense>hoyer_square"),  # a stage
                 point("hs-std1", "finetune", 0.80, 86 + shift, seed, pipeline="dense>hoyer_square>finetune", init="hs"),
                 point("hs-std2", "finetune", 0.85, 85 + shift, seed, pipeline="dense>hoyer_square>finetune", init="hs"),
                 point("q3", "admm", 0.0, 87 + shift, seed, bits=2.9, method_args='{"mode": "quantize"}'),
                 point("q4", "admm", 0.0, 89 + shift, seed, bits=3.5, method_args='{"mode": "quantize"}')]
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


TARGETS = {"sparsity": [0.9, 0.95], "bits": [3, 4], "compression": [10, 16]}
TOLERANCE = {"sparsity": 0.005, "bits": 0.15, "compression": 0.02}


def line(board, series, kind, target):
    hit = board[(board.series == series) & (board.target_kind == kind) & (board.target == target)]
    assert len(hit) == 1, board.to_string()
    return hit.iloc[0]


def test_measured_interpolated_and_missed_targets():
    board = leaderboard(table(), TARGETS, TOLERANCE)
    gmp = line(board, "gmp", "sparsity", 0.9)
    assert gmp.how == "measured" and gmp.top1_mean == 88.5 and gmp.speedup_mean == pytest.approx(10) and gmp.top1_std == pytest.approx(np.std([88, 89], ddof=1))
    str_ = line(board, "str", "sparsity", 0.9)                   # 0.88 -> 87, 0.93 -> 84: 0.4 of the way
    assert str_.how == "interpolated" and str_.top1_mean == pytest.approx(87 - 0.4 * 3 + 0.5)
    assert str_.rows == "str-a;str-b" and str_.achieved_mean == 0.9
    missed = line(board, "str", "sparsity", 0.95)
    assert missed.how == "missed" and np.isnan(missed.top1_mean) and np.isnan(missed["rank"])
    assert "spans 0.88..0.93" in missed.reason
    hs = line(board, "hoyer_square>finetune", "sparsity", 0.9)
    assert hs.how == "missed"                                    # never reached: flagged, not placed at 0.9
    assert line(board, "admm-quantize", "bits", 3).how == "measured"
    assert line(board, "admm-quantize", "bits", 4).how == "missed"
    assert "hoyer_square" not in set(board.series)               # the regularized stage is not a result
    assert line(board, "gmp", "sparsity", 0.9)["rank"] == 1 and line(board, "str", "sparsity", 0.9)["rank"] == 2
    dense = board[board.target_kind == "dense"].iloc[0]
    assert dense.series == "dense" and dense.top1_mean == 90.5


def test_every_method_competes_at_compression_rates_on_a_log_scale():
    board = leaderboard(table(), TARGETS, TOLERANCE)
    assert line(board, "gmp", "compression", 10).how == "measured"          # sparsity 0.9 = 10x
    gmp = line(board, "gmp", "compression", 16)                             # between 10x (88) and 20x (85)
    w = (np.log2(16) - np.log2(10)) / (np.log2(20) - np.log2(10))
    assert gmp.how == "interpolated" and gmp.top1_mean == pytest.approx(88 - 3 * w + 0.5)
    assert gmp.achieved_mean == 16 and gmp.compression_mean == pytest.approx(10 + 10 * w)
    quantized = line(board, "admm-quantize", "compression", 10)            # 3.5 bits = 9.1x, 2.9 bits = 11x
    assert quantized.how == "interpolated" and quantized.rows == "q3;q4"
    missed = line(board, "hoyer_square>finetune", "compression", 10)
    assert missed.how == "missed" and "spans 5..6.667" in missed.reason
    assert {"dense"} == set(board[board.series == "dense"].target_kind)    # dense is the reference, not a rate
    near = table().assign(compression=lambda t: t.compression * np.where(t.row == "gmp-0.95", 16 / 20 * 1.015, 1))
    assert line(leaderboard(near, TARGETS, TOLERANCE), "gmp", "compression", 16).how == "measured"   # 1.5 % off


def test_series_names_say_the_chain_and_the_variant():
    t = table()
    names = {r.row: series_name(r) for r in t.itertuples()}
    assert names["hs-std1"] == "hoyer_square>finetune" and names["q3"] == "admm-quantize" and names["dense"] == "dense"
    lcs = t.iloc[[0]].assign(pipeline="lcs_p", method_args="{}", level_kind="topk", method="lcs_p")
    assert series_name(next(lcs.itertuples())) == "lcs_p (topk)"


def test_figures_leave_missed_targets_out(tmp_path):
    path = tmp_path / "leaderboard.yaml"
    path.write_text(json.dumps({"leaderboard": {"targets": TARGETS, "tolerance": TOLERANCE}}))
    assert settings(path) == (TARGETS, TOLERANCE)   # each kind's tolerance given
    figs = leaderboard_figures(table(), settings_path=path, board_csv=tmp_path / "not-written-yet.csv")
    assert set(figs) == {"top1-sparsity", "top1-flops", "top1-size", "top1-at-targets"}
    ax = figs["top1-at-targets"].axes[0]
    drawn = [c for c in ax.containers]                           # one errorbar per target a method met
    board = leaderboard(table(), TARGETS, TOLERANCE)
    assert len(drawn) == int(((board.how != "missed") & (board.target_kind != "dense")).sum())
    assert "missed: " in ax.get_xlabel() and "hoyer_square>finetune @ sparsity 0.9" in ax.get_xlabel().replace("\n", " ")
    assert len(final_points(table())) == len(table()) - 2        # the stage, both seeds
    board.assign(top1_mean=board.top1_mean - 1).to_csv(tmp_path / "leaderboard.csv", index=False)
    drawn = leaderboard_figures(table(), settings_path=path, board_csv=tmp_path / "leaderboard.csv")
    first = drawn["top1-at-targets"].axes[0].containers[0].lines[0].get_ydata()[0]
    assert first == figs["top1-at-targets"].axes[0].containers[0].lines[0].get_ydata()[0] - 1   # the csv's values
