#!/usr/bin/env bash
# One-command setup, idempotent and fast when everything is already there:
# Debian packages for the local provider, a virtualenv at .venv from the pinned requirements,
# and Azurite from package-lock.json. Each step is skipped when its stamp matches its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(
  qemu-system-x86 qemu-utils e2fsprogs fdisk busybox-static mmdebstrap debootstrap
  dosfstools mtools bubblewrap grub-pc-bin grub-efi-amd64-bin ovmf zstd util-linux
  ca-certificates nodejs npm slirp4netns iproute2 chromium tmux
)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  # nodejs/npm may come from outside Debian's packages on this machine kind: a working binary is enough.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]} (run this script as root, or install them with apt-get)"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp_py=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp_py" ]; then
  log "creating .venv and installing requirements-dev.txt"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$stamp_py" > .venv/.stamp
fi

# The `aib` command (pyproject's [project.scripts]), installed editable: it runs this checkout's code.
stamp_aib=$( (cat pyproject.toml; echo "$ROOT") | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/aib ] || [ "$(cat .venv/.stamp-aib 2>/dev/null)" != "$stamp_aib" ]; then
  log "installing the aib command (pip install -e .)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$stamp_aib" > .venv/.stamp-aib
fi

stamp_npm=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
if [ ! -x node_modules/.bin/azurite ] || [ "$(cat node_modules/.stamp 2>/dev/null)" != "$stamp_npm" ]; then
  log "installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$stamp_npm" > node_modules/.stamp
fi
log "ready: $ROOT/.venv (aib: .venv/bin/aib), $ROOT/node_modules/.bin/azurite"
