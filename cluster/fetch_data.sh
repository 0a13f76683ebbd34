#!/usr/bin/env bash
# The head, on every `ray up`: the dataset, fetched once to MASKCLF_DATA_DIR. Only the head reads it:
# the search and finalize crop faces there once and ship the crops to the workers through Ray.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cluster.env"
src="$MASKCLF_DATA_SOURCE"
if [ -z "$src" ]; then
    echo "MASKCLF_DATA_SOURCE is empty in cluster/cluster.env: the demo dataset will be generated on first use"
elif [ -f "$MASKCLF_DATA_DIR/train/train.csv" ]; then
    echo "dataset already at $MASKCLF_DATA_DIR"
else
    mkdir -p "$MASKCLF_DATA_DIR"
    case "$src" in
        s3://*) aws s3 sync --only-show-errors "$src" "$MASKCLF_DATA_DIR" ;;
        gs://*) gsutil -m -q rsync -r "$src" "$MASKCLF_DATA_DIR" ;;
        *) rsync -a "${src%/}/" "$MASKCLF_DATA_DIR/" ;;
    esac
    echo "dataset fetched from $src to $MASKCLF_DATA_DIR"
fi
