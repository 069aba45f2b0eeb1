#!/usr/bin/env bash
# The lab from a shell: `scripts/lab.sh up --clusters 2 --nodes 2 --pods 2`, `scripts/lab.sh status -o json`,
# `scripts/lab.sh down`. Builds meshpath, meshpath-lab and meshpath-cni (which makes a meshed lab's
# pods) if needed and runs `meshpath lab ...` (that is, meshpath-lab beside meshpath) as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --locked -p meshpath -p meshpath-lab -p meshpath-cni
exec "${CARGO_TARGET_DIR:-target}/release/meshpath" lab "$@"
