# Sourced by the project's scripts: one target directory for the host and the wasm plugins,
# outside the clone so that a fresh clone on the same machine reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certconn-target}"
CERTCONN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CERTCONN_ROOT
export CERTCONN_PLUGIN_DIR="${CERTCONN_PLUGIN_DIR:-$CERTCONN_ROOT/dist/plugins}"
export CERTCONN_TEST_PLUGIN_DIR="${CERTCONN_TEST_PLUGIN_DIR:-$CERTCONN_ROOT/dist/test-plugins}"
