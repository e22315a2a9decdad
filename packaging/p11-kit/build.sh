#!/usr/bin/env bash
# Builds the lab's own p11-kit: Debian trixie's 0.25.5 source with hacli's two RPC
# patches, installed into a prefix inside the checkout. See docs/lab.md ("The lab's
# p11-kit").
#
# Usage: packaging/p11-kit/build.sh PREFIX
#
# Why: Debian 12's p11-kit 0.24.1 RPC forwards no AES key wrap and no mechanism with an
# IV, so lab members could not replicate sensitive keys. 0.25.5 forwards CBC/CTR/GCM;
# aes-key-wrap-rpc.patch adds CKM_AES_KEY_WRAP(_PAD). trixie's binaries need libc 2.38,
# hence a build. rpc-read-failure-wakes-waiters.patch fixes the client's hang when a
# connection with several calls in flight fails mid-answer (docs/lab.md).
#
# The tarball is trusted by its sha256 alone (pinned in SHA256SUMS next to this
# script): the archive no longer serves the .dsc and .asc, so `apt-get source` exits
# 100 even though the orig tarball arrives whole. Any failure stops with one line
# "p11-kit build: ..." and a non-zero exit; there is no fallback to the system p11-kit.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
prefix="${1:?usage: build.sh PREFIX}"
version="0.25.5"
debian_version="0.25.5-3"
tarball="p11-kit_${version}.orig.tar.xz"
stamp="$prefix/.hacli-build-stamp"
# The stamp records what was built; a changed patch or version rebuilds.
patches=("$here/aes-key-wrap-rpc.patch" "$here/rpc-read-failure-wakes-waiters.patch")
want_stamp="$(cat "$here/SHA256SUMS" "${patches[@]}" "$0" | sha256sum | cut -d' ' -f1)"

fail() { echo "p11-kit build: $*" >&2; exit 1; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
  exit 0
fi

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
build_deps="gcc libc6-dev pkg-config libffi-dev libtasn1-6-dev meson ninja-build xz-utils"
missing=""
for p in $build_deps; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "Installing p11-kit build dependencies:$missing"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null; } \
    || fail "could not install build dependencies:$missing"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hacli-p11kit.XXXXXX")" || fail "no temporary directory"
trap 'rm -rf "$work"' EXIT

# A private apt source list and lists directory: the system's apt configuration is
# never touched.
mkdir -p "$work/lists/partial" "$work/dl"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
echo "Fetching p11-kit $debian_version source from Debian's archive"
apt-get "${apt_opts[@]}" -qq update >"$work/apt.log" 2>&1 \
  || fail "apt-get update of the trixie source list failed (see: $(tail -n1 "$work/apt.log"))"
# Exits 100 because the archive answers 404 for the .dsc and .asc; the tarball is
# judged by its checksum below, not by apt's exit status.
(cd "$work/dl" && apt-get "${apt_opts[@]}" -qq source --download-only "p11-kit=$debian_version" >>"$work/apt.log" 2>&1) || true
[ -f "$work/dl/$tarball" ] || fail "$tarball was not downloaded from Debian's archive"
(cd "$work/dl" && grep " $tarball\$" "$here/SHA256SUMS" | sha256sum --check --status) \
  || fail "$tarball does not match the sha256 pinned in packaging/p11-kit/SHA256SUMS"

echo "Building p11-kit $version with hacli's RPC patches into $prefix"
tar -xJf "$work/dl/$tarball" -C "$work" || fail "could not unpack $tarball"
src="$work/p11-kit-$version"
for p in "${patches[@]}"; do
  patch -d "$src" -p1 --quiet < "$p" >>"$work/build.log" 2>&1 \
    || fail "the RPC patch $(basename "$p") does not apply"
done
rm -rf "$prefix"
# meson install drops build RPATHs; an explicit -rpath survives, so p11-kit-remote loads
# this libp11-kit.so.0 (where the server code lives), not the system's 0.24.1.
meson setup "$work/build" "$src" --prefix="$prefix" --libdir=lib --buildtype=release \
  -Dtrust_module=disabled -Dnls=false -Dman=false -Dgtk_doc=false -Dtest=false \
  -Dbash_completion=disabled -Dsystemd=disabled \
  -Dc_link_args="-Wl,-rpath,$prefix/lib" >>"$work/build.log" 2>&1 \
  || fail "meson setup failed: $(tail -n3 "$work/build.log" | tr '\n' ' ')"
ninja -C "$work/build" >>"$work/build.log" 2>&1 \
  || fail "compilation failed: $(grep -m1 -i 'error' "$work/build.log")"
meson install -C "$work/build" --quiet >>"$work/build.log" 2>&1 || fail "meson install failed"

# Check the trap the issue describes: the server side must load our own library.
remote="$prefix/libexec/p11-kit/p11-kit-remote"
[ -x "$remote" ] || fail "$remote was not installed"
client="$prefix/lib/pkcs11/p11-kit-client.so"
[ -f "$client" ] || fail "$client was not installed"
readelf -d "$remote" | grep -q "R\(UN\)\?PATH.*$prefix/lib" \
  || fail "p11-kit-remote has no RUNPATH to $prefix/lib (it would load the system's libp11-kit)"
"$prefix/bin/p11-kit" --help >/dev/null 2>&1 || fail "the built p11-kit does not run"
# Names the fixes this client carries: hacli's engine runs several calls at once on
# one connection (MemberConcurrency) only through a client that has the read fix.
echo "rpc-read-failure-wakes-waiters" > "$(dirname "$client")/hacli-fixes" \
  || fail "could not write $(dirname "$client")/hacli-fixes"
echo "$want_stamp" > "$stamp"
echo "p11-kit $version (hacli patches) installed in $prefix"
