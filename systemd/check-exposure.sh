#!/bin/sh
# Measure the sandbox of systemd/callguard.service with `systemd-analyze security --offline=true`
# and fail when its overall exposure is above a threshold (SPEC §10).
#
#   systemd/check-exposure.sh [THRESHOLD]        THRESHOLD defaults to 1.5 (0.0 .. 10.0)
#
# Prints the items that still carry exposure and the overall level. Exit status: 0 at or below
# the threshold, 1 above it, 2 when it cannot measure (systemd-analyze missing or too old, bad
# argument, unreadable unit). Installs nothing: on Debian 12 systemd-analyze comes with the
# `systemd` package (apt-get install -y systemd); --offline needs systemd 250 or later.
# Works from any directory; CI runs it from the repository root.

set -eu

threshold="${1:-1.5}"
unit="$(dirname "$0")/callguard.service"

case "$threshold" in
    '' | *[!0-9.]* | *.*.* | .)
        echo "check-exposure: threshold must be a number such as 1.5, got '$threshold'" >&2
        exit 2
        ;;
esac

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-exposure: systemd-analyze not found; install the Debian package 'systemd' (apt-get install -y systemd)" >&2
    exit 2
fi

if [ ! -r "$unit" ]; then
    echo "check-exposure: cannot read $unit" >&2
    exit 2
fi

# Plain output whatever the terminal: no pager, no colours; the overall line is parsed below.
if ! report="$(SYSTEMD_PAGER='' SYSTEMD_COLORS=0 systemd-analyze security --offline=true --no-pager "$unit" 2>&1)"; then
    printf '%s\n' "$report" >&2
    echo "check-exposure: systemd-analyze security --offline=true failed (systemd 250 or later is needed: $(systemd-analyze --version | head -n 1))" >&2
    exit 2
fi

exposure="$(printf '%s\n' "$report" | sed -n 's/^.*Overall exposure level for [^:]*: *\([0-9][0-9.]*\).*$/\1/p' | head -n 1)"
if [ -z "$exposure" ]; then
    printf '%s\n' "$report" >&2
    echo "check-exposure: no overall exposure level in the output above" >&2
    exit 2
fi

# The items that still carry exposure: every row whose last column is a number (rows that are
# fully mitigated have an empty EXPOSURE column).
printf '%s\n' "$report" | awk '/ EXPOSURE *$/ || $NF ~ /^[0-9]+\.[0-9]+$/'
echo
echo "callguard.service exposure: $exposure (threshold $threshold)"

if awk -v e="$exposure" -v t="$threshold" 'BEGIN { exit !(e + 0 > t + 0) }'; then
    echo "check-exposure: FAIL: $exposure is above $threshold" >&2
    exit 1
fi
echo "check-exposure: OK"
