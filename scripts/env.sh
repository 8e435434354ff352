# Sourced by the scripts: one cargo target directory outside the checkout, shared by CI runs and
# later sessions, so the heavy C/C++ dependencies (RocksDB) are built once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clickstream/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
