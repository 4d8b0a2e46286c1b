#!/usr/bin/env bash
# The learner's loop, from a fresh copy of the crate: with only t01 solved, t01's graders pass,
# the others fail, the progress command names t02 as the next task with its first hint, and
# `--hint 2`, `--hint 3 --task NAME` give the next levels for every task.
# Builds in target/copies (or $CARGO_TARGET_DIR), never in ./target: a copy of the package shares
# artifact names with the original, and its build would later pass for fresh there.
set -euo pipefail
# The English checks run in an English locale whatever the CI's is; the Chinese ones set theirs.
export LC_ALL=C.UTF-8 LANG=C.UTF-8
unset LC_MESSAGES
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/copies}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 cp -P --parents -t "$work"
cd "$work"

# The learner solves t01.
cp solutions/t01_lora_layer.rs exercises/t01_lora_layer.rs

cargo test --locked --features exercises --test t01_lora_layer >"$work/t01.log" 2>&1 \
  || { tail -n 40 "$work/t01.log"; echo "learner loop: t01 should pass once solved"; exit 1; }
if cargo test --locked --features exercises --test t02_linear_with_lora >"$work/t02.log" 2>&1; then
  echo "learner loop: t02 passes while its stub is untouched"; exit 1
fi

cargo run --locked --quiet --example progress >"$work/progress.log" 2>"$work/progress.err" \
  || { cat "$work/progress.err"; echo "learner loop: the progress command failed"; exit 1; }
cat "$work/progress.log"
expect() { grep -qE "$1" "$work/progress.log" || { echo "learner loop: progress output lacks /$1/"; exit 1; }; }
expect '^  done  t01_lora_layer '
expect '^  todo  t02_linear_with_lora '
expect '^  todo  t03_inject '
expect '^  todo  t04_save_load '
expect '^  todo  t07_eval '
expect '^  todo  t08_merge '
# Every task in the manifest (one grader per task) is counted, t01 alone done.
tasks=$(ls tests/t[0-9][0-9]_*.rs | wc -l)
expect "1/$tasks tasks done"
for t in tests/t[0-9][0-9]_*.rs; do
  name=$(basename "$t" .rs)
  [ "$name" = t01_lora_layer ] || expect "^  todo  $name "
done
expect '^Next: t02_linear_with_lora '
expect 'exercise: exercises/t02_linear_with_lora.rs'
expect '^  hint 1/3: '
expect 'more:     cargo run --example progress -- --hint 2'

# Hints in levels: --hint 2 and 3 show one more each, for the next task and for any task.
cargo run --locked --quiet --example progress -- --hint 2 >"$work/hint2.log" 2>&1 \
  || { cat "$work/hint2.log"; echo "learner loop: progress --hint 2 failed"; exit 1; }
grep -qE '^  hint 2/3: ' "$work/hint2.log" && ! grep -qE '^  hint 3/3: ' "$work/hint2.log" \
  || { cat "$work/hint2.log"; echo "learner loop: --hint 2 should show hints 1 and 2 of t02"; exit 1; }
for t in tests/t[0-9][0-9]_*.rs; do
  name=$(basename "$t" .rs)
  cargo run --locked --quiet --example progress -- --hint 3 --task "$name" >"$work/hint.log" 2>&1 \
    || { cat "$work/hint.log"; echo "learner loop: progress --hint 3 --task $name failed"; exit 1; }
  grep -qE "^Hints for: $name " "$work/hint.log" && grep -qE '^  hint 3/3: ' "$work/hint.log" \
    || { cat "$work/hint.log"; echo "learner loop: no third hint for $name"; exit 1; }
done
# In Chinese, by the locale alone (as a reader with a Chinese system has it) and by --lang zh.
zh_expect() {
  grep -qP "$2" "$1" || { cat "$1"; echo "learner loop: Chinese progress output lacks /$2/"; exit 1; }
}
LC_ALL= LANG=zh_CN.UTF-8 cargo run --locked --quiet --example progress >"$work/zh.log" 2>&1 \
  || { cat "$work/zh.log"; echo "learner loop: LANG=zh_CN.UTF-8 progress failed"; exit 1; }
cat "$work/zh.log"
zh_expect "$work/zh.log" "^进度: .* 1/$tasks 个任务已完成"
zh_expect "$work/zh.log" '^  todo  t02_linear_with_lora .*项评分通过 .*[^\x00-\x7F]'
zh_expect "$work/zh.log" '^下一个: t02_linear_with_lora '
zh_expect "$work/zh.log" 'book/zh/src/t02_linear_with_lora.md'
zh_expect "$work/zh.log" '^  提示 1/3: .*[^\x00-\x7F]'
zh_expect "$work/zh.log" 'cargo run --example progress -- --hint 2$'
# --lang zh in an English locale: the next commands carry the language (the grading command by
# LORA_LANG, which the graders read), and a failing grader points at the Chinese chapter.
cargo run --locked --quiet --example progress -- --lang zh >"$work/zh_flag.log" 2>&1 \
  || { cat "$work/zh_flag.log"; echo "learner loop: progress --lang zh failed"; exit 1; }
zh_expect "$work/zh_flag.log" 'LORA_LANG=zh cargo test --features exercises --test t02_linear_with_lora$'
zh_expect "$work/zh_flag.log" 'cargo run --example progress -- --hint 2 --lang zh$'
LORA_LANG=zh cargo test --locked --features exercises --test t02_linear_with_lora >"$work/zh_grader.log" 2>&1 \
  && { echo "learner loop: t02's graders pass on its stub"; exit 1; }
zh_expect "$work/zh_grader.log" '^  -> 书中讲解这一性质的地方：book/zh/src/t02_linear_with_lora.md，「'
for t in tests/t[0-9][0-9]_*.rs; do
  name=$(basename "$t" .rs)
  cargo run --locked --quiet --example progress -- --lang zh --hint 3 --task "$name" >"$work/zh_hint.log" 2>&1 \
    || { cat "$work/zh_hint.log"; echo "learner loop: progress --lang zh --hint 3 --task $name failed"; exit 1; }
  zh_expect "$work/zh_hint.log" "^任务提示: $name .*[^\x00-\x7F]"
  zh_expect "$work/zh_hint.log" '^  提示 3/3: .*[^\x00-\x7F]'
done
echo "learner loop: ok"
