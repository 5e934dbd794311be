"""Paper-scale rows run the references' own setup: preprocessing and numerics per table, pinned
against the constants each reference's code uses (quoted with its file)."""
import pytest
import torch

import data
from harness.aggregate import rows_from_metrics
from harness.tables import PAPERS_DIR, PaperTable, TableError
from harness.trainer import training_precision

CIFAR_REFERENCE = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
MNIST_ADMM = ((0.1307,), (0.3081,))
TO_TENSOR_ONLY = ((0.0,), (1.0,))


def normalisations(paper, scale):
    """{(row, dataset): (mean, std)} of every run of a paper table at a scale."""
    out = {}
    for spec in PaperTable(PAPERS_DIR / f"{paper}.yaml").specs(scale, [0]):
        info = data.dataset_info(spec.dataset, **spec.dataset_args)
        out[spec.row, spec.dataset] = (tuple(info.mean), tuple(info.std))
    return out


@pytest.mark.parametrize("paper, dataset, expected", [
    # yanghr/DeepHoyer mnist/MLP/element.py, mnist/CNN/element.py: transforms.ToTensor() only
    ("hoyer", "mnist", TO_TENSOR_ONLY),
    # yanghr/DeepHoyer cifar/cifar_group.py: Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    ("hoyer", "cifar10", CIFAR_REFERENCE),
    ("gmp", "mnist", TO_TENSOR_ONLY),       # DeepHoyer's dense recipe and numbers
    # hyang1990/sparsity_quantization_joint datasets/mnist.py: Normalize((0.1307,), (0.3081,))
    ("admm", "mnist", MNIST_ADMM),
    ("admm", "imagenet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    # apple/learning-compressible-subspaces: CIFAR-10 Normalize(..., (0.2023, 0.1994, 0.2010))
    ("lcs", "cifar10", CIFAR_REFERENCE),
    ("str", "imagenet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),   # RAIVNLab/STR data/imagenet.py
])
def test_paper_scale_rows_normalise_as_their_reference(paper, dataset, expected):
    found = {v for (row, ds), v in normalisations(paper, "paper").items() if ds == dataset}
    assert found == {expected}


@pytest.mark.parametrize("paper, expected", [("hoyer", TO_TENSOR_ONLY), ("admm", ((0.2860,), (0.3530,)))])
def test_laptop_rows_keep_their_references_preprocessing(paper, expected):
    """The laptop swap changes the data set (Fashion-MNIST), not the reference's transforms: none for
    DeepHoyer; ADMM normalises with the data set's own statistics, which are Fashion-MNIST's there."""
    assert set(normalisations(paper, "laptop").values()) == {expected}


def test_normalize_option_and_its_errors():
    assert data.dataset_info("mnist").std == (0.3081,)
    assert data.dataset_info("mnist", normalize="none").mean == (0.0,)
    assert data.dataset_info("cifar10", normalize={"mean": [0.5] * 3, "std": [0.25] * 3}).std == (0.25,) * 3
    for bad in ("ToTensor", {"mean": [0.5], "std": [0.25]}, {"mean": [0.5] * 3, "std": [0, 1, 1]},
                {"mean": ["a"] * 3, "std": [1] * 3}):
        with pytest.raises(ValueError, match="dataset_args.normalize"):
            data.dataset_info("cifar10", normalize=bad)


def test_in_memory_loader_applies_the_rows_normalisation():
    x = torch.full((4, 1, 28, 28), 255, dtype=torch.uint8)
    info = data.dataset_info("mnist", normalize="none")
    loader = data.TensorLoader(x, torch.zeros(4), info, 4, torch.device("cpu"), train=False)
    assert next(iter(loader))[0].max().item() == 1.0


def one_row_table(tmp_path, row):
    path = tmp_path / "t.yaml"
    path.write_text("title: t\nsource: test\nscales: {smoke: {}, laptop: {}, paper: {}}\n"
                    f"rows:\n  dense: {{method: dense, model: lenet300-100, dataset: mnist, {row}}}\n")
    return PaperTable(path)


def test_a_bad_normalisation_is_one_line_at_table_load(tmp_path):
    with pytest.raises(TableError, match=r"^.*t\.yaml: row 'dense': dataset_args.normalize[^\n]*$"):
        one_row_table(tmp_path, "dataset_args: {normalize: [0.5, 0.5]}").specs("paper", [0])


def test_precision_is_fp32_unless_a_row_asks_and_cuda_is_used():
    cpu = torch.device("cpu")
    assert training_precision("fp32", cpu) == "fp32"
    assert training_precision("bf16", cpu) == "fp32"   # mixed precision is a CUDA feature here
    with pytest.raises(ValueError, match="train.precision"):
        training_precision("half", cpu)
    for paper in ("str", "hoyer", "admm", "lcs", "gmp"):
        assert {s.train_config.precision for s in PaperTable(PAPERS_DIR / f"{paper}.yaml").specs("paper", [0])} \
            == {"fp32"}


def test_tables_csv_reports_the_precision_a_run_used():
    metrics = {"spec": {"scale": "paper", "paper": "p", "row": "r", "method": "dense", "model": "m",
                        "dataset": "d", "seed": 0},
               "train": {"precision": "bf16"},
               "points": [{"top1": 1.0, "sparsity": 0.0, "nonzero_params": 1, "prunable_params": 1,
                           "params": 1, "flops": 1, "dense_flops": 1}]}
    assert next(rows_from_metrics(metrics))["precision"] == "bf16"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline torch hub cache: torchvision finds its weights file there and downloads nothing."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)

    def place(name, state):
        import torchvision
        url = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"].url
        torch.save(state, folder / url.rsplit("/", 1)[-1])
    return place


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "resnet50"])
def test_torchvision_weights_load_by_name_and_compute_torchvisions_function(hub_cache, name):
    import torchvision

    import models
    torch.manual_seed(0)
    theirs = torchvision.models.get_model(name).eval()
    state = theirs.state_dict()
    if name == "resnet50":     # the published file predates BN batch counters
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    hub_cache(name, state)
    ours = models.create_model(name, 1000)
    models.load_mapped(ours, models.torchvision_state(name), "torchvision")
    x = torch.randn(2, 3, 224 if name == "alexnet" else 64, 224 if name == "alexnet" else 64)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), theirs(x), atol=1e-5)


def test_missing_torchvision_weights_offline_say_where_to_put_them(hub_cache, monkeypatch):
    import models
    from core.errors import DataMissing

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataMissing, match=r"alexnet-owt-7be5be79\.pth and could not be downloaded|not at .*alexnet-owt"):
        models.torchvision_state("alexnet")


def test_weights_that_do_not_fit_are_one_line():
    import models
    from core.errors import HarnessError
    state = models.create_model("alexnet", 10).state_dict()
    with pytest.raises(HarnessError, match=r"^torchvision does not fit the model \(0 missing, 0 unexpected, 2 of"):
        models.load_mapped(models.create_model("alexnet", 1000), state, "torchvision")


def test_admm_alexnet_chain_starts_from_torchvision_weights():
    specs = {s.row: s for s in PaperTable(PAPERS_DIR / "admm.yaml").specs("paper", [0])}
    assert specs["alexnet-dense"].init == "torchvision" and specs["alexnet-40x"].init == "alexnet-dense"


def test_init_torchvision_is_refused_for_models_it_has_no_weights_for(tmp_path):
    with pytest.raises(TableError, match="init: torchvision has no published weights for model 'lenet300-100'"):
        one_row_table(tmp_path, "init: torchvision").specs("paper", [0])


def test_a_run_with_init_torchvision_starts_from_those_weights(hub_cache, tmp_path):
    import torchvision

    from core.spec import RunSpec
    from harness.trainer import Trainer
    torch.manual_seed(1)
    hub_cache("resnet18", torchvision.models.resnet18().state_dict())
    spec = RunSpec(scale="smoke", paper="t", row="r", seed=0, method="dense", model="resnet18",
                   dataset="synthetic", init="torchvision", device="cpu", train={"epochs": 0},
                   dataset_args={"shape": [3, 32, 32], "classes": 1000, "train_size": 4, "test_size": 4})
    trainer = Trainer(spec, tmp_path / "run", log=lambda m: None)
    published = torch.load(next((tmp_path / "hub" / "checkpoints").glob("resnet18*")))
    assert torch.equal(trainer.model.state_dict()["stages.3.1.conv2.weight"], published["layer4.1.conv2.weight"])
