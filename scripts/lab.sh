#!/usr/bin/env bash
# The lab from a shell: `scripts/lab.sh up --clusters 2 --nodes 2 --pods 2`, `scripts/lab.sh status -o json`,
# `scripts/lab.sh down`. Builds meshpath if needed and runs `meshpath lab ...` as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p meshpath
exec "${CARGO_TARGET_DIR:-target}/release/meshpath" lab "$@"
