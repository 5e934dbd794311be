"""Bad input gets exactly one `error:` line that says what is wrong and how to fix it, never a
traceback, and touches no result (GitHub issue #16, items 4, 6 and 7).

Each case goes through a real entry point: `python -m harness runs` (which loads the tables as the
workflow does), `python -m harness train` (which loads the data), `compare`; called in-process
(`main(argv)`), a few as real subprocesses, and two through `snakemake -n` in a copy of the
project whose results must not change. A case is: what is wrong, the input, the words the line must
contain."""
import copy
import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import yaml

from harness.__main__ import main
from core.spec import RunSpec
from tests.conftest import ROOT, copy_workflow_files, snakemake
from tests.test_tables import BASE


def one_error_line(text):
    """The one `error:` line of a command's output; fails on a traceback or on several."""
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text and len(lines) == 1, text
    return lines[0]


def run_main(capsys, *argv):
    """`python -m harness ARGV` in this process: exit status 1 and exactly one error line."""
    assert main([str(a) for a in argv]) == 1
    out = capsys.readouterr()
    return one_error_line(out.out + out.err)


# -- paper tables (item 4 and 7): loaded by `python -m harness runs`, as the workflow loads them ------------
ADMM = {"method": "admm", "model": "lenet5-caffe", "init": "pretrain", "budget": {"nnz_budget": 0.01, "bit_budget": 3}}


def with_row(name, **fields):
    """An edit that adds (or replaces) row `name`."""
    return lambda doc: doc["rows"].__setitem__(name, fields)


def with_train(**train):
    """An edit that sets the `dense` row's train settings."""
    return lambda doc: doc["rows"]["dense"].__setitem__("train", train)


def with_args(method_args, row="gmp"):
    return lambda doc: doc["rows"][row].__setitem__("method_args", method_args)


TABLE_CASES = [  # (case, edit of BASE, words the line must contain after "row '<row>': ")
    # names a scale maps away ("*") are still checked
    ("dataset typo under a scale's '*'", lambda d: d["defaults"].update(dataset="mnsit"),
     "row 'dense': unknown dataset 'mnsit'; did you mean 'mnist'?"),
    ("model typo under a scale's '*'", lambda d: (d["scales"]["laptop"].update(models={"*": "lenet5-caffe"}),
                                                   d["rows"]["dense"].update(model="lenet300-10")),
     "row 'dense': unknown model 'lenet300-10'; did you mean 'lenet300-100'?"),
    # train: every field of TrainConfig
    ("optimizer typo", with_train(optimizer="adamm"), "train.optimizer 'adamm' unknown; use one of sgd, adam, adamw; did you mean 'adam'?"),
    ("schedule typo", with_train(schedule="cosin"), "train.schedule 'cosin' unknown; use one of cosine, step, constant, admm_cosine; did you mean 'cosine'?"),
    ("batch size 0", with_train(batch_size=0), "train.batch_size=0 should be >= 1"),
    ("negative lr", with_train(lr=-1), "train.lr=-1.0 should be > 0"),
    ("0 epochs, nothing to evaluate", with_train(epochs=0), "train.epochs=0 trains nothing and there is no `init`"),
    ("negative momentum", with_train(momentum=-0.9), "train.momentum=-0.9 should be >= 0"),
    ("label smoothing 1.5", with_train(label_smoothing=1.5), "train.label_smoothing=1.5 should be in [0, 1)"),
    ("unknown precision", with_train(precision="half"), "train.precision 'half' unknown; use one of fp32, bf16, fp16"),
    ("warmup longer than training", with_train(warmup_epochs=5), "train.warmup_epochs=5.0 is longer than train.epochs=3"),
    ("milestones not epochs", with_train(schedule="step", milestones=["x"]), "train.milestones=['x'] should be a list of epochs"),
    ("nesterov without momentum", with_train(nesterov=True, momentum=0), "train.nesterov needs optimizer sgd with momentum > 0"),
    ("0 GPUs", with_train(gpus=0), "train.gpus=0 should be >= 1"),
    ("misspelt train key", with_train(epoch=3), "unknown train key 'epoch'; did you mean 'epochs'?"),
    ("pretrain of 0 epochs", lambda d: d["pretrain"].update(train={"epochs": 0}),
     "mine.yaml: pretrain: train.epochs=0 would leave the shared dense model untrained"),
    # method_args of every method, and their combinations with the budget and the run's length
    ("ADMM mode typo", with_row("a", **ADMM, method_args={"mode": "jiont"}),
     "row 'a': method_args.mode 'jiont' unknown; use one of joint, prune, quantize; did you mean 'joint'?"),
    ("ADMM budget its mode ignores", with_row("a", **ADMM, method_args={"mode": "prune"}),
     "admm mode prune does not use budget.bit_budget; remove it"),
    ("ADMM budget missing", with_row("a", **{**ADMM, "budget": {"nnz_budget": 0.01}}), "admm mode joint needs budget.bit_budget"),
    ("ADMM nnz budget 0", with_row("a", **{**ADMM, "budget": {"nnz_budget": 0, "bit_budget": 3}}),
     "admm: budget.nnz_budget=0 is outside (0, 1]"),
    ("ADMM bits below bwlb", with_row("a", **ADMM, method_args={"bwlb": 4}), "bit_budget 3 is below method_args.bwlb 4"),
    ("ADMM dual interval", with_row("a", **ADMM, method_args={"projint": 3, "dualint": 4}),
     "method_args.dualint 4 must be a multiple of projint 3"),
    ("GMP starts after the run", with_args({"start_epoch": 3}), "method_args.start_epoch=3 is not within the run's train.epochs=3"),
    ("GMP ends after the run", with_args({"end_epoch": 10}), "method_args.end_epoch=10 is not within the run's train.epochs=3"),
    ("GMP schedule typo", with_args({"schedule": "zhu-gupta"}), "method_args.schedule 'zhu-gupta' unknown; use one of zhu_gupta, str_reference; did you mean 'zhu_gupta'?"),
    ("GMP ends before it starts", with_args({"start_epoch": 2, "end_epoch": 1}), "method_args.end_epoch=1.0 is before start_epoch=2.0"),
    ("GMP initial sparsity 1", with_args({"initial_sparsity": 1}), "method_args.initial_sparsity=1.0 should be in [0, 1)"),
    ("finetune rule typo", with_row("f", method="finetune", model="lenet300-100", init="gmp", method_args={"prune": "tresh"}),
     "method_args.prune 'tresh' unknown; use one of none, threshold, std; did you mean 'threshold'?"),
    ("finetune 9 bits", with_row("f", method="finetune", model="lenet300-100", init="gmp",
                                 method_args={"quantize": True, "weightbits": [9, 4, 4]}),
     "method_args.weightbits=[9, 4, 4] should be one whole number of bits (1..8) per conv/linear layer"),
    ("finetune value without a rule", with_row("f", method="finetune", model="lenet300-100", init="gmp",
                                               method_args={"value": 0.1}), "method_args.value=0.1 is unused with prune: none"),
    ("element-wise regularizer with groups", with_row("h", method="hoyer", model="lenet300-100", init="pretrain",
                                                      method_args={"conv_groups": "fiber"}),
     "method_args.conv_groups applies to group_lasso and group_hs only, not hoyer; remove it"),
    ("negative decay", with_row("h", method="l1", model="lenet300-100", init="pretrain", method_args={"decay": -1}),
     "method_args.decay=-1.0 should be >= 0"),
    ("STR threshold decay -2", with_row("s", method="str", model="lenet300-100", method_args={"st_decay": -2}),
     "method_args.st_decay=-2.0 should be >= 0, or -1"),
    ("LCS baseline with GroupNorm", with_row("u", method="us", model="cpreresnet20", method_args={"norm": "GN"}),
     "method_args.norm: GN is not supported with structured sparsity"),
    ("misspelt method_args key", with_args({"end_epochs": 2}), "unknown method_args key 'end_epochs'; did you mean 'end_epoch'?"),
    # dataset_args
    ("misspelt dataset_args key", lambda d: d["defaults"].update(dataset_args={"train_sise": 100}),
     "unknown dataset_args key 'train_sise' for dataset 'fashion-mnist'; did you mean 'train_size'?"),
    ("negative train size", lambda d: d["defaults"].update(dataset_args={"train_size": -5}),
     "dataset_args.train_size=-5 should be a whole number of training images to keep (0: all)"),
    ("subset of a folder data set", lambda d: (d["scales"]["laptop"].update(datasets={"*": "imagenet"}),
                                               d["defaults"].update(dataset_args={"train_size": 100})),
     "unknown dataset_args key 'train_size' for dataset 'imagenet'; it takes only normalize"),
    # chains
    ("init cycle", lambda d: (d["rows"].update(a={"method": "finetune", "model": "lenet300-100", "init": "b"},
                                               b={"method": "finetune", "model": "lenet300-100", "init": "a"})),
     "row 'a': rows start from each other in a cycle: 'a' (init) -> 'b' (init) -> 'a'"),
    ("budget transfer cycle", lambda d: d["rows"].update(
        g={"method": "gmp", "model": "lenet300-100", "budget": {"sparsity": 0.5, "transfer": "n"}},
        n={"method": "dnw", "model": "lenet300-100", "budget": {"sparsity": 0.5, "transfer": "g"}}),
     "row 'g': rows start from each other in a cycle: 'g' (budget.transfer) -> 'n' (budget.transfer) -> 'g'"),
]


def write_table(folder, doc_or_text):
    folder.mkdir(exist_ok=True)
    path = folder / "mine.yaml"
    path.write_text(doc_or_text if isinstance(doc_or_text, str) else yaml.safe_dump(doc_or_text, sort_keys=False))
    config = folder.parent / "config.yaml"
    config.write_text(yaml.safe_dump({"scale": "laptop", "papers": ["mine"], "seeds": [0], "data_dir": "d",
                                      "device": "cpu"}))
    return path, config


@pytest.mark.parametrize("case, edit, expected", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
@pytest.mark.slow
def test_a_table_mistake_is_one_line_naming_file_row_field_and_fix(tmp_path, capsys, case, edit, expected):
    doc = copy.deepcopy(BASE)
    edit(doc)
    path, config = write_table(tmp_path / "papers", doc)
    line = run_main(capsys, "runs", "--configfile", config, "--papers-dir", tmp_path / "papers", "--scale", "laptop")
    assert line.startswith(f"error: {path}: ") and expected in line, line


@pytest.mark.parametrize("text, expected", [
    ("", "the file is empty; a paper table maps title, source, scales and rows"),
    ("# only a comment\n", "the file is empty"),
    ("- a\n- b\n", "the file holds a list, not a mapping"),
], ids=["empty", "only a comment", "a list"])
def test_an_empty_or_foreign_table_says_so(tmp_path, capsys, text, expected):
    path, config = write_table(tmp_path / "papers", text)
    line = run_main(capsys, "runs", "--configfile", config, "--papers-dir", tmp_path / "papers")
    assert line.startswith(f"error: {path}: {expected}") and line.endswith("(see config/papers/gmp.yaml)"), line


def test_the_shipped_tables_pass_every_check_at_every_scale(capsys):
    """The checks above reject nothing the project ships (e.g. str.yaml's smoke GMP rows)."""
    config = {"papers": ["gmp", "hoyer", "str", "admm", "lcs", "leaderboard"], "seeds": [0], "data_dir": "d",
              "device": "cpu"}
    from harness.tables import runs_for
    for scale in ("smoke", "laptop", "paper"):
        assert runs_for({**config, "scale": scale})[1]


def test_strs_smoke_gmp_rows_reach_their_target_within_their_one_epoch():
    """They pruned from epoch 1 of a 1-epoch run, so ended dense: now they prune within it."""
    import methods
    from harness.tables import PaperTable
    for spec in PaperTable(ROOT / "config/papers/str.yaml").specs("smoke", [0]):
        if spec.method == "gmp":
            gmp = methods.get_method("gmp")(methods.get_method("gmp").Args(**spec.method_args))
            steps = -(-spec.dataset_args["train_size"] // spec.train["batch_size"])
            end = methods.Progress(epoch=0, step=steps, steps_per_epoch=steps, epochs=spec.train["epochs"])
            assert gmp.fraction(end) == 1.0, spec.row


# -- data (item 6): loaded by `python -m harness train`, which reads the data first ------------------------
def spec_json(data_dir, dataset, **over):
    fields = dict(scale="paper", paper="t", row="r", seed=0, method="dense", model="lenet300-100", dataset=dataset,
                  train={"epochs": 1, "batch_size": 4}, data_dir=str(data_dir), device="cpu")
    return RunSpec(**{**fields, **over}).to_json()


def write_idx(path, array, cut=0):
    payload = (struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
               + array.astype(np.uint8).tobytes())
    payload = payload[:len(payload) - cut]
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def mnist_folder(data_dir, gz=False, n_train=20, n_labels=20, max_label=9):
    folder = data_dir / "MNIST" / "raw"
    folder.mkdir(parents=True)
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    for split, n, n_y in (("train", n_train, n_labels), ("t10k", 8, 8)):
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", np.arange(n_y) % (max_label + 1))
    return folder


def cut_gz_file(path):
    path.write_bytes(path.read_bytes()[:-40])


def cifar_folder(data_dir, layout=(3072,), dtype=np.uint8, labels=None, skip=(), cut=()):
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if name in skip:
            continue
        x = rng.integers(0, 256, (5, *layout)).astype(dtype)
        batch = {b"data": x, b"labels": list(range(5 if labels is None else labels))}
        payload = pickle.dumps(batch)
        (folder / name).write_bytes(payload[:len(payload) // 2] if name in cut else payload)
    return folder


def imagenet_folder(data_dir, train_classes, val_classes):
    from PIL import Image
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for cls in classes:
            (data_dir / "imagenet" / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(data_dir / "imagenet" / split / cls / "0.JPEG")


def truncated_idx(d, gz):
    folder = mnist_folder(d, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    if gz:
        cut_gz_file(folder / name)
    else:
        write_idx(folder / name, np.zeros((20, 28, 28)), cut=100)
    return folder / name


DATA_CASES = [  # (case, make the files under data_dir -> dict of what to expect, dataset, words of the line)
    ("truncated IDX file", lambda d: truncated_idx(d, gz=False), "mnist",
     "train-images-idx3-ubyte: truncated: the IDX header gives shape (20, 28, 28) (15696 bytes) but the file holds 15596 bytes"),
    ("truncated gzipped IDX file", lambda d: truncated_idx(d, gz=True), "mnist",
     "train-images-idx3-ubyte.gz: not a complete gzip file"),
    ("20 images, 19 labels", lambda d: mnist_folder(d, n_labels=19), "mnist",
     "train-images-idx3-ubyte holds 20 images but"),
    ("label 11 in a 10-class set", lambda d: mnist_folder(d, max_label=11), "mnist",
     "the training labels run from 0 to 11, but mnist has 10 classes"),
    ("MNIST files missing, offline", lambda d: None, "mnist",
     "MNIST not found: put train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
     "t10k-labels-idx1-ubyte (or their .gz) in"),
    ("CIFAR batches stored channels last", lambda d: cifar_folder(d, layout=(32, 32, 3)), "cifar10",
     "data_batch_1: data has shape (5, 32, 32, 3), but CIFAR-10's python batches hold one row of 3072 bytes per image "
     "(N, 3072), channel planes in turn (channels last: convert with x.transpose(0, 3, 1, 2).reshape(len(x), 3072))"),
    ("CIFAR data_batch_3 missing", lambda d: cifar_folder(d, skip=("data_batch_3",)), "cifar10",
     "cifar-10-batches-py: data_batch_3 missing; CIFAR-10 needs data_batch_1, data_batch_2, data_batch_3"),
    ("CIFAR pixels as floats", lambda d: cifar_folder(d, dtype=np.float32), "cifar10",
     "data_batch_1: data is float32; CIFAR-10's python batches hold uint8 pixels"),
    ("CIFAR 5 images, 4 labels", lambda d: cifar_folder(d, labels=4), "cifar10",
     "data_batch_1: 5 images but 4 labels"),
    ("CIFAR batch cut short", lambda d: cifar_folder(d, cut=("data_batch_2",)), "cifar10",
     "data_batch_2: not a CIFAR-10 python batch (UnpicklingError: pickle data was truncated); delete it and download it again"),
    ("ImageFolder val classes differ", lambda d: imagenet_folder(d, ["n01", "n02", "n03"], ["n01", "n02", "n04"]),
     "imagenet", "have different class folders (only in train: n03; only in val: n04), so their labels would not match"),
]


@pytest.mark.parametrize("case, make, dataset, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, case, make, dataset, expected):
    import torchvision

    def offline(*args, **kwargs):   # torchvision's own message spans 5 lines
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.setattr("data.sources.debian_package_folder", lambda package: None)
    make(tmp_path / "data")
    line = run_main(capsys, "train", "--spec", spec_json(tmp_path / "data", dataset), "--out", tmp_path / "run")
    assert expected in line and str(tmp_path / "data") in line, line
    assert not (tmp_path / "run" / "model.pt").exists()


# -- the command line (item 7) -------------------------------------------------------------------------------
GOOD = RunSpec(scale="smoke", paper="t", row="r", seed=0, method="dense", model="lenet300-100",
               dataset="synthetic", train={"epochs": 1}, device="cpu")


def spec_with(**over):
    return RunSpec(**{**GOOD.__dict__, **over}).to_json()


CLI_CASES = [  # (case, argv after `python -m harness`, words of the line); {tmp} is a fresh folder
    ("spec not JSON", ["train", "--spec", "{bad", "--out", "{tmp}/r"],
     "error: --spec: not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("spec with an unknown key", ["train", "--spec", '{"rows": "r"}', "--out", "{tmp}/r"],
     "error: --spec: unknown key 'rows'; did you mean 'row'?"),
    ("spec missing fields", ["train", "--spec", '{"scale": "smoke"}', "--out", "{tmp}/r"],
     "error: --spec: missing paper, row, seed, method, model, dataset, train"),
    ("spec not an object", ["train", "--spec", "[1, 2]", "--out", "{tmp}/r"],
     "error: --spec: should be a JSON object of a run's settings"),
    ("spec file missing", ["train", "--spec", "@{tmp}/nowhere.json", "--out", "{tmp}/r"],
     "nowhere.json: cannot read {tmp}/nowhere.json (No such file or directory)"),
    ("spec with a bad setting", ["train", "--spec", spec_with(train={"epochs": 1, "optimizer": "adamm"}), "--out", "{tmp}/r"],
     "error: --spec: train.optimizer 'adamm' unknown"),
    ("spec seed not a number", ["train", "--spec", spec_with(seed="0"), "--out", "{tmp}/r"],
     "error: --spec: spec.seed='0' should be of type int"),
    ("spec that starts from a model not given", ["train", "--spec", spec_with(init="pretrain"), "--out", "{tmp}/r"],
     "error: --spec starts from 'pretrain' (its init): give that model's model.pt with --init"),
    ("evaluate a model that is not there", ["evaluate", "--spec", spec_with(), "--model", "{tmp}/model.pt", "--out", "{tmp}/m.json"],
     "error: trained model {tmp}/model.pt is unreadable"),
    ("compare an empty table", ["compare", "{tmp}/empty.csv", "{tmp}/empty.csv"],
     "error: {tmp}/empty.csv: not a results table (No columns to parse from file)"),
    ("runs without a config", ["runs", "--configfile", "{tmp}/none.yaml"],
     "error: --configfile {tmp}/none.yaml: unreadable (FileNotFoundError)"),
    ("runs with an empty config", ["runs", "--configfile", "{tmp}/empty.csv"],
     "error: --configfile {tmp}/empty.csv: needs scale, papers, seeds, data_dir, device"),
]


@pytest.mark.parametrize("case, argv, expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_a_command_line_mistake_is_one_line(tmp_path, capsys, case, argv, expected):
    (tmp_path / "empty.csv").write_text("")
    line = run_main(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert expected.replace("{tmp}", str(tmp_path)) in line, line
    assert not (tmp_path / "r" / "model.pt").exists()


@pytest.mark.parametrize("argv, expected", [
    (["train", "--spec", "{bad", "--out", "r"], "error: --spec: not valid JSON"),
    (["compare", "empty.csv", "empty.csv"], "error: empty.csv: not a results table"),
], ids=["train", "compare"])
@pytest.mark.slow
def test_the_real_command_prints_one_line_and_exits_1(tmp_path, argv, expected):
    (tmp_path / "empty.csv").write_text("")
    proc = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and one_error_line(proc.stdout + proc.stderr).startswith(expected)
    assert proc.stderr.count("\n") == 1


# -- through Snakemake: one line, and no result touched ------------------------------------------------------
def digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def init_cycle(text):
    """lenet300-dense starts from lenet5-dense, and lenet5-dense from lenet300-dense."""
    text = text.replace("    model: lenet300-100\n    published", "    model: lenet300-100\n    init: lenet5-dense\n    published", 1)
    return text.replace("    model: lenet5\n    published", "    model: lenet5\n    init: lenet300-dense\n    published", 1)


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text.replace("  dataset: mnist\n", "  dataset: mnsit\n", 1),
     "error: config/papers/gmp.yaml: row 'lenet300-dense': unknown dataset 'mnsit'; did you mean 'mnist'?"),
    (init_cycle, "error: config/papers/gmp.yaml: row 'lenet300-dense': rows start from each other in a cycle: "
                 "'lenet300-dense' (init) -> 'lenet5-dense' (init) -> 'lenet300-dense'"),
], ids=["dataset typo under the smoke scale's '*'", "init cycle"])
@pytest.mark.slow
def test_snakemake_stops_with_one_line_and_keeps_every_result(tmp_path, edit, expected):
    copy_workflow_files(tmp_path)
    run = tmp_path / "results/runs/smoke/gmp/lenet300-dense/seed0"
    run.mkdir(parents=True)
    for name in ("model.pt", "metrics.json", "train.json", "budget.csv"):
        (run / name).write_text(f"an earlier {name}")
    (tmp_path / "results/tables.csv").write_text("scale,paper,row\nsmoke,gmp,lenet300-dense\n")
    before = digests(tmp_path / "results")
    table = tmp_path / "config/papers/gmp.yaml"
    edited = edit(table.read_text())
    assert edited != table.read_text()
    table.write_text(edited)
    proc = snakemake(tmp_path, "-n", "results/tables.csv", "--config", "scale=smoke", "papers=[gmp]", check=False)
    assert proc.returncode != 0 and one_error_line(proc.stdout + proc.stderr).startswith(expected)
    assert digests(tmp_path / "results") == before
