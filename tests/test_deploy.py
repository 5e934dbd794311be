"""Exported models compute what the compressed model computes (harness/deploy.py); their figures
are measured by a benchmark, so only their presence and form are tested here."""
import pytest
import torch
import torch.nn as nn

from core.metrics import layer_sparsity, prunable_layers
from harness import deploy
from methods import get_method
from models import create_model


def _lenet5(seed=0):
    torch.manual_seed(seed)
    return create_model("lenet5", 10, input_size=28).eval()


def _x(n=4):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_slim_export_computes_the_masked_outputs_with_fewer_parameters():
    model = _lenet5()
    with torch.no_grad():   # group pruning as Group-HS leaves it: whole filters and neurons zero
        model[0].weight[[1, 4, 7]] = 0
        model[0].bias[[1, 4, 7]] = 0
        model[3].weight[5:20] = 0
        model[3].bias[5:20] = 0
        model[7].weight[::3] = 0
        model[7].bias[::3] = 0
    assert deploy.compression_kind(layer_sparsity(model), [(32, 1)]) == "structured"
    slim = deploy.slim(model)
    torch.testing.assert_close(slim(_x()), model(_x()), rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    assert (slim[0].out_channels, slim[3].in_channels, slim[3].out_channels) == (17, 17, 35)
    assert slim[7].in_features == 35 * 4 * 4 and slim[7].out_features == 500 - 167
    assert model[0].out_channels == 20   # the model itself is untouched


def test_slim_removes_channels_no_weight_reads():
    """A live filter whose output the next layer never reads (its input columns zero, as magnitude
    pruning leaves them at high sparsity) goes, with those columns."""
    model = _lenet5()
    with torch.no_grad():
        model[3].weight[:, [2, 6]] = 0                          # conv2 reads none of conv1's channels 2 and 6
        model[7].weight.view(500, 50, 16)[:, [0, 9, 11]] = 0    # fc1 reads none of conv2's channels 0, 9, 11
    slim = deploy.slim(model)
    torch.testing.assert_close(slim(_x()), model(_x()), rtol=1e-5, atol=1e-6)
    assert (slim[0].out_channels, slim[3].in_channels, slim[3].out_channels) == (18, 18, 47)
    assert slim[7].in_features == 47 * 16


@pytest.mark.parametrize("name,norm", [("lcs_p", "IN"), ("us", "BN")])
def test_slim_export_of_an_lcs_width_is_the_narrow_network(name, norm, tmp_path):
    torch.manual_seed(0)
    method = get_method(name)(get_method(name).Args(setting="structured", norm=norm))
    model = method.build(create_model("cpreresnet20", 10, 1, width=0.5)).eval()
    with method.at_level(model, 0.5):
        slim = deploy.slim(model, lambda: method.narrow(model))
        torch.testing.assert_close(slim(_x()), model(_x()), rtol=1e-4, atol=1e-5)
        assert deploy.stored_weights(slim) < 0.35 * deploy.stored_weights(model)
        assert slim.stem.out_channels == 4 and slim.stem.in_channels == 1   # the input stays whole
        deploy.save("slim", model, slim, _x(1), tmp_path / "slim.pt")
        torch.testing.assert_close(torch.jit.load(tmp_path / "slim.pt")(_x(3)), model(_x(3)), rtol=1e-4, atol=1e-5)
    assert all(not p.training for p in method.weights)   # the model is back in eval mode


def test_a_channel_with_a_bias_is_kept():
    model = _lenet5()
    with torch.no_grad():
        model[0].weight[2] = 0        # its bias still feeds relu(bias) forward: not removable
    assert deploy.slim(model)[0].out_channels == 20


def _trained_like_bn(model):
    """Random BN statistics and affine parameters, as a trained network has (fresh ones are 0/1)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo in ((m.weight, 0.5), (m.running_var, 0.5)):
                    t.copy_(lo + torch.rand(t.shape, generator=g))
                m.bias.normal_(0, 0.2, generator=g)
                m.running_mean.normal_(0, 0.2, generator=g)
    return model


def test_slim_removes_dead_channels_inside_residual_blocks():
    """Channels of a block's first conv that are zero whatever the input go (its filter zero and
    relu(beta - gamma*mean/sd) = 0, or gamma = beta = 0); one whose constant passes the ReLU stays;
    the residual stream keeps every channel; a conv whose every channel is dead keeps one."""
    torch.manual_seed(0)
    model = _trained_like_bn(create_model("resnet20", 10, 1, width=0.5)).eval()
    block = model.stages[0][0]
    with torch.no_grad():
        block.conv1.weight[[0, 1, 2]] = 0                       # Group-HS: whole filters zero ...
        block.bn1.bias[[0, 1]] = -1.0                           # ... 0 and 1 silenced by the ReLU,
        block.bn1.running_mean[[0, 1, 2]] = 0.0
        block.bn1.bias[2] = 0.5                                 # ... 2 a constant 0.5 that passes it
        block.bn1.weight[5] = block.bn1.bias[5] = 0             # LEC: a zero scale and shift
        model.stages[1][0].conv1.weight[:] = 0                  # a whole block's first conv zero
        model.stages[1][0].bn1.bias.fill_(-0.1)
        model.stages[1][0].bn1.running_mean.zero_()
    slim = deploy.slim(model)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(slim(x), model(x), rtol=1e-5, atol=1e-5)
    b = slim.stages[0][0]
    assert (b.conv1.out_channels, b.bn1.num_features, b.conv2.in_channels) == (5, 5, 5)   # 8 - {0, 1, 5}
    assert b.conv2.out_channels == 8 and slim.stem[0].out_channels == 8                  # the stream stays
    assert slim.stages[1][0].conv1.out_channels == 1                                      # all dead: one stays
    assert model.stages[0][0].conv1.out_channels == 8                                     # the model untouched


def test_slim_of_network_slimming_removes_its_pruned_channels():
    """LEC on cPreResNet20 (pre-activation blocks): the channels it prunes inside the blocks go."""
    torch.manual_seed(0)
    method = get_method("lec")(get_method("lec").Args())
    model = _trained_like_bn(method.build(create_model("cpreresnet20", 10, 1, width=0.5))).eval()
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with method.at_level(model, 0.5):
        slim = deploy.slim(model)
        torch.testing.assert_close(slim(x), model(x), rtol=1e-5, atol=1e-5)
        assert deploy.stored_weights(slim) < 0.5 * deploy.stored_weights(model)    # 54,792 -> 25,326 weights
        assert any(isinstance(m, deploy.SelectChannels) for m in slim.modules())    # blocks' bn1 too
        # its zeros lie in the pruned channels' filters and in the columns reading them: structured
        assert deploy.compression_kind(layer_sparsity(model), [(32, 1)]) == "structured"


def test_zeros_in_whole_rows_or_columns_are_structured_counted_once():
    row = {"params": 4 * 3 * 9, "out_groups": 4, "in_groups": 3}
    dead = lambda rows, cols, nonzero: [{**row, "out_alive": 4 - rows, "in_alive": 3 - cols, "nonzero": nonzero}]
    assert deploy._in_dead_groups(dead(1, 1, 0)[0]) == (3 + 4 - 1) * 9     # a filter and a channel: 6 kernels
    assert deploy.compression_kind(dead(0, 1, 108 - 36), [(32, 1)]) == "structured"      # a dead input channel
    assert deploy.compression_kind(dead(0, 0, 108 - 36), [(32, 1)]) == "unstructured"    # zeros scattered


def test_slim_of_a_norm_reading_the_residual_stream_selects_the_channels_it_keeps(tmp_path):
    """A pre-activation block's bn1 reads the stream, which keeps every channel: a channel of zero
    scale whose shift the ReLU silences goes from the norm and from the convs reading it, behind a
    channel selection; one whose shift passes the ReLU stays."""
    torch.manual_seed(0)
    model = _trained_like_bn(create_model("cpreresnet20", 10, 1, width=0.5)).eval()
    block = model.stages[1][0]                      # a downsampling block: its downsample reads the stream
    with torch.no_grad():
        block.bn1.weight[[0, 1, 2]] = 0
        block.bn1.bias[[0, 1]] = torch.tensor([0.0, -0.3])   # silenced
        block.bn1.bias[2] = 0.4                              # a constant that passes the ReLU
    stream = block.bn1.num_features
    slim = deploy.slim(model)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(slim(x), model(x), rtol=1e-5, atol=1e-5)
    b = slim.stages[1][0]
    assert isinstance(b.bn1[0], deploy.SelectChannels) and b.bn1[1].num_features == stream - 2
    assert b.conv1.in_channels == stream - 2 and b.downsample.in_channels == stream
    assert slim.stages[0][-1].conv3.out_channels == stream             # the stream stays whole
    deploy.save("slim", model, slim, x, tmp_path / "slim.pt")
    torch.testing.assert_close(torch.jit.load(tmp_path / "slim.pt")(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,budget", [("gmp", {"sparsity": 0.9}), ("str", None)])
def test_sparse_export_equals_the_dense_masked_forward(method, budget):
    model = _lenet5()
    m = get_method(method)(budget=budget) if budget else get_method(method)(get_method(method).Args(s_init=-3))
    model = m.build(model)
    with torch.no_grad():
        for _, layer in prunable_layers(model):    # 90 % of each weight zero through its parametrization
            raw = layer.parametrizations.weight.original
            raw[raw.abs() < raw.abs().flatten().quantile(0.9)] = 0
    sparse = deploy.sparse(model)
    assert any(isinstance(c, deploy.SparseConv2d) for c in sparse.modules())
    assert any(isinstance(c, deploy.SparseLinear) for c in sparse.modules())
    for n in (1, 5):
        torch.testing.assert_close(sparse(_x(n)), model(_x(n)), rtol=1e-5, atol=1e-6)


def test_quantized_export_round_trips_the_codes_exactly():
    torch.manual_seed(0)
    for bits in (1, 2, 3, 5, 8):
        codes = torch.randint(0, 2 ** bits, (7, 3, 5))
        packed = deploy.pack_codes(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() * bits // 8)
        assert torch.equal(deploy.unpack_codes(packed, bits, codes.shape), codes)
    model = _lenet5()
    with torch.no_grad():   # 3-bit weights: 8 values per layer, zero among them
        for _, layer in prunable_layers(model):
            levels = torch.linspace(-0.1, 0.1, 7).tolist() + [0.0]
            layer.weight.copy_(torch.tensor(levels)[torch.randint(0, 8, layer.weight.shape)])
    packed = deploy.pack(model)
    assert {p["bits"] for p in packed["packed"].values()} == {3}
    state = deploy.unpack(packed)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_saved_formats_load_with_torch_alone_and_give_the_same_outputs(tmp_path):
    model = get_method("gmp")(budget={"sparsity": 0.9}).build(_lenet5())
    with torch.no_grad():
        for _, layer in prunable_layers(model):
            layer.parametrizations.weight[0].mask[layer.weight.abs() < layer.weight.abs().flatten().quantile(0.9)] = 0
    formats = deploy.export(model, "unstructured")
    for fmt, module in formats.items():
        path = tmp_path / f"{fmt}.pt"
        assert deploy.save(fmt, model, module, _x(1), path) == (path.stat().st_size, "torchscript")
        loaded = torch.jit.load(path)
        torch.testing.assert_close(loaded(_x(3)), model(_x(3)), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "sparse.pt").stat().st_size < (tmp_path / "dense.pt").stat().st_size


@pytest.mark.parametrize("effort, settings", [(deploy.EFFORT["smoke"], {"cpu/b1/t1"}),
                                              (deploy.Effort(1, 0.0, grid=True), {"cpu/b1/t1", "cpu/b64/t1"})])
def test_measure_reports_every_format_at_its_settings(tmp_path, effort, settings):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[1].weight[model[1].weight.abs() < 0.03] = 0
    figures = deploy.measure(model, "unstructured", (1, 28, 28), torch.device("cpu"), tmp_path, "p0", effort=effort)
    assert set(figures) == {"dense", "sparse"}
    for rec in figures.values():
        assert rec["bytes"] > 0 and rec["peak_bytes"] > 0
        assert settings <= set(rec["latency"]) and (effort.grid or set(rec["latency"]) == settings)
        assert all(median > 0 and iqr >= 0 for median, iqr in rec["latency"].values())
    head = deploy.headline(figures, "unstructured")
    assert head["deploy_format"] == "sparse" and head["measured_speedup"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p0-dense.pt", "p0-sparse.pt"]


def test_peak_memory_counts_weights_and_the_largest_activations():
    model = nn.Sequential(nn.Linear(100, 1000), nn.ReLU(), nn.Linear(1000, 10)).eval()
    weights = sum(p.numel() * 4 for p in model.parameters())
    peak = deploy.peak_memory(model, torch.randn(8, 100))
    assert weights + 8 * 1000 * 4 <= peak <= weights + 3 * 8 * 1000 * 4


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet50", 64), ("alexnet", 96)])
def test_models_that_torchvision_has_export_a_state_dict_its_class_loads(name, size):
    import torchvision
    torch.manual_seed(0)
    model = create_model(name, 10, 3).eval()
    state = deploy.torchvision_state(model, name, 10)
    theirs = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    theirs.load_state_dict(state)    # strict: every name and shape
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(theirs(x), model(x), rtol=1e-4, atol=1e-5)
    assert deploy.torchvision_state(create_model(name, 10, 3, width=0.5), name, 10) is None
    assert deploy.torchvision_state(_lenet5(), "lenet5", 10) is None
