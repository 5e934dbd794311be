"""ADMM sparsity-quantization joint learning (methods/admm.py, methods/quantize.py) against brute
force, the reference's formulas (admm_hoyer.md A.9 checks A-1..A-5) and the harness's trainer."""
import copy
import itertools
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import models
from core.spec import RunSpec
from harness.trainer import Trainer
from methods import get_method
from methods.quantize import (SortedValues, allocate_bits, bits_used, compression_rate, distinct_values, eval_bits,
                              fit_codebook, joint_projection, kmeans_codebook, layer_budget, mckp_greedy,
                              prune_projection, quantize_tensor, quantize_with_bits)

ADMM = get_method("admm")


def admm(model, budget=None, **args):
    method = ADMM(ADMM.Args(**args), budget or {"nnz_budget": 0.1, "bit_budget": 3})
    return method.build(model), method


def step(epoch, i, spe, lr=0.1):
    """What the trainer hands on_step after step `i` (1-based) of `epoch`, plus the lr."""
    return SimpleNamespace(epoch=epoch, step=epoch * spe + i, steps_per_epoch=spe, epochs=epoch + 1, lr=lr)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return models.create_model("lenet300-100", 10, input_size=8, width=0.25)


# -- pruning projection: greedy 0-1 knapsack ---------------------------------------------------------
def brute_force_prune(weights, bits, budget):
    """Max kept energy sum w^2 over every mask with sum of kept bits <= budget."""
    items = [(float(w) ** 2, b) for t, b in zip(weights, bits) for w in t.flatten()]
    best = 0.0
    for mask in itertools.product([0, 1], repeat=len(items)):
        cost = sum(b for (_, b), m in zip(items, mask) if m)
        if cost <= budget:
            best = max(best, sum(v for (v, _), m in zip(items, mask) if m))
    return best


def kept_energy(weights):
    return sum(float(w.pow(2).sum()) for w in weights)


def test_pruning_reference_example():
    """A-1: scores w^2/b sorted, cumulative costs [2, 4, 8, 12, 14] under B = 10: three weights fit;
    quantized_sparsify keeps two (its off-by-one), the fixed greedy keeps three."""
    w = [torch.tensor([0.5, -0.1, 0.3]), torch.tensor([0.2, -0.4])]
    fixed, nnz = prune_projection(w, [2, 4], 10)
    assert torch.equal(fixed[0], w[0] * torch.tensor([1, 0, 1])) and torch.equal(fixed[1], w[1] * torch.tensor([0, 1]))
    assert nnz == [2, 1] and bits_used([2, 4], nnz) == 8
    ref, nnz = prune_projection(w, [2, 4], 10, off_by_one=True)
    assert torch.equal(ref[0], fixed[0]) and torch.equal(ref[1], torch.zeros(2)) and nnz == [2, 0]
    assert w[1].tolist() == pytest.approx([0.2, -0.4])           # inputs untouched


@pytest.mark.parametrize("seed", range(12))
def test_pruning_with_one_bit_width_is_the_exact_projection(seed):
    """Equal costs: the greedy keeps the largest |w| that fit, which is what brute force finds."""
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(3, generator=g), torch.randn(2, 2, generator=g), torch.randn(3, generator=g)]
    b = 1 + seed % 4
    budget = b * (seed % 10) + seed % 3          # room for 0..9 weights, not always a multiple of b
    pruned, nnz = prune_projection(w, [b] * 3, budget)
    assert bits_used([b] * 3, nnz) <= budget
    assert kept_energy(pruned) == pytest.approx(brute_force_prune(w, [b] * 3, budget), rel=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_pruning_with_mixed_bits_is_feasible_and_within_one_weight_of_brute_force(seed):
    """Mixed costs: the greedy (a prefix in w^2/b order) is not always optimal; it is feasible and
    misses the optimum by less than the energy of the first weight that did not fit (LP bound)."""
    g = torch.Generator().manual_seed(100 + seed)
    w = [torch.randn(4, generator=g), torch.randn(3, generator=g), torch.randn(3, generator=g)]
    bits = [1 + seed % 3, 2 + seed % 5, 8]
    budget = 3 + 2 * seed
    pruned, nnz = prune_projection(w, bits, budget)
    assert bits_used(bits, nnz) <= budget
    flat = torch.cat([t.flatten() for t in w])
    cost = torch.cat([torch.full((t.numel(),), b) for t, b in zip(w, bits)])
    order = torch.argsort(flat ** 2 / cost, descending=True, stable=True)
    first_out = next((float(flat[i]) ** 2 for i in order if pruned_value(pruned, int(i)) == 0), 0.0)
    best = brute_force_prune(w, bits, budget)
    got = kept_energy(pruned)
    assert got <= best * (1 + 1e-6) and got >= (best - first_out) * (1 - 1e-6)


def pruned_value(pruned, i):
    return float(torch.cat([p.flatten() for p in pruned])[i])


def test_pruning_greedy_can_miss_the_optimum():
    """Honest about greedy vs optimum: ratio 1.0 at cost 1 goes first, then the 3.5 at cost 4 no
    longer fits in B = 4, though keeping it alone is worth 3.5 > 1."""
    w = [torch.tensor([1.0]), torch.tensor([math.sqrt(3.5)])]
    pruned, nnz = prune_projection(w, [1, 4], 4)
    assert nnz == [1, 0] and kept_energy(pruned) == pytest.approx(1.0)
    assert brute_force_prune(w, [1, 4], 4) == pytest.approx(3.5)


# -- bit allocation: greedy multiple-choice knapsack --------------------------------------------------
@pytest.mark.parametrize("budget, bits, used", [(40, [3, 2], 40), (38, [2, 3], 35), (25, [1, 3], 25), (15, [1, 1], 15)])
def test_mckp_reference_example(budget, bits, used):
    """A-2: two layers, bits {1,2,3}, nnz [10, 5], distortions [8,3,1] and [6,2,1.5]."""
    costs = [[10, 20, 30], [5, 10, 15]]
    choice = mckp_greedy(costs, [[-8, -3, -1], [-6, -2, -1.5]], budget)
    assert [c + 1 for c in choice] == bits
    assert sum(c[j] for c, j in zip(costs, choice)) == used


def brute_force_mckp(costs, profits, budget):
    best = -math.inf
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        if sum(c[j] for c, j in zip(costs, choice)) <= budget:
            best = max(best, sum(p[j] for p, j in zip(profits, choice)))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_mckp_greedy_is_feasible_and_within_one_upgrade_of_brute_force(seed):
    """Costs b * nnz_l for b in 1..8, decreasing distortions (not always convex). The greedy is
    feasible and loses less than one upgrade's profit against brute force (LP bound); where the
    distortions are convex and every upgrade fits or none does, it is the optimum."""
    rng = random.Random(seed)
    groups = 3
    nnz = [rng.randint(0, 6) for _ in range(groups)]
    costs = [[b * k for b in range(1, 9)] for k in nnz]
    profits = [sorted(-rng.uniform(0, 10) for _ in range(8)) for _ in range(groups)]
    budget = rng.randint(sum(nnz), 8 * sum(nnz))
    choice = mckp_greedy(costs, profits, budget)
    assert sum(c[j] for c, j in zip(costs, choice)) <= budget
    got = sum(p[j] for p, j in zip(profits, choice))
    best = brute_force_mckp(costs, profits, budget)
    largest_upgrade = max(max(p) - min(p) for p in profits)
    assert best - largest_upgrade - 1e-9 <= got <= best + 1e-9
    assert mckp_greedy(costs, profits, 8 * sum(nnz)) == [7] * groups  # everything fits: 8 bits each
    assert mckp_greedy(costs, profits, sum(nnz)) == [0 if k else 7 for k in nnz]  # 1 bit (free layers: 8)


def test_mckp_infeasible_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="below the cheapest allocation"):
        mckp_greedy([[10, 20], [5, 10]], [[-2, -1], [-2, -1]], 14)


# -- quantization: zero-anchored k-means ------------------------------------------------------------
def test_zero_anchored_kmeans_reference_example():
    """A-3: b = 1, init [0, -1, 1.1] -> codebook [0, -0.9, 1.0]; 0.2 snaps to the fixed zero."""
    x = torch.tensor([0, 0, -1.0, -0.8, 0.9, 1.1, 0.2])
    assert kmeans_codebook(x, 1).tolist() == pytest.approx([-0.9, 0.0, 1.0])
    q, sse = quantize_tensor(x, 1)
    assert q.tolist() == pytest.approx([0, 0, -0.9, -0.9, 1.0, 1.0, 0])
    assert sse == pytest.approx(0.08)


def reference_lloyd(x, bits, zero_anchored=True, iters=100, tol=1e-3, init=None):
    """util.zerok_means1D written out plainly: dense distances, argmin, fixed 0 at index 0 (when
    zero-anchored), linspace init (or `init`, finetune.py's warm start: val_dict=previous, 0 first),
    stop on a relative SSE change < tol; empty clusters stay put."""
    x = x.flatten().double()
    x = x[x.abs() >= 1e-5] if zero_anchored else x
    head = [torch.zeros(1, dtype=x.dtype)] if zero_anchored else []
    if init is not None:
        book = init.double().clone()
        book = torch.cat(head + [book[book != 0]]) if zero_anchored else book   # its 0 first (val_dict[0] == 0)
    else:
        book = torch.cat(head + [torch.linspace(float(x.min()), float(x.max()), 2 ** bits, dtype=x.dtype)])
    previous = None
    for _ in range(iters):
        dist, code = ((x[:, None] - book[None, :]) ** 2).min(1)
        sse = float(dist.sum())
        if previous is not None and sse > 0 and abs(previous - sse) / sse < tol:
            break
        previous = sse
        for c in range(len(head), book.numel()):
            if (code == c).any():
                book[c] = x[code == c].mean()
    return torch.sort(book).values


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("zero_anchored", [True, False])
def test_kmeans_matches_the_reference_lloyd_iteration(bits, zero_anchored):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(300, generator=g) * 0.1
    x[:60] = 0                                     # pruned weights
    x[60:70] = 3e-6                                # below the zero threshold
    expected = reference_lloyd(x, bits, zero_anchored)
    assert torch.allclose(kmeans_codebook(x, bits, zero_anchored).double(), expected, atol=1e-6)


def test_quantized_layer_has_at_most_2_to_the_b_nonzero_values_and_requantizing_changes_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 20, generator=g)
    x[x.abs() < 0.5] = 0
    for bits in range(1, 9):
        q, sse = quantize_tensor(x, bits)
        assert distinct_values(q).numel() <= 2 ** bits
        assert torch.all(q[x == 0] == 0)                    # zeros stay zeros
        assert sse == pytest.approx(float((q - x).pow(2).sum()), rel=1e-5)
        assert torch.equal(quantize_tensor(q, bits)[0], q)  # a projection: idempotent
    few = torch.tensor([0.0, 0.3, -0.2, 0.3, 0.7])           # 3 distinct nonzeros <= 2^2 levels
    assert torch.equal(quantize_tensor(few, 2)[0], few)


def test_quantization_only_codebook_has_no_reserved_zero():
    x = torch.tensor([-1.0, -0.9, 0.0, 0.2, 1.0, 1.1])
    book = kmeans_codebook(x, 1, zero_anchored=False)
    assert book.numel() == 2 and 0.0 not in book.tolist()
    q = quantize_with_bits([x], [1], zero_anchored=False)[0]
    assert distinct_values(q, include_zero=True).numel() == 2 and torch.all(q != 0)


def test_bit_allocation_fits_the_budget_and_prefers_the_harder_layer():
    """A wide-spread layer gains more from bits than a nearly constant one of the same size."""
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(400, generator=g)
    flat = 1.0 + 0.001 * torch.randn(400, generator=g)
    quantized, bits = allocate_bits([spread, flat], [400, 400], 400 * 8)
    assert bits_used(bits, [400, 400]) <= 400 * 8 and bits[0] > bits[1]
    for q, b in zip(quantized, bits):
        assert distinct_values(q).numel() <= 2 ** b


@pytest.mark.parametrize("seed", range(5))
def test_budget_holds_after_every_projection(seed):
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(20, 10, generator=g) * s for s in (0.1, 1.0, 0.3)]
    numels = [t.numel() for t in w]
    targets, budget = layer_budget(numels, 0.2 + 0.1 * seed, 2 + seed % 3)
    bits = [2 + seed % 3] * 3
    pruned, nnz = prune_projection(w, bits, budget)
    assert bits_used(bits, nnz) <= budget and nnz == [int((p != 0).sum()) for p in pruned]
    quantized, new_bits = allocate_bits(pruned, nnz, budget, bwlb=1)
    assert bits_used(new_bits, nnz) <= budget and all(1 <= b <= 8 for b in new_bits)
    q, jb, jnnz = joint_projection(w, bits, budget, bwlb=2)
    assert bits_used(jb, jnnz) <= budget and all(2 <= b <= 8 for b in jb)
    for t, b in zip(q, jb):
        assert distinct_values(t).numel() <= 2 ** b


def test_sorted_values_give_the_same_error_as_a_direct_sum():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, generator=g)
    x[:100] = 0
    sv = SortedValues(x)
    book, sse = fit_codebook(sv, 3)
    q, _ = quantize_tensor(x, 3)
    assert sse == pytest.approx(float((x.double() - q.double()).pow(2).sum()), rel=1e-6)


# -- compression rate --------------------------------------------------------------------------------
def test_compression_rate_of_lenet5_at_its_readme_budget():
    """A.7 / A-5: LeNet-5 (430,500 weights), nnz_budget 0.0054, 3 bits: B = 3 * 2325 = 6975 bits,
    13,776,000 / 6975 = 1975.05x."""
    _, method = admm(models.create_model("lenet5-caffe", 10), {"nnz_budget": 0.0054, "bit_budget": 3})
    assert method.numels == [500, 25000, 400000, 5000]
    assert method.nnz == [3, 135, 2160, 27] and method.total_bits == 6975
    assert compression_rate(method.numels, [3] * 4, method.nnz) == pytest.approx(1975.05, abs=0.005)
    assert compression_rate([100, 50], [2, 4], [10, 5]) == 32 * 150 / 40    # by hand


@pytest.mark.parametrize("nnz_budget, bit_budget, rate", [(0.12, 6, 44.44), (0.10, 5, 64.00), (0.08, 4, 100.00)])
def test_compression_rate_of_the_alexnet_budgets(nnz_budget, bit_budget, rate):
    numels = [23232, 307200, 663552, 884736, 589824, 37748736, 16777216, 4096000]   # 61,090,496 weights
    nnz, budget = layer_budget(numels, nnz_budget, bit_budget)
    assert 32 * sum(numels) / budget == pytest.approx(rate, abs=0.005)
    assert compression_rate(numels, [bit_budget] * 8, nnz) == pytest.approx(rate, abs=0.005)


def test_eval_bits_count_distinct_nonzero_values():
    w = torch.tensor([0.0, 0.1, 0.1000000001, -0.2, 0.3, 0.0])   # 0.1 twice after rounding to 6 places
    assert eval_bits(w) == pytest.approx(math.log2(3))
    assert eval_bits(w, include_zero=True) == 2.0
    assert eval_bits(torch.zeros(4)) == 0.0


# -- the method ---------------------------------------------------------------------------------------
def test_unmeetable_or_missing_budgets_are_clear_errors():
    with pytest.raises(ValueError, match=r"bit_budget 2 is below method_args.bwlb 3.*raise budget.bit_budget"):
        admm(tiny_model(), {"nnz_budget": 0.1, "bit_budget": 2}, bwlb=3)
    with pytest.raises(ValueError, match="needs budget.nnz_budget"):
        admm(tiny_model(), {"bit_budget": 3})
    with pytest.raises(ValueError, match="needs budget.bit_budget"):
        admm(tiny_model(), {"nnz_budget": 0.1}, mode="quantize")
    with pytest.raises(ValueError, match=r"nnz_budget=0 is outside \(0, 1\]"):
        admm(tiny_model(), {"nnz_budget": 0, "bit_budget": 3})
    with pytest.raises(ValueError, match="mode 'both' unknown; use one of joint, prune, quantize"):
        admm(tiny_model(), mode="both")
    with pytest.raises(ValueError, match="does not use budget.bit_budget; remove it"):
        admm(tiny_model(), {"nnz_budget": 0.1, "bit_budget": 3}, mode="prune")
    with pytest.raises(ValueError, match="dualint 4 must be a multiple of projint 3"):
        admm(tiny_model(), projint=3, dualint=4)
    model, method = admm(tiny_model(), dualint=4)   # projint 0 is once per epoch: known at the first step
    with pytest.raises(ValueError, match="dualint 4 must be a multiple of projint 10"):
        method.on_step(model, step(0, 1, 10))
    admm(tiny_model(), {"nnz_budget": 0.1}, mode="prune")       # prune needs no bit budget
    admm(tiny_model(), {"bit_budget": 3}, mode="quantize")      # quantize needs no nnz budget


def test_prox_step_and_dual_update_follow_the_reference_formulas():
    """A-4: W = 1, V = 0.2, U = 0.1, lr 0.1, rho 0.05 -> (1 + 0.005 * 0.1) / 1.005; at the epoch's
    last step W is pruned, V <- quantize(W + U), then U <- U + W - V."""
    model, method = admm(tiny_model(), rho=0.05, prox=True, project_first_step=False)
    weights = method._weights()
    with torch.no_grad():
        for w, v, u in zip(weights, method.V, method.U):
            w.fill_(1.0), v.fill_(0.2), u.fill_(0.1)
    method.on_step(model, step(0, 1, 3, lr=0.1))
    assert torch.allclose(weights[0], torch.tensor(0.99552239))
    assert torch.all(method.U[0] == 0.1) and torch.all(method.V[0] == 0.2)   # V, U wait for the epoch's end
    method.on_step(model, step(0, 2, 3, lr=0.1))
    expected = ((0.99552239 + 0.005 * 0.1) / 1.005 + 0.005 * 0.1) / 1.005
    method.on_step(model, step(0, 3, 3, lr=0.1))   # prox, prune, then V and U
    for w, v, u in zip(weights, method.V, method.U):
        assert torch.allclose(w[w != 0], torch.tensor(expected))
        assert distinct_values(v).numel() <= 2 ** max(method.bits)
        assert torch.allclose(u, 0.1 + w - v, atol=1e-6)
    assert bits_used(method.bits, method.nnz) <= method.total_bits


def test_augmented_lagrangian_is_in_the_loss_without_prox():
    model, method = admm(tiny_model(), rho=0.3)
    with torch.no_grad():
        method.U[0].fill_(0.5)
    base = torch.tensor(1.0)
    expected = 1.0 + 0.15 * sum(float(((w.detach() - v + u) ** 2).sum())
                                for w, v, u in zip(method._weights(), method.V, method.U))
    assert float(method.loss(model, None, base).detach()) == pytest.approx(expected, rel=1e-5)
    _, with_prox = admm(tiny_model(), prox=True)
    assert float(with_prox.loss(model, None, base)) == 1.0


def test_distillation_from_the_starting_model_follows_classify_loss():
    model, method = admm(tiny_model(), kdtemp=4.0, prox=True)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = model(x)                                   # the teacher: the model as the stage starts
        for p in model.parameters():                   # then the student moves away from it
            p.mul_(0.5)
    out = model(x)
    kd = (-F.softmax(t / 4, 1) * F.log_softmax(out / 4, 1)).sum(1).mean()
    assert float(method.loss(model, out, torch.tensor(0.0)).detach()) == pytest.approx(4 * float(kd.detach()), rel=1e-5)


def test_weight_decay_goes_to_weights_only():
    model, method = admm(tiny_model())
    decay, rest = method.param_groups(model, 5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("weight") for p in decay["params"]) and decay["weight_decay"] == 5e-4
    assert all(names[id(p)].endswith("bias") for p in rest["params"]) and rest["weight_decay"] == 0.0


def run_steps(model, method, epochs, spe, start=0, lr=0.05):
    """A stand-in for training: a gradient-free deterministic nudge, then the method's hook."""
    for epoch in range(start, epochs):
        for i in range(1, spe + 1):
            with torch.no_grad():
                for k, w in enumerate(method._weights()):
                    w.add_(0.01 * torch.sin(torch.arange(w.numel()).view_as(w) * (epoch * spe + i + k)))
            method.on_step(model, step(epoch, i, spe, lr))


@pytest.mark.parametrize("args", [dict(prox=True, projint=2, dualint=4), dict(bwlb=2), dict(fixedbits=True)])
@pytest.mark.slow
def test_projections_keep_the_budget_and_intervals(args):
    model, method = admm(tiny_model(), {"nnz_budget": 0.2, "bit_budget": 3}, **args)
    pruned_at = []
    prune = method.prune
    method.prune = lambda w: (pruned_at.append(True), prune(w), budget_ok(method))
    run_steps(model, method, 2, 4)
    if args.get("projint") == 2:
        assert len(pruned_at) == 1 + 4            # step 1, then every 2 steps (4 per 2 epochs of 4)
    else:
        assert len(pruned_at) == 1 + 2            # step 1, then each epoch's last step
    assert all(args.get("bwlb", 1) <= b <= 8 for b in method.bits)
    if args.get("fixedbits"):
        assert method.bits == [3, 3, 3]
    method.finalize(model)
    finalized_within_budget(model, method)


def budget_ok(method):
    nnz = [int((w != 0).sum()) for w in method._weights()]
    assert nnz == method.nnz and bits_used(method.bits, nnz) <= method.total_bits


def finalized_within_budget(model, method):
    report = method.report(model)
    assert report["bits_used"] <= method.total_bits
    assert report["compression_rate"] >= report["target_compression_rate"] - 1e-9
    for layer, w in zip(report["layers"], method._weights()):
        assert layer["nonzero"] == int((w != 0).sum())
        if method.uses_admm:
            assert distinct_values(w).numel() <= 2 ** layer["bits"] and layer["eval_bits"] <= layer["bits"]


def test_bits_freeze_after_bits_epoch():
    model, method = admm(tiny_model(), {"nnz_budget": 0.2, "bit_budget": 3}, bits_epoch=1)
    run_steps(model, method, 2, 3)
    frozen = list(method.bits)
    run_steps(model, method, 4, 3, start=2)     # epochs 2 and 3 are > bits_epoch
    assert method.bits == frozen


def test_prune_only_and_quantize_only_modes():
    model, method = admm(tiny_model(), {"nnz_budget": 0.1}, mode="prune")
    assert method.V is None and method.bits == [32, 32, 32]
    run_steps(model, method, 1, 3)
    method.finalize(model)
    report = method.report(model)
    assert report["bits_used"] <= method.total_bits == 32 * sum(method.nnz)
    assert report["compression_rate"] == pytest.approx(sum(method.numels) / sum(r["nonzero"] for r in report["layers"]))

    model, method = admm(tiny_model(), {"bit_budget": 2}, mode="quantize")
    run_steps(model, method, 1, 3)
    assert method.nnz == method.numels and method.total_bits == 2 * sum(method.numels)
    method.finalize(model)
    report = method.report(model)
    assert report["bits_used"] <= method.total_bits
    for w, b in zip(method._weights(), method.bits):
        assert distinct_values(w, include_zero=True).numel() <= 2 ** b


@pytest.mark.slow
def test_state_dict_round_trip_resumes_exactly():
    model, method = admm(tiny_model(), {"nnz_budget": 0.2, "bit_budget": 3}, prox=True, dualint=2, projint=2)
    run_steps(model, method, 1, 4)
    saved_model, saved_method = copy.deepcopy(model.state_dict()), copy.deepcopy(method.state_dict())
    run_steps(model, method, 2, 4, start=1)

    resumed_model, resumed = admm(tiny_model(seed=7), {"nnz_budget": 0.2, "bit_budget": 3},
                                  prox=True, dualint=2, projint=2)
    resumed_model.load_state_dict(saved_model)
    resumed.load_state_dict(saved_method)
    for key in ("V", "U"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(resumed, key), saved_method[key]))
    assert resumed.bits == saved_method["bits"] and resumed.nnz == saved_method["nnz"]
    run_steps(resumed_model, resumed, 2, 4, start=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()))
    assert resumed.bits == method.bits and resumed.nnz == method.nnz
    assert all(torch.equal(a, b) for a, b in zip(resumed.U, method.U))


# -- on the trainer -----------------------------------------------------------------------------------
def run_spec(**method_args):
    return RunSpec(scale="smoke", paper="t", row="r", seed=0, method="admm", model="lenet300-100",
                   model_args={"width": 0.25}, dataset="synthetic",
                   dataset_args={"train_size": 256, "test_size": 64, "shape": [1, 8, 8]},
                   train={"epochs": 2, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4},
                   method_args={"rho": 0.05, **method_args}, budget={"nnz_budget": 0.1, "bit_budget": 3},
                   device="cpu")


def train_then_resume(spec, tmp_path):
    """(uninterrupted trainer, trainer stopped after epoch 1 and resumed in a fresh Trainer)."""
    lines = []
    whole = Trainer(spec, tmp_path / "whole", log=lines.append)
    whole.run()
    first = Trainer(spec, tmp_path / "stopped", log=lines.append)
    first.cfg.epochs = 1                     # stop after epoch 1 (its checkpoint is what a kill leaves)
    first.run()
    resumed = Trainer(spec, tmp_path / "stopped", log=lines.append)
    resumed.run()
    assert any(line.startswith("resumed from") and "epoch 1/2" in line for line in lines)
    return whole, resumed


def same_run(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma, mb = a.method.state_dict(), b.method.state_dict()
    assert ma["bits"] == mb["bits"] and ma["nnz"] == mb["nnz"]
    assert all(torch.equal(x, y) for k in ("V", "U") for x, y in zip(ma[k], mb[k]))


@pytest.mark.slow
def test_training_meets_the_budget_and_resumes_exactly(tmp_path):
    whole, resumed = train_then_resume(run_spec(), tmp_path)
    same_run(whole, resumed)
    budget_ok(whole.method)                   # the last step's projection leaves W within the budget
    whole.method.finalize(whole.model)
    finalized_within_budget(whole.model, whole.method)


@pytest.mark.slow
def test_prox_training_resumes_exactly(tmp_path):
    whole, resumed = train_then_resume(run_spec(prox=True), tmp_path)
    same_run(whole, resumed)


# -- finetune.py's role: fixed sparsity pattern and bits, codebook-quantized forward -----------------
from methods.finetune import Codebook, bits_in_use          # noqa: E402
from methods.quantize import refine_codebook                # noqa: E402
from core.metrics import layer_sparsity, model_size      # noqa: E402

FINETUNE = get_method("finetune")


def quantized_sparse_linear():
    """A 2x4 layer on the codebook {-0.5, 0.25, 1, 2} (2 bits) with three zeros."""
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.25, 0.0, 1.0, -0.5], [0.0, 2.0, 0.0, 0.25]]))
    return torch.nn.Sequential(layer)


def test_refine_codebook_moves_each_centroid_to_its_values_mean():
    x = torch.tensor([0.0, 1.0, 1.2, 3.0, 3.4, 0.0])
    book = refine_codebook(x, torch.tensor([1.0, 3.0]), iters=1, zero_anchored=False)
    assert torch.allclose(book, torch.tensor([1.1, 3.2]))      # zeros take no part
    assert torch.allclose(refine_codebook(x, torch.tensor([0.0, 2.0]), 5, zero_anchored=False),
                          torch.tensor([1.1, 3.2]))
    # zero-anchored, the 0 never moves: 1.0 (halfway, to the lower) and later 1.2 end on it
    assert torch.allclose(refine_codebook(x, torch.tensor([0.0, 2.0]), 5), torch.tensor([0.0, 3.2]))
    assert torch.equal(refine_codebook(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 5.0]), 3, zero_anchored=False),
                       torch.tensor([1.0, 5.0]))               # an empty centroid stays put


# finetune.py (hyang1990/sparsity_quantization_joint), without --quant, so dictnz=False:
#   conv_weights_dict[i] = get_optim_val_dict(w.data[mask], bits, niter=100, dictnz=False)
#     -> util.zerok_means1D(X, 2**bits + 1): val_dict = [0, linspace(min nz, max nz, 2**bits)], Lloyd on
#        the nonzeros with distances to EVERY centroid (0 included, start_idx = 1 keeps it at 0), return
#        when |pre_dist - cur_dist| / cur_dist < 1e-3 (measured before the update);
#   forward: km_quantize_tensor(w, bits, val_dict): |w| < 1e-5 -> 0, else the nearest centroid, 0 included;
#   every round(len(loader)/20) batches and at the last: get_optim_val_dict(w.data, bits, niter=5, val_dict);
#   after each epoch's evaluation but the last: the same with niter=100.
FINETUNE_W = [[-1.0, 0.0, -0.8, 0.9], [1.1, 0.2, 0.0, 0.05]]


def unquantized_sparse_linear():
    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(FINETUNE_W))
    return torch.nn.Sequential(layer)


def test_finetune_codebook_reference_example_small_weights_snap_to_zero():
    """1 bit, nonzeros X = [-1, -0.8, 0.9, 1.1, 0.2, 0.05]: init [0, -1, 1.1]; iteration 0 assigns
    -1, -0.8 -> -1; 0.9, 1.1 -> 1.1; 0.2, 0.05 -> 0 (0.04 < 0.81), SSE 0.1225, moves to [0, -0.9, 1.0];
    iteration 1: SSE 0.0825 (change 0.48 > 1e-3), same means; iteration 2: SSE 0.0825 -> return.
    Forward: 0.2 and 0.05 snap to 0 though unpruned. After 1.1 -> 1.6, 5 warm-started iterations:
    SSE 0.4325, 1.0 -> mean(0.9, 1.6) = 1.25; SSE 0.3075; unchanged -> [0, -0.9, 1.25]."""
    model = unquantized_sparse_linear()
    method = FINETUNE(FINETUNE.Args(quantize=True, tensors="weights", weightbits=[1]))
    method.build(model)
    quantizer = model[0].parametrizations.weight[1]
    assert quantizer.codebook.tolist() == pytest.approx([-0.9, 0.0, 1.0])
    assert model[0].weight.flatten().tolist() == pytest.approx([-0.9, 0, -0.9, 1.0, 1.0, 0, 0, 0])
    assert model[0].parametrizations.weight[0].mask.tolist() == [[1, 0, 1, 1], [1, 1, 0, 1]]   # still trained
    with torch.no_grad():
        model[0].parametrizations.weight.original[1, 0] = 1.6
    method.refresh_codebooks(5)
    assert quantizer.codebook.tolist() == pytest.approx([-0.9, 0.0, 1.25])
    assert model[0].weight.flatten().tolist() == pytest.approx([-0.9, 0, -0.9, 1.25, 1.25, 0, 0, 0])
    method.finalize(model)
    layers = layer_sparsity(model)
    assert layers[0]["nonzero"] == 4 and method.storage(model, layers) == [(1, 4)]   # snapped zeros cost nothing


def test_finetune_codebook_without_the_zero_centroid_keeps_every_unpruned_weight():
    model = unquantized_sparse_linear()
    method = FINETUNE(FINETUNE.Args(quantize=True, tensors="weights", weightbits=[1], zero_centroid=False))
    method.build(model)
    book = model[0].parametrizations.weight[1].codebook
    assert book.numel() == 2 and 0.0 not in book.tolist()
    assert torch.equal(model[0].weight != 0, torch.tensor(FINETUNE_W) != 0)


@pytest.mark.parametrize("iters", [1, 5, 100])
@pytest.mark.parametrize("zero_anchored", [True, False])
def test_refine_codebook_matches_the_reference_lloyd_from_a_warm_start(iters, zero_anchored):
    g = torch.Generator().manual_seed(iters)
    x = torch.randn(400, generator=g) * 0.1
    x[:100] = 0                                                    # pruned
    start = kmeans_codebook(x[200:], 2, zero_anchored)             # a codebook fitted on other weights
    nonzero = x[x != 0]
    expected = reference_lloyd(x if zero_anchored else nonzero, 2, zero_anchored, iters, init=start)
    assert torch.allclose(refine_codebook(x, start, iters, zero_anchored).double(), expected, atol=1e-6)


def test_finetune_refreshes_codebooks_on_finetune_py_schedule():
    """45 steps an epoch: every round(45/20) = 2 steps and at step 45, 5 iterations; 100 before
    every epoch but the first (finetune.py: after each epoch's evaluation but the last)."""
    model = unquantized_sparse_linear()
    method = FINETUNE(FINETUNE.Args(quantize=True, tensors="weights", weightbits=[1]))
    method.build(model)
    calls = []
    method.refresh_codebooks = lambda iters: calls.append((progress.epoch, progress.step, iters))
    for epoch in range(2):
        progress = step(epoch, 0, 45)
        method.on_epoch_start(model, progress)
        for i in range(1, 46):
            progress = step(epoch, i, 45)
            method.on_step(model, progress)
    first = [(0, i, 5) for i in list(range(2, 45, 2)) + [45]]
    assert calls == first + [(1, 45, 100)] + [(1, 45 + s, 5) for _, s, _ in first]


@pytest.mark.parametrize("zero_centroid", [True, False])
def test_quantized_finetune_starts_where_the_compressed_model_is_and_keeps_pattern_and_bits(zero_centroid):
    model = quantized_sparse_linear()
    start = model[0].weight.detach().clone()
    method = FINETUNE(FINETUNE.Args(quantize=True, tensors="weights", zero_centroid=zero_centroid))
    method.build(model)
    assert method.bits == [2] and bits_in_use(start) == 2
    assert torch.equal(model[0].weight, start)                 # the codebook is the model's own values
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    for i in range(1, 5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        method.on_step(model, step(0, i, 4))
    assert torch.equal(model[0].parametrizations.weight[0].mask, (start != 0).float())   # the mask is fixed
    method.finalize(model)
    w = model[0].weight.detach()
    assert torch.all(w[start == 0] == 0)                       # pruned weights stay zero
    if not zero_centroid:
        assert torch.equal(w == 0, start == 0)                 # and no others become zero
    assert torch.unique(w[w != 0]).numel() <= 4                # still 2 bits' worth of values
    assert not torch.equal(w, start)                           # and it did train
    layers = layer_sparsity(model)
    assert method.storage(model, layers) == [(2, int((w != 0).sum()))]


def test_codebook_forward_is_nearest_value_with_a_straight_through_gradient():
    w = torch.tensor([0.0, 0.2, 0.7, -1.0, 1.6], requires_grad=True)
    q = Codebook(torch.tensor([-1.0, 0.5, 1.5]))(w)
    assert torch.equal(q.detach(), torch.tensor([0.0, 0.5, 0.5, -1.0, 1.5]))   # zeros stay zero
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones(5))
    snapped = Codebook(torch.tensor([-1.0, 0.0, 0.5, 1.5]))(torch.tensor([0.0, 0.2, 0.3, -0.6, 8e-6]))
    assert torch.equal(snapped, torch.tensor([0.0, 0.0, 0.5, -1.0, 0.0]))     # 0 is a candidate; |w| < 1e-5 -> 0


def test_a_saved_quantized_finetune_loads_into_a_freshly_built_one():
    model = quantized_sparse_linear()
    method = FINETUNE(FINETUNE.Args(quantize=True, tensors="weights"))
    method.build(model)
    other = FINETUNE(FINETUNE.Args(quantize=True, tensors="weights"))
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))   # random: other mask, codebook size
    other.build(fresh)
    fresh.load_state_dict(model.state_dict())
    other.load_state_dict(method.state_dict())
    assert torch.equal(fresh[0].weight, model[0].weight) and other.bits == [2]


def test_weightbits_must_name_every_layer():
    with pytest.raises(ValueError, match="one bit width per layer"):
        FINETUNE(FINETUNE.Args(quantize=True, weightbits=[3])).build(tiny_model())


def test_storage_of_each_admm_mode():
    for mode, budget in [("joint", {"nnz_budget": 0.1, "bit_budget": 3}), ("prune", {"nnz_budget": 0.1}),
                         ("quantize", {"bit_budget": 3})]:
        model, method = admm(tiny_model(), budget, mode=mode)
        method.finalize(model)
        layers = layer_sparsity(model)
        size = model_size(layers, method.storage(model, layers))
        report = method.report(model)
        assert size["compression"] == pytest.approx(report["compression_rate"])
        assert size["size_bits"] <= report["bit_budget_total"]


# -- chains and reporting (train.py's model_latest.pt / model_best, finetune.py's weight_bits) ----------
from dataclasses import replace                             # noqa: E402
import json                                                 # noqa: E402
from harness.aggregate import rows_from_metrics             # noqa: E402
from harness.evaluate import evaluate                       # noqa: E402
from core.metrics import prunable_layers                 # noqa: E402
from harness.building import load_trained                    # noqa: E402


def quiet(spec, out, init=None):
    return Trainer(spec, out, init_path=init, log=lambda *_: None)


def layer_weights(model):
    return [m.weight.detach().clone() for _, m in prunable_layers(model)]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A trained 2-epoch ADMM run: (its folder, its saved W per layer, its final bits)."""
    out = tmp_path_factory.mktemp("admm") / "parent"
    quiet(run_spec(prox=True), out).run()
    saved = torch.load(out / "model.pt")
    model = tiny_model()
    model.load_state_dict(saved["state_dict"])
    return out, layer_weights(model), saved["method"]["bits"]


@pytest.mark.slow
def test_next_admm_stage_starts_from_the_unquantized_sparse_weights(parent, tmp_path):
    """train.py --pretrain <previous>/model_latest.pt: W pruned, not quantized (model.pt holds it)."""
    out, w_parent, bits = parent
    child = replace(run_spec(prox=True), row="child", init="r", budget={"nnz_budget": 0.05, "bit_budget": 2})
    w_child = layer_weights(quiet(child, tmp_path / "child", out / "model.pt").model)
    for wc, wp, b in zip(w_child, w_parent, bits):
        assert torch.equal(wc, wp)                                   # the parent's W itself
        assert torch.equal(wc != 0, wp != 0) and 0 < int((wc != 0).sum()) < wc.numel()   # sparse
    assert any(distinct_values(w).numel() > 2 ** b for w, b in zip(w_child, bits))       # not on a codebook
    quantized = replace(child, method_args={**child.method_args, "handoff": "quantized"})
    parent_spec = replace(run_spec(prox=True), method_args={**run_spec(prox=True).method_args, "handoff": "quantized"})
    quiet(parent_spec, tmp_path / "qparent").run()
    bits_q = torch.load(tmp_path / "qparent" / "model.pt")["method"]["bits"]
    w_q = layer_weights(quiet(quantized, tmp_path / "qchild", tmp_path / "qparent" / "model.pt").model)
    assert all(distinct_values(w).numel() <= 2 ** b for w, b in zip(w_q, bits_q))      # the finalized model


def finetune_spec(**method_args):
    return replace(run_spec(), row="tune", init="r", method="finetune", budget={},
                   method_args={"quantize": True, "tensors": "weights", **method_args},
                   train={"epochs": 1, "batch_size": 64, "lr": 0.01})


def test_finetune_reads_the_admm_runs_bits_and_starts_from_its_unquantized_weights(parent, tmp_path):
    """finetune.py: weight_bits from the model's buffer (the ADMM run's final bits) unless
    --weightbits; mask = (W != 0) of the unquantized W; first codebook fitted on W's nonzeros."""
    out, w_parent, bits = parent
    trainer = quiet(finetune_spec(), tmp_path / "tune", out / "model.pt")
    assert trainer.method.bits == bits and trainer.method.inherited == {"weight_bits": bits}
    for (_, m), wp in zip(prunable_layers(trainer.model), w_parent):
        assert torch.equal(m.parametrizations.weight.original, wp)
        assert torch.equal(m.parametrizations.weight[0].mask, (wp != 0).float())
    trainer.run()
    model, method = load_trained(tmp_path / "tune" / "model.pt", trainer.info)   # evaluation's rebuild
    assert method.bits == bits
    given = quiet(finetune_spec(weightbits=[2, 3, 4]), tmp_path / "given", out / "model.pt")
    assert given.method.bits == [2, 3, 4]


def test_finetune_without_bits_from_an_unquantized_model_is_a_clear_error(tmp_path):
    dense = replace(run_spec(), method="dense", method_args={}, budget={}, train={"epochs": 1, "batch_size": 64})
    quiet(dense, tmp_path / "dense").run()
    with pytest.raises(ValueError, match="give method_args.weightbits"):
        quiet(finetune_spec(), tmp_path / "tune", tmp_path / "dense" / "model.pt")


def test_eval_model_quantizes_a_copy_and_restores_w():
    model, method = admm(tiny_model(), {"nnz_budget": 0.2, "bit_budget": 3})
    run_steps(model, method, 1, 3)
    before = layer_weights(model)
    with method.eval_model(model) as m:
        inside = layer_weights(m)
    assert all(distinct_values(w).numel() <= 2 ** b for w, b in zip(inside, method.bits))
    assert any(distinct_values(w).numel() > 2 ** b for w, b in zip(before, method.bits))
    assert all(torch.equal(a, b) for a, b in zip(before, layer_weights(model)))   # W is back, bit for bit
    expected = quantize_with_bits(before, method.bits)                             # quantize_with_bits on W
    assert all(torch.equal(a, b) for a, b in zip(inside, expected))
    model, method = admm(tiny_model(), {"nnz_budget": 0.2}, mode="prune")
    with method.eval_model(model) as m:
        assert m is model


def test_top1_is_the_final_quantized_model_and_best_top1_the_best_quantized_epoch(tmp_path):
    """train.py tests a quantized copy each epoch and keeps the best as model_best; the table's top1
    is the final model (finalize), best_top1 the best epoch's quantized copy."""
    spec = replace(run_spec(), train={**run_spec().train, "epochs": 3})
    trainer = quiet(spec, tmp_path / "r")
    calls = []
    eval_model = trainer.method.eval_model
    trainer.method.eval_model = lambda model: (calls.append(1), eval_model(model))[1]
    summary = trainer.run()
    tested = [h["test_top1"] for h in summary["history"]]
    assert len(calls) == len(tested) == 3 and summary["best_top1"] == max(tested)
    metrics = evaluate(spec, tmp_path / "r" / "model.pt", tmp_path / "r" / "metrics.json")
    assert metrics["points"][0]["top1"] == tested[-1]          # the final epoch's copy is the final model
    row = next(rows_from_metrics(json.loads((tmp_path / "r" / "metrics.json").read_text())))
    assert row["top1"] == tested[-1] and row["best_top1"] == max(tested)


def test_admm_cosine_is_train_pys_lr_after_a_fractional_warmup():
    """train.py (lr 0.05, --warmupT 0.5, 3 epochs of 79 batches): warmup over int(0.5 * 79) = 39
    steps, the lr held to the end of epoch 0 (its cosine steps only when the integer epoch >=
    0.5), then torch's CosineAnnealingLR over 79 * 2.5 steps, stepped after each batch, so the
    last batch trains at 0.0050 instead of ~0. Its lr per batch, replayed with torch's scheduler."""
    from core.schedules import LRSchedule
    steps, epochs, base, warmup = 79, 3, 0.05, 0.5
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps * (epochs - warmup))
    reference = []
    for epoch in range(epochs):
        for i in range(steps):
            t = i + epoch * steps
            if t < int(warmup * steps):
                opt.param_groups[0]["lr"] = min(1.0, (t + 1) / int(warmup * steps)) * base
            reference.append(opt.param_groups[0]["lr"])
            opt.step()
            if epoch >= warmup:
                cosine.step()
    ours = LRSchedule(base, epochs, "admm_cosine", warmup_epochs=warmup)
    after_warmup = range(40, epochs * steps)     # here the warmup is 39.5 steps, there int(39.5)
    assert [ours(t / steps) for t in after_warmup] == pytest.approx([reference[t] for t in after_warmup], abs=1e-9)
    assert reference[-1] == pytest.approx(0.00500, abs=1e-4) and ours((epochs * steps - 1) / steps) > 0.004
    # the warmup itself: (t + 1) / 39 there, t / 39.5 here, within two steps of it
    assert all(abs(ours(t / steps) - reference[t]) <= 2 * base / 39 for t in range(40))
