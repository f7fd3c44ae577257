#!/usr/bin/env bash
# A one-node Ceph cluster on 127.0.0.1 for ringblk's RBD tests and
# benchmarks: one monitor and one memstore OSD (no manager: RBD I/O does
# not need it), cephx on, pool "rbd" with size 1, a client "client.ringblk"
# with the rbd profile. No containers, nothing beyond loopback.
#
#   scripts/ceph-single.sh start [DIR]   start (or reuse) the cluster in DIR
#   scripts/ceph-single.sh stop  [DIR]   stop it and remove DIR
#   scripts/ceph-single.sh status [DIR]  exit 0 when it answers
#   scripts/ceph-single.sh stop-osd|start-osd [DIR]   fault tests
#   scripts/ceph-single.sh port          the monitor port start would take
#
# DIR defaults to $CEPH_DIR or /var/tmp/ringblk-ceph. The monitor listens
# on $CEPH_MON_PORT, or the first free port from 16789 (see freeport). Start prints the
# config file path (DIR/ceph.conf); the admin keyring is DIR/keyring, the
# client.ringblk keyring DIR/ringblk.keyring. Every daemon writes its pid
# file under DIR/run, and stop kills only those pids (and only when they
# still run the binary it started). Stop is idempotent; a failed start
# tears down what it started.
#
# The memstore OSD keeps every byte in RAM (CEPH_OSD_BYTES, default 1 GiB
# cap): keep images at 64-256 MiB. It slows down as it is overwritten
# (4 KiB random writes fall from about 9k to 2k IOPS within minutes), so
# benchmarks use CEPH_OSD_STORE=bluestore: a bluestore OSD whose block
# device is a sparse file of CEPH_OSD_BYTES (default 4 GiB there) on
# /dev/shm, which keeps its speed; stop removes the file. Monitor Paxos intervals and the watch
# timeout are shortened so that the cluster comes up in a few seconds and a
# killed client's exclusive lock is taken over in seconds, not 30.
set -euo pipefail

cmd=${1:-}
DIR=${2:-${CEPH_DIR:-/var/tmp/ringblk-ceph}}
PORT=${CEPH_MON_PORT:-}
STORE=${CEPH_OSD_STORE:-memstore}
case $STORE in
memstore) OSD_BYTES=${CEPH_OSD_BYTES:-1073741824} ;;
bluestore) OSD_BYTES=${CEPH_OSD_BYTES:-4294967296} ;;
*) echo "ceph-single: CEPH_OSD_STORE must be memstore or bluestore, not '$STORE'" >&2; exit 2 ;;
esac
CONF=$DIR/ceph.conf
# The bluestore block file: on tmpfs, named after DIR so that stop finds it.
BLOCK=/dev/shm/ceph-single.$(printf '%s' "$DIR" | md5sum | cut -c1-16).block

die() { echo "ceph-single: $*" >&2; exit 1; }

# pidalive PIDFILE BINARY: the pid in PIDFILE runs BINARY.
pidalive() {
	local pid
	[ -s "$1" ] || return 1
	pid=$(cat "$1")
	[ -r "/proc/$pid/comm" ] || return 1
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
	# A zombie (not reaped by whoever adopted the daemon) is gone.
	! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# killpid PIDFILE BINARY: TERM, then KILL after 5 s, the daemon we started.
killpid() {
	local pid i
	pidalive "$1" "$2" || { rm -f "$1"; return 0; }
	pid=$(cat "$1")
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		pidalive "$1" "$2" || break
		sleep 0.1
	done
	if pidalive "$1" "$2"; then
		kill -KILL "$pid" 2>/dev/null || true
		for i in $(seq 20); do pidalive "$1" "$2" || break; sleep 0.1; done
	fi
	rm -f "$1"
}

ceph_() { timeout 20 ceph -c "$CONF" -k "$DIR/keyring" -n client.admin "$@"; }

stop() {
	[ -d "$DIR" ] || return 0
	killpid "$DIR/run/osd.0.pid" ceph-osd
	killpid "$DIR/run/mon.a.pid" ceph-mon
	rm -f "$BLOCK"
	case "$DIR" in
	/var/tmp/*|/tmp/*) rm -rf "$DIR" ;;
	*) echo "ceph-single: left $DIR in place (not under /var/tmp or /tmp)" >&2 ;;
	esac
}

status() {
	[ -f "$CONF" ] && pidalive "$DIR/run/mon.a.pid" ceph-mon && pidalive "$DIR/run/osd.0.pid" ceph-osd &&
		timeout 10 rbd -c "$CONF" -k "$DIR/keyring" --id admin ls rbd >/dev/null 2>&1
}

# store_conf prints the [osd] lines of the chosen object store.
store_conf() {
	if [ "$STORE" = bluestore ]; then
		cat <<EOB
osd objectstore = bluestore
bluestore block path = $BLOCK
bluestore block create = true
bluestore block size = $OSD_BYTES
bluestore fsck on mkfs = false
bluestore fsck on mount = false
osd memory target = 1073741824
EOB
	else
		printf 'osd objectstore = memstore\nmemstore device bytes = %s\n' "$OSD_BYTES"
	fi
}

start_osd() {
	pidalive "$DIR/run/osd.0.pid" ceph-osd && return 0
	ceph-osd -c "$CONF" -i 0 >>"$DIR/log/start.log" 2>&1
}

# The monitor's default port: the first of PORT_FIRST..+99 that no TCP
# socket on this machine holds and that lies outside the kernel's
# ephemeral range. "Nothing listens on it" is not enough: an outgoing
# connection (another cluster's OSD talking to its monitor) holds an
# ephemeral local port without listening, and the monitor's bind then
# fails with EADDRINUSE (CI on 1f91558: 46790, next to the shared
# cluster's 46789, was such a port). Outside the ephemeral range no
# connection can take the port between this check and the bind.
PORT_FIRST=16789

# portused P: some TCP socket (any state, IPv4 or IPv6) has local port P.
portused() {
	local hex
	hex=$(printf '%04X' "$1")
	awk -v want=":$hex" 'FNR > 1 && substr($2, length($2) - 4) == want { found = 1 } END { exit !found }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null
}

freeport() {
	local lo hi p
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range || { lo=32768; hi=60999; }
	for ((p = PORT_FIRST; p < PORT_FIRST + 100; p++)); do
		if [ "$p" -ge "$lo" ] && [ "$p" -le "$hi" ]; then
			continue
		fi
		portused "$p" || { echo "$p"; return 0; }
	done
	return 1
}

start() {
	for b in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd uuidgen; do
		command -v "$b" >/dev/null 2>&1 || die "$b is missing (scripts/deps.sh installs ceph-mon ceph-osd ceph-common)"
	done
	if status; then
		echo "$CONF"
		return 0
	fi
	stop
	if [ -z "$PORT" ]; then
		PORT=$(freeport) || die "no free monitor port in $PORT_FIRST-$((PORT_FIRST + 99)) (outside the ephemeral range)"
	fi
	mkdir -p "$DIR"/{run,log,mon,osd/ceph-0}
	trap 'echo "ceph-single: start failed; logs were in $DIR/log" >&2; tail -n 20 "$DIR"/log/*.log >&2 2>/dev/null || true; stop' ERR
	local fsid
	fsid=$(uuidgen)
	cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$PORT
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = false
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# Each map change otherwise waits about a second.
paxos propose interval = 0.01
paxos min wait = 0.01
# A client killed with an image's exclusive lock blocks the next writer for
# this long (default 30 s).
osd client watch timeout = 5
client mount timeout = 15

[client]
keyring = $DIR/keyring

[mon]
mon data = $DIR/mon/\$cluster-\$id
keyring = $DIR/mon/\$cluster-\$id/keyring
mon initial members = a
mon data avail warn = 1
mon data avail crit = 0

[osd]
osd data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
$(store_conf)
osd max object name len = 256
osd max object namespace len = 64
osd op num shards = 1
osd op num threads per shard = 2
EOF
	ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
	ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring" >/dev/null
	monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$PORT]" "$DIR/monmap" >/dev/null
	ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" >>"$DIR/log/start.log" 2>&1
	ceph-mon -c "$CONF" -i a >>"$DIR/log/start.log" 2>&1

	local uuid
	uuid=$(uuidgen)
	ceph_ osd new "$uuid" >/dev/null
	ceph-authtool --create-keyring "$DIR/osd/ceph-0/keyring" --gen-key -n osd.0 >/dev/null
	ceph_ auth add osd.0 osd 'allow *' mon 'allow profile osd' -i "$DIR/osd/ceph-0/keyring" >/dev/null 2>&1
	ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$DIR/log/start.log" 2>&1
	start_osd
	ceph_ osd pool create rbd 8 8 >/dev/null 2>&1
	ceph_ osd pool application enable rbd rbd >/dev/null 2>&1
	ceph_ auth get-or-create client.ringblk mon 'profile rbd' osd 'profile rbd pool=rbd' \
		-o "$DIR/ringblk.keyring" >/dev/null 2>&1
	# Ready when an image can be created and removed.
	local i ok=0
	for i in $(seq 100); do
		if timeout 5 rbd -c "$CONF" -k "$DIR/keyring" --id admin create rbd/.probe --size 1M >/dev/null 2>&1; then
			ok=1
			break
		fi
		sleep 0.2
	done
	[ $ok = 1 ] || { echo "ceph-single: the cluster did not become ready" >&2; false; }
	timeout 10 rbd -c "$CONF" -k "$DIR/keyring" --id admin rm rbd/.probe >/dev/null 2>&1
	trap - ERR
	echo "$CONF"
}

case "$cmd" in
start) start ;;
stop) stop ;;
status) status ;;
stop-osd) killpid "$DIR/run/osd.0.pid" ceph-osd ;;
start-osd) start_osd ;;
port) freeport || die "no free monitor port in $PORT_FIRST-$((PORT_FIRST + 99))" ;;
*) echo "usage: $0 start|stop|status|stop-osd|start-osd|port [DIR]" >&2; exit 2 ;;
esac
