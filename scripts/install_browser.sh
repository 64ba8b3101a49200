#!/usr/bin/env bash
# Provide Debian's chromium + chromedriver for the browser test without installing anything system-wide.
#
# Why: `make test` must write nothing outside the repository but the pip cache (issue #8), yet one test
# opens the demo report in headless Chromium. So, when no usable chromium + chromedriver pair is on PATH,
# this script
#   1. runs apt with its lists, cache, logs and dpkg status redirected into .venv/browser/apt
#      (sources, keyrings and proxy settings stay the system's, so only the Debian registry is contacted);
#   2. resolves what is missing with a simulated install against a copy of the system's dpkg status
#      (chromium* removed from the copy, so a system chromium never hides a needed package);
#   3. downloads those .debs, unpacks them with `dpkg-deb -x` into .venv/browser/root
#      (no maintainer scripts, no dpkg database), and
#   4. writes .venv/browser/bin/{chromium,chromedriver}: wrappers that put the unpacked libraries on
#      LD_LIBRARY_PATH and exec the real binaries (Debian's /usr/bin/chromium is itself a shell wrapper
#      around /usr/lib/chromium/chromium; /usr/bin/chromedriver is the ELF binary).
# tests/browser.py looks on PATH first, then in .venv/browser/bin.
# Only if that in-repo install fails does it fall back to the old system-wide `apt-get install` (as root),
# saying so, so CI is never worse off than before.
#
# Environment:
#   FORCE_LOCAL_BROWSER=1         ignore a system chromium and never fall back to a system-wide install
#   MAMMOCLIP_BROWSER_DIR=DIR     install there instead of .venv/browser
#   MAMMOCLIP_BROWSER_DPKG_STATUS=FILE
#                                 resolve against this dpkg status instead of /var/lib/dpkg/status
#                                 (to rehearse a machine that lacks some libraries)
# Reference: apt.conf(5) (Dir::*, #clear), apt-get(8) (-c, -s, download), dpkg-deb(1) (-x).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${MAMMOCLIP_BROWSER_DIR:-$REPO/.venv/browser}
APT_DIR=$DEST/apt
ROOT=$DEST/root
BIN=$DEST/bin
PACKAGES=(chromium chromium-driver)

log() { echo "install_browser: $*" >&2; }

# A pair is usable when both binaries answer --version (this also catches a missing shared library).
usable() { "$1" --version >/dev/null 2>&1 && "$2" --version >/dev/null 2>&1; }

write_apt_conf() {
  # Read by `apt-get -c` after the system configuration, so these settings win. The #clear lines drop
  # hooks (PackageKit, AppStream refresh, debconf) that would write to /var or talk to daemons.
  cat >"$APT_DIR/apt.conf" <<EOF
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Install-Pkgs;
Dir::State::Lists "$APT_DIR/lists";
Dir::State::status "$APT_DIR/status";
Dir::State::extended_states "$APT_DIR/extended_states";
Dir::Cache "$APT_DIR/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "$APT_DIR/log";
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
}

write_wrapper() {  # write_wrapper NAME TARGET(relative to root) LIBDIRS(relative to root, ':'-joined)
  local name=$1 target=$2 libdirs=$3
  cat >"$BIN/$name" <<EOF
#!/bin/sh
# Written by scripts/install_browser.sh: Debian's $name unpacked under ../root, not installed system-wide.
root=\$(cd "\$(dirname "\$0")/../root" && pwd)
LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
# fontconfig's configuration, only when the system has none (its font paths are absolute).
if [ ! -e /etc/fonts/fonts.conf ] && [ -e "\$root/etc/fonts/fonts.conf" ]; then
  FONTCONFIG_FILE="\$root/etc/fonts/fonts.conf"; FONTCONFIG_PATH="\$root/etc/fonts"
  export FONTCONFIG_FILE FONTCONFIG_PATH
fi
exec "\$root/$target" "\$@"
EOF
  chmod +x "$BIN/$name"
}

install_in_repo() {
  local t0 apt missing lib libdirs=""
  t0=$(date +%s)
  rm -rf "$ROOT" "$BIN" "$APT_DIR/debs"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/log" "$APT_DIR/debs" \
    "$ROOT" "$BIN"
  write_apt_conf
  awk -v RS= -v ORS='\n\n' '$0 !~ /^Package: chromium/' \
    "${MAMMOCLIP_BROWSER_DPKG_STATUS:-/var/lib/dpkg/status}" >"$APT_DIR/status"
  apt=(apt-get -c "$APT_DIR/apt.conf" -q)

  log "updating package lists into ${APT_DIR#"$REPO"/}/lists"
  "${apt[@]}" -qq update
  mapfile -t missing < <("${apt[@]}" -s install "${PACKAGES[@]}" | awk '/^Inst /{print $2}')
  [ "${#missing[@]}" -gt 0 ] || { log "apt resolved nothing to download"; return 1; }
  # The system's dynamic loader must match libc: a newer libc6 cannot be used from LD_LIBRARY_PATH.
  case " ${missing[*]} " in *" libc6 "*)
    log "chromium needs a newer libc6 than the system's (apt-get upgrade first)"; return 1 ;;
  esac
  log "downloading ${#missing[@]} packages: ${missing[*]}"
  # apt downloads as the unprivileged _apt user when it can write the target directory.
  if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$APT_DIR/debs"; fi
  (cd "$APT_DIR/debs" && "${apt[@]}" -qq download "${missing[@]}")
  for deb in "$APT_DIR"/debs/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done

  [ -x "$ROOT/usr/lib/chromium/chromium" ] && [ -x "$ROOT/usr/bin/chromedriver" ] \
    || { log "unpacked tree lacks usr/lib/chromium/chromium or usr/bin/chromedriver"; return 1; }
  for lib in usr/lib/chromium "$ROOT"/usr/lib/*-linux-gnu "$ROOT"/lib/*-linux-gnu; do
    lib=${lib#"$ROOT"/}
    [ -d "$ROOT/$lib" ] && libdirs="$libdirs${libdirs:+:}\$root/$lib"
  done
  write_wrapper chromium usr/lib/chromium/chromium "$libdirs"
  write_wrapper chromedriver usr/bin/chromedriver "$libdirs"
  usable "$BIN/chromium" "$BIN/chromedriver" || { log "unpacked chromium does not run"; return 1; }
  log "done in $(($(date +%s) - t0)) s: $(du -sh "$APT_DIR/debs" | cut -f1) of .debs, \
$(du -sh "$ROOT" | cut -f1) unpacked; $("$BIN/chromium" --version)"
  rm -rf "$APT_DIR/debs"  # unpacked now; the lists stay, so a later update only fetches what changed
}

main() {
  if [ "${1:-}" = --in-repo ]; then install_in_repo; return; fi
  if [ "${FORCE_LOCAL_BROWSER:-0}" != 1 ] && command -v chromium >/dev/null && command -v chromedriver >/dev/null \
    && usable chromium chromedriver; then
    return 0
  fi
  if [ -x "$BIN/chromium" ] && [ -x "$BIN/chromedriver" ] && usable "$BIN/chromium" "$BIN/chromedriver"; then
    return 0
  fi
  if [ "${FORCE_LOCAL_BROWSER:-0}" = 1 ]; then log "FORCE_LOCAL_BROWSER=1: ignoring any system chromium"
  else log "no usable chromium + chromedriver on PATH"; fi
  log "unpacking Debian's chromium packages into ${DEST#"$REPO"/} (nothing is installed system-wide)"
  # A separate process, so that `set -e` applies inside it (it is ignored within an `if` condition).
  if bash "${BASH_SOURCE[0]}" --in-repo; then return 0; fi
  if [ "${FORCE_LOCAL_BROWSER:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then
    log "in-repo install failed; install chromium and chromium-driver yourself (or set MAMMOCLIP_CHROMIUM and MAMMOCLIP_CHROMEDRIVER)"
    return 1
  fi
  log "WARNING: in-repo install failed; falling back to a system-wide apt-get install (writes /usr and /var)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
}

main "$@"
