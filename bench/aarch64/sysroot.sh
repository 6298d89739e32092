#!/bin/sh
# Build an aarch64 sysroot with Python 3.11 + the aarch64 wheels of Apache TVM's runtime, to run dccomp's
# arm_cpu artifacts under qemu-user on an x86 machine (no network at run time; Debian + PyPI at set-up).
#   sh bench/aarch64/sysroot.sh [DIR]      (default DIR: ~/.cache/dccomp/aarch64-sysroot)
# Needs: apt (arm64 foreign architecture is added), pip, qemu-user-static.
set -eu
DIR=${1:-${DCCOMP_CACHE:-$HOME/.cache/dccomp}/aarch64-sysroot}
mkdir -p "$DIR/debs" "$DIR/wheels" "$DIR/root/site"
dpkg --add-architecture arm64
apt-get update -qq
apt-get install -y -qq qemu-user-static >/dev/null
cd "$DIR/debs"
for p in python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 zlib1g \
         libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 \
         libuuid1 libgomp1 libcrypt1 libnsl2 libtirpc3 libdb5.3 libgdbm6; do
  apt-get download -qq "$p:arm64" 2>/dev/null
done
for d in *.deb; do dpkg-deb -x "$d" "$DIR/root"; done
cd "$DIR/wheels"
pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.15.post2 ml_dtypes==0.7.0 numpy==2.4.6 typing_extensions -d .
cd "$DIR/root/site"
for w in "$DIR"/wheels/*.whl; do python3 -m zipfile -e "$w" .; done
echo "$DIR"
