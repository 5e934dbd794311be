import pytest
import torch
import torch.nn as nn

import models
from core.metrics import accuracy, flops, layer_sparsity, sparsity_summary


def test_sparsity_counts_conv_and_linear_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0, 0, 0] = 1.0          # 1 of 18 nonzero
        model[3].weight[:, :16] = 0                 # 48 of 96 zero
    layers = layer_sparsity(model)
    assert [r["layer"] for r in layers] == ["0", "3"]
    assert layers[0]["nonzero"] == 1 and layers[1]["nonzero"] == 48
    s = sparsity_summary(layers)
    assert s["prunable_params"] == 18 + 96 and s["nonzero_params"] == 49
    assert s["sparsity"] == pytest.approx(1 - 49 / 114)


def test_sparse_flops_scale_each_layer_by_its_density():
    model = models.create_model("lenet300-100", 10)
    with torch.no_grad():
        model[1].weight[:, : 784 // 2] = 0          # first layer half dense
    f = flops(model, (1, 28, 28))
    assert f["dense_flops"] == 266_200
    assert f["flops"] == 266_200 - 235_200 / 2


def test_accuracy_topk_on_fixed_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    y = torch.tensor([0, 2, 0, 1])
    model = nn.Identity()
    acc = accuracy(model, [(logits[:2], y[:2]), (logits[2:], y[2:])], topk=(1, 2))
    assert acc["top1"] == 25.0 and acc["top2"] == 50.0
    assert acc["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item())


def test_structural_counts_filters_channels_rows_and_columns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():
        model[0].weight[1] = 0          # filter 1 gone
        model[0].weight[:, 2] = 0       # input channel 2 gone
        model[2].weight[:, 0] = 0       # input neuron 0 gone
        model[2].weight[3] = 0          # output neuron 3 gone
    conv, fc = layer_sparsity(model)
    assert (conv["out_alive"], conv["in_alive"]) == (3, 2)
    assert (fc["out_alive"], fc["in_alive"]) == (4, 3)
    assert sparsity_summary([conv, fc])["structured_sparsity"] == pytest.approx(2 / 9)


def test_pipeline_follows_init_chains():
    import pandas as pd
    from harness.aggregate import add_pipeline
    t = pd.DataFrame({"scale": ["s"] * 3, "paper": ["p"] * 3, "row": ["reg", "tune", "plain"],
                      "method": ["hoyer", "finetune", "gmp"], "init": ["pretrain", "reg", None]})
    assert add_pipeline(t).pipeline.tolist() == ["dense>hoyer", "dense>hoyer>finetune", "gmp"]


def test_model_size_counts_bits_per_stored_weight():
    from core.metrics import model_size
    layers = [{"params": 100}, {"params": 50}]
    size = model_size(layers, [(2, 10), (4, 5)])       # 20 + 20 bits for 15 stored weights
    assert size == {"size_bits": 40, "bits": 40 / 15, "compression": 32 * 150 / 40}
    assert model_size(layers, [(32, 100), (32, 50)])["compression"] == 1.0
