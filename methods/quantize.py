"""The projections of ADMM sparsity-quantization joint learning (Yang et al., CVPR 2020), as plain
functions on lists of per-layer weight tensors (one tensor per Conv2d/Linear layer).

The constraint set (hyang1990/sparsity_quantization_joint, util.py and train.py):

    sum_l b_l * nnz_l <= B,   layer l holds at most 2^b_l distinct NONZERO values (and 0),  b_l in {bwlb..8}

with one scalar bit budget B = bit_budget * sum_l ceil(nnz_budget * n_l) (`layer_budget`).

- `prune_projection`: keep weights in decreasing w^2 / b_l until their bit cost would pass B: the
  greedy for the 0-1 knapsack "maximise the kept energy sum w^2 at cost b_l per kept weight". It
  keeps a prefix of that order, so it is the Euclidean projection exactly when all layers share one
  bit width (then it keeps the largest |w|); with mixed widths it can miss the optimum, by less
  than the w^2 of the first weight that did not fit (the LP-relaxation bound).
- `kmeans_codebook` / `quantize_tensor`: per-layer 1-D k-means with an exact zero that never moves
  ("zero-anchored"), 2^b nonzero centroids initialised on linspace(min, max) of the nonzeros,
  Lloyd iterations until the relative change of the squared error is below 1e-3 (at most 100).
- `mckp_greedy` / `allocate_bits`: one bit width per layer by the greedy for the multiple-choice
  knapsack "minimise sum_l SSE_l(b_l) s.t. sum_l b_l * nnz_l <= B" on each layer's concave hull.
- `joint_projection`: the two in a row (prune with the current bits, then quantize and allocate).

Where this code departs from the reference, on purpose:
- Pruning keeps every item that fits; the reference's `nonzero(cumsum <= B).max()` keeps one fewer
  (`off_by_one=True` reproduces it). Ties in the score are broken by position (stable sort).
- A layer with at most 2^b distinct nonzero values gets those values as its codebook (zero error:
  the exact projection, and re-quantizing a quantized layer changes nothing). The reference
  special-cases fewer than 2^b nonzero ENTRIES and then uses linspace(min, max) as the codebook,
  which generally is not those values.
- A centroid whose cluster empties keeps its place; the reference's in-memory path (layers below
  2^20 nonzeros) sets it to 0, its chunked path keeps it. Values with |x| < 1e-5 count as zero both
  when fitting and when assigning (the reference's `quantize_with_bits` fits on them).
- Lloyd runs on the layer's values sorted once (clusters are runs between centroid midpoints, sums
  from float64 prefix sums), not on an n x k distance matrix: same iterates up to rounding, far less
  time and memory. Exact ties go to the lower value where the reference's argmin takes the lower
  index.
"""
import functools
import math

import torch

from core.metrics import model_size

NZ_EPS = 1e-5      # |x| below this counts as zero (util._NZ_PES)
MAX_BITS = 8       # candidate bit widths are bwlb..8
KMEANS_ITERS = 100
KMEANS_TOL = 1e-3  # stop when |SSE_prev - SSE| / SSE < tol


# -- budgets and compression rate ------------------------------------------------------------------
def layer_budget(numels, nnz_budget, bit_budget):
    """(per-layer nonzero targets ceil(nnz_budget * n_l), total bit budget B = bit_budget * their sum),
    as train.py forms them. The targets only form B: per-layer nnz and bits are left to the
    projections."""
    nnz = [math.ceil(nnz_budget * n) for n in numels]
    return nnz, bit_budget * sum(nnz)


def bits_used(bits, nnz):
    return sum(b * k for b, k in zip(bits, nnz))


def compression_rate(numels, bits, nnz):
    """32 * sum_l n_l / sum_l (b_l * nnz_l): the paper's and reference's rate, over the weights of
    Conv2d/Linear layers only, as core.metrics.model_size defines it for every method."""
    return model_size([{"params": n} for n in numels], list(zip(bits, nnz)))["compression"]


def distinct_values(w, include_zero=False):
    """Distinct values of `w` rounded to 6 decimals (the reference's `tensor_round(w, 6)`)."""
    u = torch.unique(torch.round(w.detach().flatten().double() * 1e6) / 1e6)
    return u if include_zero else u[u != 0]


def eval_bits(w, include_zero=False):
    """Bits the reference reports at evaluation: log2 of the number of distinct nonzero values
    (include_zero for quantization-only, whose codebook has no reserved zero), at least 0. The
    reference subtracts 1 for the zero whether or not the layer has one; this counts it exactly."""
    return math.log2(max(1, distinct_values(w, include_zero).numel()))


# -- pruning: greedy 0-1 knapsack ------------------------------------------------------------------
def prune_projection(weights, bits, budget, off_by_one=False):
    """Zero all but the weights of highest w^2 / b_l whose summed bit cost stays <= `budget`.
    Returns (pruned tensors, nonzeros per layer); the inputs are left alone.

    Why w^2 / b: the projection keeps the set maximising the energy sum w^2 for its cost; the
    ratio order is the classic knapsack greedy. It stops at the first weight that does not fit
    (a prefix of the order, as the reference does), it does not skip ahead to cheaper ones."""
    flat = torch.cat([w.detach().flatten() for w in weights])
    cost = torch.cat([torch.full((w.numel(),), int(b), dtype=torch.long, device=flat.device)
                      for w, b in zip(weights, bits)])
    order = torch.argsort(flat.pow(2) / cost, descending=True, stable=True)
    spent = torch.cumsum(cost[order], 0)
    keep = int((spent <= math.floor(budget)).sum())   # costs are integers: compare with floor(B)
    if off_by_one:
        keep = max(keep - 1, 0)
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[order[:keep]] = True
    pruned = torch.where(kept, flat, torch.zeros_like(flat))
    out = [p.view_as(w) for p, w in zip(pruned.split([w.numel() for w in weights]), weights)]
    return out, [int((p != 0).sum()) for p in out]


# -- quantization: zero-anchored 1-D k-means -------------------------------------------------------
class SortedValues:
    """One layer's values, sorted once with prefix sums of x and x^2. In 1-D the clusters of sorted
    centroids are runs of the sorted values, so a Lloyd iteration costs O(k log n) (a search for
    each midpoint) instead of O(n k), and the same sort serves every bit width. Sums in float64.

    zero_anchored: values with |x| < 1e-5 are set aside as zeros (their x^2 is still error)."""

    def __init__(self, x, zero_anchored=True):
        flat = x.detach().flatten().double()
        self.zero_anchored = zero_anchored
        self.zeroed_sse = 0.0
        if zero_anchored:
            small = flat.abs() < NZ_EPS
            self.zeroed_sse = float(flat[small].pow(2).sum())
            flat = flat[~small]
        self.values = torch.sort(flat).values
        zero = torch.zeros(1, dtype=flat.dtype, device=flat.device)
        self.s1 = torch.cat([zero, torch.cumsum(self.values, 0)])
        self.s2 = torch.cat([zero, torch.cumsum(self.values.pow(2), 0)])

    @functools.cached_property
    def distinct(self):
        """The distinct values (sorted): computed once, checked for every bit width."""
        v = self.values
        return v[torch.cat([torch.ones(min(1, v.numel()), dtype=torch.bool, device=v.device), v[1:] != v[:-1]])]

    def runs(self, centroids):
        """(count, sum, sum of squares) of the values nearest to each of the sorted `centroids`;
        a value exactly halfway goes to the lower centroid."""
        ends = torch.searchsorted(self.values, (centroids[1:] + centroids[:-1]) / 2, right=True)
        ends = torch.cat([ends, ends.new_full((1,), self.values.numel())])
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        return ends - starts, self.s1[ends] - self.s1[starts], self.s2[ends] - self.s2[starts]

    def sse(self, centroids, runs=None):
        """Squared error of the values on the sorted `centroids` (sum over runs of
        sum x^2 - 2 c sum x + n c^2), set-aside zeros included."""
        n, s, q = runs if runs is not None else self.runs(centroids)
        return float((q - 2 * centroids * s + n * centroids.pow(2)).clamp_min(0).sum()) + self.zeroed_sse


def fit_codebook(sv, bits, iters=KMEANS_ITERS, tol=KMEANS_TOL):
    """(sorted codebook, its squared error) for a `SortedValues`: k <= 2^bits centroids, plus an
    exact 0 that never moves when zero-anchored.

    As util.zerok_means1D: centroids start on linspace(min, max) of the (nonzero) values; Lloyd
    iterations stop when the squared error changes by less than `tol` relative, or after `iters`.
    Where the values take at most 2^bits distinct values, they are the codebook (zero error)."""
    levels = 2 ** int(bits)
    v = sv.values
    zero = torch.zeros(1 if sv.zero_anchored else 0, dtype=v.dtype, device=v.device)
    if v.numel() == 0:
        return torch.zeros(1, dtype=v.dtype, device=v.device), sv.zeroed_sse
    distinct = sv.distinct
    if distinct.numel() <= levels:
        book = torch.sort(torch.cat([zero, distinct])).values
        return book, sv.zeroed_sse
    book = torch.cat([zero, torch.linspace(float(v[0]), float(v[-1]), levels, dtype=v.dtype, device=v.device)])
    fixed = torch.zeros_like(book, dtype=torch.bool)
    fixed[:zero.numel()] = True                       # the anchored zero
    return lloyd(sv, book, fixed, iters, tol)


def lloyd(sv, book, fixed, iters=KMEANS_ITERS, tol=KMEANS_TOL):
    """Lloyd iterations on a `SortedValues` from `book` (entries marked `fixed` never move), as
    util.zerok_means1D runs them: each iteration first assigns every value to its nearest centroid
    and measures the squared error, returns if that changed by less than `tol` relative to the
    previous iteration's, and otherwise moves each centroid that has values to their mean (an
    emptied one keeps its place). Returns (sorted book, its squared error)."""
    previous = None
    for _ in range(iters):
        book, order = torch.sort(book, stable=True)
        fixed = fixed[order]
        n, s, q = sv.runs(book)
        sse = sv.sse(book, (n, s, q))
        if previous is not None and (sse == 0 or abs(previous - sse) / sse < tol):
            return book, sse
        previous = sse
        move = (n > 0) & ~fixed                       # an emptied centroid keeps its place
        book = torch.where(move, s / n.clamp_min(1), book)
    book = torch.sort(book).values
    return book, sv.sse(book)


def kmeans_codebook(x, bits, zero_anchored=True):
    """One layer's codebook for `bits` (sorted, in x's dtype): [0 and] at most 2^bits centroids.
    zero_anchored is the joint/pruning setting (small nonzeros may snap to the fixed 0); without
    it (quantization only, the reference's `dictnz`) all 2^bits centroids move."""
    return fit_codebook(SortedValues(x, zero_anchored), bits)[0].to(x.dtype)


def assign(x, codebook, zero_anchored=True):
    """(quantized x, squared error per entry): each entry to its nearest codebook value; with
    zero_anchored, entries with |x| < 1e-5 go to 0 (as `km_quantize_tensor`)."""
    flat = x.detach().flatten()
    book = torch.sort(codebook.to(flat.dtype)).values
    q = book[torch.bucketize(flat, (book[1:] + book[:-1]) / 2)]
    if zero_anchored:
        q = torch.where(flat.abs() < NZ_EPS, torch.zeros_like(q), q)
    return q.view_as(x), (flat - q).pow(2)


def quantize_tensor(x, bits, zero_anchored=True):
    """(x on its own k-means codebook for `bits`, the squared error of doing so)."""
    book, sse = fit_codebook(SortedValues(x, zero_anchored), bits)
    return assign(x, book, zero_anchored)[0], sse


def refine_codebook(x, codebook, iters, zero_anchored=True):
    """At most `iters` Lloyd iterations on the nonzero entries of `x`, warm-started from `codebook`
    (finetune.py's codebook refresh: get_optim_val_dict(W, bits, niter, val_dict=previous)), with
    the same stopping rule as a fresh fit. zero_anchored: the codebook's 0 stays a fixed candidate,
    so small weights keep snapping to it (finetune.py without --quant); otherwise every centroid
    moves and only exact zeros are left out. Returns the sorted codebook in its own dtype."""
    sv = SortedValues(x, zero_anchored) if zero_anchored else SortedValues(x[x != 0], zero_anchored=False)
    book = torch.sort(codebook.detach().to(sv.values.device, torch.float64)).values
    if sv.values.numel() == 0:
        return book.to(codebook.dtype)
    fixed = torch.zeros_like(book, dtype=torch.bool)
    zeros = (book == 0).nonzero()
    if zero_anchored and len(zeros):
        fixed[int(zeros[0])] = True                   # the reserved 0 (util.zerok_means1D: val_dict[0])
    return lloyd(sv, book, fixed, iters)[0].to(codebook.dtype)


def quantize_with_bits(tensors, bits, zero_anchored=True):
    """Each tensor quantized with a fresh codebook for its fixed bit width (`--fixedbits`, the
    frozen bits after `--bits_epoch`, and the reference's evaluation copy)."""
    return [quantize_tensor(t, b, zero_anchored)[0] for t, b in zip(tensors, bits)]


# -- bit allocation: greedy multiple-choice knapsack -----------------------------------------------
def _upper_hull(costs, profits):
    """Indices of one group's items that a greedy may step through: cheapest first, each later one
    strictly more profitable (dominated items dropped; of equal costs the most profitable kept),
    and on the upper concave hull (incremental profit per cost strictly decreasing)."""
    order = sorted(range(len(costs)), key=lambda j: (costs[j], -profits[j]))
    kept = []
    for j in order:
        if kept and profits[j] <= profits[kept[-1]]:
            continue
        if kept and costs[j] == costs[kept[-1]]:
            kept[-1] = j
            continue
        kept.append(j)
    hull = []
    for j in kept:
        while len(hull) >= 2 and _slope(costs, profits, hull[-2], hull[-1]) <= _slope(costs, profits, hull[-1], j):
            hull.pop()
        hull.append(j)
    return hull


def _slope(costs, profits, a, b):
    return (profits[b] - profits[a]) / (costs[b] - costs[a])


def mckp_greedy(costs, profits, budget):
    """Pick one item per group maximising total profit with total cost <= budget (greedy).

    Start from every group's cheapest item; take hull upgrades in decreasing profit-per-cost; an
    upgrade that does not fit closes its group (its later upgrades are skipped) while the others go
    on (as `util.mckp_greedy`). The result is feasible and within the largest single upgrade of the
    optimum (LP-relaxation bound), not always optimal. Returns the chosen index per group."""
    hulls = [_upper_hull(c, p) for c, p in zip(costs, profits)]
    choice = [h[0] for h in hulls]
    spent = sum(c[j] for c, j in zip(costs, choice))
    if spent > budget:
        raise ValueError(f"bit budget {budget:g} is below the cheapest allocation ({spent:g} bits)")
    upgrades = [(_slope(costs[g], profits[g], h[k - 1], h[k]), g, k)
                for g, h in enumerate(hulls) for k in range(1, len(h))]
    upgrades.sort(key=lambda u: -u[0])     # stable: ties in group, then step order
    closed = set()
    for _, g, k in upgrades:
        if g in closed:
            continue
        extra = costs[g][hulls[g][k]] - costs[g][hulls[g][k - 1]]
        if spent + extra > budget:
            closed.add(g)
            continue
        choice[g] = hulls[g][k]
        spent += extra
    return choice


def allocate_bits(tensors, nnz, budget, bwlb=1, zero_anchored=True):
    """Quantize every layer, choosing its bit width in {bwlb..8} by `mckp_greedy` on the cost
    b * nnz_l (nnz from the last pruning) and the profit -SSE_l(b). Returns (quantized, bits)."""
    choices = list(range(int(bwlb), MAX_BITS + 1))
    costs, profits, codebooks = [], [], []
    for t, k in zip(tensors, nnz):
        sv = SortedValues(t, zero_anchored)                  # one sort serves every bit width
        fits = [fit_codebook(sv, b) for b in choices]
        codebooks.append([book for book, _ in fits])
        profits.append([-sse for _, sse in fits])
        costs.append([b * k for b in choices])
    picked = mckp_greedy(costs, profits, budget)
    quantized = [assign(t, books[j], zero_anchored)[0] for t, books, j in zip(tensors, codebooks, picked)]
    return quantized, [choices[j] for j in picked]


def joint_projection(weights, bits, budget, bwlb=1, off_by_one=False):
    """Onto the joint set: prune under `bits`, then quantize and re-allocate bits on the pruned
    weights. Returns (quantized sparse tensors, bits, nonzeros per layer); sum(bits * nnz) <= budget
    whenever the pruning could fit it (bits >= bwlb), since quantizing never adds a nonzero."""
    pruned, nnz = prune_projection(weights, bits, budget, off_by_one)
    quantized, new_bits = allocate_bits(pruned, nnz, budget, bwlb)
    return quantized, new_bits, [int((q != 0).sum()) for q in quantized]
