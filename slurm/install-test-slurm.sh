#!/bin/bash
# slurm/install-test-slurm.sh -- install Slurm (Debian/Ubuntu's slurm-wlm) for the test suite.
#
# Idempotent: does nothing when slurmctld is already installed. Needs root or sudo and apt.
# Only installs: slurm/local-slurm.sh (which the tests run too) writes a slurm.conf (auth/none, no
# munge, no systemd, no cgroups) in a temp dir and starts slurmctld/slurmd itself; no service is
# enabled or started.
set -euo pipefail

if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
    echo "slurm already installed: $(slurmctld -V 2>/dev/null || echo slurmctld)"
    exit 0
fi
command -v apt-get >/dev/null || { echo "install-test-slurm: no apt-get here; install Slurm (slurmctld, slurmd, sbatch) by hand" >&2; exit 1; }

SUDO=""
if (( EUID != 0 )); then
    command -v sudo >/dev/null || { echo "install-test-slurm: run as root (or install sudo)" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
# policy-rc.d 101: no service may be started by the packages' maintainer scripts.
created_policy=""
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
install() { $SUDO apt-get install -y --no-install-recommends slurm-wlm; }
rc=0
install || { $SUDO apt-get update && install; } || rc=$?
[[ -n "$created_policy" ]] && $SUDO rm -f /usr/sbin/policy-rc.d
(( rc == 0 )) || { echo "install-test-slurm: apt-get install slurm-wlm failed ($rc)" >&2; exit "$rc"; }
echo "slurm installed in $(( $(date +%s) - start ))s: $(slurmctld -V)"
