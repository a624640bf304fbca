#!/usr/bin/env bash
# Training on a lent GPU (the device tool's `run`), whose calls carry at most 64 MiB of the
# working tree and bring back at most 8 files of at most 16 MiB each (README.md, "Training on
# your own audio"). Three steps, each one command:
#
#   bash train/lease.sh prepare [MB]     # here: a corpus sample (.gpu/data, MB megabytes,
#                                        # default 40), the wheels the machine lacks (.whl), and
#                                        # the tracked weights files the run does not read moved
#                                        # aside; refuses (after putting them back) if what
#                                        # travels would be over 64 MiB
#   device run: bash train/lease.sh run SECONDS [CONFIG ...]   with carry [".gpu", ".whl"]
#                                        # (500 of a 15-minute lease, session 31)
#                                        # there: train.timed from the default model for SECONDS
#                                        # (default recipe configs/logmel24k-lowband-gan.yaml);
#                                        # each recipe's export, recipe and log into $OUT
#   bash train/lease.sh restore          # here: the weights files back in place
#
# A second call on the machine still warm goes on from the first's export (which `run` would
# delete): `cp /tmp/lease/NAME.safetensors /tmp/prev.safetensors && RVQ_LEASE_INIT=/tmp/prev.safetensors
# bash train/lease.sh run SECONDS` (session 31). The discriminators start afresh each call.
#
# Why move weights aside: the package's weights files are most of the tracked tree (65 of its
# 67 MB in session 30), which leaves no room for training data in a call; a run reads the
# weights file of the model it starts from alone ($RVQ_LEASE_INIT at prepare, a built-in name;
# default the default model: rvq24k-v19.safetensors for rvq24k-v22; prepare records it in
# .gpu/init for run). Only tracked files are moved, to $PARKED (in this checkout's .git), never
# untracked: until `restore`, git sees them as deleted, so commit nothing in between (`git add
# -A` would record the deletions) and expect the tests that load older models to fail.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
PARKED=${RVQ_LEASE_PARKED:-$(git rev-parse --absolute-git-dir)/lease-parked}  # per checkout, never carried
INIT=${RVQ_LEASE_INIT:-$(cat .gpu/init 2>/dev/null || echo rvq24k)}  # prepare records it for run
LIMIT=$((64 * 1048576))
# What the GPU image lacks of the train extra (its package list: the device tool's KINDS.md).
WHEELS=(soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 soxr==1.1.0 librosa==0.11.0 audioread==3.1.0
        decorator==5.2.1 pooch==1.9.0 platformdirs==4.14.9 auraloss==0.4.0)
# The sample's split between categories, of its bytes: speech's files are small and many,
# music's few and large (session 19's choice; train.subset's default is 0.5 / 0.4 / 0.1).
SHARES=speech=0.52,music=0.40,general=0.08

restore() {  # every parked file back unless codec/weights holds one of its name; 1 if any is left
    [ -d "$PARKED" ] || return 0
    local left=0
    for f in "$PARKED"/*.safetensors; do
        if [ -e "codec/weights/$(basename "$f")" ]; then
            echo "lease: left $f where it is: codec/weights holds a file of that name" >&2
            left=1
        else
            mv "$f" codec/weights/
        fi
    done
    rmdir "$PARKED" 2>/dev/null || true
    return "$left"
}

travelling_bytes() {  # tracked files present, untracked files git does not ignore, .gpu and .whl
    { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true
      du -cb .gpu .whl 2>/dev/null | tail -1 | cut -f1 || true; } | awk '{s += $1} END {printf "%.0f\n", s}'
}

case "${1:-}" in
prepare)
    mb=${2:-40}
    INIT=${RVQ_LEASE_INIT:-rvq24k}
    restore || { echo "lease: $PARKED still holds weights files: sort them out first" >&2; exit 1; }
    needed=$(python3 -c 'import sys
from codec.weights import registered
entry = registered(sys.argv[1])
if entry is None:
    sys.exit(f"lease: RVQ_LEASE_INIT must name a built-in model, got {sys.argv[1]!r}")
print(entry.file)' "$INIT")
    rm -rf .gpu/data .whl
    python3 -m train.subset ../shared/corpus/manifest.tsv .gpu/data --max-mb "$mb" --shares "$SHARES"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    echo "$INIT" > .gpu/init
    mkdir -p "$PARKED"
    trap 'restore; echo "lease: prepare stopped; weights put back" >&2' EXIT
    while IFS= read -r f; do
        [ "$(basename "$f")" = "$needed" ] || [ ! -e "$f" ] || mv "$f" "$PARKED/"
    done < <(git ls-files 'codec/weights/*.safetensors')
    total=$(travelling_bytes)
    if [ "$total" -gt "$LIMIT" ]; then
        echo "lease: $((total / 1048576 + 1)) MiB would travel, over 64 MiB: try a smaller MB" >&2
        exit 1
    fi
    trap - EXIT
    echo "travels: $(( (total + 1048575) / 1048576 )) MiB of 64; parked in $PARKED: $(ls "$PARKED" | tr '\n' ' ')"
    echo "after the device run: bash train/lease.sh restore"
    ;;
run)
    seconds=${2:?usage: train/lease.sh run SECONDS [CONFIG ...]}
    out=${OUT:?OUT must name the folder that comes back}
    shift 2
    configs=("$@")
    [ ${#configs[@]} -gt 0 ] || configs=(configs/logmel24k-lowband-gan.yaml)
    if [ ${#configs[@]} -gt 2 ]; then  # (3 files a recipe and timed.log: 8 files come back)
        echo "lease: at most 2 recipes a call, got ${#configs[@]}" >&2
        exit 2
    fi
    wheels=(.whl/*.whl)
    if [ ${#wheels[@]} -gt 0 ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    python3 -c "import soxr, librosa.filters, codec.audio_io, codec.mel, train.losses" \
        || { echo "lease: a training package is missing (see above)" >&2; exit 1; }
    args=()
    for c in "${configs[@]}"; do args+=(--config "$c"); done
    rm -rf /tmp/lease  # (a warm machine keeps an earlier call's exports)
    export PYTHONUNBUFFERED=1
    set +e
    python3 -m train.timed "${args[@]}" --data .gpu/data/manifest.tsv --init "$INIT" --seconds "$seconds" \
        --out /tmp/lease 2>&1 | tee "$out/timed.log"
    status=${PIPESTATUS[0]}
    set -e
    for c in "${configs[@]}"; do
        name=$(basename "$c")
        name=${name%.*}  # (train.timed names a recipe's files by its stem)
        for f in "/tmp/lease/$name.safetensors" "/tmp/lease/$name.yaml" "/tmp/lease/$name.log"; do
            [ ! -e "$f" ] || cp "$f" "$out/"
        done
        if [ -e "/tmp/lease/$name/log.jsonl" ]; then  # the run's losses, in its log (8 files come back)
            { echo "# train/monitor.py's log.jsonl: the logged scalars, a line every log_every steps"
              cat "/tmp/lease/$name/log.jsonl"; } >> "$out/$name.log"
        fi
        [ -e "/tmp/lease/$name.safetensors" ] || { echo "lease: $name was not exported (see $out/timed.log)" >&2; status=1; }
    done
    ls -l "$out"
    exit "$status"
    ;;
restore)
    status=0
    restore || status=1
    git status --short codec/weights
    exit "$status"
    ;;
*)
    echo "usage: train/lease.sh prepare [MB] | run SECONDS [CONFIG ...] | restore" >&2
    exit 2
    ;;
esac
