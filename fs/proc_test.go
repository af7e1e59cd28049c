package fs

import (
	"os/exec"
	"testing"
)

// TestStatFilesForgetDeadTasks: a kept /proc/<pid>/stat descriptor of a task
// that has exited is not read as if it were alive, and the cache stays
// bounded.
func TestStatFilesForgetDeadTasks(t *testing.T) {
	s := &statFiles{fds: map[uint32]int{}}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	var buf [1024]byte
	if _, ok := s.read(pid, buf[:]); !ok {
		t.Fatal("cannot read the stat file of a live process")
	}
	if _, ok := s.fds[pid]; !ok {
		t.Fatal("descriptor not kept")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if n, ok := s.read(pid, buf[:]); ok {
		t.Fatalf("read %q from the stat file of a reaped process", buf[:n])
	}
	if _, ok := s.fds[pid]; ok {
		t.Fatal("descriptor of a reaped process kept")
	}

	var cmds []*exec.Cmd
	for range maxStatFiles + 4 {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
		if _, ok := s.read(uint32(c.Process.Pid), buf[:]); !ok {
			t.Fatal("cannot read the stat file of a live process")
		}
	}
	for _, c := range cmds {
		c.Process.Kill()
		c.Wait()
	}
	if len(s.fds) != maxStatFiles || len(s.order) != maxStatFiles {
		t.Fatalf("%d descriptors, %d in order, want %d", len(s.fds), len(s.order), maxStatFiles)
	}
}
