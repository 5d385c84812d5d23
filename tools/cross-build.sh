#!/usr/bin/env bash
# Cross-builds vigil-edge for the field gateways (aarch64 and 32-bit armv7, plus x86_64 for the
# amd64 package), proves the ARM binaries run under qemu-user, and builds and checks a Debian
# package per architecture. Used by .ci/run; run it by hand the same way:
#
#   tools/cross-build.sh             CI profile (release without LTO, opt-level 1, 16 units: quick)
#   tools/cross-build.sh --release   the real release profile (fat LTO, 1 codegen unit): packages to ship
#   options: --no-qemu (build and package only), --no-package (build and qemu only)
#
# Toolchain, from Debian's packages only (installed when missing, as root or through sudo):
# rustc-web (/usr/bin/rustc, newer than bookworm's rustc) compiles; rustup's cargo drives it
# (RUSTC=/usr/bin/rustc, same Cargo.lock, --locked). The standard library for the two ARM targets
# comes from libstd-rust-web-dev:arm64 / :armhf of the same version: fetched with `apt-get download`
# through a private apt state (no dpkg --add-architecture, no foreign libc or LLVM installed) and
# extracted into /usr/lib/rustlib/<target>. gcc-aarch64-linux-gnu and gcc-arm-linux-gnueabihf link
# (and compile ring's C and assembly); qemu-user-static runs the results. Linkers and C compilers are
# set here through environment variables, not in a .cargo/config.toml that would affect every build.
#
# Output: target/cross/<ci|release>/<target>/release/vigil-edge, packages in
# target/cross/deb/<ci|release>/ (VIGIL_CROSS_TARGET_DIR moves target/cross). Host tools (vigil-sim,
# vigil-spool, vigil-demo, vigil-central) build in the normal target dir with the pinned toolchain,
# where `cargo test --workspace` already built them in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "cross-build: $*"; }
die() { echo "cross-build: error: $*" >&2; exit 1; }

profile=ci run_qemu=1 package=1
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=release ;;
        --no-qemu) run_qemu=0 ;;
        --no-package) package=0 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

started=$SECONDS
timings=()
step_start=$SECONDS
step_done() { timings+=("$1: $((SECONDS - step_start)) s"); log "$1 done in $((SECONDS - step_start)) s"; step_start=$SECONDS; }

# Rust target, Debian architecture, GNU triple, qemu binary.
targets=(
    "aarch64-unknown-linux-gnu arm64 aarch64-linux-gnu aarch64"
    "armv7-unknown-linux-gnueabihf armhf arm-linux-gnueabihf arm"
)
host_target=x86_64-unknown-linux-gnu

# ---------------------------------------------------------------- toolchain
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
for t in "${targets[@]}"; do
    read -r _ darch gnu _ <<<"$t"
    command -v "$gnu-gcc" >/dev/null || need+=("gcc-$gnu")
    [ -e "/usr/$gnu/lib/libc.so" ] || need+=("libc6-dev-$darch-cross")
done
if [ "$run_qemu" = 1 ] && ! { command -v qemu-aarch64-static && command -v qemu-arm-static; } >/dev/null; then
    need+=(qemu-user-static)
fi
[ -x /usr/bin/rustc ] || need+=(rustc-web)
[ -x /usr/bin/time ] || need+=(time)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v readelf >/dev/null || need+=(binutils)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "no cargo on PATH (rustup's toolchain, pinned in rust-toolchain.toml)"
dpkg-query -W -f='${Status}' rustc-web 2>/dev/null | grep -q 'install ok installed' ||
    die "/usr/bin/rustc is not Debian's rustc-web; the ARM standard library below must match the compiler"
rustc_deb=$(dpkg-query -W -f='${Version}' rustc-web)
rustc_release=$(/usr/bin/rustc --version)

# The ARM standard library, exactly the version of /usr/bin/rustc.
for t in "${targets[@]}"; do
    read -r rtarget darch _ _ <<<"$t"
    stamp="/usr/lib/rustlib/$rtarget/.vigil-libstd-rust-web-dev"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$rustc_deb" ] && compgen -G "/usr/lib/rustlib/$rtarget/lib/libstd-*.rlib" >/dev/null; then
        continue
    fi
    log "fetching libstd-rust-web-dev:$darch $rustc_deb for $rtarget"
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
    apt_opts=(-qq -o "APT::Architecture=$darch" -o "APT::Architectures::=$darch"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" update || die "apt-get update for $darch package lists failed"
    (cd "$apt_dir/deb" && apt-get "${apt_opts[@]}" download "libstd-rust-web-dev:$darch=$rustc_deb") ||
        die "could not download libstd-rust-web-dev:$darch=$rustc_deb (does the archive still carry it?)"
    dpkg-deb -x "$apt_dir"/deb/libstd-rust-web-dev_*.deb "$apt_dir/x"
    [ -d "$apt_dir/x/usr/lib/rustlib/$rtarget/lib" ] || die "libstd-rust-web-dev:$darch has no usr/lib/rustlib/$rtarget"
    $SUDO rm -rf "/usr/lib/rustlib/$rtarget"
    $SUDO cp -a "$apt_dir/x/usr/lib/rustlib/$rtarget" /usr/lib/rustlib/
    echo "$rustc_deb" | $SUDO tee "$stamp" >/dev/null
    rm -rf "$apt_dir"
done
step_done "toolchain ($rustc_release)"

# ---------------------------------------------------------------- cross build
base_dir="${VIGIL_CROSS_TARGET_DIR:-target/cross}"
target_dir="$base_dir/$profile"
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
if [ "$profile" = ci ]; then
    # CI checks behaviour (it runs, checks the demo configs, reads and spools), not size or speed:
    # what ships is built with --release. Fat LTO over one codegen unit, for three targets, was
    # most of a cold CI run (1,472 s on 2 cores); no LTO, opt-level 1 and 16 units compile in a
    # fraction of that (docs/TESTING.md). panic = abort stays, as in the shipped profile.
    export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1
fi
target_args=() target_names=()
for t in "${targets[@]}"; do
    read -r rtarget _ _ _ <<<"$t"
    target_args+=(--target "$rtarget")
    target_names+=("$rtarget")
done
if [ "$package" = 1 ]; then
    target_args+=(--target "$host_target")
    target_names+=("$host_target")
fi
log "building vigil-edge ($profile profile) for ${target_names[*]} in $target_dir"
cargo build --locked --release -p vigil-edge --bin vigil-edge "${target_args[@]}" --target-dir "$target_dir"
for t in "${targets[@]}"; do
    read -r rtarget _ gnu _ <<<"$t"
    bin="$target_dir/$rtarget/release/vigil-edge"
    stripped=$(mktemp)
    "$gnu-strip" --strip-unneeded -o "$stripped" "$bin"
    log "$rtarget: $(stat -c %s "$bin") bytes as built, $(stat -c %s "$stripped") stripped"
    rm -f "$stripped"
done
step_done "cross build"

# ---------------------------------------------------------------- qemu
if [ "$run_qemu" = 1 ]; then
    log "building the host tools (vigil-sim, vigil-spool, vigil-demo, vigil-central)"
    # Unset: the host tools use the pinned toolchain and the normal target dir.
    env -u RUSTC cargo build --locked -q -p vigil-central -p vigil-edge -p vigil-tools -p vigil-tests \
        --bin vigil-sim --bin vigil-spool --bin vigil-demo --bin vigil-central --bin vigil-edge
    host_bin="${CARGO_TARGET_DIR:-target}/debug"
    step_done "host tools"

    work=$(mktemp -d)
    sim_pid=""
    cleanup() {
        [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
        rm -rf "$work"
    }
    trap cleanup EXIT

    # The demo park's real gateway configurations (6 gateways: Modbus TCP and RTU, levelling, cameras).
    "$host_bin/vigil-demo" --generate-only --dir "$work/demo" >"$work/demo-configs" 2>"$work/demo.log" ||
        die "vigil-demo --generate-only failed: $(tail -5 "$work/demo.log")"
    [ -s "$work/demo-configs" ] || die "vigil-demo --generate-only listed no gateway configuration"

    # A small gateway for the run: 20 tank gauges on one Modbus TCP port, a gas controller on another,
    # no uplink (it reads and spools only), health points every second.
    free_port() {
        local p
        for _ in $(seq 50); do
            p=$((20000 + RANDOM % 20000))
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
        done
        die "no free TCP port found"
    }
    tank_port=$(free_port)
    gas_port=$(free_port)
    [ "$tank_port" != "$gas_port" ] || gas_port=$((tank_port + 1))
    write_run_config() { # dir
        {
            printf '[gateway]\nid = "gw-qemu"\nenterprise = "ent-qemu"\nkey_file = "%s/gateway.key"\n\n' "$1"
            printf '[spool]\npath = "%s/spool"\nbatch_max_age_ms = 500\n\n[system]\ninterval_ms = 1000\n\n' "$1"
            printf '[acquisition]\nprofile_dir = "%s/configs/profiles"\nclock = "gateway"\n' "$PWD"
            for i in $(seq 1 20); do
                printf '\n[[devices]]\nname = "tk%03d"\nprotocol = "tcp"\nhost = "127.0.0.1"\nport = %s\nunit = %s\n' "$i" "$tank_port" "$i"
                printf 'profile = "tank-gauge"\npoint_prefix = "TK%03d."\npoll_ms = 1000\ntimeout_ms = 1000\n' "$i"
            done
            printf '\n[[devices]]\nname = "gds1"\nprotocol = "tcp"\nhost = "127.0.0.1"\nport = %s\nunit = 1\n' "$gas_port"
            printf 'profile = "gas-controller-8ch"\npoint_prefix = "GDS1."\npoll_ms = 1000\ntimeout_ms = 1000\n'
        } >"$1/gateway.toml"
    }
    mkdir -p "$work/sim"
    write_run_config "$work/sim"
    "$host_bin/vigil-sim" modbus --config "$work/sim/gateway.toml" >"$work/sim.log" 2>&1 &
    sim_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$tank_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$gas_port") 2>/dev/null && break
        kill -0 "$sim_pid" 2>/dev/null || die "vigil-sim exited: $(tail -5 "$work/sim.log")"
        sleep 0.1
    done

    run_seconds=${VIGIL_CROSS_RUN_SECONDS:-15}
    rss_report=()
    for t in "${targets[@]}"; do
        read -r rtarget _ gnu qarch <<<"$t"
        bin="$target_dir/$rtarget/release/vigil-edge"
        qemu=$(command -v "qemu-$qarch-static" || command -v "qemu-$qarch") || die "no qemu-$qarch-static"
        # -L: the cross libc as the guest's root for the dynamic loader. -E LD_LIBRARY_PATH: without
        # it a threaded program hangs where a multiarch libc6:<arch> is also installed (issue #12).
        q=("$qemu" -L "/usr/$gnu" -E "LD_LIBRARY_PATH=/usr/$gnu/lib")
        log "$rtarget under $(basename "$qemu"):"

        version=$(timeout 60 "${q[@]}" "$bin" --version) || die "$rtarget: vigil-edge --version failed"
        want="vigil-edge $(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
        [ "$version" = "$want" ] || die "$rtarget: --version printed '$version', expected '$want'"
        log "  --version: $version"

        for config in configs/examples/gateway-modbus.toml packaging/gateway.toml $(cat "$work/demo-configs"); do
            out=$(timeout 120 "${q[@]}" "$bin" check --config "$config" 2>&1) ||
                die "$rtarget: vigil-edge check --config $config failed: $out"
            log "  check: $(head -n 1 <<<"$out")"
        done

        dir="$work/$rtarget"
        mkdir -p "$dir"
        write_run_config "$dir"
        timeout 60 "${q[@]}" "$bin" keygen --out "$dir/gateway.key" >"$dir/pubkey" 2>/dev/null ||
            die "$rtarget: vigil-edge keygen failed"
        /usr/bin/time -v -o "$dir/time" "${q[@]}" "$bin" run --config "$dir/gateway.toml" 2>"$dir/agent.log" &
        agent_pid=$!
        sleep "$run_seconds"
        # SIGTERM to qemu (the child of time) reaches the guest; the agent stops in order.
        pkill -TERM -P "$agent_pid" 2>/dev/null || kill -TERM "$agent_pid"
        if ! wait "$agent_pid"; then
            die "$rtarget: vigil-edge run did not stop cleanly: $(tail -5 "$dir/agent.log")"
        fi
        grep -q "agent running" "$dir/agent.log" || die "$rtarget: agent never reported running: $(tail -5 "$dir/agent.log")"
        grep -q "agent stopped" "$dir/agent.log" || die "$rtarget: agent did not stop in order: $(tail -5 "$dir/agent.log")"
        # What the ARM agent spooled, opened and verified on this side: signed batches with the
        # simulator's tank levels and gas concentrations and the gateway's own health points.
        report=$("$host_bin/vigil-spool" --spool "$dir/spool" --gateway gw-qemu --pubkey "$(cat "$dir/pubkey")" \
            --min-batches 5 --min-samples 200 --expect-point TK001.level --expect-point TK020.level \
            --expect-point GDS1.ch1.conc --expect-point gateway.heartbeat) ||
            die "$rtarget: the spool does not hold what the run should have stored: $report"
        top() { sed -n "s/^  \"$1\": \([0-9]*\),*$/\1/p" <<<"$report"; }
        summary="$(top batches) batches, $(top samples) samples, $(top events) events, $(top points) points"
        rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time")
        cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u + s}' "$dir/time")
        log "  run ${run_seconds} s: spool verified ($summary, all signatures good); qemu max RSS ${rss} KiB, CPU ${cpu} s"
        rss_report+=("$rtarget: max RSS ${rss} KiB (qemu process, includes qemu), CPU ${cpu} s in ${run_seconds} s")
        base_rss=$(/usr/bin/time -f %M "${q[@]}" "$bin" --version 2>&1 >/dev/null | tail -n 1)
        rss_report+=("$rtarget: qemu running vigil-edge --version alone: max RSS ${base_rss} KiB")
    done
    if [ "$package" = 1 ]; then
        # The same run natively, for what the agent itself needs without qemu's translator.
        bin="$target_dir/$host_target/release/vigil-edge"
        dir="$work/$host_target"
        mkdir -p "$dir"
        write_run_config "$dir"
        "$bin" keygen --out "$dir/gateway.key" >"$dir/pubkey" 2>/dev/null
        /usr/bin/time -v -o "$dir/time" "$bin" run --config "$dir/gateway.toml" 2>"$dir/agent.log" &
        agent_pid=$!
        sleep "$run_seconds"
        pkill -TERM -P "$agent_pid" 2>/dev/null || kill -TERM "$agent_pid"
        wait "$agent_pid" || die "$host_target: vigil-edge run did not stop cleanly: $(tail -5 "$dir/agent.log")"
        "$host_bin/vigil-spool" --spool "$dir/spool" --gateway gw-qemu --pubkey "$(cat "$dir/pubkey")" --min-batches 5 >/dev/null ||
            die "$host_target: spool check failed"
        rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$dir/time")
        rss_report+=("$host_target (native, no qemu): max RSS ${rss} KiB")
    fi
    for line in "${rss_report[@]}"; do log "  $line"; done
    step_done "qemu checks"
fi

# ---------------------------------------------------------------- packages
if [ "$package" = 1 ]; then
    deb_dir="$base_dir/deb/$profile"
    rm -rf "$deb_dir"
    for pair in "aarch64-unknown-linux-gnu arm64" "armv7-unknown-linux-gnueabihf armhf" "$host_target amd64"; do
        read -r rtarget darch <<<"$pair"
        deb=$(tools/package-deb.sh --arch "$darch" --binary "$target_dir/$rtarget/release/vigil-edge" --out "$deb_dir")
        log "$deb: $(stat -c %s "$deb") bytes; /usr/bin/vigil-edge $(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/vigil-edge | wc -c) bytes"
        install_test=0
        [ "$darch" = amd64 ] && [ "${CI:-}" = true ] && install_test=1
        VIGIL_DEB_INSTALL_TEST="${VIGIL_DEB_INSTALL_TEST:-$install_test}" tools/check-deb.sh "$deb" "$darch" >"$deb_dir/check-$darch.log" ||
            { cat "$deb_dir/check-$darch.log"; die "package check failed for $deb"; }
        log "  $(tail -n 1 "$deb_dir/check-$darch.log") ($(grep -c ': ok: ' "$deb_dir/check-$darch.log") checks)"
    done
    step_done "packages"
fi

log "timings: ${timings[*]}"
log "total $((SECONDS - started)) s"
