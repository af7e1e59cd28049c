package tiers

import (
	"testing"
	"time"
)

// TestUploadHold: uploads wait while publishes keep coming, until they
// pause for UploadQuiet, and never longer than UploadMaxHold after the
// burst began.
func TestUploadHold(t *testing.T) {
	pol := DefaultPolicy()
	s := &activity{pol: &pol}
	uploadQuiet, uploadMaxHold := pol.UploadQuiet, pol.UploadMaxHold
	t0 := time.Unix(1000, 0)
	if d := s.publishHold(t0); d != 0 {
		t.Fatalf("hold %v with no publish", d)
	}
	s.published(t0)
	if d := s.publishHold(t0.Add(5 * time.Millisecond)); d != uploadQuiet-5*time.Millisecond {
		t.Fatalf("hold %v 5ms after a lone publish, want %v", d, uploadQuiet-5*time.Millisecond)
	}
	if d := s.publishHold(t0.Add(uploadQuiet)); d != 0 {
		t.Fatalf("hold %v once quiet", d)
	}
	// A burst: a publish every millisecond for 3 s.
	var now time.Time
	for i := range 3000 {
		now = t0.Add(time.Minute + time.Duration(i)*time.Millisecond)
		s.published(now)
		d := s.publishHold(now)
		if end := t0.Add(time.Minute + uploadMaxHold); d > 0 && now.Add(d).After(end) {
			t.Fatalf("at %v into the burst: hold %v goes past uploadMaxHold", now.Sub(t0.Add(time.Minute)), d)
		}
		if i > int(uploadMaxHold/time.Millisecond) && d != 0 {
			t.Fatalf("at %v into the burst: hold %v after uploadMaxHold", now.Sub(t0.Add(time.Minute)), d)
		}
	}
}

// TestPersistHold: persisters hold entries during a burst like uploads, but
// not for a lone publish, and not past PersistHoldBytes.
func TestPersistHold(t *testing.T) {
	s := &Stack{pol: DefaultPolicy()}
	s.act.pol = &s.pol
	s.publisher.s = s
	uploadQuiet := s.pol.UploadQuiet
	t0 := time.Unix(1000, 0)
	s.act.published(t0)
	if d := s.publisher.persistHold(t0.Add(time.Millisecond)); d != 0 {
		t.Fatalf("hold %v after a lone publish", d)
	}
	s.act.published(t0.Add(time.Millisecond))
	if d := s.publisher.persistHold(t0.Add(2 * time.Millisecond)); d != uploadQuiet-time.Millisecond {
		t.Fatalf("hold %v 1ms after the second publish of a burst, want %v", d, uploadQuiet-time.Millisecond)
	}
	s.publisher.heldBytes.Store(s.pol.PersistHoldBytes)
	if d := s.publisher.persistHold(t0.Add(2 * time.Millisecond)); d != 0 {
		t.Fatalf("hold %v with persistHoldBytes held", d)
	}
}

// TestActivityIdle: idleFor counts from the last use.
func TestActivityIdle(t *testing.T) {
	pol := DefaultPolicy()
	a := &activity{pol: &pol}
	a.used()
	used := time.Now()
	if d := a.idleFor(used.Add(time.Hour)); d < time.Hour || d > time.Hour+time.Minute {
		t.Fatalf("an hour after a use: idle %v", d)
	}
	a.used()
	if d := a.idleFor(used.Add(time.Hour)); d > time.Hour {
		t.Fatalf("after a second use: idle %v, want less than before", d)
	}
}
