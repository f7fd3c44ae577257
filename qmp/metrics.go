package qmp

import (
	"math"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/plugin/contract"
)

// Metrics is a Prometheus collector of the daemon's figures, read at
// scrape time (nothing is added to the I/O path): per device (labelled by
// its node name) operations, bytes, errors and a latency histogram per
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
	type devRef struct {
		name string
		dev  *host.Device
	}
	// Held for the whole collection: Daemon.Close waits for it, so the
	// Contexts are still running when it asks them for their figures.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	var devs []devRef
	for _, name := range sortedKeys(d.nodes) {
		if b := d.nodes[name]; b.usedBy == "" && b.dev != nil {
			devs = append(devs, devRef{name, b.dev})
		}
	}
	for _, r := range devs {
		s := r.dev.Stats()
		for _, o := range []struct {
			op string
			st host.OpStats
		}{{"read", s.Read}, {"write", s.Write}, {"flush", s.Flush}, {"discard", s.Discard}, {"write_zeroes", s.WriteZeroes}} {
			ch <- prometheus.MustNewConstMetric(m.ops, prometheus.CounterValue, float64(o.st.Ops), r.name, o.op)
			ch <- prometheus.MustNewConstMetric(m.bytes, prometheus.CounterValue, float64(o.st.Bytes), r.name, o.op)
			ch <- prometheus.MustNewConstMetric(m.errs, prometheus.CounterValue, float64(o.st.Errors), r.name, o.op)
			buckets := make(map[float64]uint64, len(latencyBounds))
			var cum, count uint64
			for i, n := range o.st.Latency {
				count += n
				if i < len(latencyBounds) {
					cum += n
					buckets[latencyBounds[i]] = cum
				}
			}
			ch <- prometheus.MustNewConstHistogram(m.lat, count, float64(o.st.TotalNs)/1e9, buckets, r.name, o.op)
		}
		ch <- prometheus.MustNewConstMetric(m.inFlight, prometheus.GaugeValue, float64(s.InFlight), r.name)
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
