#!/usr/bin/env bash
# Installs the system packages that effdsl's test suite needs, from Debian, where missing.
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

if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
