"""The train command evaluates the model it has just trained in memory (harness/evaluate.py,
`trained`); that must give exactly what evaluating the saved model.pt gives, for every method."""
import json

import pytest

from harness.deploy import deterministic_part
from harness.evaluate import evaluate
from harness.tables import runs_for
from harness.trainer import Trainer

CONFIG = {"papers": ["gmp", "str", "hoyer", "admm", "lcs"], "seeds": [0], "data_dir": "unused", "device": "cpu"}


def one_run_per_method_and_setting():
    """A smoke-scale run of every (paper, method, LCS setting) that starts from nothing."""
    seen, out = set(), []
    for spec in runs_for(CONFIG, scale="smoke")[1]:
        key = (spec.paper, spec.method, spec.method_args.get("setting"))
        if spec.init is None and not spec.budget.get("transfer") and key not in seen:
            seen.add(key)
            out.append(spec)
    return out


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
