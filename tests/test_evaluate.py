"""The train command evaluates the model it has just trained in memory (harness/evaluate.py,
`trained`); that must give exactly what evaluating the saved model.pt gives, for every method."""
import dataclasses
import json

import pytest

from harness.deploy import deterministic_part
from harness.evaluate import evaluate
from harness.tables import runs_for
from harness.trainer import Trainer
from methods import get_method
from methods.lcs import GRID_KEY

CONFIG = {"papers": ["gmp", "str", "hoyer", "admm", "lcs"], "seeds": [0], "data_dir": "unused", "device": "cpu"}


def one_run_per_method_and_setting():
    """A smoke-scale run of every (paper, method, LCS setting) that starts from nothing."""
    seen, out = set(), []
    for spec in runs_for(CONFIG, scale="smoke")[1]:
        key = (spec.paper, spec.method, spec.method_args.get("setting"))
        if spec.init is None and not spec.budget.get("transfer") and key not in seen:
            seen.add(key)
            out.append(at_two_levels(spec))
    return out


def at_two_levels(spec):
    """An LCS run evaluated at the first and last level of its grid only: two levels show that the
    in-memory model is put back between points, as well as the 6-14 of the tables do, in a quarter
    of the time."""
    if spec.paper != "lcs":
        return spec
    cls = get_method(spec.method)
    method = cls(cls.Args(**spec.method_args))
    grid = method.evaluation_points()
    key = GRID_KEY[getattr(method, "setting", "structured")]   # LEC (network slimming): a width grid
    args = {**spec.method_args, key: [grid[0], grid[-1]]}
    return dataclasses.replace(spec, method_args=args)


def without_env(metrics):
    """What must agree: all but where it ran and the timed deployment figures."""
    return {**{k: v for k, v in metrics.items() if k != "env"},
            "points": [deterministic_part(p) for p in metrics["points"]]}


@pytest.mark.slow
@pytest.mark.parametrize("spec", one_run_per_method_and_setting(), ids=lambda s: f"{s.paper}-{s.row}")
def test_evaluating_the_trained_model_in_memory_equals_evaluating_model_pt(spec, tmp_path):
    trainer = Trainer(spec, tmp_path, log=lambda *_: None)
    trainer.run()
    in_memory = evaluate(spec, tmp_path / "model.pt", tmp_path / "a.json", trained=trainer)
    from_disk = evaluate(spec, tmp_path / "model.pt", tmp_path / "b.json")
    assert json.dumps(without_env(in_memory), sort_keys=True) == json.dumps(without_env(from_disk), sort_keys=True)
