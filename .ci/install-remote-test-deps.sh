#!/usr/bin/env bash
# System packages the tests need on a bare Debian machine:
# - the OpenSSH server, which the DVC remote tests (tests/remotes) start privately on 127.0.0.1 (it is never
#   started as a service);
# - Chromium, which tests/test_compare.py runs headless to check that the `dvc plots diff` page renders
#   (~17 s to install on the CI machine's mirror; with CI set, that test fails rather than skips without it);
# - Go (golang-go), whose text/template renders the Ollama Modelfile's TEMPLATE in tests/test_gguf.py the way
#   Ollama does (~20 s to install; with CI set, that test fails rather than skips without it).
# Python packages (dvc[s3,ssh], moto[server], vl-convert-python, xllamacpp) come from requirements.txt.
set -euo pipefail
missing=()
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  missing+=(openssh-server)
fi
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if ! command -v go >/dev/null 2>&1; then
  missing+=(golang-go)
fi
if [ "${#missing[@]}" = 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "the tests need ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' (or its equivalent)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]
command -v chromium >/dev/null 2>&1
command -v go >/dev/null 2>&1
