#!/usr/bin/env bash
# System packages for the Space tests (tests/test_space.py) on Debian/Ubuntu:
#   chromium + chromium-driver             -> the headless-browser test (pytest -m browser)
#   fonts-noto-color-emoji                 -> emoji in the page screenshot
# Audio needs none: music_hf.render synthesizes with PyPI packages (midirenderer, pretty-midi's soundfont).
# Idempotent: installs only what is missing (no apt-get at all when everything is there).
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ! { command -v fc-list >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "color emoji"; }; then
    need+=(fonts-noto-color-emoji)
fi

if [ "${#need[@]}" -eq 0 ]; then
    echo "ci_system_deps: chromium and fonts already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "ci_system_deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${need[@]}"
