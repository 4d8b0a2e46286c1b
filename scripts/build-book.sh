#!/usr/bin/env bash
# Build both editions of the book, English (book/) and Chinese (book/zh/), with the pinned mdBook,
# and fail on any warning or error.
#
# mdBook logs a missing include file as an ERROR and still exits 0, and renders a missing anchor
# as an empty block; tests/book_includes.rs catches the anchors, tests/book_parity.rs keeps the
# two editions in step, and this script fails on everything mdBook itself reports. mdBook is
# installed with `cargo install` at the pinned version when the one on PATH is another (or none):
# about a minute on two cores, without its `serve`/`watch` features.
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
if ! mdbook --version 2>/dev/null | grep -qx "mdbook v$MDBOOK_VERSION"; then
    cargo install mdbook --version "$MDBOOK_VERSION" --locked --no-default-features --features search
fi
for book in book book/zh; do
    log=$(mdbook build "$book" 2>&1) || { echo "$log"; echo "error: mdbook build $book failed" >&2; exit 1; }
    echo "$log"
    if grep -E 'WARN|ERROR' <<<"$log" >/dev/null; then
        echo "error: mdbook build $book reported the warnings or errors above" >&2
        exit 1
    fi
    # mdBook does not fail on an image that is not there; an image missing from the output
    # would be a silent hole (the Chinese edition keeps copies of the English figures).
    while read -r img; do
        [ -f "$book/book/$img" ] || { echo "error: $book/book/$img is missing from the built book" >&2; exit 1; }
    done < <(grep -hoE '!\[[^]]*\]\([^)]+\)' "$book"/src/*.md | sed -E 's/.*\(([^)]+)\)/\1/')
    echo "book written to $book/book/index.html"
done
