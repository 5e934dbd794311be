"""Which layers produce and read each BatchNorm's channels, from a torch.fx trace of the model:
what network slimming (methods/lec.py) zeroes with a pruned channel, and which conv LCS's quantized
layout folds each BN into (methods/lcs.py: conv_bn_pairs)."""
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from core.metrics import PRUNABLE_TYPES


# ops after which a channel that is zero stays zero (deploy.slim reads them too)
CHANNELWISE_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_RELU_CALLS = (F.relu, torch.relu, "relu")
_CHANNELWISE_CALLS = (*_RELU_CALLS, torch.flatten, "flatten")


def norm_neighbours(model):
    """{norm name: (producer conv or None, [consumer layers])} from the traced graph: the conv
    whose only use is this norm, and the conv/linear layers its output reaches through
    channel-wise ops only (ReLU, pooling, flatten). A pruned norm channel kills that producer's
    filter and those consumers' input channel (what network slimming removes physically)."""
    return {name: (producer, consumers) for name, (producer, consumers, _, _) in norm_graph(model).items()}


def norm_graph(model):
    """norm_neighbours with two more facts per norm: `closed`, every path from its output ends at a
    consumer (none reaches a residual sum, a concatenation or the model's output), and `relu_first`,
    every path starts with a ReLU. A closed norm's channels can be removed with its producer's
    filters and its consumers' input columns (harness/deploy.py `slim`)."""
    modules = dict(model.named_modules())
    graph = torch.fx.symbolic_trace(model).graph
    out = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        channels = modules[node.target].num_features
        consumers, closed, relu_first = [], True, True
        stack = [(u, True) for u in node.users]
        while stack:
            u, first = stack.pop()
            m = modules.get(u.target) if u.op == "call_module" else None
            if isinstance(m, PRUNABLE_TYPES):
                if (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) == channels:
                    consumers.append(u.target)
                else:
                    closed = False
                relu_first &= not first
            elif isinstance(m, CHANNELWISE_MODULES) or (u.op != "call_module" and u.target in _CHANNELWISE_CALLS):
                relu_first &= not first or isinstance(m, nn.ReLU) or u.target in _RELU_CALLS
                stack.extend((v, False) for v in u.users)
            else:
                closed = False
        src = node.args[0]
        producer = src.target if (src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                                  and len(src.users) == 1) else None
        out[node.target] = (producer, sorted(set(consumers)), closed and bool(consumers), relu_first)
    return out
