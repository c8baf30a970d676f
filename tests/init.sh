#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
#
# /init of the KFlex guest initramfs. Mounts the host's root file system
# (read-only 9p), tmpfs on /tmp, /run and /var/*, the run directory
# (writable 9p) and then the host directories listed in /run/kflex/shares
# (lines "TAG ro|rw PATH", written by tests/vm.sh: the repository and the
# cache, which may lie under /tmp) at their own paths, chroots into the host
# root and runs /run/kflex/cmd.sh there. Its exit code goes to
# /run/kflex/rc and the kernel log to /run/kflex/dmesg, then the guest powers
# off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostfs /host ||
	{ echo "kflex-guest: cannot mount the host root over 9p"; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
for d in /tmp /run /var/tmp /var/run /var/lib /var/log; do
	[ -d "/host$d" ] && [ ! -L "/host$d" ] && mount -t tmpfs tmpfs "/host$d"
done
mount -t bpf bpf /host/sys/fs/bpf
mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
mkdir -p /host/run/kflex
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 kflexrun /host/run/kflex ||
	{ echo "kflex-guest: cannot mount the run directory"; poweroff -f; }
if [ -f /host/run/kflex/shares ]; then
	while read -r tag mode path; do
		[ -n "$tag" ] || continue
		mkdir -p "/host$path" 2>/dev/null
		mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$mode,cache=loose" "$tag" "/host$path" ||
			{ echo "kflex-guest: cannot mount $path"; poweroff -f; }
	done </host/run/kflex/shares
fi
ip link set lo up
hostname kflex-guest
chroot /host /bin/bash /run/kflex/cmd.sh
echo $? >/host/run/kflex/rc
dmesg >/host/run/kflex/dmesg
sync
poweroff -f
