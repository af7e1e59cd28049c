package main

import (
	"fmt"
	"strings"
	"time"
)

// mainPhase runs every scenario against every client, repeat after
// repeat, the clients interleaved so that a noisy moment hits them all.
//
// Per client and repeat:
//
//	mount with empty local caches → cold read → settle → warm read → unmount
//	mount again (persistent caches kept) → stat existing, stat missing →
//	remount read → settle → write small, write large → unmount
func (b *bench) mainPhase() error {
	want := map[string]bool{}
	for _, c := range strings.Split(b.opt.clients, ",") {
		want[strings.TrimSpace(c)] = true
	}
	var clients []client
	if want["flechefs"] {
		clients = append(clients, b.newFlechefs("flechefs"))
	}
	if want["sshfs"] {
		clients = append(clients, b.newSSHFS("sshfs"))
	}
	if want["rclone"] {
		clients = append(clients, b.newRclone("rclone"))
	}
	if want["memfs"] {
		clients = append(clients, b.newMemfs())
	}
	if want["native"] {
		clients = append(clients, &nativeClient{b: b})
	}
	for _, c := range clients {
		if d, ok := c.(interface{ kill() }); ok {
			b.defer_(d.kill)
		}
	}
	for r := range b.opt.repeats {
		for _, c := range clients {
			if d := quiesce(); d > 4*time.Second {
				b.logf("repeat %d: the machine was still busy after %v; measuring %s anyway", r+1, d.Round(time.Millisecond), c.name())
			}
			b.probeHost(c.name())
			t, sm := time.Now(), startSteal()
			if err := b.oneClient(c, r); err != nil {
				c.stop()
				return err
			}
			steal := b.noteSteal(c.name(), "machine.steal", sm)
			b.logf("repeat %d: %s done in %v (steal %s)", r+1, c.name(), time.Since(t).Round(time.Millisecond), steal)
		}
		if want["sftp"] {
			quiesce()
			t, sm := time.Now(), startSteal()
			if err := b.sftpAll(); err != nil {
				return err
			}
			steal := b.noteSteal("sftp", "machine.steal", sm)
			b.logf("repeat %d: sftp done in %v (steal %s)", r+1, time.Since(t).Round(time.Millisecond), steal)
		}
	}
	return nil
}

// noteSteal records, as the client's metric (machine.steal, or the
// phase's own), the share of CPU time the hypervisor took while the
// client was measured, and returns it for the log.
func (b *bench) noteSteal(client, metric string, sm stealMeter) string {
	p := sm.Percent()
	if p < 0 {
		return "unknown"
	}
	b.res.add(client, metric, "%", p)
	return fmt.Sprintf("%.0f%%", p)
}

func (b *bench) oneClient(c client, repeat int) error {
	_, native := c.(*nativeClient)
	_, memfs := c.(*memfsClient)
	remote := !native && !memfs

	// Cold: the client's caches are empty (fresh mount, persistent cache
	// removed); the server's page cache holds the files, so this measures
	// the client and the protocol, not the server's disk. native reads
	// from the disk (its page cache is dropped for the files first).
	if native {
		if err := dropFileCache(b.ds.remote, append(append([]string{b.ds.large}, b.ds.medium...), b.ds.small...)); err != nil {
			return err
		}
	}
	if err := c.start(true); err != nil {
		return err
	}
	if err := connect(c); err != nil {
		return err
	}
	if b.want("cold") {
		if err := b.readAll(c, "cold"); err != nil {
			return err
		}
		c.settle()
	}
	if b.want("warm") {
		if err := b.readAll(c, "warm"); err != nil {
			return err
		}
	}
	if repeat == 0 && b.want("cold") {
		if err := b.verify(c); err != nil {
			return err
		}
	}
	if err := c.stop(); err != nil {
		return err
	}

	// Remount: a restart of the daemon; the persistent local tier (bbolt
	// for flechefs, the VFS cache directory for rclone) is kept.
	if err := c.start(false); err != nil {
		return err
	}
	if b.want("stat") {
		if err := b.statAll(c); err != nil {
			return err
		}
	}
	if !native && b.want("remount") {
		if err := b.readAll(c, "remount"); err != nil {
			return err
		}
		c.settle()
	}
	if b.want("write") {
		if err := b.writeAll(c, remote); err != nil {
			return err
		}
	}
	if err := c.stop(); err != nil {
		return fmt.Errorf("%s: %w", c.name(), err)
	}
	return nil
}

// want reports whether scenario s of the main phase is to run (-scenarios).
func (b *bench) want(s string) bool {
	for _, w := range strings.Split(b.opt.scenarios, ",") {
		if strings.TrimSpace(w) == s {
			return true
		}
	}
	return false
}
