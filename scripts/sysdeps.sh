#!/usr/bin/env bash
# Install the Debian packages listed in scripts/debian-packages.txt that are missing.
# Only root can install; anyone else gets a list of what is missing and a failure, so that
# a test run never silently goes on without a component it needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# What installed packages provide counts too: NodeSource's nodejs provides (and conflicts with)
# Debian's npm, which apt would otherwise swap for Debian's older nodejs.
provided=$(dpkg-query -W -f='${Status}|${Provides}\n' 2>/dev/null | sed -n 's/^install ok installed|//p' \
    | tr ',' '\n' | sed 's/ *(.*//; s/^ *//')
missing=()
while read -r pkg _; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    if grep -qxF -- "$pkg" <<<"$provided"; then continue; fi
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done < "$here/debian-packages.txt"
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages (run make as root, or install them): ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the packages' own services from starting on install: the tests start
# private instances of every daemon they need.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
