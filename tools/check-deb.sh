#!/usr/bin/env bash
# Checks a vigil-edge Debian package made by tools/package-deb.sh: control fields and dependencies,
# the file list with owners and modes, conffiles, the systemd unit (restart policy, hardening, user,
# paths; `systemd-analyze verify` and its offline security score when systemd-analyze exists), the
# maintainer scripts (user creation, data directory, key permissions, restart on upgrade, data kept
# on remove and deleted on purge), md5sums, and that the binary is for the package's architecture
# and links nothing but glibc and libgcc_s.
#
#   tools/check-deb.sh DEB ARCH            ARCH: arm64, armhf or amd64
#   VIGIL_DEB_INSTALL_TEST=1 tools/check-deb.sh DEB amd64
#       also installs the package on this machine (root, amd64, no vigil-edge installed yet), checks
#       the installed user, directories and modes, upgrades it in place (modified conffile and data
#       kept), removes it (data kept), purges it (data gone), and deletes the user it created.

# `test && ok ... || fail ...` is if-then-else here: ok only prints, it never fails.
# shellcheck disable=SC2015
set -euo pipefail

deb="${1:?usage: $0 DEB ARCH}"
arch="${2:?usage: $0 DEB ARCH}"
[ -f "$deb" ] || { echo "check-deb: $deb: no such file" >&2; exit 1; }

failures=0
fail() { echo "check-deb: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "check-deb: ok: $*"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
dpkg-deb -e "$deb" "$work/control"

# --- control
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = vigil-edge ] && ok "Package: vigil-edge" || fail "Package is $(field Package)"
[ "$(field Architecture)" = "$arch" ] && ok "Architecture: $arch" || fail "Architecture is $(field Architecture), expected $arch"
depends=$(field Depends)
for dep in 'libc6 (>= 2.' adduser init-system-helpers; do
    case "$depends" in *"$dep"*) ok "Depends has $dep" ;; *) fail "Depends ($depends) lacks $dep" ;; esac
done
case "$(field Version)" in [0-9]*.[0-9]*.[0-9]*-[0-9]*) ok "Version $(field Version)" ;; *) fail "Version $(field Version) is not x.y.z-rev" ;; esac

# --- files: path, mode, owner (dpkg-deb -c: "perms owner/group size date time path")
listing=$(dpkg-deb -c "$deb")
expect_file() { # path perms
    local line
    line=$(awk -v p="./$1" '$6 == p' <<<"$listing")
    if [ -z "$line" ]; then
        fail "$1 missing from the package"
    elif [ "$(awk '{print $1, $2}' <<<"$line")" != "$2 root/root" ]; then
        fail "$1 is $(awk '{print $1, $2}' <<<"$line"), expected $2 root/root"
    else
        ok "$1 $2 root/root"
    fi
}
expect_file usr/bin/vigil-edge -rwxr-xr-x
expect_file usr/lib/systemd/system/vigil-edge.service -rw-r--r--
expect_file usr/lib/udev/rules.d/60-vigil-edge.rules -rw-r--r--
expect_file etc/vigil/gateway.toml -rw-r-----
expect_file usr/share/doc/vigil-edge/README.Debian -rw-r--r--
expect_file usr/share/doc/vigil-edge/copyright -rw-r--r--
expect_file usr/share/vigil/profiles/tank-gauge.toml -rw-r--r--
if awk '{print $2}' <<<"$listing" | grep -qv '^root/root$'; then fail "files not owned by root/root"; else ok "every file root/root"; fi
# Data, keys and the spool are the box's own: never in the package (made by postinst, kept on upgrade).
if grep -qE ' \./(var/|etc/vigil/keys|.*\.key$)' <<<"$listing"; then fail "package ships /var, keys or key files"; else ok "no /var, no keys shipped"; fi

# --- conffiles
if [ "$(cat "$work/control/conffiles")" = "/etc/vigil/gateway.toml" ]; then ok "conffiles: /etc/vigil/gateway.toml"; else fail "conffiles: $(tr '\n' ' ' <"$work/control/conffiles")"; fi

# --- md5sums
if (cd "$work/root" && md5sum --quiet -c "$work/control/md5sums"); then ok "md5sums match"; else fail "md5sums do not match"; fi

# --- the binary: architecture and shared libraries
bin="$work/root/usr/bin/vigil-edge"
case "$arch" in arm64) machine=AArch64 ;; armhf) machine=ARM ;; amd64) machine=X86-64 ;; *) machine=unknown ;; esac
readelf -h "$bin" | grep -q "Machine:.*$machine" && ok "binary is $machine" || fail "binary is not $machine: $(readelf -h "$bin" | grep Machine)"
if [ "$arch" = armhf ]; then
    readelf -A "$bin" | grep -q 'Tag_ABI_VFP_args: VFP registers' && ok "armhf: hard-float ABI" || fail "armhf binary is not hard-float"
fi
libs=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
if grep -qvE '^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux.*)$' <<<"$(tr ' ' '\n' <<<"$libs" | sed '/^$/d')"; then
    fail "binary links more than glibc and libgcc_s: $libs"
else
    ok "shared libraries: $libs"
fi
if readelf -S "$bin" | grep -q '\.debug_info\|\.symtab'; then fail "binary not stripped"; else ok "binary stripped"; fi

# --- the unit
unit="$work/root/usr/lib/systemd/system/vigil-edge.service"
expect_unit() { grep -qxF "$1" "$unit" && ok "unit: $1" || fail "unit lacks '$1'"; }
expect_unit "ExecStart=/usr/bin/vigil-edge launch --config /etc/vigil/gateway.toml"
expect_unit "User=vigil"
expect_unit "Group=vigil"
expect_unit "Restart=on-failure"
expect_unit "NoNewPrivileges=yes"
expect_unit "ProtectSystem=strict"
expect_unit "ProtectHome=yes"
expect_unit "PrivateTmp=yes"
expect_unit "ReadWritePaths=/var/lib/vigil"
expect_unit "SystemCallFilter=adjtimex clock_adjtime"
expect_unit "StateDirectory=vigil"
expect_unit "CapabilityBoundingSet="
expect_unit "SupplementaryGroups=dialout gpio"
expect_unit "ConditionPathExists=/etc/vigil/keys/gateway.key"
expect_unit "WantedBy=multi-user.target"
grep -q '^RestartSec=[1-9]' "$unit" && ok "unit: RestartSec set" || fail "unit lacks RestartSec"
# Watchdog integration only where the agent speaks sd_notify: a WatchdogSec= without it kills a
# healthy agent every interval.
if grep -qa NOTIFY_SOCKET "$bin"; then
    grep -q '^WatchdogSec=' "$unit" && grep -qx 'Type=notify' "$unit" && ok "unit: sd_notify watchdog" || fail "agent speaks sd_notify but the unit has no Type=notify/WatchdogSec"
else
    if grep -q '^WatchdogSec=\|^Type=notify' "$unit"; then fail "unit sets WatchdogSec/Type=notify but the agent has no sd_notify"; else ok "unit: no WatchdogSec (the agent has no sd_notify)"; fi
fi
if command -v systemd-analyze >/dev/null; then
    # verify checks ExecStart= exists: point it at the extracted binary.
    mkdir -p "$work/unit"
    sed "s|^ExecStart=/usr/bin/vigil-edge|ExecStart=$bin|" "$unit" >"$work/unit/vigil-edge.service"
    out=$(systemd-analyze verify "$work/unit/vigil-edge.service" 2>&1 || true)
    [ -z "$out" ] && ok "systemd-analyze verify: clean" || fail "systemd-analyze verify: $out"
    exposure=$(systemd-analyze security --offline=yes "$work/unit/vigil-edge.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for vigil-edge.service: \([0-9.]*\).*/\1/p' || true)
    if [ -z "$exposure" ]; then
        echo "check-deb: note: systemd-analyze security --offline not available; exposure not checked"
    elif awk -v e="$exposure" 'BEGIN { exit !(e <= 2.5) }'; then
        ok "systemd-analyze security exposure $exposure (<= 2.5)"
    else
        fail "systemd-analyze security exposure $exposure (> 2.5)"
    fi
else
    echo "check-deb: note: no systemd-analyze; unit syntax not verified"
fi

# --- maintainer scripts
postinst="$work/control/postinst" prerm="$work/control/prerm" postrm="$work/control/postrm"
for s in "$postinst" "$prerm" "$postrm"; do
    [ -x "$s" ] && sh -n "$s" && ok "$(basename "$s"): executable, parses" || fail "$(basename "$s") missing, not executable or not sh"
done
expect_in() { grep -qF -- "$2" "$1" && ok "$(basename "$1"): $3" || fail "$(basename "$1") lacks $3 ('$2')"; }
expect_in "$postinst" "adduser --system --group" "creates the vigil system user"
expect_in "$postinst" "install -d -o vigil -g vigil -m 0750 /var/lib/vigil" "data dir 0750 vigil:vigil"
expect_in "$postinst" "install -d -o vigil -g vigil -m 0700 /etc/vigil/keys" "keys dir 0700 vigil"
expect_in "$postinst" "install -d -o vigil -g vigil -m 0750 /var/lib/vigil/config" "push dir 0750 vigil:vigil"
expect_in "$postinst" "chmod 0600" "key files 0600"
expect_in "$postinst" "_action=restart" "restarts on upgrade"
# shellcheck disable=SC2016 # the literal text of the script
expect_in "$prerm" '[ "$1" = "remove" ]' "stops only on remove (not on upgrade)"
if awk '/"\$1" = "purge"/,0' "$postrm" | grep -q 'rm -rf /var/lib/vigil' &&
    ! awk '/"\$1" = "purge"/ {exit} {print}' "$postrm" | grep -q 'rm -rf'; then
    ok "postrm: deletes data on purge only"
else
    fail "postrm must delete /var/lib/vigil on purge and nothing before it"
fi

# --- optional: a real install, upgrade, remove and purge on this machine
if [ "${VIGIL_DEB_INSTALL_TEST:-0}" = 1 ]; then
    if [ "$arch" != "$(dpkg --print-architecture)" ] || [ "$(id -u)" -ne 0 ]; then
        echo "check-deb: note: install test needs root and a $arch machine; skipped"
    elif dpkg-query -W -f='${Status}' vigil-edge 2>/dev/null | grep -q 'installed'; then
        echo "check-deb: note: vigil-edge is already installed here; install test skipped"
    else
        had_user=0 had_gpio=0
        getent passwd vigil >/dev/null && had_user=1
        getent group gpio >/dev/null && had_gpio=1
        cleanup_install() {
            dpkg --purge vigil-edge >/dev/null 2>&1 || true
            [ "$had_user" = 1 ] || { userdel vigil 2>/dev/null || true; groupdel vigil 2>/dev/null || true; }
            [ "$had_gpio" = 1 ] || groupdel gpio 2>/dev/null || true
        }
        trap 'cleanup_install; rm -rf "$work"' EXIT
        mode_of() { stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing; }
        expect_mode() { [ "$(mode_of "$1")" = "$2" ] && ok "installed: $1 $2" || fail "installed: $1 is $(mode_of "$1"), expected $2"; }
        if dpkg -i "$deb" >"$work/dpkg.log" 2>&1; then ok "dpkg -i"; else fail "dpkg -i: $(cat "$work/dpkg.log")"; fi
        getent passwd vigil | grep -q ':/var/lib/vigil:/usr/sbin/nologin$' && ok "user vigil (home /var/lib/vigil, nologin)" || fail "user vigil: $(getent passwd vigil || echo missing)"
        id -u vigil >/dev/null 2>&1 && [ "$(id -u vigil)" -lt 1000 ] && ok "vigil is a system user" || fail "vigil is not a system user"
        expect_mode /var/lib/vigil "750 vigil:vigil"
        expect_mode /var/lib/vigil/config "750 vigil:vigil"
        expect_mode /etc/vigil "750 root:vigil"
        expect_mode /etc/vigil/gateway.toml "640 root:vigil"
        expect_mode /etc/vigil/keys "700 vigil:vigil"
        [ -L /etc/systemd/system/multi-user.target.wants/vigil-edge.service ] && ok "unit enabled" || fail "unit not enabled"
        /usr/bin/vigil-edge --version >/dev/null && ok "installed binary runs" || fail "installed binary does not run"
        if /usr/bin/vigil-edge check --config /etc/vigil/gateway.toml >"$work/check.out"; then ok "shipped gateway.toml passes check"; else fail "shipped gateway.toml fails vigil-edge check"; fi
        grep -q "^the agent runs: /etc/vigil/gateway.toml (installed file; no pushed configuration in /var/lib/vigil/config" "$work/check.out" &&
            ok "check names the file the agent runs and the push directory" || fail "check output: $(cat "$work/check.out")"
        # A key made by hand as root, data in the spool, an edited conffile; then upgrade in place.
        /usr/bin/vigil-edge keygen --out /etc/vigil/keys/gateway.key >/dev/null 2>&1
        chmod 0644 /etc/vigil/keys/gateway.key
        echo keep >/var/lib/vigil/marker
        echo "# edited on site" >>/etc/vigil/gateway.toml
        # The same package as a newer version, for a real upgrade (postinst configure <old version>).
        dpkg-deb -R "$deb" "$work/up"
        sed -i "s/^Version: .*/Version: $(field Version)+upgrade1/" "$work/up/DEBIAN/control"
        dpkg-deb --root-owner-group -b "$work/up" "$work/upgrade.deb" >/dev/null
        if dpkg -i "$work/upgrade.deb" >"$work/dpkg.log" 2>&1; then
            ok "upgrade to $(dpkg-query -W -f='${Version}' vigil-edge)"
        else
            fail "upgrade: $(cat "$work/dpkg.log")"
        fi
        expect_mode /etc/vigil/keys/gateway.key "600 vigil:vigil"
        grep -q "edited on site" /etc/vigil/gateway.toml && ok "upgrade kept the edited conffile" || fail "upgrade lost the edited conffile"
        [ -f /var/lib/vigil/marker ] && ok "upgrade kept /var/lib/vigil" || fail "upgrade lost /var/lib/vigil"
        dpkg --remove vigil-edge >/dev/null 2>&1 && ok "dpkg --remove" || fail "dpkg --remove"
        [ ! -e /usr/bin/vigil-edge ] && ok "remove: binary gone" || fail "remove: binary still there"
        [ -f /var/lib/vigil/marker ] && [ -f /etc/vigil/keys/gateway.key ] && [ -f /etc/vigil/gateway.toml ] &&
            ok "remove: data, keys and configuration kept" || fail "remove deleted data, keys or configuration"
        dpkg --purge vigil-edge >/dev/null 2>&1 && ok "dpkg --purge" || fail "dpkg --purge"
        [ ! -e /var/lib/vigil ] && [ ! -e /etc/vigil ] && ok "purge: /var/lib/vigil and /etc/vigil gone" || fail "purge left /var/lib/vigil or /etc/vigil"
        [ ! -e /etc/systemd/system/multi-user.target.wants/vigil-edge.service ] && ok "purge: unit link gone" || fail "purge left the unit enabled"
    fi
fi

if [ "$failures" -gt 0 ]; then
    echo "check-deb: $deb: $failures check(s) failed" >&2
    exit 1
fi
echo "check-deb: $deb: all checks passed"
