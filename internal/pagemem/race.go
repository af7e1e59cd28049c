//go:build race

package pagemem

// raceEnabled: the race detector keeps shadow memory for every heap byte
// allocated, so AdviseHeap's range would cost its size in shadow memory
// (170 MiB and 1.5 s for 296 MiB). A race build is a test build: it
// advises nothing.
const raceEnabled = true
