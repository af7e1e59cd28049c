// Package faults proves that flechefs never loses or corrupts a result:
// daemon crashes, a remote that goes away, misbehaves or sits behind a slow
// lossy link (crash_test.go, remote_test.go, netem_test.go), and local
// faults, bad input and concurrency (local_test.go, input_test.go,
// stress_test.go). Every test drives the built binary on real FUSE mounts
// through internal/mounttest, with a real OpenSSH sshd (internal/sshdtest).
//
// The long suites are skipped under -short only; `make test` runs them.
package faults

import (
	"testing"

	"github.com/flechefs/flechefs/internal/mounttest"
)

func TestMain(m *testing.M) { mounttest.Main(m) }
