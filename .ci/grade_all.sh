#!/usr/bin/env bash
# The README's grading command, run exactly as a learner types it on a fresh clone:
#   1. on the untouched stubs, every task's graders run (none is cut short by another test binary
#      failing first), in task order, and every one of them fails; every other test binary passes
#      (a support test that runs task code is ignored under `exercises`);
#   2. with every solution dropped into exercises/, the same command passes.
# The command is read from README.md (the "grade every task" row), so the two cannot drift.
# Builds in target/copies (or $CARGO_TARGET_DIR), never in ./target (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/copies}"

command=$(sed -nE 's/^\| grade every task, in order \| `([^`]+)` \|.*/\1/p' README.md)
[ -n "$command" ] || { echo "grade_all: README.md has no \"grade every task, in order\" row"; exit 1; }
case "$command" in
  "cargo test --features exercises"*) ;;
  *) echo "grade_all: the README's grading command is not a cargo test: $command"; exit 1 ;;
esac
echo "the README's grading command: $command"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 cp -P --parents -t "$work"
graders=()
for t in tests/t[0-9][0-9]_*.rs; do graders+=("$(basename "$t" .rs)"); done

# 1. Untouched stubs.
(cd "$work" && eval "$command") >"$work/stubs.log" 2>&1 && {
  echo "grade_all: the grading command passes on the untouched stubs"; exit 1; }
failed_targets=$(sed -nE 's/^    `--test ([a-z0-9_]+)`$/\1/p' "$work/stubs.log" | tr '\n' ' ')
if [ "$failed_targets" != "${graders[*]} " ]; then
  grep -E '^     Running|^test result|panicked at|^error' "$work/stubs.log" | tail -n 40 || true
  echo "grade_all: on the stubs, the failing test binaries should be exactly the graders, in task order"
  echo "  failed:   $failed_targets"
  echo "  expected: ${graders[*]}"
  exit 1
fi
# Each grader ran (its result line is there) and none of its tests passed.
ran=$(awk '/^     Running tests\/t[0-9][0-9]_/ { split($2, p, "/"); name = p[2]; sub(/\.rs$/, "", name) }
           /^test result:/ && name != "" { print name ": " $0; name = "" }' "$work/stubs.log")
echo "$ran"
for g in "${graders[@]}"; do
  line=$(grep -E "^$g: " <<<"$ran" || true)
  [ -n "$line" ] || { echo "grade_all: $g's graders did not run"; exit 1; }
  grep -qE 'FAILED\. 0 passed; [1-9]' <<<"$line" || { echo "grade_all: $g: some graders pass on the stub: $line"; exit 1; }
done

# 2. Every solution dropped in.
cp solutions/t[0-9][0-9]_*.rs "$work/exercises/"
(cd "$work" && eval "$command") >"$work/solved.log" 2>&1 || {
  grep -E '^     Running|^test result|panicked at|^error' "$work/solved.log" | tail -n 60 || true
  echo "grade_all: the grading command fails with every solution in exercises/"; exit 1; }
echo "grade_all: ok (${#graders[@]} tasks: all fail on the stubs in order, all pass when solved)"
