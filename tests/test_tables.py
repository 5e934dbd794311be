"""Paper tables: expansion, and one clear line for every kind of mistake."""
import copy
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from harness import tables
from harness.tables import PaperTable, TableError, load_tables, runs_for

BASE = {
    "title": "t", "source": "test",
    "scales": {"smoke": {"datasets": {"*": "synthetic"}}, "laptop": {"datasets": {"*": "fashion-mnist"}},
               "paper": {}},
    "pretrain": {"train": {"epochs": 2}},
    "defaults": {"dataset": "mnist", "train": {"epochs": 3}},
    "rows": {"dense": {"method": "dense", "model": "lenet300-100"},
             "gmp": {"method": "gmp", "model": "lenet300-100", "budget": {"sparsity": 0.9}, "init": "pretrain"}},
}


def table(tmp_path, edit=None, name="mine"):
    doc = copy.deepcopy(BASE)
    if edit:
        edit(doc)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return PaperTable(path)


def error(tmp_path, edit):
    with pytest.raises(TableError) as info:
        table(tmp_path, edit).specs("laptop", [0])
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "mine.yaml"))
    return msg


def test_rows_expand_with_scale_mapping_and_seeds(tmp_path):
    specs = table(tmp_path).specs("smoke", [0, 1])
    assert [(s.row, s.seed) for s in specs] == [("dense", 0), ("dense", 1), ("gmp", 0), ("gmp", 1)]
    assert {s.dataset for s in specs} == {"synthetic"} and specs[2].budget == {"sparsity": 0.9}
    assert table(tmp_path).specs("paper", [0])[0].dataset == "mnist"


def test_merge_order_defaults_scale_row_rowscale(tmp_path):
    def edit(doc):
        doc["scales"]["laptop"]["train"] = {"epochs": 5, "lr": 0.5}
        doc["rows"]["dense"]["train"] = {"lr": 0.25}
        doc["rows"]["dense"]["scales"] = {"laptop": {"train": {"batch_size": 7}}}
    spec = table(tmp_path, edit).specs("laptop", [0])[0]
    assert spec.train == {"epochs": 5, "lr": 0.25, "batch_size": 7}


def test_grid_rows(tmp_path):
    def edit(doc):
        doc["rows"] = {"{model}-gmp-{sparsity}": {"method": "gmp", "grid": {
            "model": ["lenet300-100", "lenet5-caffe"], "budget.sparsity": [0.5, 0.9]}}}
    rows = [s.row for s in table(tmp_path, edit).specs("laptop", [0])]
    assert rows == ["lenet300-100-gmp-0.5", "lenet300-100-gmp-0.9", "lenet5-caffe-gmp-0.5", "lenet5-caffe-gmp-0.9"]


def test_pretrain_spec_is_shared(tmp_path):
    t = table(tmp_path)
    gmp = t.specs("laptop", [0])[1]
    pre = t.pretrain_spec(gmp)
    assert pre.method == "dense" and pre.row == "pretrain-lenet300-100-fashion-mnist" and pre.train == {"epochs": 2}


def test_yaml_floats_written_without_a_dot_are_accepted(tmp_path):
    spec = table(tmp_path, lambda d: d["defaults"]["train"].update(lr="1e-3")).specs("laptop", [0])[0]
    assert spec.train["lr"] == 0.001


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["rows"]["gmp"].update(method="gmpp"), "row 'gmp': unknown method 'gmpp'; did you mean 'gmp'?"),
    (lambda d: d["rows"]["gmp"].update(model="lenet300"), "unknown model 'lenet300'; did you mean 'lenet300-100'?"),
    (lambda d: d["scales"]["laptop"].update(datasets={"*": "fashionmnist"}), "unknown dataset 'fashionmnist'"),
    (lambda d: d["rows"]["gmp"].update(budget={"sparsity": 1.5}), "budget.sparsity=1.5 is outside [0.0, 1.0)"),
    (lambda d: d["rows"]["gmp"].update(budget={"sparsty": 0.9}), "unknown budget key 'sparsty' for method 'gmp'; did you mean 'sparsity'?"),
    (lambda d: d["rows"]["gmp"].update(budget={}), "method 'gmp' needs budget.sparsity"),
    (lambda d: d["rows"]["dense"].update(budget={"sparsity": 0.5}), "method 'dense' takes no budget"),
    (lambda d: d["rows"]["gmp"].update(budgte={"sparsity": 0.9}), "row 'gmp': unknown key 'budgte'; did you mean 'budget'?"),
    (lambda d: d["rows"]["gmp"].update(train={"weight_deacy": 1e-4}), "unknown train key 'weight_deacy'; did you mean 'weight_decay'?"),
    (lambda d: d["rows"]["gmp"].update(train={"epochs": "ten"}), "train.epochs='ten' should be of type int"),
    (lambda d: d["rows"]["gmp"].update(method_args={"end_epohc": 3}), "unknown method_args key 'end_epohc'; did you mean 'end_epoch'?"),
    (lambda d: d["rows"]["dense"].pop("model"), "row 'dense': no model given"),
    (lambda d: d["rows"]["dense"].update(model_args={"widht": 0.5}),
     "row 'dense': unknown model_args key 'widht' for model 'lenet300-100'; did you mean 'width'?"),
    (lambda d: d["defaults"].update(model_args={"weight_init": "kaiming"}),
     "model_args.weight_init 'kaiming': use one of torch, kaiming_normal_fan_in"),
    (lambda d: d["rows"]["dense"].update(published={"top1": 98.0}), "published is missing a field: 'source' is a required property"),
    (lambda d: d.pop("pretrain"), "init: pretrain needs a `pretrain:` section"),
    (lambda d: d["scales"].update(lapotp={}), "unknown key 'lapotp' in scales"),
    (lambda d: d.update(reference={"laptop": {"gpm": {"top1": {"mean": 85.0, "std": 0.2, "n": 3}, "seeds": [0, 1, 2],
                                                       "repo": "r", "commit": "c", "command": "python x.py"}}}),
     "reference.laptop: 'gpm' is not a row of this table at scale laptop; did you mean 'gmp'?"),
    (lambda d: d.update(reference={"laptop": {"gmp": {"top1": {"mean": 85.0, "n": 3}, "seeds": [0],
                                                       "repo": "r", "commit": "c", "command": "python x.py"}}}),
     "'std' is a required property"),
])
def test_mistakes_give_one_line_naming_file_row_and_fix(tmp_path, edit, expected):
    assert expected in error(tmp_path, edit)


def test_unknown_paper_in_config():
    with pytest.raises(TableError, match="unknown paper 'gmpp'; did you mean 'gmp'"):
        load_tables(["gmpp"])


def test_shipped_tables_expand_at_every_scale():
    for scale in ("smoke", "laptop", "paper"):
        _, runs = runs_for({"papers": ["gmp"], "scale": scale, "seeds": [0], "data_dir": "d", "device": "cpu"})
        assert len(runs) == 12 and all(r.scale == scale for r in runs)


def test_a_scale_can_replace_a_rows_grid(tmp_path):
    def edit(doc):
        doc["rows"] = {"gmp-{sparsity}": {"method": "gmp", "model": "lenet300-100", "grid": {
            "budget.sparsity": [0.5, 0.9]}, "scales": {"smoke": {"grid": {"budget.sparsity": [0.3]}}}}}
    t = table(tmp_path, edit)
    assert [s.row for s in t.specs("smoke", [0])] == ["gmp-0.3"]
    assert len(t.specs("laptop", [0])) == 2


def test_chained_rows_and_their_errors(tmp_path):
    def edit(doc):
        doc["rows"]["tune"] = {"method": "finetune", "model": "lenet300-100", "init": "gmp"}
    assert table(tmp_path, edit).specs("laptop", [0])[-1].init == "gmp"
    msg = error(tmp_path, lambda d: d["rows"].update(tune={"method": "finetune", "model": "lenet300-100",
                                                            "init": "gmq"}))
    assert "row 'tune': init: 'gmq' is neither `pretrain`, `torchvision` nor a row of this table at scale laptop; did you mean 'gmp'?" in msg


def test_zipped_grid_keys_and_labels(tmp_path):
    def edit(doc):
        doc["rows"] = {
            "{method}-{decay}": {"model": "lenet300-100", "init": "pretrain", "grid": {
                "method,method_args.decay": [["l1", 1e-4], ["hoyer", 0.02]]}},
            "{reg}-{decay}-std{value}": {"method": "finetune", "model": "lenet300-100", "init": "{reg}-{decay}",
                                         "method_args": {"prune": "std"}, "grid": {"label.reg,label.decay,method_args.value":
                                                  [["l1", 1e-4, 0.25], ["hoyer", 0.02, 0.05]]}}}
    specs = table(tmp_path, edit).specs("laptop", [0])
    assert [(s.row, s.method, s.init) for s in specs] == [
        ("l1-0.0001", "l1", "pretrain"), ("hoyer-0.02", "hoyer", "pretrain"),
        ("l1-0.0001-std0.25", "finetune", "l1-0.0001"), ("hoyer-0.02-std0.05", "finetune", "hoyer-0.02")]
    assert specs[1].method_args == {"decay": 0.02} and specs[3].method_args == {"prune": "std", "value": 0.05}


def test_duplicate_row_names_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "  dense: {method: dense, model: lenet5-caffe}\n")
    with pytest.raises(TableError, match=r"dup.yaml: not valid YAML at line \d+: duplicate key 'dense'"):
        PaperTable(path)


def test_a_reference_entry_per_row_or_per_level_is_accepted(tmp_path):
    entry = {"seeds": [0, 1, 2], "repo": "github.com/x/y", "commit": "abc", "command": "python x.py --seed {seed}",
             "init": None, "differences": ["weight_decay: harness 0.0, reference 0.0001"], "wall_s": 12.0}
    reference = {"laptop": {"gmp": {**entry, "top1": {"mean": 85.0, "std": 0.2, "n": 3}, "sparsity": 0.9},
                            "dense": {**entry, "levels": {0.25: {"top1": {"mean": 70.0, "std": 1.0, "n": 3},
                                                                 "sparsity": 0.5}}}}}
    assert len(table(tmp_path, lambda d: d.update(reference=reference)).specs("laptop", [0])) == 2


CONFIG = {"papers": ["gmp", "hoyer"], "seeds": [0], "scale": "laptop", "data_dir": "data/downloads", "device": "auto"}


def test_the_workflows_expansion_is_kept_until_a_table_code_or_the_config_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    kept = tables.cached_expand(CONFIG)                                     # expanded, and kept
    assert kept.runs and kept.parity and kept.pretrain
    calls = []
    monkeypatch.setattr(tables, "expand", lambda *args: calls.append(args) or kept)
    assert tables.cached_expand(CONFIG) == kept and calls == []          # read back, not expanded
    tables.cached_expand({**CONFIG, "seeds": [0, 1]})
    tables.cached_expand(CONFIG, "smoke")
    assert len(calls) == 2
    root = tmp_path / "root"   # a copy of what an expansion reads, with one table edited
    for folder, pattern in tables.EXPANSION_INPUTS:
        for f in (tables.ROOT / folder).glob(pattern):
            (root / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / folder / f.name)
    monkeypatch.setattr(tables, "ROOT", root)
    tables.cached_expand(CONFIG)
    assert len(calls) == 2                                                 # the same bytes: kept
    with open(root / "config" / "papers" / "gmp.yaml", "a") as f:
        f.write("\n# edited\n")
    tables.cached_expand(CONFIG)
    assert len(calls) == 3


def test_a_kept_expansion_is_read_without_importing_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    runs = tables.cached_expand(CONFIG).runs   # kept by this process, which has imported torch already
    code = ("import json, sys; from harness.tables import cached_expand; "
            f"print(len(cached_expand(json.loads({json.dumps(json.dumps(CONFIG))})).runs), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tables.ROOT, capture_output=True, text=True)
    assert out.stdout.split() == [str(len(runs)), "False"], out.stderr   # what a Snakemake start does
