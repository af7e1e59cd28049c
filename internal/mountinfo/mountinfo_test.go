package mountinfo

import "testing"

func TestParse(t *testing.T) {
	e, ok := Parse(`48 29 0:44 / /tmp/a\040b\134c rw,nosuid,nodev,relatime shared:25 - fuse.flechefs flechefs rw,user_id=0,group_id=0`)
	if !ok || e.Point != `/tmp/a b\c` || e.FSType != "fuse.flechefs" || e.Source != "flechefs" {
		t.Fatalf("%+v %v", e, ok)
	}
	if _, ok := Parse("garbage"); ok {
		t.Fatal("garbage parsed")
	}
	if got := Unescape(`a\04`); got != `a\04` {
		t.Fatalf("short escape: %q", got)
	}
}

func TestFindRoot(t *testing.T) {
	e, ok, err := Find("/")
	if err != nil || !ok || e.FSType == "" {
		t.Fatalf("Find(/) = %+v, %v, %v", e, ok, err)
	}
}
