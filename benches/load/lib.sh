# Shared by the bench scripts that source it (alone.sh, grants.sh, guard.sh,
# instructions.sh, ci.sh, ../soak.sh, ../flood_memory.sh): set BENCH (the
# log prefix), ROOT and MOAT_BIN first, then source this file.
#   log, die          messages on stderr, prefixed [BENCH]
#   build_moat        the release build, unless SKIP_BUILD=1 or MOAT_BIN is another binary
#   work_dir          a fresh $WORK, kept on failure or with KEEP_WORK=1; on
#                     exit every process group `start` launched is stopped
#                     (TERM, up to 5 s to go, then KILL), and after a failure
#                     the end of $WORK/moat.err is shown
#   start NAME CPU CMD...
#                     CMD in its own process group on CPU ("-": not pinned),
#                     output in $WORK/NAME.{out,err}; its pid in LAST_PID
#   stop_groups SIGNAL PGID...

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
stop_groups() { # SIGNAL PGID...
  local sig=$1 p; shift
  for p in "$@"; do kill "-$sig" -- "-$p" 2>/dev/null || true; done
}
cleanup() {
  local rc=$? p i
  trap - EXIT INT TERM
  stop_groups TERM "${PIDS[@]}"
  # moat drains for its shutdown_grace after SIGTERM: wait for each group,
  # with a deadline, then kill what is left.
  for p in "${PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
  done
  stop_groups KILL "${PIDS[@]}"
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ] && [ -s "$WORK/moat.err" ]; then
    log "moat stderr (last lines):"; tail -n 20 "$WORK/moat.err" >&2
  fi
  if [ "$rc" -ne 0 ] || [ "${KEEP_WORK:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}

work_dir() {
  WORK=$(mktemp -d "/tmp/moat-$BENCH.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

start() { # NAME CPU CMD...
  local name=$1 cpu=$2; shift 2
  if [ "$cpu" = - ]; then
    setsid "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  else
    setsid taskset -c "$cpu" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
  fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
