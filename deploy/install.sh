#!/usr/bin/env bash
# Install EcoSorter Edge on Raspberry Pi OS Bookworm (Python 3.11) or Trixie (Python 3.13).
#   sudo deploy/install.sh [--model FILE] [--kiosk] [--dry-run]
#   sudo deploy/install.sh --uninstall [--purge] [--dry-run]
# Idempotent: run it again to upgrade; an edited /etc/ecosorter/config.toml is never overwritten.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/ecosorter
VENV="$PREFIX/venv"
ETC=/etc/ecosorter
STATE=/var/lib/ecosorter
SVC_USER=ecosorter
UNIT_DIR=/etc/systemd/system
USER_UNIT_DIR=/etc/systemd/user

DRY=0 UNINSTALL=0 PURGE=0 KIOSK=0 MODEL=""
usage() { sed -n '2,5p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --kiosk) KIOSK=1 ;;
    --model) MODEL="${2:?--model needs a file}"; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done

run() {
  echo "+ $*"
  if [ "$DRY" -eq 0 ]; then "$@"; fi
}
step() { echo; echo "== $*"; }

if [ "$DRY" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or with --dry-run to see the steps" >&2
  exit 1
fi

if [ "$UNINSTALL" -eq 1 ]; then
  step "stop and remove the services"
  if [ -e "$UNIT_DIR/ecosorter.service" ]; then
    run systemctl disable --now ecosorter.service
    run rm -f "$UNIT_DIR/ecosorter.service"
  fi
  if [ -e "$USER_UNIT_DIR/ecosorter-kiosk.service" ]; then
    run systemctl --global disable ecosorter-kiosk.service
    run rm -f "$USER_UNIT_DIR/ecosorter-kiosk.service"
  fi
  run systemctl daemon-reload
  run rm -rf "$PREFIX"
  if [ "$PURGE" -eq 1 ]; then
    step "purge config, events and captures"
    run rm -rf "$ETC" "$STATE"
    if id "$SVC_USER" >/dev/null 2>&1; then run userdel "$SVC_USER"; fi
  else
    echo "kept $ETC and $STATE (events, captures, models); --purge removes them"
  fi
  exit 0
fi

ARCH="$(uname -m)"
PY="$(command -v python3 || echo python3)"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo unknown)"
echo "EcoSorter Edge install: $ARCH, Python $PYVER, source $SRC"

step "system packages (picamera2 and lgpio come from apt, not pip)"
run apt-get update
run apt-get install -y --no-install-recommends python3-venv python3-pip python3-picamera2 python3-lgpio \
  python3-libcamera python3-cryptography libopenblas0 i2c-tools
if [ "$KIOSK" -eq 1 ]; then run apt-get install -y --no-install-recommends chromium curl; fi

step "service user $SVC_USER in gpio, video, i2c"
if ! id "$SVC_USER" >/dev/null 2>&1; then
  run useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin "$SVC_USER"
fi
for group in gpio video i2c; do
  if getent group "$group" >/dev/null 2>&1; then run usermod -aG "$group" "$SVC_USER"; fi
done

step "virtual environment with system site packages (for picamera2)"
if [ ! -x "$VENV/bin/python" ]; then run "$PY" -m venv --system-site-packages "$VENV"; fi
run "$VENV/bin/pip" install --upgrade pip
if [ "$ARCH" = "armv7l" ] || [ "$ARCH" = "armv6l" ]; then
  # LiteRT has no 32-bit ARM wheels: tflite-runtime 2.14 (Python <= 3.11) with numpy 1.
  run "$VENV/bin/pip" install "$SRC" "tflite-runtime==2.14.*" "numpy<2" opencv-python-headless gpiozero paho-mqtt tomlkit cryptography
else
  run "$VENV/bin/pip" install "${SRC}[edge]"
fi

step "config, state and model folders"
run install -d -m 0755 "$ETC"
# 0640 root:ecosorter: the service reads it, other local users do not (it may hold mqtt.password)
if [ -e "$ETC/config.toml" ]; then
  echo "keeping the existing $ETC/config.toml"
  run chown "root:$SVC_USER" "$ETC/config.toml"
  run chmod 0640 "$ETC/config.toml"
else
  run install -m 0640 -o root -g "$SVC_USER" "$SRC/deploy/config.example.toml" "$ETC/config.toml"
fi
run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE" "$STATE/models" "$STATE/captures"
if [ -n "$MODEL" ]; then
  run sudo -u "$SVC_USER" "$VENV/bin/ecosorter" model install "$MODEL" --state-dir "$STATE"
fi

step "systemd units"
run install -m 0644 "$SRC/deploy/ecosorter.service" "$UNIT_DIR/ecosorter.service"
run systemctl daemon-reload
run systemctl enable --now ecosorter.service
if [ "$KIOSK" -eq 1 ]; then
  # a user unit: it starts with the desktop session of whoever logs in on the kiosk screen
  run install -d "$USER_UNIT_DIR"
  run install -m 0644 "$SRC/deploy/kiosk.service" "$USER_UNIT_DIR/ecosorter-kiosk.service"
  run systemctl --global enable ecosorter-kiosk.service
fi

step "check"
run "$VENV/bin/ecosorter" doctor --config "$ETC/config.toml"
echo
echo "done: journalctl -u ecosorter -f to follow it; status page at http://127.0.0.1:8080/"
