#!/usr/bin/env bash
# `make pytest`: the whole suite as four pytest processes side by side. Measured on two cores: one
# pytest process alone used about a third of one core (most of the suite waits: on servers starting,
# boots, failovers, timeouts it provokes), so one after another took 35 minutes of wall clock.
#
# Tracks, by folder (balanced by the time each took in one run, docs/benchmarks.md):
#   machines  tests/system (a whole server booting under systemd-nspawn) and tests/cluster (Galera,
#             HAProxy and two web nodes in namespaces; deselected by pyproject's addopts elsewhere)
#   webapp-1  the web app's sub-packages' tests
#   webapp-2  the rest of tests/webapp
#   rest      everything else, printed as it runs
# No two tracks share a port, a namespace, a user or a directory: each test starts its own servers on
# ports it picks, in namespaces or temporary directories it creates. The other tracks' output goes to
# test-artifacts/pytest-<track>.log and is printed after the rest's.
#
# Usage: scripts/pytest-tracks.sh PYTHON. Exit: non-zero when any track fails or runs no test
# (pytest's exit 5, "no tests ran", is a failure here, never a pass).
set -uo pipefail
py=${1:?usage: $0 PYTHON}
cd "$(dirname "$0")/.."
mkdir -p test-artifacts

WEBAPP_PACKAGES=(admin api audit auth db keys mail records)
declare -A TRACK=(
    [machines]="tests/system tests/cluster"
    [webapp-1]="${WEBAPP_PACKAGES[*]/#/tests/webapp/}"
    [webapp-2]="tests/webapp ${WEBAPP_PACKAGES[*]/#/--ignore=tests/webapp/}"
)
ORDER=(machines webapp-1 webapp-2)

pytest_rc() {  # pytest with these arguments; its exit status, 5 turned into a failure
    "$py" -m pytest "$@"
    local rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest ran no tests: failing" >&2
        rc=1
    fi
    return "$rc"
}

declare -A PID
for name in "${ORDER[@]}"; do
    # shellcheck disable=SC2086 # the track's paths and options are words on purpose
    if [ "$name" = machines ]; then
        # -m "cluster or not cluster": the cluster tests that pyproject's addopts deselect elsewhere.
        pytest_rc -m "cluster or not cluster" ${TRACK[$name]} >"test-artifacts/pytest-$name.log" 2>&1 &
    else
        pytest_rc ${TRACK[$name]} >"test-artifacts/pytest-$name.log" 2>&1 &
    fi
    PID[$name]=$!
done
trap 'kill "${PID[@]}" 2>/dev/null' INT TERM

ignores=(--ignore=tests/system --ignore=tests/cluster --ignore=tests/webapp)
pytest_rc "${ignores[@]}"
declare -A RC=([rest]=$?)

for name in "${ORDER[@]}"; do
    wait "${PID[$name]}"
    RC[$name]=$?
done
status=0
for name in "${ORDER[@]}"; do
    echo
    echo "======== track $name (${TRACK[$name]}), from test-artifacts/pytest-$name.log ========"
    cat "test-artifacts/pytest-$name.log"
done
echo
for name in rest "${ORDER[@]}"; do
    echo "======== track $name: exit ${RC[$name]}"
    [ "${RC[$name]}" -eq 0 ] || status=1
done
exit "$status"
