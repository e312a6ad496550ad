#!/bin/sh
# cargo-recipe.sh SRC DEST: copies SRC's Cargo.lock and every Cargo.toml of
# the workspace into DEST (an absolute path), each with stub sources
# (src/main.rs, src/lib.rs), so that DEST builds every dependency and nothing
# of the project. The Dockerfile builds its cached dependency layer from it:
# the layer is rebuilt only when a manifest or the lock file changes.
set -eu
src=$1
dest=$2
mkdir -p "$dest"
cp "$src/Cargo.lock" "$dest/Cargo.lock"
cd "$src"
find . -name Cargo.toml -not -path './target/*' -not -path './.git/*' | sort | while IFS= read -r manifest; do
    dir=$(dirname "$manifest")
    mkdir -p "$dest/$dir/src"
    cp "$manifest" "$dest/$dir/Cargo.toml"
    echo 'fn main() {}' >"$dest/$dir/src/main.rs"
    : >"$dest/$dir/src/lib.rs"
done
