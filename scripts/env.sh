# Sourced by the project's scripts: one target directory for the host and the wasm plugins,
# outside the clone so that a fresh clone on the same machine reuses it.
# Two clones building in turn share cargo's records too: after clone B builds, clone A's next
# build may take B's artifacts as fresh although A's sources differ (cargo checks the files B
# built from). Delete B, or touch a changed file in A, before trusting A's binaries.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/certconn-target}"
CERTCONN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CERTCONN_ROOT
export CERTCONN_PLUGIN_DIR="${CERTCONN_PLUGIN_DIR:-$CERTCONN_ROOT/dist/plugins}"
export CERTCONN_TEST_PLUGIN_DIR="${CERTCONN_TEST_PLUGIN_DIR:-$CERTCONN_ROOT/dist/test-plugins}"
