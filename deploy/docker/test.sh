#!/bin/sh
# Builds the image from a tokenproxy binary with podman and sends a request through
# a running container. The build stage (which needs the Rust image from a registry)
# is replaced by a directory holding what it makes: the root filesystem that
# rootfs.sh assembles from BINARY.
#
#   sh deploy/docker/test.sh [BINARY]      (default target/release/tokenproxy)
#
# Podman runs here with vfs storage, runc and cgroupfs (this machine's hybrid
# cgroups defeat crun), and with limits no higher than the ones it was given.
set -eu
bin=${1:-target/release/tokenproxy}
work=$(mktemp -d /tmp/tokenproxy-image.XXXXXX)
image=localhost/tokenproxy:test
podman="podman --storage-driver vfs --root $work/storage --runroot $work/run --runtime runc --cgroup-manager cgroupfs"
nofile=$(ulimit -Hn)
cleanup() {
  $podman rm -f tokenproxy-test >/dev/null 2>&1 || true
  $podman rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

sh deploy/docker/rootfs.sh "$bin" "$work/context/rootfs"
# Docker's image format: OCI images have no HEALTHCHECK.
$podman build -q --format docker --build-context build="$work/context" -f deploy/docker/Dockerfile -t "$image" . >/dev/null
$podman images --format '{{.Size}}' "$image" | sed 's/^/image size: /'

health=$($podman image inspect "$image" --format '{{.Config.Healthcheck.Test}}')
case "$health" in
  "[CMD /usr/local/bin/tokenproxy health]") echo "image health check: $health" ;;
  *) echo "unexpected health check: $health" >&2; exit 1 ;;
esac
config=$($podman image inspect "$image" --format '{{.Config.User}} {{.Config.WorkingDir}} {{.Config.ExposedPorts}}')
echo "image config: $config"
case "$config" in
  "65532:65532 /var/lib/tokenproxy map[8080/tcp:{} 9090/tcp:{}]") ;;
  *) echo "unexpected image config: $config" >&2; exit 1 ;;
esac

# Podman schedules health checks with systemd timers, which this machine lacks: the
# check's command is run by hand below instead.
run="$podman run --rm --no-healthcheck --network host --read-only --tmpfs /tmp --ulimit nofile=$nofile:$nofile --ulimit nproc=1024:1024"
if $run --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
  echo "the image has a shell" >&2
  exit 1
fi
$run "$image" --version

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$run -d --name tokenproxy-test "$image" demo --listen "127.0.0.1:$port" >/dev/null
i=0
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
  i=$((i + 1))
  if [ $i -gt 100 ]; then
    $podman logs tokenproxy-test >&2
    echo "the container did not start listening" >&2
    exit 1
  fi
  sleep 0.1
done
answer=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port/demo/hello?page=1")
case "$answer" in
  *'"path":"/hello"'*' 200') echo "request through the container: 200" ;;
  *) $podman logs tokenproxy-test >&2; echo "unexpected answer: $answer" >&2; exit 1 ;;
esac
# The health check's command, inside the container (the demo's admin listener is
# on an ephemeral port, which it logs).
admin=$($podman logs tokenproxy-test 2>&1 | sed -n 's|^  admin *http://\([0-9.:]*\)/status$|\1|p' | head -1)
health=$($podman exec tokenproxy-test /usr/local/bin/tokenproxy health --admin "$admin")
if [ "$health" != "ready" ]; then
  echo "tokenproxy health in the container said: $health (admin $admin)" >&2
  exit 1
fi
echo "health check in the container: $health"
# SIGTERM: it drains and stops.
$podman stop -t 10 tokenproxy-test >/dev/null
echo "container image: ok"
