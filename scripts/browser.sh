#!/usr/bin/env bash
# Makes sure Debian's Chromium and its WebDriver (chromedriver) are installed, for the dashboard's
# browser test (tests/it/dashboard.rs), with a font for its screenshots, and prints their versions.
#
#   scripts/browser.sh            # idempotent: installs nothing when both are there
#
# Runs `apt-get update` only when a package must be installed. Exits non-zero, saying why, when
# they cannot be installed.
set -euo pipefail

say() { printf 'browser: %s\n' "$*" >&2; }

need_packages=()
[[ -x /usr/bin/chromium ]] || need_packages+=(chromium)
[[ -x /usr/bin/chromedriver ]] || need_packages+=(chromium-driver)
# Only recommended by chromium, but without a font the screenshots show boxes for text.
dpkg -s fonts-liberation >/dev/null 2>&1 || need_packages+=(fonts-liberation)
if ((${#need_packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing ${need_packages[*]}; install them (apt-get install -y chromium chromium-driver) or run this as root"
        exit 1
    fi
    say "installing ${need_packages[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
fi

# Debian's chromium wrapper script prints a shell warning on some machines; keep only the version.
chromium --version 2>/dev/null
chromedriver --version
