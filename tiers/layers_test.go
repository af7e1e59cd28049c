package tiers

import (
	"slices"
	"testing"
)

// TestLayersQueries: local skips the remotes, writableLocal also the
// read-only tiers, writableRemote yields the remotes that are not
// read-only, all in order, and all stop when the loop breaks.
func TestLayersQueries(t *testing.T) {
	ram := &layer{Layer: Layer{}, name: "ram"}
	ro := &layer{Layer: Layer{ReadOnly: true}, name: "ro"}
	bolt := &layer{Layer: Layer{}, name: "bolt"}
	sftp := &layer{Layer: Layer{Remote: true}, name: "sftp"}
	mirror := &layer{Layer: Layer{Remote: true, ReadOnly: true}, name: "mirror"}
	s3 := &layer{Layer: Layer{Remote: true}, name: "s3"}
	ls := layers{ram, ro, bolt, sftp, mirror, s3}
	names := func(seq func(func(*layer) bool)) []string {
		var out []string
		for l := range seq {
			out = append(out, l.name)
		}
		return out
	}
	if got := names(ls.local()); !slices.Equal(got, []string{"ram", "ro", "bolt"}) {
		t.Errorf("local: %v", got)
	}
	if got := names(ls.writableLocal()); !slices.Equal(got, []string{"ram", "bolt"}) {
		t.Errorf("writableLocal: %v", got)
	}
	if got := names(ls[:1].writableLocal()); !slices.Equal(got, []string{"ram"}) {
		t.Errorf("writableLocal of the first: %v", got)
	}
	if got := names(ls.writableRemote()); !slices.Equal(got, []string{"sftp", "s3"}) {
		t.Errorf("writableRemote: %v", got)
	}
	for l := range ls.writableLocal() {
		if l != ram {
			t.Fatalf("first: %s", l.name)
		}
		break // the iterator must not yield again
	}
	for l := range ls.writableRemote() {
		if l != sftp {
			t.Fatalf("first remote: %s", l.name)
		}
		break
	}
}
