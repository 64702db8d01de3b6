#!/usr/bin/env bash
# Installs the system packages that effdsl's test suite needs, from Debian, where missing, and
# the npm packages of the VS Code grammar tests.
# One `need COMMAND PACKAGE...` line per tool; `apt-get update` runs once, only if something is
# missing. Run as root (or with sudo available). Used by README's test command and `.ci/run`.
set -euo pipefail

missing=()
need() {
    local command=$1
    shift
    command -v "$command" >/dev/null 2>&1 || missing+=("$@")
}

need dot graphviz  # render: graphviz's layout engine
need node nodejs   # editors/vscode: the grammar tests run VS Code's tokenizer under node
need npm npm
need chromium chromium  # tests/test_render_browser.py: SVG tooltips in a real browser
need pg_ctlcluster postgresql  # search: a throwaway PostgreSQL server for the study-storage test

if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The npm packages of the VS Code grammar tests (vscode-textmate, vscode-oniguruma: 640 KB,
# a few seconds), pinned by editors/vscode/test/package-lock.json.
npm ci --prefix "$(dirname "$0")/../editors/vscode/test" --no-audit --no-fund --silent
