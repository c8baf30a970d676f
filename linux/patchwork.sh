#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# linux/patchwork.sh init|export -- edit the kernel patches as git commits.
#
#   init    make $KFLEX_CACHE/patchwork: a git repository holding the pristine
#           6.12 files that the patches touch (first commit) and one commit per
#           patch, in order: Kconfig.patch, then linux/patches/*.patch. Edit
#           the files there and amend or rebase the commits (`git rebase -i`).
#   export  write the commits back: the first after the pristine one to
#           Kconfig.patch, the others to linux/patches/NNNN-<subject>.patch
#           (git format-patch; the commit message is the patch header: a
#           subject line and why). The old patch files are replaced.
#
# linux/build.sh applies the patches with patch(1), so the exported files
# work with it as they are.
set -euo pipefail
. "$(dirname "$0")/env.sh"

work=$KFLEX_CACHE/patchwork
export GIT_AUTHOR_NAME="KFlex developers" GIT_AUTHOR_EMAIL="kflex@localhost"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"

patches() {
	echo "$KFLEX_REPO/Kconfig.patch"
	ls "$KFLEX_REPO"/linux/patches/*.patch
}

case "${1:-}" in
init)
	[ -d "$KFLEX_PRISTINE" ] || kflex_die "no pristine source: run \`make kernel\` first"
	[ ! -e "$work" ] || kflex_die "$work exists: remove it first (it may hold unexported work)"
	mkdir -p "$work"
	files=$(patches | xargs sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' | sort -u)
	for f in $files; do
		if [ -f "$KFLEX_PRISTINE/$f" ]; then
			mkdir -p "$work/$(dirname "$f")"
			cp "$KFLEX_PRISTINE/$f" "$work/$f"
		fi
	done
	cd "$work"
	git init -q
	git add -A
	git commit -qm "pristine linux-source-6.12 files touched by KFlex"
	git tag pristine
	for p in $(patches); do
		patch -p1 --batch --quiet <"$p" || kflex_die "$p does not apply"
		git add -A
		# A patch with a mail header keeps its message; others get their name.
		if grep -q '^Subject: ' "$p"; then
			msg=$(sed -n '/^Subject: /,/^---$/p' "$p" | sed '1s/^Subject: \(\[PATCH[^]]*\] \)\{0,1\}//; $d')
		else
			msg=$(basename "$p" .patch)
		fi
		git commit -qm "$msg"
	done
	kflex_log "patchwork ready: $work ($(git rev-list --count pristine..HEAD) patches)"
	;;
export)
	[ -d "$work/.git" ] || kflex_die "no $work: run \`linux/patchwork.sh init\` first"
	out=$(mktemp -d)
	git -C "$work" format-patch -q --zero-commit --no-signature --no-numbered \
		-o "$out" pristine..HEAD
	# Stable output: no dates.
	sed -i '/^Date: /d' "$out"/*.patch
	first=$(ls "$out"/*.patch | head -n 1)
	cp "$first" "$KFLEX_REPO/Kconfig.patch"
	rm "$first"
	rm -f "$KFLEX_REPO"/linux/patches/*.patch
	n=1
	for p in "$out"/*.patch; do
		name=$(basename "$p" | sed 's/^[0-9]*-//')
		cp "$p" "$KFLEX_REPO/linux/patches/$(printf '%04d' "$n")-$name"
		n=$((n + 1))
	done
	rm -rf "$out"
	kflex_log "exported Kconfig.patch and $((n - 1)) patches to linux/patches/"
	;;
*)
	kflex_die "usage: linux/patchwork.sh init|export"
	;;
esac
