package bench

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// Several files per clone: filename=a:b:c (every clone of the job uses
// those files) or nrfiles=N (each clone its own N files, fio's
// $jobname.$jobnum.$filenum). The files are equal in size (filesize, or
// size shared out among them); together they are the clone's region, so
// the generator, the verifier and every statistic work on one offset
// space and only the engines see files: fileMap turns an offset of the
// region into a file and an offset in it, by file_service_type:
//
//   - roundrobin (fio's default, :N = N I/Os per file before the next):
//     block k of the region is block k/nfiles of file k%nfiles (in turns
//     of N blocks), so a sequential pattern visits the files in turn, each
//     from its start, and a random one every file alike;
//   - sequential: the files one after another, each used up before the
//     next;
//   - random (random patterns only): any file, as the block is random.
//
// fsync=N syncs the file last written (fio syncs the file it wrote);
// end_fsync syncs every file.

func registerFileOptions() {
	for k, v := range map[string]optionSpec{
		"nrfiles": {help: "files per clone ($jobname.$jobnum.$filenum, each filesize or size/nrfiles bytes)", set: intSetter(1, 1<<16, func(j *Job, n int) {
			j.NrFiles = n
		})},
		"file_service_type": {help: "how I/O moves between a clone's files: roundrobin[:N] (default), sequential, random", set: func(j *Job, v string) error {
			kind, nr, hasNr := strings.Cut(v, ":")
			switch kind {
			case "roundrobin", "sequential", "random":
			default:
				return errors.New("want roundrobin, sequential or random (with :N for roundrobin)")
			}
			j.FileService, j.FileServiceNr = kind, 1
			if hasNr {
				n, err := strconv.Atoi(nr)
				if err != nil || n < 1 {
					return fmt.Errorf("%q: want a count of I/Os per file after the colon", v)
				}
				j.FileServiceNr = n
			}
			return nil
		}},
	} {
		optionTable[k] = v
		delete(fioOnlyOptions, k)
	}
	optionAliases["nr_files"] = "nrfiles"
}

// multiFile reports whether the job's clones use several files.
func (j *Job) multiFile() bool { return len(j.Files) > 1 }

// setupFiles checks a several-file job and sets its files' size and
// region; nothing for a one-file job.
func (j *Job) setupFiles(bad func(Loc, string, ...any) error, at func(string) Loc) error {
	n := len(j.Files)
	if n == 0 && j.NrFiles > 1 && j.Filename != "" {
		// fio: nrfiles with a single filename= uses that one file.
		j.NrFiles = 1
	}
	if n == 0 && j.NrFiles <= 1 {
		if j.FileService == "random" && !j.RW.Random() {
			// one file: the service type has nothing to choose
			return nil
		}
		return nil
	}
	where := at("nrfiles")
	if n > 1 {
		where = at("filename")
	}
	if j.IOEngine == "ringblk" && j.Format == "null" {
		return bad(where, "several files with format=null: the null image is one node")
	}
	if j.Offset > 0 || j.OffsetIncrement > 0 {
		return bad(where, "several files with offset= or offset_increment= are not implemented")
	}
	if j.ZoneMode != "" && j.ZoneMode != "none" {
		return bad(where, "several files with zonemode= are not implemented")
	}
	bs := j.MinBS(DirRead)
	if j.MaxBS(DirRead) != bs || j.MinBS(DirWrite) != bs || j.MaxBS(DirWrite) != bs {
		return bad(where, "several files need one block size (bsrange, bssplit or different read and write sizes could straddle two files)")
	}
	if j.FileService == "random" && !j.RW.Random() {
		return bad(at("file_service_type"), "file_service_type=random with a sequential pattern (rw=%s) is not implemented", j.RW)
	}
	if n == 0 {
		n = j.NrFiles
		j.perCloneFile = true
		j.Files = make([]string, n)
		for f := range j.Files {
			j.Files[f] = j.cloneFileName(0, f)
			if j.Directory != "" {
				j.Files[f] = filepath.Join(j.Directory, j.Files[f])
			}
		}
		j.Filename = j.Files[0]
	}
	fs := j.FileSize
	if fs == 0 {
		if j.Size == 0 {
			return bad(where, "several files need size= or filesize=")
		}
		fs = j.Size / int64(n)
	}
	fs -= fs % int64(bs)
	if fs < int64(bs) {
		return bad(where, "each of the %d files would be smaller than one block (%d bytes)", n, bs)
	}
	total := fs * int64(n)
	if j.IOSize == 0 {
		// fio: size is the job's I/O, capped at what the files hold.
		j.IOSize = total
		if j.Size > 0 {
			j.IOSize = min(j.Size, total)
		}
	}
	j.fileSize, j.Size, j.FileSize = fs, total, 0
	return nil
}

// fileMap places a region offset in a clone's files (see the top of the
// file); zero value: one file.
type fileMap struct {
	n      int64 // files
	size   int64 // bytes each
	bs     int64
	stripe int64 // blocks per turn (roundrobin:N)
	seq    bool  // file_service_type=sequential
}

func newFileMap(j *Job) fileMap {
	if !j.multiFile() {
		return fileMap{}
	}
	m := fileMap{n: int64(len(j.Files)), size: j.fileSize, bs: int64(j.MinBS(DirRead)), stripe: int64(max(j.FileServiceNr, 1)), seq: j.FileService == "sequential"}
	if (m.size/m.bs)%m.stripe != 0 {
		m.stripe = 1 // turns must tile each file
	}
	return m
}

// locate returns the file of region offset v and the offset in it.
func (m *fileMap) locate(v int64) (int, int64) {
	if m.n <= 1 {
		return 0, v
	}
	if m.seq {
		return int(v / m.size), v % m.size
	}
	k, r := v/m.bs, v%m.bs
	turn := k / m.stripe
	return int(turn % m.n), ((turn/m.n)*m.stripe+k%m.stripe)*m.bs + r
}

// prepareFiles lays out each file of a several-file clone (as a one-file
// job of the file's size) and returns the clone's region.
func prepareFiles(j *Job, log io.Writer) (off, n int64, err error) {
	fmt.Fprintf(log, "%s: Laying out IO files (%d files / total %dMiB)\n", j.Name, len(j.Files), j.Size>>20)
	for _, f := range j.Files {
		one := *j
		one.Filename, one.Files, one.Size, one.NumJobs, one.cloneJobs = f, nil, j.fileSize, 1, nil
		if _, _, err := prepareFile(&one, io.Discard); err != nil {
			return 0, 0, err
		}
	}
	return 0, j.Size, nil
}

// fileJobs are the one-file jobs of a clone's files (the ringblk engine
// opens an image per file); the job itself when it has one file.
func (j *Job) fileJobs() []*Job {
	if !j.multiFile() {
		return []*Job{j}
	}
	out := make([]*Job, len(j.Files))
	for i, f := range j.Files {
		one := *j
		one.Filename, one.Files, one.Size, one.cloneJobs = f, nil, j.fileSize, nil
		out[i] = &one
	}
	return out
}
