#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default 240), after seeding the corpora
# that have a natural seed: the RFC 8949 vectors (cbor_decode) and the sync protocol's test
# vectors (wire_decode). Not part of scripts/test.sh: the instrumented build alone takes about
# five minutes on 2 cores. Needs no nightly toolchain: RUSTC_BOOTSTRAP=1 lets the stable
# compiler take cargo-fuzz's flags; `--sanitizer none` (the engine has no unsafe code) with
# debug assertions on, so overflows and failed assertions are findings too.
# Exits 1 if the build or a run fails, or a target leaves a new input in
# fuzz/artifacts/TARGET/; replay one from the repository root with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a -O TARGET fuzz/artifacts/TARGET/FILE
# Full output: target/fuzz-logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-240}"
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS>0]" >&2
  exit 2
fi
# Absolute (the script moves into fuzz/), without GNU-only `realpath -m`; it need not exist.
shared="${SHARED:-../shared}"
[[ $shared == /* ]] || shared="$PWD/$shared"
logs="$PWD/target/fuzz-logs"
mkdir -p "$logs"
command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz
cd fuzz
if ! RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -a -O; then
  echo "fuzz targets failed to build" >&2
  exit 1
fi
mkdir -p corpus/cbor_decode corpus/wire_decode corpus/open_files corpus/backup_verify
python3 - "$shared" <<'PY'
import json, pathlib, sys
vectors = pathlib.Path(sys.argv[1]) / "testdata" / "cbor" / "appendix_a.json"
if vectors.exists():
    for i, e in enumerate(json.load(open(vectors))):
        pathlib.Path(f"corpus/cbor_decode/a{i}").write_bytes(bytes.fromhex(e["hex"]))
else:
    print(f"warning: {vectors} is missing; cbor_decode starts without the RFC 8949 vectors",
          file=sys.stderr)
for p in pathlib.Path("../docs/sync-vectors").glob("*.json"):
    d = json.load(open(p))
    for k in ("request_cbor_hex", "response_cbor_hex"):
        if d.get(k):
            pathlib.Path(f"corpus/wire_decode/{p.stem}-{k[:3]}").write_bytes(bytes.fromhex(d[k]))
PY
failed=0
for target in cbor_decode wire_decode backup_verify open_files; do
  echo "=== $target, ${seconds}s"
  # (On a fresh clone the directory does not exist yet: `ls` would fail the pipeline, and
  # with pipefail and -e the script with it.)
  mkdir -p "artifacts/$target"
  before=$(ls -A "artifacts/$target" | wc -l)
  set +e
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a -O "$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$logs/$target.log" 2>&1
  status=$?
  set -e
  grep -E '^(stat::number_of_executed_units|Done)|panicked|Test unit written' "$logs/$target.log" || true
  after=$(ls -A "artifacts/$target" | wc -l)
  if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
    echo "$target: failed (exit $status; see $logs/$target.log and fuzz/artifacts/$target)" >&2
    failed=1
  fi
done
exit "$failed"
