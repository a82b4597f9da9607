#!/usr/bin/env bash
# Install EcoSorter Edge on 64-bit Raspberry Pi OS Bookworm (Python 3.11) or Trixie (Python 3.13).
#   sudo deploy/install.sh [--model FILE (--model-signature SIG | --allow-unsigned)] [--kiosk] [--pca9685]
#                          [--pwm-overlay] [--no-systemd] [--dry-run]
#   sudo deploy/install.sh --uninstall [--purge] [--dry-run]
# Idempotent: run it again to upgrade; an edited /etc/ecosorter/config.toml is never overwritten.
# --pca9685: servos on a PCA9685 board (I2C on, the pca9685 extra); --pwm-overlay: hardware PWM on
# GPIO12/13 for servo_driver = "sysfs-pwm" (needs a reboot); --no-systemd: show but skip the unit
# steps (a chroot or container; `make pi-check` uses it). A --model is checked like `ecosorter model
# install`: signed by the config's [model] public_key, or knowingly unsigned (shown on the page).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/ecosorter
VENV="$PREFIX/venv"
ETC=/etc/ecosorter
STATE=/var/lib/ecosorter
SVC_USER=ecosorter
UNIT_DIR=/etc/systemd/system
USER_UNIT_DIR=/etc/systemd/user

DRY=0 UNINSTALL=0 PURGE=0 KIOSK=0 MODEL="" MODEL_TRUST=() PCA9685=0 PWM_OVERLAY=0 SYSTEMD=1
usage() { sed -n '2,10p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --kiosk) KIOSK=1 ;;
    --pca9685) PCA9685=1 ;;
    --pwm-overlay) PWM_OVERLAY=1 ;;
    --no-systemd) SYSTEMD=0 ;;
    --model) MODEL="${2:?--model needs a file}"; shift ;;
    --model-signature) MODEL_TRUST=(--signature "${2:?--model-signature needs a file}"); shift ;;
    --allow-unsigned) MODEL_TRUST=(--allow-unsigned) ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
if [ -n "$MODEL" ] && [ "${#MODEL_TRUST[@]}" -eq 0 ]; then
  echo "install.sh: --model needs --model-signature SIG (checked against [model] public_key) or --allow-unsigned" >&2
  exit 2
fi

run() {
  echo "+ $*"
  if [ "$DRY" -eq 0 ]; then "$@"; fi
}
step() { echo; echo "== $*"; }
# systemd steps: shown but not run with --no-systemd (no systemd as PID 1 in a chroot)
unit() {
  if [ "$SYSTEMD" -eq 1 ]; then run "$@"; else echo "+ $* (skipped: --no-systemd)"; fi
}

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

# ECOSORTER_UNAME_M: tests fake the machine type with it; nothing else sets it.
ARCH="${ECOSORTER_UNAME_M:-$(uname -m)}"
PY="$(command -v python3 || echo python3)"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo unknown)"
echo "EcoSorter Edge install: $ARCH, Python $PYVER, source $SRC"
case "$ARCH" in
  aarch64|arm64|x86_64) ;;
  armv6l|armv7l|armhf|armv8l)
    # PyPI has no armv7l/armv6l wheels of LiteRT, numpy or OpenCV (tflite-runtime: cp311 only, numpy
    # would build from source for hours): a 32-bit system cannot run the sorter as packaged.
    echo "install.sh: this is a 32-bit ARM system ($ARCH); EcoSorter Edge needs 64-bit Raspberry Pi OS" >&2
    echo "  (aarch64: Raspberry Pi 3, 4, 5, Zero 2 W). Flash 'Raspberry Pi OS (64-bit)' with Raspberry Pi" >&2
    echo "  Imager and run this installer again. 'uname -m' must print aarch64." >&2
    exit 3 ;;
  *) echo "install.sh: warning: untested machine type $ARCH; 64-bit Raspberry Pi OS (aarch64) is the target" >&2 ;;
esac
if [ "$PCA9685" -eq 0 ]; then
  # an installed config that already drives servos through a PCA9685 needs its library too
  if grep -Eqs '^[[:space:]]*(servo_driver|profile)[[:space:]]*=[[:space:]]*"pca9685"' "$ETC/config.toml"; then PCA9685=1; fi
fi

step "system packages (picamera2 and lgpio come from apt, not pip)"
run apt-get update
PKGS="python3-venv python3-pip python3-picamera2 python3-lgpio python3-libcamera python3-cryptography libopenblas0 i2c-tools"
if [ "$DRY" -eq 0 ]; then
  # picamera2 and lgpio are in Raspberry Pi OS's archive; plain Debian arm64 lacks some of them
  have="" missing=""
  for pkg in $PKGS; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then have="$have $pkg"; else missing="$missing $pkg"; fi
  done
  PKGS="${have# }"
  if [ -n "$missing" ]; then
    echo "not in this system's apt archive (not Raspberry Pi OS?):$missing; camera.source = \"picamera2\" and the lgpio pin factory need them"
  fi
fi
# shellcheck disable=SC2086  # a word list on purpose
run apt-get install -y --no-install-recommends $PKGS
if [ "$KIOSK" -eq 1 ]; then run apt-get install -y --no-install-recommends chromium curl; fi

# python3 may have come with the packages just installed (a minimal system)
PY="$(command -v python3 || echo python3)"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo unknown)"
echo "Python $PYVER ($PY)"

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
EXTRAS=edge
if [ "$PCA9685" -eq 1 ]; then EXTRAS="edge,pca9685"; fi
# ai-edge-litert has aarch64 wheels for Python 3.10-3.14 (Bookworm 3.11, Trixie 3.13); tflite-runtime
# stops at 3.11, so it is only the fallback when LiteRT cannot be installed.
if ! run "$VENV/bin/pip" install "${SRC}[$EXTRAS]"; then
  case "$PYVER" in
    3.9|3.10|3.11)
      echo "install.sh: ${SRC}[$EXTRAS] did not install; trying tflite-runtime 2.14 (Python $PYVER) in place of LiteRT" >&2
      run "$VENV/bin/pip" install "$SRC" "tflite-runtime==2.14.*" "numpy<2" opencv-python-headless gpiozero paho-mqtt tomlkit cryptography ;;
    *)
      echo "install.sh: ${SRC}[$EXTRAS] did not install, and tflite-runtime has no wheels for Python $PYVER" >&2
      exit 1 ;;
  esac
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
  run sudo -u "$SVC_USER" "$VENV/bin/ecosorter" model install "$MODEL" --config "$ETC/config.toml" \
    --state-dir "$STATE" "${MODEL_TRUST[@]}"
fi

REBOOT=""
BOOTCFG=/boot/firmware/config.txt
if [ ! -e "$BOOTCFG" ] && [ -e /boot/config.txt ]; then BOOTCFG=/boot/config.txt; fi
if [ "$PCA9685" -eq 1 ]; then
  step "I2C on for the PCA9685 (hardware.servo_driver = \"pca9685\")"
  if command -v raspi-config >/dev/null 2>&1; then
    run raspi-config nonint do_i2c 0
  elif [ ! -e "$BOOTCFG" ]; then
    echo "no $BOOTCFG (not Raspberry Pi OS?): turn I2C on the way this system does it"
  elif ! grep -Eqs '^dtparam=i2c_arm=on' "$BOOTCFG"; then
    if [ "$DRY" -eq 0 ]; then echo "dtparam=i2c_arm=on" >> "$BOOTCFG"; fi
    echo "+ echo dtparam=i2c_arm=on >> $BOOTCFG"
    REBOOT="I2C"
  fi
fi
if [ "$PWM_OVERLAY" -eq 1 ]; then
  # PWM0 channels on GPIO12 and GPIO13 (ALT0) on a Pi 4 and on a Pi 5's RP1: the chute and trapdoor
  # pins of hardware.servo_driver = "sysfs-pwm"; the kernel times the pulses, so no jitter.
  step "hardware PWM overlay for servo_driver = \"sysfs-pwm\""
  OVERLAY="dtoverlay=pwm-2chan,pin=12,func=4,pin2=13,func2=4"
  if [ ! -e "$BOOTCFG" ] && [ "$DRY" -eq 0 ]; then
    echo "no $BOOTCFG (not Raspberry Pi OS?): add '$OVERLAY' to the boot configuration yourself"
  elif grep -Eqs '^dtoverlay=pwm-2chan' "$BOOTCFG"; then
    echo "keeping the pwm-2chan overlay already in $BOOTCFG: $(grep -E '^dtoverlay=pwm-2chan' "$BOOTCFG")"
  else
    echo "+ echo $OVERLAY >> $BOOTCFG"
    if [ "$DRY" -eq 0 ]; then echo "$OVERLAY" >> "$BOOTCFG"; fi
    REBOOT="${REBOOT:+$REBOOT and }the PWM overlay"
  fi
fi

step "systemd units"
unit install -m 0644 "$SRC/deploy/ecosorter.service" "$UNIT_DIR/ecosorter.service"
unit systemctl daemon-reload
unit systemctl enable --now ecosorter.service
if [ "$KIOSK" -eq 1 ]; then
  # a user unit: it starts with the desktop session of whoever logs in on the kiosk screen
  unit install -d "$USER_UNIT_DIR"
  unit install -m 0644 "$SRC/deploy/kiosk.service" "$USER_UNIT_DIR/ecosorter-kiosk.service"
  unit systemctl --global enable ecosorter-kiosk.service
fi

step "check"
# doctor's FAIL lines say what to fix; the install itself is done either way
run "$VENV/bin/ecosorter" doctor --config "$ETC/config.toml" || echo "doctor found something to fix (above); then: sudo systemctl restart ecosorter"
echo
if [ -n "$REBOOT" ]; then
  echo "REBOOT NEEDED: $REBOOT take effect after 'sudo reboot' ($BOOTCFG changed)"
fi
echo "done: journalctl -u ecosorter -f to follow it; status page at http://127.0.0.1:8080/"
# every bin installed from the example is "ecosorter-1": on one broker two such bins take over each other
if grep -q '^bin_id = "ecosorter-1"' "$ETC/config.toml" 2>/dev/null || [ ! -e "$ETC/config.toml" ]; then
  echo "one of several bins on a broker? give this one its own bin_id in $ETC/config.toml (now ecosorter-1), then: systemctl restart ecosorter"
fi
