"""bench/reference_runs.py without the reference repositories: the commands it derives from the
shipped tables, the parsing of the references' output, and the YAML it writes into a table."""
import importlib.util
import math

import pytest
import yaml

from harness.tables import PaperTable, runs_for
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("reference_runs", ROOT / "bench" / "reference_runs.py")
rr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rr)


def flag(stage, name):
    return stage.args[stage.args.index(name) + 1]


@pytest.mark.parametrize("paper", ["hoyer", "admm"])
def test_every_laptop_row_gets_a_reference_command(paper):
    rows = {s.row for s in runs_for({"papers": [paper], "seeds": [0], "data_dir": "d", "device": "cpu"},
                                    scale="laptop")[1]}
    stages = rr.plan(paper)
    assert {s.row for s in stages.values() if s.row} == rows
    for stage in stages.values():          # every chain starts from a stage of the plan
        assert stage.init is None or stage.init in stages


def test_lcs_reference_commands_cover_the_rows_that_read_its_input():
    """The LCS scripts read 3-channel 32x32 CIFAR batches at width 1: only the parity rows on
    fashion-mnist-cifar (the same pixels) get a command; the default laptop rows (28x28, width 0.5) none."""
    specs = PaperTable(ROOT / "config/papers/lcs.yaml").specs("laptop", [0], parity=True)
    rows = {s.row for s in specs if s.dataset == rr.LCS_INPUT}
    stages = rr.plan("lcs")
    assert rows and {s.row for s in stages.values() if s.row} == rows
    assert all(s.model_args["width"] == 1.0 and s.train["warmup_epochs"] == rr.LCS_WARMUP_EPOCHS
               for s in specs if s.row in rows)
    assert not any("warmup" in d or "width" in d for s in stages.values() for d in s.differences)
    for stage in stages.values():          # every chain starts from a stage of the plan
        assert stage.init is None or stage.init in stages


def test_hoyer_commands_carry_the_tables_laptop_recipe():
    specs = {s.row: s for s in PaperTable(ROOT / "config/papers/hoyer.yaml").specs("laptop", [0])}
    stages = rr.plan("hoyer")
    reg = next(s for s in stages.values() if s.row and s.row.startswith("lenet300-100-hoyer-"))
    row = specs[reg.row]
    assert reg.script == "mnist/MLP/element.py" and flag(reg, "--reg") == "2"
    assert float(flag(reg, "--decay")) == row.method_args["decay"]
    assert int(flag(reg, "--epochs")) == row.train["epochs"] and float(flag(reg, "--lr")) == row.train["lr"]
    assert stages[reg.init].row is None and "--pretrained" in reg.args      # from the table's pretrain
    std = next(s for s in stages.values() if s.init == reg.row and "prun_tune_V" in s.script)
    assert float(flag(std, "--sensitivity")) == specs[std.row].method_args["value"]
    assert any("weight_decay" in d for d in std.differences)                # prun_tune_V's fixed 1e-4


def test_admm_chain_and_modes():
    stages = rr.plan("admm")
    chain = [s for s in stages.values() if s.row and s.row.endswith("x")]
    for stage in chain:
        assert stages[stage.init].output == rr.ADMM_MODEL and "--pretrain" in stage.args
    prune = next(s for s in stages.values() if s.row and "prune" in s.row)
    quant = next(s for s in stages.values() if s.row and "quantize" in s.row)
    assert "--prune" in prune.args and "--bit_budget" not in prune.args
    assert "--quant" in quant.args and "--nnz_budget" not in quant.args


def test_patches_fix_deephoyers_reg_type(tmp_path):
    script = tmp_path / "element.py"
    script.write_text("if args.reg_type==1:\n    pass\n")
    assert "args.reg_type" not in rr.patched_source("deephoyer", script)
    assert rr.patched_source("admm", script) == script.read_text()


ADMM_LOG = """test set:
Loss 0.5343\tPrec@1 0.8006\tPrec@5 0.9943
nnz_eval=\t5.4000e-03
ave_weight_bits_eval=\t3.0000e+00
current model size=6.4628e+03 bits
compression rate=5.0632e-04
compression rate=4.9354e-04 (train)
"""


def test_parse_admm_reads_the_last_evaluation():
    got = rr.parse_admm("test set:\nLoss 1\tPrec@1 0.5000\tPrec@5 0.9\n" + ADMM_LOG)
    assert got["top1"] == pytest.approx(80.06) and got["sparsity"] == pytest.approx(0.9946)
    assert got["bits"] == 3.0 and got["compression"] == pytest.approx(1 / 5.0632e-04, rel=1e-3)


def test_a_failure_is_told_in_one_line():
    log = """Traceback (most recent call last):
  File "/x/train.py", line 374, in <module>
    sparse_quantize(w)
  File "/x/util.py", line 370, in sparse_quantize
    assert torch.isnan(p.data).sum().item() == 0
           ^^^^^^^^^^^^^^^^
AssertionError
"""
    assert rr.failure_reason(log, 1) == ("AssertionError at util.py:370 (sparse_quantize): "
                                         "assert torch.isnan(p.data).sum().item() == 0")
    assert rr.failure_reason("Killed", 137) == "exit 137: Killed"


def test_parse_deephoyer_keeps_prun_tune_vs_own_best():
    text = ("Test set: Average loss: 0.4, Accuracy: 8512/10000 (85.12%)\nAccuracy: 85.85%\n"
            + rr.RESULT_TAG + '{"top1": 85.91, "sparsity": 0.88}\n')
    assert rr.parse_deephoyer(text) == {"top1": 85.91, "sparsity": 0.88, "best_top1": 85.85}


def test_summaries_and_the_section_written_into_a_table(tmp_path):
    assert rr.summarize([85.0, 86.0, 87.0]) == {"mean": 86.0, "std": 1.0, "n": 3}
    stage = rr.Stage("gmp", "gmp", "admm", "train.py", ["--seed", "{seed}"], parse="admm",
                     differences=["weight_decay: harness 0.0, reference 0.0001"])
    results = [{"top1": t, "sparsity": 0.9, "wall_s": 10.0, "seed": i} for i, t in enumerate([85.0, 86.0, 87.0])]
    entry = rr.row_entry(stage, results, [], "abc")
    assert entry["top1"] == {"mean": 86.0, "std": 1.0, "n": 3} and entry["seeds"] == [0, 1, 2]
    level_stage = rr.Stage("dense", "dense", "lcs", "train_unstructured.py", [], parse="lcs")
    level_results = [{"levels": [{"level": 0.5, "top1": t, "sparsity": 0.5}], "wall_s": 1.0, "seed": i}
                     for i, t in enumerate([70.0, 72.0])]
    level_entry = rr.row_entry(level_stage, level_results, ["seed 2: AssertionError at util.py:370"], "abc")
    assert level_entry["seeds"] == [0, 1] and level_entry["failed"] == ["seed 2: AssertionError at util.py:370"]
    assert level_entry["levels"][0.5]["top1"]["mean"] == 71.0 and math.isclose(
        level_entry["levels"][0.5]["top1"]["std"], 2 ** 0.5, rel_tol=1e-3)

    failed_entry = rr.row_entry(stage, [], ["seed 0: AssertionError"], "abc")
    assert "top1" not in failed_entry and failed_entry["seeds"] == []
    section = rr.reference_yaml("admm", {"gmp": entry, "dense": level_entry}, {"gmp": stage})
    doc = {"title": "t", "source": "s", "scales": {"smoke": {}, "laptop": {"datasets": {"*": "fashion-mnist"}},
                                                   "paper": {}},
           "defaults": {"dataset": "mnist", "model": "lenet300-100", "method": "dense"},
           "rows": {"gmp": {"method": "gmp", "budget": {"sparsity": 0.9}}, "dense": {}}}
    path = tmp_path / "admm.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False) + "\n" + "# -- reference code runs: stale\nreference: {}\n")
    rr.write_into_table(path, section)
    text = path.read_text()
    assert text.count(rr.SECTION_MARK) == 1 and "stale" not in text
    table = PaperTable(path)                    # the schema accepts it and its rows exist at laptop scale
    assert len(table.specs("laptop", [0])) == 2
    assert table.doc["reference"]["laptop"]["gmp"]["top1"]["n"] == 3


def test_a_nan_loss_is_a_divergence_and_a_changed_start_reruns_a_stage():
    assert rr.diverged("+--- epoch 0, batch 79/79 ---+\nPrimal update: Loss=nan (losses_avg=nan)") == \
        "diverged: the training loss became NaN in epoch 0"
    assert rr.diverged("Train Epoch: 2 [0/20000]  Loss: nan") == "diverged: the training loss became NaN in epoch 2"
    assert rr.diverged("Loss 0.40\tPrec@1 0.85 losses_avg=0.3") is None
    first = rr.Stage("a", None, "admm", "train.py", ["--lr", "0.05"])
    second = rr.Stage("b", "b", "admm", "train.py", ["--pretrain", "init.pt"], init="a")
    fps = {"a": rr.fingerprint(first, {})}
    before = rr.fingerprint(second, fps)
    fps["a"] = rr.fingerprint(rr.Stage("a", None, "admm", "train.py", ["--lr", "0.01"]), {})
    assert rr.fingerprint(second, fps) != before
