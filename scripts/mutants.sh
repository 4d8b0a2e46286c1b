#!/usr/bin/env bash
# cargo-mutants over the tasks' solutions, each task's mutants against that task's graders
# (issue 34). Usage: bash scripts/mutants.sh [tNN_name ...]   (default: every task)
#
# Each mutant costs one incremental build of the crate (about 15 s on two cores): t01 has 33,
# t06 147, all of them about 500. It runs in place (the solution file is mutated and restored
# by cargo-mutants), so do not edit the tree while it runs. The outcome of each task goes to
# target/mutants/<task>/mutants.out/ and a line per task to stdout:
#   tNN_name: N mutants, C caught, M missed, U unviable, T timeout
# ITERATE=1 tests only what the previous run of a task did not catch (cargo-mutants --iterate):
# the quick check after a grader is added; the counts are then those of the retested mutants.
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=($(cd solutions && ls t[0-9][0-9]_*.rs | sed 's/\.rs$//'))
for t in "${tasks[@]}"; do
  out="target/mutants/$t"
  iterate=()
  if [ "${ITERATE:-0}" = 1 ]; then iterate=(--iterate); else rm -rf "$out"; fi
  cargo mutants --in-place --no-shuffle "${iterate[@]}" -f "src/../solutions/$t.rs" --output "$out" -- --test "$t" \
    >"$out.log" 2>&1 || true
  o="$out/mutants.out"
  count() { cat "$o/$1.txt" 2>/dev/null | grep -c . || true; }
  c=$(count caught); m=$(count missed); u=$(count unviable); x=$(count timeout)
  echo "$t: $((c + m + u + x)) mutants, $c caught, $m missed, $u unviable, $x timeout"
  [ "$m" = 0 ] || sed 's/^/  missed: /' "$o/missed.txt"
done
