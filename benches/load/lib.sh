# Shared by the load scripts that source it (grants.sh, guard.sh): set
# BENCH (the log prefix), ROOT and MOAT_BIN first, then source this file.
#   log, die          messages on stderr, prefixed [BENCH]
#   build_moat        the release build, unless SKIP_BUILD=1 or MOAT_BIN is another binary
#   work_dir          a fresh $WORK, kept on failure; every process that
#                     `start` launched is stopped on exit
#   start NAME CPU CMD...
#                     CMD in its own process group on CPU, output in $WORK/NAME.{out,err}

log() { printf '[%s] %s\n' "$BENCH" "$*" >&2; }
die() { log "$*"; exit 1; }

build_moat() {
  if [ "${SKIP_BUILD:-0}" != 1 ] && [ "$MOAT_BIN" = "$ROOT/target/release/moat" ]; then
    log "building moat (cargo build --release -p moat)"
    (cd "$ROOT" && cargo build --release -p moat)
  fi
  [ -x "$MOAT_BIN" ] || die "no moat binary at $MOAT_BIN"
}

PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}

work_dir() {
  WORK=$(mktemp -d "/tmp/moat-$BENCH.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

start() { # NAME CPU CMD...
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  PIDS+=("$!")
}
