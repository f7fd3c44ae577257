package bench

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestSteadyStateCriterion(t *testing.T) {
	mk := func(v string, dur int) *steadyRun {
		c, err := parseSteadyState(v)
		if err != nil {
			t.Fatal(err)
		}
		c.Dur = time.Duration(dur) * time.Second
		return newSteadyRun(c)
	}
	// Deviation: 100, 105, 95 has mean 100 and max deviation 5%.
	r := mk("iops:5%", 3)
	if r.add(100, 0) || r.add(105, 0) {
		t.Fatal("attained before the window filled")
	}
	if !r.add(95, 0) || r.maxDev != 5 || r.crit != 5 {
		t.Errorf("iops:5%% on 100,105,95: attained=%v maxDev=%v crit=%v", r.attained, r.maxDev, r.crit)
	}
	r = mk("iops:4.9%", 3)
	r.add(100, 0)
	r.add(105, 0)
	if r.add(95, 0) {
		t.Errorf("iops:4.9%% met by a 5%% deviation")
	}
	// The window rolls: an early outlier leaves it.
	r = mk("bw:1", 3)
	for _, x := range []float64{500, 100, 100} {
		r.add(0, x)
	}
	if r.attained {
		t.Fatal("bw:1 met with 500,100,100")
	}
	if !r.add(0, 100) {
		t.Errorf("bw:1 not met on 100,100,100 after the outlier left (crit %v)", r.crit)
	}
	if got := r.ordered(r.bw); got[0] != 100 || len(got) != 3 {
		t.Errorf("window %v", got)
	}
	// Slope: a rise of 10 per second on a mean of 100 is 10%.
	r = mk("bw_slope:10%", 3)
	r.add(0, 90)
	r.add(0, 100)
	if !r.add(0, 110) || r.slope != 10 {
		t.Errorf("bw_slope:10%% on 90,100,110: attained=%v slope=%v crit=%v", r.attained, r.slope, r.crit)
	}
	r = mk("iops_slope:9%", 3)
	r.add(90, 0)
	r.add(100, 0)
	if r.add(110, 0) {
		t.Error("iops_slope:9% met by a 10% slope")
	}
	for _, bad := range []string{"iops", "lat:1%", "iops:x", "bw:-1"} {
		if _, err := parseSteadyState(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestSteadyStateStopsJob: a null-image job that would run 30 s ends once
// a generous criterion holds over 2 s, and the JSON block says so.
func TestSteadyStateStopsJob(t *testing.T) {
	spec := mustParse(t, "--name=s", "--ioengine=ringblk", "--format=null", "--size=64m", "--rw=randread",
		"--time_based", "--runtime=30s", "--ss=iops_slope:1000%", "--ss_dur=2", "--ss_ramp=0")
	t0 := time.Now()
	res := mustRun(t, spec)
	if el := time.Since(t0); el > 10*time.Second {
		t.Fatalf("ran %v: steady state did not end the job", el)
	}
	w := res.Jobs[0].Clones[0]
	if w.ss == nil || !w.ss.attained {
		t.Fatalf("not attained: %+v", w.ss)
	}
	o := steadyJSON(w.ss)
	if o[0].v != "iops_slope:1000.000000%" || o[1].v != int64(2) || o[2].v != 1 {
		t.Errorf("steadystate block %v", o[:3])
	}
}

// TestSteadyStateJSON: the block writes as fio's (arrays of numbers).
func TestSteadyStateJSON(t *testing.T) {
	c, _ := parseSteadyState("iops:10%")
	c.Dur = 2 * time.Second
	r := newSteadyRun(c)
	r.add(10, 4096)
	var b bytes.Buffer
	obj{{"steadystate", steadyJSON(r)}}.write(&b, "")
	var got struct {
		SS struct {
			SS   string `json:"ss"`
			Data struct {
				IOPS []int64 `json:"iops"`
				BW   []int64 `json:"bw"`
			} `json:"data"`
		} `json:"steadystate"`
	}
	if err := json.Unmarshal([]byte(b.String()), &got); err != nil {
		t.Fatalf("%v in %s", err, b.String())
	}
	if got.SS.SS != "iops:10.000000%" || len(got.SS.Data.IOPS) != 2 || got.SS.Data.IOPS[0] != 10 || got.SS.Data.BW[0] != 4096 {
		t.Errorf("%+v", got)
	}
}
