#!/usr/bin/env bash
# PyTorch parity check of `pnn import`, `pnn export` and `pnn eval` against the reference
# PyTorch models (see scripts/pytorch-parity.py for what is checked).
#
# Usage:
#   scripts/pytorch-parity.sh [check]    [--pnn PATH] [--reproduction DIR] [--update DIR] [ARGS...]
#   scripts/pytorch-parity.sh fixtures   [--reproduction DIR] [--update DIR] [ARGS...]
#
# check (the default) runs `pytorch-parity.py check` against --pnn (default target/release/pnn;
# build it first) and tests/fixtures/pytorch; fixtures regenerates tests/fixtures/pytorch.
# Other ARGS go to the Python script, e.g. --dataroot ../shared/data/mnist, --cases lenet, -v.
#
# Python: $PARITY_PYTHON if set (it must have torch, safetensors and numpy), else a virtual
# environment in target/parity-venv with CPU torch, safetensors and numpy from the registries.
# References: --reproduction/--update if given, else clones of the two GitHub repositories at
# the commits the fixtures were made from, in target/parity-refs.
set -euo pipefail
cd "$(dirname "$0")/.."

REPRODUCTION_URL=https://github.com/michaelklachko/pnn.pytorch
REPRODUCTION_SHA=08865dbac326f2f1537c6989932bce477e448b67
UPDATE_URL=https://github.com/juefeix/pnn.pytorch.update
UPDATE_SHA=b9513ff372e89f3c26278e7796a38965592d3428

mode=check
case "${1:-}" in
    check | fixtures) mode=$1; shift ;;
esac
reproduction='' update='' pnn=target/release/pnn
args=()
while (($#)); do
    case $1 in
        --reproduction) reproduction=$2; shift 2 ;;
        --update) update=$2; shift 2 ;;
        --pnn) pnn=$2; shift 2 ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done

# A Python with torch, safetensors and numpy (the references' utils.py imports numpy).
if [[ -n ${PARITY_PYTHON:-} ]]; then
    python=$PARITY_PYTHON
else
    venv=target/parity-venv
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    python=$venv/bin/python
    if ! "$python" -c 'import torch, safetensors, numpy' 2>/dev/null; then
        "$python" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
        "$python" -m pip install --quiet safetensors numpy
    fi
fi

# clone URL SHA DIR: DIR is a checkout of URL at SHA.
clone() {
    [[ -d $3/.git ]] || git clone --quiet "$1" "$3"
    if [[ $(git -C "$3" rev-parse HEAD) != "$2" ]]; then
        git -C "$3" checkout --quiet "$2" 2>/dev/null ||
            { git -C "$3" fetch --quiet origin && git -C "$3" checkout --quiet "$2"; }
    fi
}
if [[ -z $reproduction ]]; then
    reproduction=target/parity-refs/reproduction
    clone "$REPRODUCTION_URL" "$REPRODUCTION_SHA" "$reproduction"
fi
if [[ -z $update ]]; then
    update=target/parity-refs/update
    clone "$UPDATE_URL" "$UPDATE_SHA" "$update"
fi

if [[ $mode == fixtures ]]; then
    exec "$python" scripts/pytorch-parity.py fixtures --reproduction "$reproduction" --update "$update" \
        --out tests/fixtures/pytorch ${args[@]+"${args[@]}"}
fi
if [[ ! -x $pnn ]]; then
    echo "no pnn binary at $pnn: build it (cargo build --release) or pass --pnn PATH" >&2
    exit 2
fi
exec "$python" scripts/pytorch-parity.py check --pnn "$pnn" --fixtures tests/fixtures/pytorch \
    --reproduction "$reproduction" --update "$update" ${args[@]+"${args[@]}"}
