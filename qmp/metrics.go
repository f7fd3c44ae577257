package qmp

import (
	"math"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/nbd"
	"github.com/ringblk/ringblk/plugin/contract"
)

// Metrics is a Prometheus collector of the daemon's figures, read at
// scrape time from counters the I/O path keeps anyway: per top node (the
// node a blockdev-add or snapshot put on top; its device and its NBD
// exports summed) operations, bytes, errors and a latency histogram per
// operation, and requests in flight; per graph node drained sections and
// their wait time; per Context the ring depth (ops on the ring),
// submission-queue-full events, io_uring_enter calls and completions, and
// enters per completed I/O.
type Metrics struct {
	d *Daemon

	ops, bytes, errs, lat, inFlight    *prometheus.Desc
	drains, drainSecs                  *prometheus.Desc
	depth, sqFull, enters, done, perIO *prometheus.Desc
}

// NewMetrics returns the collector; register it on a prometheus.Registry.
func NewMetrics(d *Daemon) *Metrics {
	nd := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("ringblk_"+name, help, labels, nil)
	}
	return &Metrics{d: d,
		ops:       nd("node_ops_total", "Requests completed, by operation.", "node", "op"),
		bytes:     nd("node_bytes_total", "Bytes transferred, by operation.", "node", "op"),
		errs:      nd("node_errors_total", "Requests that failed, by operation.", "node", "op"),
		lat:       nd("node_latency_seconds", "Request latency, by operation.", "node", "op"),
		inFlight:  nd("node_in_flight", "Requests submitted and not completed.", "node"),
		drains:    nd("node_drains_total", "Drained sections begun on the node.", "node"),
		drainSecs: nd("node_drain_seconds_total", "Time drained sections waited for the node's requests.", "node"),
		depth:     nd("context_ring_depth", "Operations on the Context's io_uring ring now.", "context"),
		sqFull:    nd("context_sq_full_total", "Operations that found the submission queue full (waited for an SQE or were refused by the kernel until completions were reaped).", "context"),
		enters:    nd("context_enters_total", "io_uring_enter calls.", "context"),
		done:      nd("context_completions_total", "Operations completed.", "context"),
		perIO:     nd("context_enters_per_io", "io_uring_enter calls per completed operation since start.", "context"),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.ops, m.bytes, m.errs, m.lat, m.inFlight, m.drains, m.drainSecs, m.depth, m.sqFull, m.enters, m.done, m.perIO} {
		ch <- d
	}
}

var opLabels = [5]string{"read", "write", "flush", "discard", "write_zeroes"}

// opSum adds up one operation's accounting from devices and exports
// (both count latency in the same power-of-two buckets).
type opSum struct {
	ops, bytes, errors, totalNs uint64
	lat                         [contract.LatencyBuckets]uint64
}

func (o *opSum) add(ops, bytes, errs, ns uint64, lat []uint64) {
	o.ops += ops
	o.bytes += bytes
	o.errors += errs
	o.totalNs += ns
	for i := range min(len(lat), len(o.lat)) {
		o.lat[i] += lat[i]
	}
}

// latencyBounds are the histogram's upper bounds in seconds: bucket i of
// the device accounting counts [2^i, 2^(i+1)) ns.
var latencyBounds = func() []float64 {
	b := make([]float64, contract.LatencyBuckets-1)
	for i := range b {
		b[i] = math.Ldexp(1, i+1) / 1e9
	}
	return b
}()

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	d := m.d
	// Held for the whole collection: Daemon.Close waits for it, so the
	// Contexts are still running when it asks them for their figures.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	// Per top node: what its device did plus what its NBD exports did
	// (in the daemon, the exports carry the clients' I/O).
	type acc struct {
		ops      [5]opSum
		inFlight int64
	}
	per := map[string]*acc{}
	var names []string
	for _, name := range sortedKeys(d.nodes) {
		b := d.nodes[name]
		if b.usedBy != "" || b.dev == nil {
			continue
		}
		s := b.dev.Stats()
		a := &acc{inFlight: s.InFlight}
		for i, o := range []host.OpStats{s.Read, s.Write, s.Flush, s.Discard, s.WriteZeroes} {
			a.ops[i].add(o.Ops, o.Bytes, o.Errors, o.TotalNs, o.Latency[:])
		}
		per[name] = a
		names = append(names, name)
	}
	for _, id := range sortedKeys(d.exports) {
		e := d.exports[id]
		a := per[e.node]
		if a == nil {
			continue
		}
		s := e.exp.Stats()
		for i, o := range []nbd.OpStats{s.Read, s.Write, s.Flush, s.Trim, s.WriteZeroes} {
			a.ops[i].add(o.Ops, o.Bytes, o.Errors, o.TotalNs, o.Latency[:])
		}
		a.inFlight += e.exp.FrontEnd().InFlight()
	}
	for _, name := range names {
		a := per[name]
		for i, op := range opLabels {
			o := &a.ops[i]
			ch <- prometheus.MustNewConstMetric(m.ops, prometheus.CounterValue, float64(o.ops), name, op)
			ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(o.bytes), name, op)
			ch <- prometheus.MustNewConstMetric(m.errs, prometheus.CounterValue, float64(o.errors), name, op)
			buckets := make(map[float64]uint64, len(latencyBounds))
			var cum, count uint64
			for j, n := range o.lat {
				count += n
				if j < len(latencyBounds) {
					cum += n
					buckets[latencyBounds[j]] = cum
				}
			}
			ch <- prometheus.MustNewConstHistogram(m.lat, count, float64(o.totalNs)/1e9, buckets, name, op)
		}
		ch <- prometheus.MustNewConstMetric(m.inFlight, prometheus.GaugeValue, float64(a.inFlight), name)
	}
	for _, n := range d.h.Graph().Nodes() {
		c, w := n.DrainStats()
		ch <- prometheus.MustNewConstMetric(m.drains, prometheus.CounterValue, float64(c), n.Name())
		ch <- prometheus.MustNewConstMetric(m.drainSecs, prometheus.CounterValue, w.Seconds(), n.Name())
	}
	for i := 0; i < d.h.Contexts(); i++ {
		m.context(ch, strconv.Itoa(i), d.h.Context(i))
	}
}

func (m *Metrics) context(ch chan<- prometheus.Metric, name string, c *aio.Context) {
	var depth int
	var st aio.Stats
	c.Run(func() { depth, st = c.Outstanding(), c.Stats() })
	ch <- prometheus.MustNewConstMetric(m.depth, prometheus.GaugeValue, float64(depth), name)
	ch <- prometheus.MustNewConstMetric(m.sqFull, prometheus.CounterValue, float64(st.Overflowed+st.Busy), name)
	ch <- prometheus.MustNewConstMetric(m.enters, prometheus.CounterValue, float64(st.Enters), name)
	ch <- prometheus.MustNewConstMetric(m.done, prometheus.CounterValue, float64(st.Completed), name)
	per := 0.0
	if st.Completed > 0 {
		per = float64(st.Enters) / float64(st.Completed)
	}
	ch <- prometheus.MustNewConstMetric(m.perIO, prometheus.GaugeValue, per, name)
}
