#!/usr/bin/env bash
# Sets up valley on a fresh Debian/Ubuntu machine: system packages, npm
# dependencies, the TypeScript build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests and stages need:
#   bubblewrap        the sandbox for untrusted code (grader)
#   python3-numpy     the grader's taco semantics (TACO's preamble imports numpy) and lcb's numpy answers
#   cmake g++ git     building llama.cpp from the bundle inside node-llama-cpp
#   chromium          the report's HTML page is checked in a real headless browser
#   fonts-dejavu-core text in rendered plots
#   util-linux        prlimit/setpriv (usually present)
#   openssh-*         the ssh:// remote tests run a real sshd on loopback
#   slurm*, munge     the Slurm executor tests start a real single-node cluster
PKGS=(bubblewrap python3-numpy cmake g++ git chromium fonts-dejavu-core util-linux python3 ca-certificates openssh-server openssh-client slurmctld slurmd slurm-client munge)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    AS_ROOT=()
  elif command -v sudo >/dev/null 2>&1; then
    AS_ROOT=(sudo)
  else
    echo "setup: missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${AS_ROOT[@]}" apt-get update -qq || true
  "${AS_ROOT[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x /usr/bin/python3 ] || { echo "setup: /usr/bin/python3 is required (the grader runs candidates with it)" >&2; exit 1; }

# npm ci runs the `prepare` script, which compiles the TypeScript.
npm ci --no-audit --no-fund
