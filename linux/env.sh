# SPDX-License-Identifier: GPL-2.0
# Shared settings for the KFlex scripts; sourced, not run.

KFLEX_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KFLEX_CACHE=${KFLEX_CACHE:-$HOME/.cache/kflex}
KFLEX_TARBALL=/usr/src/linux-source-6.12.tar.xz
KFLEX_PRISTINE=$KFLEX_CACHE/src/linux-source-6.12
# Cargo builds share one target directory in the cache so a fresh clone on this
# machine reuses compiled dependencies.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KFLEX_CACHE/target}
export LIBCLANG_PATH=${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}
# The rustup toolchain that may come first on PATH has no rust-src; the kernel
# needs Debian's rustc-web (sysroot /usr).
KFLEX_RUSTC=/usr/bin/rustc
KFLEX_BINDGEN=$(command -v bindgen || echo "$HOME/.cargo/bin/bindgen")
[ -x "$KFLEX_BINDGEN" ] || KFLEX_BINDGEN=$HOME/.cargo/bin/bindgen
export PATH=$HOME/.cargo/bin:$PATH

# LLVM=1 needs an unversioned clang >= 19; Debian 12 only has clang-19.
kflex_llvm() {
	local v
	v=$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
	if [ -n "$v" ] && [ "$v" -ge 19 ]; then echo 1; else echo -19; fi
}

kflex_build_dir() { echo "$KFLEX_CACHE/build-$1/linux"; }

kflex_log() { printf '[kflex] %s\n' "$*" >&2; }
kflex_die() { printf 'kflex: error: %s\n' "$*" >&2; exit 1; }

# Kernel variants linux/build.sh builds, each in its own tree build-VARIANT:
# y and m (CONFIG_KFLEX=y/=m: the guest kernels of `make test`), st (y plus
# the selftests options of linux/kflex-selftests.config), base (st's
# configuration without KFlex: no patches, no component; the baseline of
# `make selftests`) and debug (y plus linux/kflex-debug.config: KASAN,
# lockdep, ...).
KFLEX_VARIANTS="y m st base debug"
kflex_variant_ok() { case " $KFLEX_VARIANTS " in *" $1 "*) [ -n "$1" ] ;; *) return 1 ;; esac; }
# The make target that builds a variant's kernel.
kflex_variant_target() { case "$1" in y | m) echo kernel ;; *) echo "kernel-$1" ;; esac; }
