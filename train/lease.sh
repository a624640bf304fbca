#!/usr/bin/env bash
# Training on a lent GPU (the device tool's `run`), whose calls carry at most 64 MiB of the
# working tree and bring back files of at most 16 MiB (README.md, "Training on your own
# audio"). Three steps, each one command:
#
#   bash train/lease.sh prepare [MB]     # here: a corpus sample (.gpu/data, MB megabytes,
#                                        # default 40), the wheels the machine lacks (.whl), and
#                                        # the weights files the run does not read moved aside
#   device run: bash train/lease.sh run SECONDS [CONFIG ...]   with carry [".gpu", ".whl"]
#                                        # there: train.timed from the default model for SECONDS
#                                        # (default recipe configs/logmel24k-lowband-gan.yaml);
#                                        # exports, recipes and logs into $OUT
#   bash train/lease.sh restore          # here: the weights files back in place
#
# Why move weights aside: the package's weights files are most of the tracked tree (about 63
# of 67 MB in session 30), which leaves no room for training data in a call; a run reads
# the weights file of the model it starts from alone ($RVQ_LEASE_INIT, default the default
# model: rvq24k-v19.safetensors for rvq24k-v22). The files are only moved (to
# $PARKED), never untracked, so git sees them as deleted until `restore` (or
# `git checkout -- codec/weights`) puts them back.
set -euo pipefail
cd "$(dirname "$0")/.."
PARKED=${RVQ_LEASE_PARKED:-$HOME/.cache/rvqcodec/parked-weights}
INIT=${RVQ_LEASE_INIT:-rvq24k}  # the built-in model a run starts from (default: the default model)
WHEELS=(soundfile==0.14.0 soxr==1.1.0 librosa==0.11.0 audioread==3.1.0 decorator==5.2.1 pooch==1.9.0
        platformdirs==4.14.9 auraloss==0.4.0)  # what the GPU image lacks of the train extra (KINDS.md)

case "${1:-}" in
prepare)
    mb=${2:-40}
    rm -rf .gpu/data .whl
    python -m train.subset ../shared/corpus/manifest.tsv .gpu/data --max-mb "$mb" \
        --shares speech=0.52,music=0.40,general=0.08
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    needed=$(python -c "from codec.weights import ALIASES, REGISTRY; print(REGISTRY[ALIASES.get('$INIT', '$INIT')].file)")
    mkdir -p "$PARKED"
    for f in codec/weights/*.safetensors; do
        [ "$(basename "$f")" = "$needed" ] || mv "$f" "$PARKED/"
    done
    tracked=$(git ls-files | while read -r f; do [ -e "$f" ] && stat -c %s "$f"; done | awk '{s += $1} END {print s + 0}')
    extra=$(du -cb .gpu .whl | tail -1 | cut -f1)
    echo "travels: $(( (tracked + extra) / 1048576 )) MiB of 64 (tracked files present $(( tracked / 1048576 )), .gpu and .whl $(( extra / 1048576 )))"
    echo "parked in $PARKED: $(ls "$PARKED" | tr '\n' ' ')"
    ;;
run)
    seconds=${2:?usage: train/lease.sh run SECONDS [CONFIG ...]}
    shift 2
    configs=("$@")
    [ ${#configs[@]} -gt 0 ] || configs=(configs/logmel24k-lowband-gan.yaml)
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    out=${OUT:?OUT must name the folder that comes back}
    args=()
    for c in "${configs[@]}"; do args+=(--config "$c"); done
    export PYTHONUNBUFFERED=1
    set +e
    python3 -m train.timed "${args[@]}" --data .gpu/data/manifest.tsv --init "$INIT" --seconds "$seconds" \
        --out /tmp/lease 2>&1 | tee "$out/timed.log"
    status=${PIPESTATUS[0]}
    set -e
    cp /tmp/lease/*.safetensors /tmp/lease/*.yaml "$out/" 2>/dev/null || true
    ls -l "$out"
    exit "$status"
    ;;
restore)
    if [ -d "$PARKED" ]; then
        for f in "$PARKED"/*.safetensors; do [ -e "$f" ] && mv "$f" codec/weights/; done
    fi
    git status --short codec/weights
    ;;
*)
    echo "usage: train/lease.sh prepare [MB] | run SECONDS [CONFIG ...] | restore" >&2
    exit 2
    ;;
esac
