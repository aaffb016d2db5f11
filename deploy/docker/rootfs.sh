#!/bin/sh
# Assembles the image's whole root filesystem in OUT from a built tokenproxy binary:
# the binary (stripped), exactly the shared libraries it links (glibc, libm, libgcc_s, the
# loader — from the build system's Debian packages), the CA bundle, and a passwd
# entry for the unprivileged user 65532. No shell, no package manager, nothing else.
#
#   deploy/docker/rootfs.sh target/release/tokenproxy OUT
set -eu
bin=$1
out=$2
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/etc/tokenproxy" "$out/var/lib/tokenproxy" "$out/tmp"
cp "$bin" "$out/usr/local/bin/tokenproxy"
# Symbols are not needed to run (a panic's log line carries its message and source
# location, not a backtrace): 2 MB less for a release build.
strip "$out/usr/local/bin/tokenproxy"
# Every library ldd names (with the path it resolves to), and the loader.
ldd "$bin" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/tokenproxy:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$out/etc/group"
# The default state directory (./tokenproxy-state under WORKDIR) and /tmp belong to
# the user; /tmp is sticky as everywhere.
chown 65532:65532 "$out/var/lib/tokenproxy"
chmod 0700 "$out/var/lib/tokenproxy"
chmod 1777 "$out/tmp"
