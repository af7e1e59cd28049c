package integration

import (
	"bytes"
	"github.com/flechefs/flechefs/internal/mounttest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// An unprivileged user mounts through fusermount3 (setuid root), uses the
// mount, and unmounts with flechefs umount.
func TestMountAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs as root, to become another user")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal("setpriv (util-linux) is needed")
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Fatal("fusermount3 is needed (apt-get install fuse3)")
	}
	// Debian makes /dev/fuse 0666; some containers make it 0600. Open it
	// to users for the test, as Debian does, and put it back.
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode&0o006 != 0o006 {
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod("/dev/fuse", mode) })
	}
	const uid = 65534 // nobody
	home := filepath.Join(t.TempDir(), "home")
	mnt := filepath.Join(home, "mnt")
	for _, d := range []string{home, mnt} {
		os.MkdirAll(d, 0o755)
		os.Chown(d, uid, uid)
	}
	// The binary and the temp dirs above it must be reachable by the user.
	for d := filepath.Dir(home); d != "/" && strings.HasPrefix(d, mounttest.Base()); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	bin := mounttest.Bin(t)
	os.Chmod(bin, 0o755)
	asUser := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", name}, args...)...)
		cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin:/usr/sbin:/sbin", "XDG_CACHE_HOME=" + home + "/cache", "XDG_CONFIG_HOME=" + home + "/config"}
		return cmd
	}
	daemon := asUser(bin, "mount", mnt)
	var log bytes.Buffer
	var logMu sync.Mutex
	daemon.Stderr = writerFunc(func(b []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return log.Write(b) })
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { daemon.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			daemon.Process.Kill()
			<-done
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !isMounted(mnt) {
		select {
		case <-done:
			t.Fatalf("mount as user exited: %v\n%s", daemon.ProcessState, logString(&logMu, &log))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 20s:\n%s", logString(&logMu, &log))
		}
		time.Sleep(20 * time.Millisecond)
	}
	k := key("as-user")
	out, err := asUser("sh", "-c", `echo "hello from nobody" > "$0" && cat "$0"`, filepath.Join(mnt, k)).CombinedOutput()
	if err != nil || string(out) != "hello from nobody\n" {
		t.Fatalf("use of the mount as the user: %v %q\n%s", err, out, logString(&logMu, &log))
	}
	var sst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(mnt, k), &sst); err == nil {
		t.Fatal("root could use a mount private to another user (no allow_other)")
	}
	if out, err := asUser(bin, "umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("flechefs umount as the user: %v %s", err, out)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		ps, _ := exec.Command("ps", "-ef", "--forest").CombinedOutput()
		t.Fatalf("daemon did not exit after umount; mounted=%v\n%s\n%s", isMounted(mnt), logString(&logMu, &log), ps)
	}
	if !daemon.ProcessState.Success() || isMounted(mnt) {
		t.Fatalf("after umount: %v mounted=%v\n%s", daemon.ProcessState, isMounted(mnt), logString(&logMu, &log))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func logString(mu *sync.Mutex, b *bytes.Buffer) string {
	mu.Lock()
	defer mu.Unlock()
	return b.String()
}
