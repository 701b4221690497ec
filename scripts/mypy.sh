#!/usr/bin/env bash
# mypy on the five packages as zcrepl.*, the names they import by once installed. An editable install hides them
# behind an import hook mypy cannot follow, so the check runs in a scratch directory whose zcrepl/ links to the
# source folders. Run from anywhere: scripts/mypy.sh [extra mypy flags]; MYPY=path picks the binary (default: the
# repository's .venv). Used by .ci/run and tests/unit/test_lint.py, so there is one mypy command.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mypy=${MYPY:-$repo/.venv/bin/mypy}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/zcrepl"
for package in core proto agent controller cli; do
    ln -s "$repo/$package" "$work/zcrepl/$package"
done
cd "$work"
"$mypy" --config-file "$repo/pyproject.toml" --cache-dir "$work/cache" \
    -p zcrepl.core -p zcrepl.proto -p zcrepl.agent -p zcrepl.controller -p zcrepl.cli "$@"
