"""Which layers produce and read each BatchNorm's channels, from a torch.fx trace of the model:
what network slimming (methods/lec.py) zeroes with a pruned channel, and which conv LCS's quantized
layout folds each BN into (methods/lcs.py: conv_bn_pairs)."""
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from core.metrics import PRUNABLE_TYPES


_CHANNELWISE_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_CHANNELWISE_CALLS = (F.relu, torch.relu, torch.flatten, "relu", "flatten")


def norm_neighbours(model):
    """{norm name: (producer conv or None, [consumer layers])} from the traced graph: the conv
    whose only use is this norm, and the conv/linear layers its output reaches through
    channel-wise ops only (ReLU, pooling, flatten). A pruned norm channel kills that producer's
    filter and those consumers' input channel (what network slimming removes physically)."""
    modules = dict(model.named_modules())
    graph = torch.fx.symbolic_trace(model).graph
    out = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        channels = modules[node.target].num_features
        consumers, stack = [], list(node.users)
        while stack:
            u = stack.pop()
            m = modules.get(u.target) if u.op == "call_module" else None
            if isinstance(m, PRUNABLE_TYPES):
                if (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) == channels:
                    consumers.append(u.target)
            elif isinstance(m, _CHANNELWISE_MODULES) or (u.op != "call_module" and u.target in _CHANNELWISE_CALLS):
                stack.extend(u.users)
        src = node.args[0]
        producer = src.target if (src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                                  and len(src.users) == 1) else None
        out[node.target] = (producer, sorted(set(consumers)))
    return out
