#!/bin/bash
# Build a bundle for the many-core machine (Ubuntu 24.04, Python 3.12,
# root, 16 cores, NO network, no nginx/sshd/wrk/redis-server): Debian's binaries, the few libraries Ubuntu
# lacks, and cp312 wheels of the project's dependencies.
#   usage (from the project root):  bash bench/device_bundle.sh [OUT_DIR]   (default .device-bundle)
# Then run there with .device-bundle carried along (it is in .gitignore):
#   bash .device-bundle/setup.sh && <your benchmark>      (setup.sh prints what it set up)
set -euo pipefail
OUT=${1:-.device-bundle}
HERE=$(cd "$(dirname "$0")" && pwd)
need=()
for b in /usr/sbin/nginx:nginx /usr/sbin/sshd:openssh-server /usr/bin/ssh:openssh-client /usr/bin/wrk:wrk /usr/bin/ss:iproute2 /usr/bin/redis-server:redis-server; do
  [ -x "${b%%:*}" ] || need+=("${b##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null
fi
rm -rf "$OUT"; mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/wheels"
cp /usr/sbin/nginx /usr/sbin/sshd /usr/bin/ssh /usr/bin/ssh-keygen /usr/bin/wrk /usr/bin/ss "$OUT/bin/"
cp -L /usr/bin/redis-server "$OUT/bin/redis-server"  # the cluster rows' registry (bench/cluster.py)
# what Ubuntu 24.04 lacks of their libraries (measured); setup.sh installs only the missing ones
# (liblzf and libjemalloc: redis-server's)
for l in libluajit-5.1.so.2 libnsl.so.2 libtirpc.so.3 libwrap.so.0 libbsd.so.0 libmnl.so.0 libmd.so.0 \
    liblzf.so.1 libjemalloc.so.2 libatomic.so.1; do
  cp -L "$(ldconfig -p | awk -v l="$l" '$1==l{print $NF; exit}')" "$OUT/lib/"
done
deps=$(python3 - <<'PY'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d.split(";")[0].replace(" ", "") for d in deps))
PY
)
# shellcheck disable=SC2086
pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$OUT/wheels" $deps
echo "$deps" > "$OUT/requirements.txt"
cp "$HERE/device_setup.sh" "$OUT/setup.sh"
du -sh "$OUT"
