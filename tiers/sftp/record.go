package sftp

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/tiers"
)

// The record protocol (doc.go, "Records and concurrent writers"): a
// record is written only by the writer whose rename placed the data file
// (writeSum) and by an adopter that hashed the data file it found without
// one (Adopt). Neither ever removes a record that is valid for the data
// file beside it: a record is removed only after the data file was hashed
// and found to be other bytes than it says, and only if it is still the
// record that was read (removeSumIf).

// maxRecordTries bounds writeSum's loop: each turn is the answer to
// another writer's or a deleter's step, which does not repeat forever.
const maxRecordTries = 4

// at runs the test hook for a protocol step, with the watchdog paused
// (the hook may hold the step as long as a slow link would).
func (t *Tier) at(w *watch, step string, k digest.Key) {
	if t.hook == nil {
		return
	}
	if w != nil {
		w.pause()
		defer w.resume()
	}
	t.hook(step, k)
}

// writeSum records s, the value this Put has just renamed to <root>/<key>.
// It makes the record with one SYMLINK; when a record is already there it
// decides by what that record and the data file hold:
//
//   - the same sum and size: written by an adopter that hashed our data,
//     or by our own earlier attempt: done;
//   - gone since the SYMLINK failed: link again;
//   - another record (or a garbled one): the data file is hashed. If it
//     holds other bytes than ours, our data was removed after our rename
//     and another writer's took its place: the record is not ours to
//     touch and the Put fails with ErrExist (the caller learns the remote
//     value as for a lost rename). If it holds ours, the record is stale
//     (its data was removed by hand, or an adopter hashed a file that was
//     replaced before it linked): it is removed if it is still the one
//     read, ours is linked, and the data is hashed once more: data that
//     changed meanwhile has our record removed again and fails with
//     ErrExist.
func (t *Tier) writeSum(c *conn, w *watch, k digest.Key, s sumFile) error {
	p, target := t.sumPath(k), s.link()
	replaced := false
	for range maxRecordTries {
		t.at(w, "record", k)
		err := c.sftp.Symlink(target, p)
		if err == nil {
			if replaced {
				return t.checkOurs(c, w, k, s)
			}
			return nil
		}
		if isConnErr(err) {
			return err
		}
		if errors.Is(err, os.ErrNotExist) {
			// Someone removed .flechefs since we connected.
			if err := t.mkdirs(c); err != nil {
				return err
			}
			continue
		}
		// SFTP version 3 has no "exists" code: read what is there.
		cur := t.readSum(c, k)
		switch {
		case cur.err != nil && !cur.found:
			return cur.err
		case !cur.found:
			continue
		case cur.err == nil && cur.s.sum == s.sum && cur.s.size == s.size:
			return nil
		}
		t.at(w, "record-other", k)
		h, err := t.hashData(c, k)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Our data was removed after our rename (an explicit
			// delete): the key is not ours.
			return tiers.ErrExist
		case err != nil:
			return err
		case h.sum != s.sum || h.size != s.size:
			t.log.Warn("sftp entry was replaced between its upload's rename and its record; keeping the other writer's",
				"tier", t.opt.Name, "key", k)
			return tiers.ErrExist
		}
		t.at(w, "record-stale", k)
		t.log.Warn("replacing a stale sum record: the data file holds the value just uploaded",
			"tier", t.opt.Name, "key", k, "record", clip(cur.raw))
		if err := t.removeSumIf(c, k, cur.raw); err != nil {
			return err
		}
		replaced = true
	}
	return fmt.Errorf("sum record of %s keeps changing; giving up", k)
}

// checkOurs hashes the data file after writeSum replaced a stale record:
// if it no longer holds s (removed and put again by another writer while
// we decided), our record is removed (if it is still ours) and the Put
// fails with ErrExist.
func (t *Tier) checkOurs(c *conn, w *watch, k digest.Key, s sumFile) error {
	t.at(w, "record-check", k)
	h, err := t.hashData(c, k)
	if err == nil && h.sum == s.sum && h.size == s.size {
		return nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if rerr := t.removeSumIf(c, k, s.link()); rerr != nil {
		return rerr
	}
	return tiers.ErrExist
}

// removeSumIf removes k's record if it still reads raw. Between the read
// and the remove another party could change it only by removing it first
// (no party replaces a record in place), which makes the remove fail with
// "not found" or remove a record written in that one round trip: see
// doc.go for why neither leaves a wrong record.
func (t *Tier) removeSumIf(c *conn, k digest.Key, raw string) error {
	cur := t.readSum(c, k)
	if cur.err != nil && !cur.found {
		return cur.err
	}
	if !cur.found || cur.raw != raw {
		return nil
	}
	if err := c.sftp.Remove(t.sumPath(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// hashed is what hashData read of a data file.
type hashed struct {
	sum   digest.Sum
	size  int64
	mtime int64 // seconds, as SFTP version 3 reports it
}

// hashData reads <root>/<key> whole and hashes it. A missing file is
// os.ErrNotExist.
func (t *Tier) hashData(c *conn, k digest.Key) (hashed, error) {
	f, err := c.sftp.Open(t.dataPath(k))
	if err != nil {
		return hashed{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return hashed{}, err
	}
	if !fi.Mode().IsRegular() {
		return hashed{}, fmt.Errorf("%w: %s is not a regular file (%v)", tiers.ErrCorrupt, t.dataPath(k), fi.Mode().Type())
	}
	h := digest.NewHasher()
	n, err := f.WriteTo(h)
	if err != nil {
		return hashed{}, err
	}
	return hashed{sum: h.Sum(), size: n, mtime: fi.ModTime().Unix()}, nil
}

// Adopt writes the record of a data file found without one, whose bytes
// the caller read whole and hashed: info's Sum and Size, read from a file
// whose modification time (seconds) was mtime. It is adopt on a
// connection of its own; a Reader of such a file adopts through its own
// connection (reader.Adopt, tiers.Adopter).
func (t *Tier) Adopt(ctx context.Context, k digest.Key, info tiers.Info, mtime int64) error {
	if t.opt.ReadOnly {
		return t.wrap("adopt", k, tiers.ErrReadOnly)
	}
	c, w, err := t.begin(ctx, k)
	if err != nil {
		return t.wrap("adopt", k, err)
	}
	defer w.stop()
	s := sumFile{sum: info.Sum, size: info.Size, created: recordedCreated(info.Created)}
	return t.wrap("adopt", k, t.adopt(c, w, k, s, mtime))
}

// adopt is the one way an adopter writes a record. The record goes in
// with one SYMLINK, only where there is none: a record already there is
// left alone (ErrExist; nil when it says the same sum and size). After
// linking, the data file is looked at again: if its size or modification
// time changed (it was removed and put again while the caller hashed it),
// the record is removed if it is still the one written, and adopt fails
// with ErrExist. Nothing else is ever removed.
func (t *Tier) adopt(c *conn, w *watch, k digest.Key, s sumFile, mtime int64) error {
	t.at(w, "adopt", k)
	p, target := t.sumPath(k), s.link()
	err := c.sftp.Symlink(target, p)
	if errors.Is(err, os.ErrNotExist) {
		if err = t.mkdirs(c); err == nil {
			err = c.sftp.Symlink(target, p)
		}
	}
	if err != nil {
		if isConnErr(err) {
			return t.failure(c, err)
		}
		cur := t.readSum(c, k)
		switch {
		case cur.err != nil:
			return t.failure(c, cur.err)
		case !cur.found:
			return t.failure(c, err)
		case cur.s.sum == s.sum && cur.s.size == s.size:
			return nil // another adopter, or the writer's late record
		}
		return fmt.Errorf("%w: a sum record appeared while the file was read and says sha256 %s, %d bytes; read %s, %d bytes",
			tiers.ErrExist, cur.s.sum, cur.s.size, s.sum, s.size)
	}
	t.at(w, "adopt-check", k)
	fi, err := c.sftp.Stat(t.dataPath(k))
	if err == nil && fi.Size() == s.size && fi.ModTime().Unix() == mtime {
		return nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return t.failure(c, err)
	}
	if rerr := t.removeSumIf(c, k, target); rerr != nil {
		return t.failure(c, rerr)
	}
	return fmt.Errorf("%w: the data file changed while its record was written", tiers.ErrExist)
}
