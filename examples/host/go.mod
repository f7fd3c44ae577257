module example.com/ringblkhost

go 1.26.0

require (
	github.com/ringblk/ringblk v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.49.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/dgraph-io/ristretto/v2 v2.4.2 // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/klauspost/cpuid/v2 v2.4.2 // indirect
	golang.org/x/crypto v0.58.0 // indirect
)

tool github.com/ringblk/ringblk/plugin

replace github.com/ringblk/ringblk => ../..
