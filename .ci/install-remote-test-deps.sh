#!/usr/bin/env bash
# System packages the DVC remote tests (tests/remotes) need on a bare Debian machine:
# the OpenSSH server, which the tests start privately on 127.0.0.1 (it is never started as a service).
# Python packages (dvc[s3,ssh], moto[server]) come from requirements.txt.
set -euo pipefail
if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "tests/remotes need sshd: run 'sudo apt-get install -y openssh-server' (or its equivalent)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]
