"""torchvision's published ImageNet weights as a starting point (`init: torchvision` in a paper
table), mapped onto the harness's models by parameter name.

ADMM's AlexNet runs start from `torchvision.models.alexnet(pretrained=True)` (train.py --pretrain
pytorch), DeepHoyer's ImageNet runs from torchvision's pretrained ResNet-50. Those are the
IMAGENET1K_V1 weights of today's weights API. torchvision keeps the file in the torch hub cache
(`torch.hub.get_dir()/checkpoints`); a machine without internet finds it there."""
import re

import torch

from core.errors import DataMissing, HarnessError

TORCHVISION_INIT = "torchvision"
WEIGHTS = "IMAGENET1K_V1"      # what `pretrained=True` loaded when the references were written

_RESNET = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."),
           (r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
           (r"\.downsample\.", ".shortcut."), (r"^fc\.", "fc.")]
# torchvision name -> harness name, by rules on the names (never by position)
RENAMES = {
    "alexnet": [(r"^features\.", ""), (r"^classifier\.1\.", "16."), (r"^classifier\.4\.", "19."),
                (r"^classifier\.6\.", "21.")],
    "resnet18": _RESNET,
    "resnet50": _RESNET,
}


def has_torchvision_weights(model_name):
    return model_name in RENAMES


def rename(model_name, key):
    for pattern, repl in RENAMES[model_name]:
        key = re.sub(pattern, repl, key)
    return key


def torchvision_state(model_name):
    """torchvision's IMAGENET1K_V1 state dict of `model_name`, under the harness's parameter names."""
    if not has_torchvision_weights(model_name):
        raise HarnessError(f"init: {TORCHVISION_INIT} has no weights for model {model_name!r}; "
                           f"it covers {', '.join(sorted(RENAMES))}")
    import torchvision
    weights = torchvision.models.get_model_weights(model_name)[WEIGHTS]
    cached = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
    try:
        theirs = weights.get_state_dict(progress=False)
    except Exception as err:  # network errors come in many types
        raise DataMissing(f"torchvision's {model_name} {WEIGHTS} weights are not at {cached} and could not be "
                          f"downloaded ({type(err).__name__}); put {weights.url} there (or set TORCH_HOME)") from None
    state = {rename(model_name, k): v for k, v in theirs.items()}
    for key in [k for k in state if k.endswith(".running_mean")]:   # older files have no batch counters
        state.setdefault(key.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0))
    return state


def load_mapped(model, state, source):
    """Load a renamed state dict; a name or shape that does not fit is one line naming it."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                 f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}")
        raise HarnessError(f"{source} does not fit the model ({len(missing)} missing, {len(extra)} unexpected, "
                           f"{len(wrong)} of another shape; {first})")
    model.load_state_dict(state)
