"""Evaluate a trained model at each of its method's evaluation points and write metrics.json."""
import json
import platform
import subprocess
from pathlib import Path

import torch

from core import io
from core.budgets import write_budget_csv
from core.metrics import accuracy, count_params, dense_macs, flops, layer_sparsity, model_size, sparsity_summary
from harness import deploy
from harness.building import load_trained, loaders_for, select_device


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluate(spec, model_path, out_path, threads=None, trained=None):
    """Evaluate the model.pt at model_path, or `trained`, the Trainer that has just written it: its
    model, method and test data in memory, as model.pt would restore them (tests/test_evaluate.py),
    without loading the data and the model again. At each point the model is also exported and its
    latency, memory and bytes measured (harness/deploy.py; export/ beside out_path)."""
    if threads:
        torch.set_num_threads(threads)
    if trained is not None:
        device, test_loader, info = trained.device, trained.test_loader, trained.info
        model, method = trained.model, trained.method
    else:
        device = select_device(spec.device)
        _, test_loader, info = loaders_for(spec, device, spec.train_config.batch_size,
                                           spec.train_config.eval_batch_size)
        model, method = load_trained(model_path, info, device)
    method.finalize(model)
    train_json = Path(model_path).with_name("train.json")
    train = json.loads(train_json.read_text()) if train_json.exists() else {}
    points, dense, export = [], None, Path(out_path).parent / "export"
    counted = None   # the network's dense MACs: the same at every point
    for i, level in enumerate(method.evaluation_points()):
        with method.at_level(model, level):
            with method.narrow(model):   # the same outputs; LCS's widths computed at their width
                acc = accuracy(model, test_loader, topk=(1, 5))
            counted = counted or dense_macs(model, info.shape, device)
            layers = layer_sparsity(model)
            storage = method.storage(model, layers)
            point = {"level": level, "level_kind": method.level_kind if level is not None else None,
                     **acc, **sparsity_summary(layers), **model_size(layers, storage),
                     **flops(model, info.shape, layers, device, counted), "params": count_params(model),
                     "layers": layers}
            kind = deploy.compression_kind(layers, storage)
            name = "model" if level is None else f"level{i}"
            point["deploy"] = deploy.measure(model, kind, info.shape, device, export, name,
                                             deploy.EFFORT.get(spec.scale, deploy.EFFORT["laptop"]), dense,
                                             narrow=lambda: method.narrow(model))
            point.update(deploy.headline(point["deploy"], kind))
            state = deploy.torchvision_state(model, spec.model, info.num_classes)
            if state is not None:   # the same weights for torchvision's own model class
                point["torchvision_file"] = f"{name}-torchvision.pt"
                torch.save(state, export / point["torchvision_file"])
            dense = point["deploy"]["dense"]
        points.append(point)
    # the settings of the result only: published values and notes are joined in by harness/aggregate.py
    result = {"spec": spec.result_dict(), "points": points, "method_report": method.report(model),
              "train": {k: v for k, v in train.items() if k != "history"},
              "env": {"torch": torch.__version__, "commit": git_commit(), "host": platform.node(),
                      "device": str(device),
                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                      "machine": deploy.machine()}}
    write_budget_csv(points[0]["layers"], Path(out_path).with_name("budget.csv"), points[0]["flops"])
    io.save_json(result, out_path)
    return result
