package job

// EventType names a job event as QMP does.
type EventType uint8

const (
	EventStatusChange EventType = iota + 1 // JOB_STATUS_CHANGE
	EventReady                             // BLOCK_JOB_READY
	EventCompleted                         // BLOCK_JOB_COMPLETED (also after a failure: Error is set)
	EventCancelled                         // BLOCK_JOB_CANCELLED
	EventError                             // BLOCK_JOB_ERROR
	EventPending                           // BLOCK_JOB_PENDING (ManualFinalize only, as in QEMU)
)

var eventNames = [...]string{"", "JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR", "BLOCK_JOB_PENDING"}

func (t EventType) String() string {
	if int(t) < len(eventNames) && t > 0 {
		return eventNames[t]
	}
	return "EVENT?"
}

// Event is one job event. Status is set for JOB_STATUS_CHANGE; Type
// (the job's), Len, Offset and Speed for the BLOCK_JOB_* events; Error
// for a failed completion or an I/O error; Operation and Action for
// BLOCK_JOB_ERROR.
type Event struct {
	Type      EventType
	ID        string
	Status    Status
	JobType   string
	Len       int64
	Offset    int64
	Speed     int64
	Error     string
	Operation string
	Action    Action
}

func (j *Job) blockEvent(t EventType) Event {
	return Event{Type: t, ID: j.opts.ID, JobType: j.drv.Type(), Len: j.total.Load(), Offset: j.cur.Load(), Speed: j.speed.Load()}
}

// flushEvents delivers the queued events in order. The manager's callback
// runs on whatever goroutine changed the job's state (a Context, the main
// Context, a caller of a verb), one event at a time per job: it must not
// block and must not call the job's verbs synchronously.
func (j *Job) flushEvents() {
	j.evMu.Lock()
	defer j.evMu.Unlock()
	for {
		j.mu.Lock()
		evs := j.pending
		j.pending = nil
		j.mu.Unlock()
		if len(evs) == 0 {
			return
		}
		if j.m.events != nil {
			for _, ev := range evs {
				j.m.events(ev)
			}
		}
	}
}
