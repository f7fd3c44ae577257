package nbd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/ringblk/ringblk/internal/nbdproto"
)

// TestConnectionsRespectAdmission: three clients pipelining 200 writes and
// then 200 reads each, against an export whose Context admits four
// requests at a time: every reply comes with the right data, the pool
// never admits more than four and requests did wait for room (the NBD
// server submits through the export's front end, so admission applies).
func TestConnectionsRespectAdmission(t *testing.T) {
	e := newEnv(t, ExportOptions{Name: ""})
	pool := e.g.Pool(e.main)
	e.main.Run(func() { pool.SetMaxRequests(4) })
	const clients, n = 3, 200
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for k := 0; k < clients; k++ {
		cl := dial(t, e.sock, "", true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := uint64(k * n)
			var req []byte
			for i := uint64(0); i < n; i++ {
				req = append(req, reqBytes(nbdproto.CmdWrite, 0, i, (base+i)*4096, 4096)...)
				req = append(req, pattern(4096, byte(base+i))...)
			}
			go cl.c.Write(req)
			for i := 0; i < n; i++ {
				if ch := cl.readChunk(); ch.err != 0 {
					errs <- fmt.Errorf("client %d write reply %d: err %d", k, i, ch.err)
					return
				}
			}
			req = req[:0]
			for i := uint64(0); i < n; i++ {
				req = append(req, reqBytes(nbdproto.CmdRead, nbdproto.CmdFlagDF, i, (base+i)*4096, 4096)...)
			}
			go cl.c.Write(req)
			for i := 0; i < n; i++ {
				ch := cl.readChunk()
				off := binary.BigEndian.Uint64(ch.data)
				if ch.typ != nbdproto.ChunkOffsetData || off != (base+ch.cookie)*4096 || !bytes.Equal(ch.data[8:], pattern(4096, byte(base+ch.cookie))) {
					errs <- fmt.Errorf("client %d read reply %d: cookie %d type %d", k, i, ch.cookie, ch.typ)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var peak int
	var waits int64
	e.main.Run(func() { _, peak, _, waits = pool.AdmissionStats() })
	if peak > 4 || waits == 0 {
		t.Errorf("peak admitted %d (limit 4), %d waits: want the limit reached and kept", peak, waits)
	}
}
