#!/usr/bin/env bash
# Install, upgrade or remove batchd as a systemd service. Run as root.
#
#   install.sh [--source DIR|WHEEL] [--uninstall]
#
# --source: what to pip install (default: the checkout this script is in).
#
# Idempotent: re-running upgrades the package in the venv and refreshes the
# unit and snippets, but never overwrites /etc/batchd/batchd.toml.
#
# Environment (escape hatches, mostly for tests and offline hosts):
#   BATCHD_INSTALL_EXTRAS  pip extras to install (default "systemd,gpu"; empty: none).
#                          "systemd" compiles systemd-python: needs libsystemd-dev,
#                          pkg-config, a C compiler and the Python headers.
#   BATCHD_PIP_ARGS        extra pip arguments, e.g. "--no-index --find-links /wheels".
#   BATCHD_PYTHON          interpreter for the venv (default python3, 3.11 or newer). The
#                          unit's sandbox cannot run one under /root, /home or /run/user
#                          (pyenv, conda): such a python3 is passed over for /usr/bin/python3,
#                          such a BATCHD_PYTHON is refused.
set -euo pipefail
umask 022

PACKAGING_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$(dirname "$PACKAGING_DIR")
PREFIX=/opt/batchd  # batchd.service's ExecStart points here
VENV=$PREFIX/venv
BIN_LINK=/usr/local/bin/batchd
EXTRAS=${BATCHD_INSTALL_EXTRAS-systemd,gpu}
PYTHON=${BATCHD_PYTHON:-python3}
SYSTEM_PYTHON=/usr/bin/python3
SERVICE_USER=batchd
UNIT=/etc/systemd/system/batchd.service
SYSUSERS=/usr/lib/sysusers.d/batchd.conf
TMPFILES=/usr/lib/tmpfiles.d/batchd.conf
CONFIG=/etc/batchd/batchd.toml
UNINSTALL=0

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --source) [ $# -ge 2 ] || die "--source needs a directory"; SOURCE=$2; shift 2 ;;
        --source=*) SOURCE=${1#--source=}; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'install.sh: unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"

systemd_running() { [ -d /run/systemd/system ]; }

uninstall() {
    step "Stopping and disabling batchd.service"
    if systemd_running; then
        systemctl disable --now batchd.service 2>/dev/null || note "was not enabled or running"
    else
        note "systemd is not running here; nothing to stop"
    fi
    step "Removing $UNIT and $VENV"
    rm -f "$UNIT"
    rm -rf "$VENV"
    if grep -q "installed by batchd's install.sh" "$BIN_LINK" 2>/dev/null; then rm -f "$BIN_LINK"; fi
    rm -f "$PREFIX/README.md"
    rmdir "$PREFIX" 2>/dev/null || true
    if systemd_running; then
        step "Reloading systemd"
        systemctl daemon-reload
        systemctl reset-failed batchd.service 2>/dev/null || true
    fi
    step "Kept (remove by hand if you want them gone):"
    note "/etc/batchd                 configuration"
    note "/var/lib/batchd             journal and spooled inputs"
    note "/srv/batchd                 inbox and outbox"
    [ -d "$UNIT.d" ] && note "$UNIT.d  your drop-ins"
    note "$SYSUSERS, $TMPFILES and the batchd user and groups (they own the kept data)"
}

create_users() {
    step "Creating user batchd and group batchd-users ($SYSUSERS)"
    install -D -m 0644 "$PACKAGING_DIR/batchd.sysusers" "$SYSUSERS"
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERS"
    else
        note "systemd-sysusers not found; using groupadd/useradd"
        getent group batchd-users >/dev/null || groupadd --system batchd-users
        getent group batchd >/dev/null || groupadd --system batchd
        if ! getent passwd batchd >/dev/null; then
            nologin=$(command -v nologin || echo /usr/sbin/nologin)
            useradd --system --gid batchd --home-dir /var/lib/batchd --no-create-home \
                --shell "$nologin" --comment "batchd LLM batch daemon" batchd
        fi
        usermod -a -G batchd-users batchd
    fi
}

has_extra() { case ",$EXTRAS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

build_deps_present() {
    pkg-config --exists libsystemd 2>/dev/null &&
        { command -v cc >/dev/null || command -v gcc >/dev/null; } &&
        "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
}

ensure_build_deps() {
    # systemd-python has no wheels: it compiles against libsystemd and Python.h.
    has_extra systemd || return 0
    step "Checking build dependencies of the systemd extra"
    if command -v dpkg >/dev/null && dpkg -s libsystemd-dev >/dev/null 2>&1 && build_deps_present; then
        note "present"
        return 0
    fi
    if ! command -v dpkg >/dev/null && build_deps_present; then
        note "present"
        return 0
    fi
    if command -v apt-get >/dev/null; then
        local pkgs=(libsystemd-dev pkg-config gcc python3-dev)
        note "apt-get install ${pkgs[*]}"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"; then
            apt-get update
            DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
        fi
        return 0
    fi
    die "the systemd extra needs libsystemd headers, pkg-config, a C compiler and Python.h (e.g. dnf install systemd-devel pkgconf gcc python3-devel), or run with BATCHD_INSTALL_EXTRAS=gpu"
}

# ProtectHome=yes hides /root, /home and /run/user from the service: a venv built on an
# interpreter there (pyenv, conda, a user's own build) fails at start with status=203/EXEC.
hidden_path() { case $1 in /root|/root/*|/home|/home/*|/run/user|/run/user/*) return 0 ;; esac; return 1; }

# "<executable as the venv will link it> <its resolved path> <major.minor>", or nothing.
python_facts() {
    "$1" -c 'import os, sys
exe = os.path.abspath(getattr(sys, "_base_executable", "") or sys.executable)
print(exe, os.path.realpath(exe), "%d.%d" % sys.version_info[:2], sep="\t")' 2>/dev/null
}

python_is_new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

# Why the service could not run this interpreter ("<exe> <real>"), or nothing when it can.
unreachable() {
    if hidden_path "$1" || hidden_path "$2"; then
        echo "under a home directory that batchd.service cannot see (ProtectHome=yes)"
    elif command -v runuser >/dev/null && ! (cd / && runuser -u "$SERVICE_USER" -- "$1" -c '') 2>/dev/null; then
        echo "which the $SERVICE_USER user cannot run (a folder on the way is not readable by it?)"
    fi
}

# Sets PYTHON to an interpreter that is >= 3.11 and that the sandboxed service can run.
choose_python() {
    step "Python interpreter"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (install python3 >= 3.11 and python3-venv)"
    python_is_new_enough "$PYTHON" ||
        die "$PYTHON is $("$PYTHON" -V 2>&1); batchd needs 3.11 or newer (set BATCHD_PYTHON)"
    local exe real version problem
    IFS=$'\t' read -r exe real version <<<"$(python_facts "$PYTHON")"
    [ -n "$exe" ] || die "$PYTHON does not run"
    problem=$(unreachable "$exe" "$real")
    if [ -z "$problem" ]; then
        note "$exe ($version)"
        return 0
    fi
    local why="$PYTHON is $exe, $problem"
    if [ -n "${BATCHD_PYTHON:-}" ]; then
        die "$why; fix: BATCHD_PYTHON=$SYSTEM_PYTHON $0 (a system Python >= 3.11, outside /root and /home)"
    fi
    if [ -x "$SYSTEM_PYTHON" ] && python_is_new_enough "$SYSTEM_PYTHON"; then
        IFS=$'\t' read -r exe real version <<<"$(python_facts "$SYSTEM_PYTHON")"
        if [ -n "$exe" ] && [ -z "$(unreachable "$exe" "$real")" ]; then
            note "$why; using $SYSTEM_PYTHON ($version) instead"
            PYTHON=$SYSTEM_PYTHON
            return 0
        fi
    fi
    die "$why, and $SYSTEM_PYTHON is missing or older than 3.11; fix: apt-get install python3 python3-venv (3.11+), or BATCHD_PYTHON=/path/to/python3.11 outside /root and /home"
}

# Debian/Ubuntu split venv and ensurepip into python3-venv.
ensure_venv_module() {
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null && return 0
    if [ "$PYTHON" = "$SYSTEM_PYTHON" ] && command -v apt-get >/dev/null; then
        note "apt-get install python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >/dev/null; } ||
            die "could not install python3-venv; fix: apt-get install python3-venv"
        return 0
    fi
    die "$PYTHON has no venv/ensurepip module (Debian/Ubuntu: apt-get install python3-venv)"
}

# A venv whose interpreter the service cannot run (left by an earlier install): rebuild it.
venv_usable() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null || return 1
    local home
    home=$(sed -n 's/^home *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null)
    if hidden_path "$home" || hidden_path "$(readlink -f "$VENV/bin/python")"; then
        note "$VENV runs on $(readlink -f "$VENV/bin/python"), which batchd.service cannot see: rebuilding"
        return 1
    fi
}

install_venv() {
    step "Python environment $VENV"
    if venv_usable; then
        note "exists; upgrading in place"
    else
        rm -rf "$VENV"
        mkdir -p "$PREFIX"
        ensure_venv_module
        "$PYTHON" -m venv "$VENV" ||
            die "could not create the venv (Debian/Ubuntu: apt-get install python3-venv)"
        note "built on $(readlink -f "$VENV/bin/python")"
    fi
    local spec=$SOURCE
    [ -n "$EXTRAS" ] && spec="${SOURCE}[${EXTRAS}]"
    local pip_args=()
    read -r -a pip_args <<<"${BATCHD_PIP_ARGS:-}"
    step "pip install --upgrade $spec ${pip_args[*]}"
    "$VENV/bin/pip" install --upgrade "${pip_args[@]}" "$spec"
    [ -x "$VENV/bin/batchd" ] || die "$VENV/bin/batchd missing after pip install"
    if [ -f "$SOURCE/README.md" ]; then
        install -m 0644 "$SOURCE/README.md" "$PREFIX/README.md"
    fi
    step "Command $BIN_LINK"
    # Operator commands read the daemon's journal: run as root they switch to the
    # batchd user, so no file in /var/lib/batchd ever becomes root's.
    printf '%s\n' '#!/bin/sh' "# installed by batchd's install.sh" \
        "if [ \"\$(id -u)\" = 0 ]; then exec runuser -u batchd -- $VENV/bin/batchd \"\$@\"; fi" \
        "exec $VENV/bin/batchd \"\$@\"" >"$BIN_LINK"
    chmod 0755 "$BIN_LINK"
}

install_config() {
    step "Configuration $CONFIG"
    install -d -m 0755 /etc/batchd
    if [ -e "$CONFIG" ]; then
        note "exists; left as it is (the example is $PACKAGING_DIR/batchd.toml)"
    else
        # Readable by the daemon's group only: it may come to hold an API token.
        install -m 0640 -o root -g batchd "$PACKAGING_DIR/batchd.toml" "$CONFIG"
        note "installed the example; edit it, then: systemctl restart batchd"
    fi
}

create_dirs() {
    step "Inbox and outbox under /srv/batchd ($TMPFILES)"
    install -D -m 0644 "$PACKAGING_DIR/batchd.tmpfiles" "$TMPFILES"
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$TMPFILES"
    else
        note "systemd-tmpfiles not found; using mkdir/chown/chmod"
        install -d -m 0755 -o root -g root /srv/batchd
        install -d -o batchd -g batchd-users /srv/batchd/inbox /srv/batchd/outbox
        chmod 3770 /srv/batchd/inbox
        chmod 2750 /srv/batchd/outbox
    fi
}

install_unit() {
    step "Unit $UNIT"
    install -D -m 0644 "$PACKAGING_DIR/batchd.service" "$UNIT"
    if systemd_running; then
        systemctl daemon-reload
        if systemctl is-active --quiet batchd.service; then
            note "batchd is running the old version: systemctl restart batchd"
        else
            note "start it with: systemctl enable --now batchd"
        fi
    else
        note "systemd is not running here; skipped daemon-reload"
    fi
}

if [ "$UNINSTALL" -eq 1 ]; then
    uninstall
    exit 0
fi

case $SOURCE in
    *.whl) [ -f "$SOURCE" ] || die "--source $SOURCE: no such wheel" ;;
    *) [ -f "$SOURCE/pyproject.toml" ] || die "--source $SOURCE: no pyproject.toml there" ;;
esac
SOURCE=$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")

create_users
choose_python
ensure_build_deps
install_venv
install_config
create_dirs
install_unit
check_service_user() {
    step "Checking that $SERVICE_USER can run $VENV/bin/batchd"
    command -v runuser >/dev/null || { note "runuser not found; skipped"; return 0; }
    local out
    if ! out=$(cd / && runuser -u "$SERVICE_USER" -- "$VENV/bin/batchd" --version 2>&1); then
        die "$SERVICE_USER cannot run $VENV/bin/batchd ($out); the venv's interpreter is $(readlink -f "$VENV/bin/python"): rebuild it on a Python $SERVICE_USER can read (BATCHD_PYTHON=$SYSTEM_PYTHON)"
    fi
    note "$out"
}

check_service_user
version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("batchd"))')
step "Done: batchd $version in $VENV"
