#!/usr/bin/env bash
# System packages for the Space tests (tests/test_space.py) on Debian/Ubuntu:
#   fluidsynth + a General MIDI soundfont  -> audio previews (music_hf.render.render_audio)
#   chromium + chromium-driver             -> the headless-browser test (pytest -m browser)
#   fonts-noto-color-emoji                 -> emoji in the page screenshot
# Idempotent: installs only what is missing (no apt-get at all when everything is there).
# Set MUSIC_HF_SOUNDFONT_PACKAGE=timgm6mb-soundfont for a 6 MB soundfont instead of the 140 MB FluidR3.
set -euo pipefail

need=()
command -v fluidsynth >/dev/null 2>&1 || need+=(fluidsynth)
soundfont_found=""
for sf in "${MUSIC_HF_SOUNDFONT:-}" /usr/share/sounds/sf2/FluidR3_GM.sf2 /usr/share/sounds/sf2/TimGM6mb.sf2 \
          /usr/share/sounds/sf2/default-GM.sf2; do
    if [ -n "$sf" ] && [ -f "$sf" ]; then soundfont_found="$sf"; break; fi
done
[ -n "$soundfont_found" ] || need+=("${MUSIC_HF_SOUNDFONT_PACKAGE:-fluid-soundfont-gm}")
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ! { command -v fc-list >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "color emoji"; }; then
    need+=(fonts-noto-color-emoji)
fi

if [ "${#need[@]}" -eq 0 ]; then
    echo "ci_system_deps: fluidsynth, soundfont ($soundfont_found), chromium and fonts already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "ci_system_deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q "${need[@]}"
