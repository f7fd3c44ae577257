#!/usr/bin/env bash
# The RBD tests (make test runs this): a one-node Ceph cluster for the
# whole run (scripts/ceph-single.sh, shared through RINGBLK_CEPH_DIR),
# the driver's tests with -tags rbd (assertions on; -race -short; the
# allocation budget) and the command-level RBD tests, then the cluster is
# stopped whatever happened. The fault test starts a private cluster of
# its own (it stops that one's OSD).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
dir=/var/tmp/ringblk-ceph-test-$$
trap './scripts/ceph-single.sh stop "$dir"' EXIT
start=$(date +%s%3N)
./scripts/ceph-single.sh start "$dir" >/dev/null
echo "rbd-test: cluster up in $(( $(date +%s%3N) - start )) ms"
export RINGBLK_CEPH_DIR=$dir
$GO vet -tags rbd ./drivers/rbd/... ./drivers/chain ./bench ./cmd/ringblk ./internal/cephtest
$GO test -tags 'rbd invariants' -count=1 -timeout 10m ./drivers/rbd/...
$GO test -tags 'rbd invariants' -count=1 -timeout 10m -run 'RBD' ./cmd/ringblk
$GO test -tags rbd -race -short -count=1 -timeout 10m ./drivers/rbd/...
$GO test -tags rbd -count=1 -timeout 5m -run Alloc ./drivers/rbd/...
