#!/usr/bin/env bash
# Sets up everything the harness needs on a fresh Debian machine, and is quick when nothing changed:
#   - the default data set, Fashion-MNIST, from Debian's dataset-fashion-mnist package (as root);
#     without it the loader falls back to torchvision's download;
#   - a virtual environment in .venv with the pinned packages of requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing dataset-fashion-mnist (Debian)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
            >/dev/null || echo "setup: could not install dataset-fashion-mnist; torchvision will download it" >&2
    else
        echo "setup: dataset-fashion-mnist is not installed (needs root: apt-get install dataset-fashion-mnist);" \
             "torchvision will download Fashion-MNIST instead" >&2
    fi
fi

# Only for tests/test_slurm.py, which starts a throwaway SLURM cluster on localhost (that needs root
# too); without these packages it skips. Running on a real cluster needs none of this.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! { command -v slurmctld && command -v munged; } >/dev/null; then
    echo "setup: installing slurm-wlm and munge (Debian), for tests/test_slurm.py"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } \
        >/dev/null || echo "setup: could not install slurm-wlm and munge; tests/test_slurm.py will skip" >&2
fi

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating .venv with requirements.txt (torch is large; a few minutes)"
    "$PY" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
