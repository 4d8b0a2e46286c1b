#!/usr/bin/env bash
# The mutant suite: every patch in .ci/mutants/ plants one plausible learner mistake in one task
# (made by scripts/make_mutants.py). Each is applied to that task's solution, dropped into
# exercises/ of a copy of the tree (every other task solved), and the task's graders must fail.
# A mutant that passes them all has survived: the graders miss that mistake, and CI fails.
# Prints, per mutant, the graders that caught it, and per task "N of N mutants caught".
# Usage: bash .ci/mutants.sh [PATCH ...]   (default: every patch in .ci/mutants/)
# Builds in target/copies (or $CARGO_TARGET_DIR), never in ./target (see .ci/run).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/copies}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree"
git ls-files -z | xargs -0 cp -P --parents -t "$work/tree"
cp solutions/t[0-9][0-9]_*.rs "$work/tree/exercises/"

declare -A total caught
failed=0
patches=("$@")
[ ${#patches[@]} -gt 0 ] || patches=(.ci/mutants/*.patch)
for p in "${patches[@]}"; do
  name=$(basename "$p" .patch)
  task=${name%%--*}
  [ -f "solutions/$task.rs" ] || { echo "$name: no task $task"; failed=1; continue; }
  total[$task]=$(( ${total[$task]:-0} + 1 ))
  cp "solutions/$task.rs" "$work/tree/exercises/$task.rs"
  if ! patch --quiet -p1 -d "$work/tree" <"$p" >"$work/patch.log" 2>&1; then
    echo "$name: DOES NOT APPLY to solutions/$task.rs (rerun scripts/make_mutants.py)"; cat "$work/patch.log"
    failed=1; continue
  fi
  log="$work/$name.log"
  (cd "$work/tree" && cargo test --locked --features exercises --test "$task" --no-fail-fast) >"$log" 2>&1
  rc=$?
  if ! grep -qE '^test result:' "$log"; then
    echo "$name: DID NOT BUILD (a mutant must compile to test the graders):"; tail -n 20 "$log"; failed=1
  elif [ $rc -eq 0 ]; then
    echo "$name: SURVIVED: every grader of $task passes with this mistake ($(head -n 1 "$p"))"; failed=1
  else
    caught[$task]=$(( ${caught[$task]:-0} + 1 ))
    by=$(sed -nE 's/^test (.*) \.\.\. FAILED$/\1/p' "$log" | tr '\n' ' ')
    echo "$name: caught by $by"
  fi
  cp "solutions/$task.rs" "$work/tree/exercises/$task.rs"
done
echo
for task in $(printf '%s\n' "${!total[@]}" | sort); do
  echo "$task: ${caught[$task]:-0} of ${total[$task]} mutants caught"
done
exit $failed
