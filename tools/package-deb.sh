#!/usr/bin/env bash
# Builds the vigil-edge Debian package for one architecture from an already built binary, with
# dpkg-deb only (no debhelper, no cargo-deb). The package's files come from packaging/.
#
#   tools/package-deb.sh --arch arm64|armhf|amd64 --binary PATH [--out DIR] [--revision N]
#
# Writes DIR/vigil-edge_<version>-<revision>_<arch>.deb (DIR defaults to target/cross/deb) and
# prints its path. The version is the workspace's ([workspace.package] version in Cargo.toml).
# Depends: is derived from the binary: the highest GLIBC_x.y symbol version it needs, libgcc-s1 if
# it links libgcc_s; any other shared library is refused (the agent must stay free of C libraries
# such as libudev or OpenSSL). tools/check-deb.sh checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "package-deb: $*" >&2; exit 1; }

arch="" binary="" out="target/cross/deb" revision="${VIGIL_DEB_REVISION:-1}"
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="${2:?}"; shift 2 ;;
        --binary) binary="${2:?}"; shift 2 ;;
        --out) out="${2:?}"; shift 2 ;;
        --revision) revision="${2:?}"; shift 2 ;;
        *) die "unknown argument $1 (see the header of $0)" ;;
    esac
done
[ -n "$arch" ] || die "--arch is required (arm64, armhf or amd64)"
[ -f "$binary" ] || die "--binary ${binary:-(none)}: no such file"
case "$arch" in
    arm64) triple=aarch64-linux-gnu; machine="AArch64" ;;
    armhf) triple=arm-linux-gnueabihf; machine="ARM" ;;
    amd64) triple=x86_64-linux-gnu; machine="Advanced Micro Devices X86-64" ;;
    *) die "--arch $arch: not one of arm64, armhf, amd64" ;;
esac
for tool in dpkg-deb readelf; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev binutils)"
done
strip_tool="$triple-strip"
command -v "$strip_tool" >/dev/null || die "$strip_tool is missing (apt-get install binutils-${triple//_/-})"

readelf -h "$binary" | grep -q "Machine:.*$machine" || die "$binary is not a $machine ($arch) executable"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
full_version="$version-$revision"

# Shared libraries the binary needs: glibc's (versioned) and libgcc_s only.
needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
depends_gcc=""
for lib in $needed; do
    case "$lib" in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.*) ;;
        libgcc_s.so.1) depends_gcc="libgcc-s1, " ;;
        *) die "$binary needs $lib: the agent must link only glibc and libgcc_s (no C libraries)" ;;
    esac
done
glibc=$(readelf -V "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -u -V | tail -n 1)
[ -n "$glibc" ] || die "$binary: no GLIBC symbol versions found (not a glibc binary?)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" \
    "$root/usr/lib/udev/rules.d" "$root/etc/vigil" "$root/usr/share/doc/vigil-edge" \
    "$root/usr/share/vigil/profiles" "$root/usr/share/vigil/camera-models"
install -m 0755 "$binary" "$root/usr/bin/vigil-edge"
"$strip_tool" --strip-unneeded "$root/usr/bin/vigil-edge"
install -m 0644 packaging/vigil-edge.service "$root/usr/lib/systemd/system/vigil-edge.service"
install -m 0644 packaging/60-vigil-edge.rules "$root/usr/lib/udev/rules.d/60-vigil-edge.rules"
# 0640: postinst gives it to group vigil (it may hold camera secrets and passwords).
install -m 0640 packaging/gateway.toml "$root/etc/vigil/gateway.toml"
install -m 0644 configs/profiles/*.toml "$root/usr/share/vigil/profiles/"
install -m 0644 configs/camera-models/*.toml "$root/usr/share/vigil/camera-models/"
install -m 0644 packaging/README.Debian "$root/usr/share/doc/vigil-edge/README.Debian"
cat > "$root/usr/share/doc/vigil-edge/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vigil

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done
echo "/etc/vigil/gateway.toml" > "$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: vigil-edge
Version: $full_version
Architecture: $arch
Maintainer: Vigil developers <vigil@example.invalid>
Installed-Size: $installed_kb
Depends: libc6 (>= $glibc), ${depends_gcc}adduser, init-system-helpers (>= 1.54~)
Section: net
Priority: optional
Homepage: https://example.invalid/vigil
Description: Vigil gateway agent for chemical-park safety monitoring
 Reads plant sensors (Modbus TCP/RTU, static levelling, gas-leak cameras), keeps every reading
 in a local spool and sends signed batches over mutual-TLS MQTT to the park's central
 aggregator. Runs as the vigil-edge systemd service under the vigil user.
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/vigil-edge_${full_version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
