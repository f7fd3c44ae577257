package bench

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/internal/invariants"
)

// obj is a JSON object that keeps its key order (fio's order), so the
// output reads like fio's. Values: int64, uint64, int, float64 (written
// with six decimals, as fio's "%f"), string, obj.
type obj []kv

type kv struct {
	k string
	v any
}

func (o obj) write(b *bytes.Buffer, indent string) {
	b.WriteString("{\n")
	in := indent + "  "
	for i, e := range o {
		b.WriteString(in)
		writeJSONString(b, e.k)
		b.WriteString(" : ")
		switch v := e.v.(type) {
		case obj:
			v.write(b, in)
		case []obj:
			b.WriteString("[\n")
			for k, x := range v {
				b.WriteString(in + "  ")
				x.write(b, in+"  ")
				if k < len(v)-1 {
					b.WriteByte(',')
				}
				b.WriteByte('\n')
			}
			b.WriteString(in + "]")
		case []int64:
			b.WriteString("[")
			for k, x := range v {
				if k > 0 {
					b.WriteString(", ")
				}
				b.WriteString(strconv.FormatInt(x, 10))
			}
			b.WriteString("]")
		case string:
			writeJSONString(b, v)
		case int:
			b.WriteString(strconv.Itoa(v))
		case int64:
			b.WriteString(strconv.FormatInt(v, 10))
		case uint64:
			b.WriteString(strconv.FormatUint(v, 10))
		case float64:
			if math.IsNaN(v) || math.IsInf(v, 0) {
				v = 0
			}
			b.WriteString(strconv.FormatFloat(v, 'f', 6, 64))
		default:
			invariants.Failf("bench: JSON value of type %T", v)
		}
		if i < len(o)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString(indent + "}")
}

func writeJSONString(b *bytes.Buffer, s string) {
	q, _ := json.Marshal(s)
	b.Write(q)
}

// WriteJSON writes res as fio 3.33's --output-format=json: the same keys,
// the same units (bw in KiB/s, runtime in ms, latencies in ns, percentile
// keys "%f"), option values as strings.
func WriteJSON(out io.Writer, res *Result) error { return writeJSON(out, res, false) }

// WriteJSONPlus writes fio's --output-format=json+: the JSON with each
// reported latency histogram's bins ("bins": value in ns → count).
func WriteJSONPlus(out io.Writer, res *Result) error { return writeJSON(out, res, true) }

func writeJSON(out io.Writer, res *Result, plus bool) error {
	es := entries(res)
	var jobs []obj
	for _, e := range es {
		jobs = append(jobs, jsonEntry(e, plus))
	}
	top := obj{
		{"fio version", "fio-3.33"},
		{"timestamp", res.End.Unix()},
		{"timestamp_ms", res.End.UnixMilli()},
		{"time", res.End.Format("Mon Jan _2 15:04:05 2006")},
	}
	if g := optionsObj(res.Spec.Globals); len(res.Spec.Globals) > 0 {
		top = append(top, kv{"global options", g})
	}
	top = append(top, kv{"jobs", jobs})
	if du := res.diskUtil(); len(du) > 0 {
		top = append(top, kv{"disk_util", du})
	}
	var b bytes.Buffer
	top.write(&b, "")
	b.WriteByte('\n')
	_, err := out.Write(b.Bytes())
	return err
}

// optionsObj renders options fio-style: strings, the last value of a key
// wins, bare switches are left out (fio stores no value for them).
func optionsObj(opts []Option) obj {
	var o obj
	idx := map[string]int{}
	for _, op := range opts {
		if op.Bare {
			continue
		}
		key := fioOptionName(op.Key)
		if i, ok := idx[key]; ok {
			o[i].v = op.Value
			continue
		}
		idx[key] = len(o)
		o = append(o, kv{key, op.Value})
	}
	if o == nil {
		o = obj{}
	}
	return o
}

// fioOptionName is the name fio echoes an option under: its own name for
// an alias (timeout is runtime, blockalign is ba). fio's name for
// iodepth_batch_submit is iodepth_batch, the other way round; threads
// it echoes as written.
func fioOptionName(k string) string {
	k = strings.ToLower(k)
	if k == "iodepth_batch_submit" {
		return "iodepth_batch"
	}
	if c, ok := optionAliases[k]; ok && c != "iodepth_batch_submit" && k != "threads" {
		return c
	}
	return k
}

func jsonEntry(e *entry, plus bool) obj {
	var jobRuntime int64
	for _, w := range e.clones {
		jobRuntime += (w.measureEnd - w.measureStart) / 1e6
	}
	o := obj{
		{"jobname", e.name},
		{"groupid", e.groupID},
		{"error", errnoOf(e.err)},
		{"eta", 0},
		{"elapsed", int64(math.Round(e.elapsed.Seconds()))},
		{"job options", optionsObj(e.echoed().Options)},
		{"read", jsonDir(e, DirRead, plus)},
		{"write", jsonDir(e, DirWrite, plus)},
		{"trim", jsonDir(e, -1, plus)},
		{"sync", obj{{"total_ios", e.syncIOs()}, {"lat_ns", latObj(&e.sync, pctsIf(e.job.ClatPercentiles, e.job), plus)}}},
		{"job_runtime", jobRuntime},
		{"usr_cpu", e.usrPct},
		{"sys_cpu", e.sysPct},
		{"ctx", e.ctx},
		{"majf", e.majf},
		{"minf", e.minf},
		{"iodepth_level", distObj(levelLabels[:], e.depth[:])},
		{"iodepth_submit", distObj(batchLabels[:], e.submit[:])},
		{"iodepth_complete", distObj(batchLabels[:], e.complete[:])},
		{"latency_ns", bucketObj(latNsBounds[:], e.latNs[:])},
		{"latency_us", bucketObj(latNsBounds[:], e.latUs[:])},
		{"latency_ms", bucketObj(latMsBounds[:], e.latMs[:])},
		{"latency_depth", e.latencyDepth()},
		{"latency_target", e.job.LatencyTarget.Microseconds()},
		{"latency_percentile", e.job.LatencyPercentile},
		{"latency_window", e.job.LatencyWindow.Microseconds()},
	}
	if e.setupFailed {
		// fio's entry of a job that failed at its start ends before its
		// latency target keys.
		o = o[:len(o)-4]
	}
	if len(e.echoed().Options) == 0 {
		// fio leaves "job options" out of a job that sets none of its own.
		for i := range o {
			if o[i].k == "job options" {
				o = append(o[:i], o[i+1:]...)
				break
			}
		}
	}
	if e.job.Description != "" {
		o = append(o, kv{"desc", e.job.Description})
	}
	if e.job.SS != nil && len(e.clones) > 0 && e.clones[0].ss != nil {
		o = append(o, kv{"steadystate", steadyJSON(e.clones[0].ss)})
	}
	return o
}

func distObj(labels []string, pcts []float64) obj {
	o := make(obj, len(labels))
	for i, l := range labels {
		o[i] = kv{l, pcts[i]}
	}
	return o
}

func bucketObj(bounds []int64, pcts []float64) obj {
	o := make(obj, len(bounds))
	for i, b := range bounds {
		l := strconv.FormatInt(b, 10)
		if b == 1<<62 {
			l = ">=2000"
		}
		o[i] = kv{l, pcts[i]}
	}
	return o
}

// latObj is {min, max, mean, stddev, N[, percentile]}.
func latObj(s *latStat, pcts []float64, plus bool) obj {
	if s == nil || s.n == 0 {
		return obj{{"min", 0}, {"max", 0}, {"mean", 0.0}, {"stddev", 0.0}, {"N", 0}}
	}
	o := obj{{"min", s.min}, {"max", s.max}, {"mean", s.mean}, {"stddev", s.stddev()}, {"N", s.n}}
	if len(pcts) > 0 {
		vals := percentiles(s, pcts)
		p := make(obj, len(vals))
		for i, v := range vals {
			p[i] = kv{strconv.FormatFloat(pcts[i], 'f', 6, 64), v}
		}
		o = append(o, kv{"percentile", p})
		if plus && s.h != nil {
			// json+: the histogram's buckets, as fio's "bins".
			var bins obj
			for _, bar := range s.h.Distribution() {
				if bar.Count > 0 {
					bins = append(bins, kv{strconv.FormatInt(bar.From, 10), bar.Count})
				}
			}
			if bins == nil {
				bins = obj{}
			}
			o = append(o, kv{"bins", bins})
		}
	}
	return o
}

func pctsIf(on bool, j *Job) []float64 {
	if !on {
		return nil
	}
	return jobPercentiles(j)
}

// jsonDir is one direction; d < 0 is the (always empty) trim.
func jsonDir(e *entry, d int, plus bool) obj {
	var ds *dirStats
	var bwBytes, iops float64
	var runtime int64
	if d >= 0 {
		ds = &e.dirs[d]
		bwBytes, iops = e.bwBytes(d), e.iops(d)
		if ds.ios > 0 {
			runtime = e.runtimeMs
		}
	} else {
		empty := newDirStats()
		ds = &empty
	}
	agg := 0.0
	if ds.bw.n > 0 && d >= 0 {
		agg = e.share[d]
	}
	o := obj{
		{"io_bytes", ds.bytes},
		{"io_kbytes", ds.bytes / 1024},
		{"bw_bytes", uint64(bwBytes)},
		{"bw", uint64(bwBytes / 1024)},
		{"iops", iops},
		{"runtime", runtime},
		{"total_ios", ds.ios},
		{"short_ios", 0},
		{"drop_ios", 0},
		{"slat_ns", latObj(&ds.slat, nil, plus)},
		{"clat_ns", latObj(&ds.clat, pctsIf(e.job.ClatPercentiles, e.job), plus)},
		{"lat_ns", latObj(&ds.lat, pctsIf(e.job.LatPercentiles, e.job), plus)},
		{"bw_min", uint64(ds.bw.min)},
		{"bw_max", uint64(ds.bw.max)},
		{"bw_agg", agg},
		{"bw_mean", ds.bw.mean},
		{"bw_dev", ds.bw.stddev()},
		{"bw_samples", ds.bw.n},
		{"iops_min", uint64(ds.iops.min)},
		{"iops_max", uint64(ds.iops.max)},
		{"iops_mean", ds.iops.mean},
		{"iops_stddev", ds.iops.stddev()},
		{"iops_samples", ds.iops.n},
	}
	if d >= 0 {
		if ps := e.reportedPrios(d); ps != nil {
			// fio's "prios", after lat_ns: the clat of each priority used.
			var arr []obj
			for _, p := range ps {
				arr = append(arr, obj{
					{"prioclass", ioprioClass(p.prio)},
					{"prio", ioprioLevel(p.prio)},
					{"clat_ns", latObj(&p.clat, pctsIf(e.job.ClatPercentiles, e.job), plus)},
				})
			}
			i := 12 // after "lat_ns"
			o = append(o[:i+1], append(obj{{"prios", arr}}, o[i+1:]...)...)
		}
	}
	return o
}

// latencyDepth is fio's latency_depth: the depth latency_target's search
// reached (the first clone's, as fio reports a group's first job), or
// iodepth without a target.
func (e *entry) latencyDepth() int {
	if e.job.LatencyTarget > 0 && len(e.clones) > 0 {
		return e.clones[0].lt.qd
	}
	return e.job.IODepth
}

// echoed is the job whose options the entry's "job options" echo: under
// group_reporting fio names the group after its first job but echoes the
// options of its last.
func (e *entry) echoed() *Job {
	if e.optsJob != nil {
		return e.optsJob
	}
	return e.job
}

// syncIOs is fio's sync "total_ios": the fsyncs issued during the run;
// fio counts fdatasyncs (its DDIR_DATASYNC) only in their latency
// series, and end_fsync's sync in neither.
func (e *entry) syncIOs() uint64 {
	if e.job.Fdatasync > 0 && e.job.Fsync == 0 {
		return 0
	}
	return e.sync.n
}
