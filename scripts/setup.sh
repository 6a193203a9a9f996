#!/usr/bin/env bash
# Sets up a Debian host for cloudlet: the system packages cloudlet and its tests need, then npm packages.
# Idempotent and quick when everything is already there.
#
#   scripts/setup.sh              install system packages and npm dependencies (the README's install command)
#   scripts/setup.sh --for-tests  what `npm test` runs first: system packages and services the tests need
#
# Installing system packages needs root (or sudo); without it the script prints the exact command to run.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=install
case "${1:-}" in
  "") ;;
  --for-tests) mode=tests ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "setup.sh: unknown option '$1' (allowed: --for-tests, --help)" >&2; exit 2 ;;
esac

# Debian packages, one line each with why it is needed.
packages=(
  rabbitmq-server   # the broker for multi-host clouds; the tests talk to a real one (and start isolated nodes)
  qemu-system-x86   # runs the VMs (qemu-backend)
  qemu-utils        # qemu-img: overlays on base images
  iproute2          # ip: tap devices on the VM bridge
  dnsmasq-base      # DHCP for VM bridges (tests; managed mode of ip-discovery-dnsmasq)
  busybox-static    # the tiny test guest (scripts/build-test-guest.sh)
  cpio              # packs the test guest's initramfs
  qemu-guest-agent  # copied into the test guest for the guest-agent tests
  util-linux        # unshare/nsenter: tests run VMs inside throw-away network namespaces
  python3-pika      # the aetherscale test client (test/aetherscale-client/client.py)
  dnsmasq-utils     # dhcp_release / dhcp_release6: the sweeper releases stale DHCP leases (and its tests)
  procps            # pgrep and kill, which the tests use (not in Debian's minimal container images)
  kmod              # modprobe: loads tun, bridge and veth for the tests' namespaces (not in minimal images)
  xz-utils          # unpacks a newer kernel's .ko.xz modules for the test guest (scripts/build-test-guest.sh)
  git               # the benchmarks record the commit they ran at (bench/lib/machine.ts)
  systemd           # runs the service (cloudlet install-service); the tests check its unit with systemd-analyze verify
)

need_node_major=20
if ! command -v node >/dev/null 2>&1; then
  echo "setup: Node.js >= ${need_node_major} is required and not installed (Debian 12's nodejs package is 18: use NodeSource or nvm)" >&2
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt "$need_node_major" ]; then
  echo "setup: Node.js >= ${need_node_major} is required, found $(node --version)" >&2
  exit 1
fi

# Runs a command as root: directly, through sudo, or not at all (with the command to run printed).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; return; fi
  if command -v sudo >/dev/null 2>&1; then sudo "$@"; return; fi
  echo "setup: needs root: run as root: $*" >&2
  exit 1
}

# The tests make network namespaces, bridges and taps, mount tmpfs and drive rabbitmqctl: as any other user
# most of them would fail, each with its own error. Said once, here.
if [ "$mode" = tests ] && [ "$(id -u)" -ne 0 ]; then
  echo "setup: the tests need root (network namespaces, bridges and taps, tmpfs mounts, rabbitmqctl): run npm test as root" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # A fresh VM may be running apt's own daily jobs at boot: wait for the lock rather than fail at once.
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
fi

# What the kernel must offer the tests: the modules behind their bridges, taps and veth pairs (loaded on
# demand only where modprobe runs), /dev/net/tun for QEMU, and network namespaces.
if [ "$mode" = tests ]; then
  modprobe -a tun bridge veth 2>/dev/null || true
  if [ ! -c /dev/net/tun ]; then
    mkdir -p /dev/net && mknod -m 0666 /dev/net/tun c 10 200 \
      || { echo "setup: /dev/net/tun is missing and could not be made; QEMU's taps need it (a container without it cannot run the tests)" >&2; exit 1; }
  fi
  unshare --net true 2>/dev/null || { echo "setup: cannot make a network namespace (unshare --net failed); the tests run their VMs inside them" >&2; exit 1; }
fi

# The tests need a broker on 127.0.0.1:5672. Debian's package does not start one without an init system
# (containers, CI), so start it here when nothing listens there.
broker_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if [ "$mode" = tests ] && ! broker_up; then
  echo "setup: starting RabbitMQ (rabbitmq-server -detached)"
  as_root rabbitmq-server -detached
  for _ in $(seq 1 60); do broker_up && break; sleep 1; done
  broker_up || { echo "setup: RabbitMQ did not open 127.0.0.1:5672 within 60 s; see /var/log/rabbitmq/" >&2; exit 1; }
  # The port opens a moment before the broker accepts logins. (Debian's rabbitmqctl runs for root or rabbitmq only.)
  as_root timeout 60 rabbitmqctl await_startup >/dev/null || { echo "setup: RabbitMQ did not finish starting within 60 s; see /var/log/rabbitmq/" >&2; exit 1; }
fi

if [ "$mode" = tests ]; then
  # The tiny guest the QEMU tests boot (cached; quick when up to date).
  bash scripts/build-test-guest.sh >/dev/null
fi

if [ "$mode" = install ]; then
  # npm keeps its own copy of the lock in node_modules: newer than package.json and package-lock.json means
  # the install is current (npm ci would delete and reinstall all of it, a minute for nothing).
  if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ] && [ node_modules/.package-lock.json -nt package.json ]; then
    echo "setup: npm dependencies are up to date"
  elif [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
elif [ ! -d node_modules/tinypool ]; then
  echo "setup: node_modules is missing; run the install command first: scripts/setup.sh (or npm ci)" >&2
  exit 1
fi
