//go:build !race

package pagemem

const raceEnabled = false
