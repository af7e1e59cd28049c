// Package memory is the RAM tier: values in memory, bounded by bytes, least
// recently used evicted first, with an admission limit so one huge value does
// not flush everything else.
package memory

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/flechefs/flechefs/digest"
	"github.com/flechefs/flechefs/internal/pagemem"
	"github.com/flechefs/flechefs/tiers"
)

// Options configure a RAM tier.
type Options struct {
	Name  string // default "ram"
	Limit int64  // bytes of values held at most; must be > 0
	// MaxEntry is the largest value admitted (default Limit/4): a larger
	// value is refused with ErrNoSpace rather than evicting most of the tier.
	MaxEntry int64
	ReadOnly bool
}

// Tier is a RAM tier. Its byte count never exceeds Limit.
type Tier struct {
	name     string
	limit    int64
	maxEntry int64
	readOnly bool

	mu        sync.Mutex
	entries   map[digest.Key]*list.Element // of *entry
	lru       *list.List                   // front = most recently used
	bytes     int64
	evictions int64
	closed    bool
}

type entry struct {
	info tiers.Info
	data []byte // immutable once stored; readers keep a reference
}

var (
	_ tiers.Tier          = (*Tier)(nil)
	_ tiers.UsageReporter = (*Tier)(nil)
	_ tiers.BytesPutter   = (*Tier)(nil)
)

// New returns an empty RAM tier.
func New(opt Options) (*Tier, error) {
	if opt.Limit <= 0 {
		return nil, fmt.Errorf("memory tier: limit must be positive, got %d", opt.Limit)
	}
	if opt.Name == "" {
		opt.Name = "ram"
	}
	if opt.MaxEntry <= 0 || opt.MaxEntry > opt.Limit {
		opt.MaxEntry = max(opt.Limit/4, 1)
	}
	return &Tier{
		name: opt.Name, limit: opt.Limit, maxEntry: opt.MaxEntry, readOnly: opt.ReadOnly,
		entries: map[digest.Key]*list.Element{}, lru: list.New(),
	}, nil
}

func (t *Tier) Name() string { return t.name }

func (t *Tier) get(k digest.Key, touch bool) (*entry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, tiers.ErrClosed
	}
	el, ok := t.entries[k]
	if !ok {
		return nil, tiers.ErrNotFound
	}
	if touch {
		t.lru.MoveToFront(el)
	}
	return el.Value.(*entry), nil
}

func (t *Tier) Stat(ctx context.Context, k digest.Key) (tiers.Info, error) {
	e, err := t.get(k, false)
	if err != nil {
		return tiers.Info{}, tiers.Wrap(t.name, "stat", k, err)
	}
	return e.info, nil
}

func (t *Tier) Open(ctx context.Context, k digest.Key) (tiers.Reader, error) {
	e, err := t.get(k, true)
	if err != nil {
		return nil, tiers.Wrap(t.name, "open", k, err)
	}
	return &reader{e: e}, nil
}

func (t *Tier) Put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	info, err := t.put(ctx, k, r, m)
	return info, tiers.Wrap(t.name, "put", k, err)
}

func (t *Tier) put(ctx context.Context, k digest.Key, r io.Reader, m tiers.Meta) (tiers.Info, error) {
	if t.readOnly {
		return tiers.Info{}, tiers.ErrReadOnly
	}
	if m.Size > t.maxEntry {
		return tiers.Info{}, fmt.Errorf("%w: %d bytes is over the admission limit of %d", tiers.ErrNoSpace, m.Size, t.maxEntry)
	}
	if _, err := t.get(k, false); err == nil {
		return tiers.Info{}, tiers.ErrExist
	}
	h := tiers.NewSummer(m)
	var data []byte
	var n int64
	if m.Size >= 0 {
		// Announced: one allocation, one read, and one more byte to see
		// a longer value.
		data = pagemem.Bytes(int(m.Size + 1))
		k, err := io.ReadFull(r, data)
		switch {
		case err == nil:
			return tiers.Info{}, fmt.Errorf("%w: more than the %d bytes announced", tiers.ErrCorrupt, m.Size)
		case err != io.EOF && err != io.ErrUnexpectedEOF:
			return tiers.Info{}, err
		}
		n, data = int64(k), data[:k:k]
		h.Write(data)
	} else {
		var buf bytes.Buffer
		// Read one byte more than admitted, to tell "too large" from "fits".
		var err error
		n, err = io.Copy(io.MultiWriter(&buf, h), io.LimitReader(r, t.maxEntry+1))
		if err != nil {
			return tiers.Info{}, err
		}
		data = buf.Bytes()
	}
	if n > t.maxEntry {
		return tiers.Info{}, fmt.Errorf("%w: value is over the admission limit of %d bytes", tiers.ErrNoSpace, t.maxEntry)
	}
	if m.Size >= 0 && n != m.Size {
		return tiers.Info{}, fmt.Errorf("%w: got %d bytes, announced %d", tiers.ErrCorrupt, n, m.Size)
	}
	sum := h.Sum()
	if !m.Sum.IsZero() && sum != m.Sum {
		return tiers.Info{}, fmt.Errorf("%w: sha256 %s, announced %s", tiers.ErrCorrupt, sum, m.Sum)
	}
	return t.insert(k, data, sum, m.Created)
}

// PutBytes stores b itself, not a copy (tiers.BytesPutter): the caller
// never changes b. The checks are Put's.
func (t *Tier) PutBytes(ctx context.Context, k digest.Key, b []byte, m tiers.Meta) (tiers.Info, error) {
	info, err := t.putBytes(k, b, m)
	return info, tiers.Wrap(t.name, "put", k, err)
}

func (t *Tier) putBytes(k digest.Key, b []byte, m tiers.Meta) (tiers.Info, error) {
	if t.readOnly {
		return tiers.Info{}, tiers.ErrReadOnly
	}
	n := int64(len(b))
	if n > t.maxEntry {
		return tiers.Info{}, fmt.Errorf("%w: %d bytes is over the admission limit of %d", tiers.ErrNoSpace, n, t.maxEntry)
	}
	if m.Size >= 0 && n != m.Size {
		return tiers.Info{}, fmt.Errorf("%w: got %d bytes, announced %d", tiers.ErrCorrupt, n, m.Size)
	}
	h := tiers.NewSummer(m)
	h.Write(b)
	sum := h.Sum()
	if !m.Sum.IsZero() && sum != m.Sum {
		return tiers.Info{}, fmt.Errorf("%w: sha256 %s, announced %s", tiers.ErrCorrupt, sum, m.Sum)
	}
	return t.insert(k, b[:n:n], sum, m.Created)
}

// insert adds a checked value.
func (t *Tier) insert(k digest.Key, data []byte, sum digest.Sum, created time.Time) (tiers.Info, error) {
	n := int64(len(data))
	if created.IsZero() {
		created = time.Now()
	}
	e := &entry{info: tiers.Info{Key: k, Size: n, Sum: sum, Created: created}, data: data}

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return tiers.Info{}, tiers.ErrClosed
	}
	if _, ok := t.entries[k]; ok {
		return tiers.Info{}, tiers.ErrExist
	}
	for t.bytes+n > t.limit {
		t.evictOldest()
	}
	t.entries[k] = t.lru.PushFront(e)
	t.bytes += n
	return e.info, nil
}

// evictOldest drops the least recently used entry. Called with mu held.
func (t *Tier) evictOldest() {
	el := t.lru.Back()
	e := el.Value.(*entry)
	t.lru.Remove(el)
	delete(t.entries, e.info.Key)
	t.bytes -= e.info.Size
	t.evictions++
}

func (t *Tier) Delete(ctx context.Context, k digest.Key) error {
	if t.readOnly {
		return tiers.Wrap(t.name, "delete", k, tiers.ErrReadOnly)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return tiers.Wrap(t.name, "delete", k, tiers.ErrClosed)
	}
	el, ok := t.entries[k]
	if !ok {
		return tiers.Wrap(t.name, "delete", k, tiers.ErrNotFound)
	}
	t.lru.Remove(el)
	delete(t.entries, k)
	t.bytes -= el.Value.(*entry).info.Size
	return nil
}

func (t *Tier) List(ctx context.Context, fn func(tiers.Info) error) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return tiers.ErrClosed
	}
	infos := make([]tiers.Info, 0, len(t.entries))
	for _, el := range t.entries {
		infos = append(infos, el.Value.(*entry).info)
	}
	t.mu.Unlock()
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Usage reports the tier's fill.
func (t *Tier) Usage() tiers.Usage {
	t.mu.Lock()
	defer t.mu.Unlock()
	return tiers.Usage{Entries: int64(len(t.entries)), Bytes: t.bytes, Limit: t.limit, Evictions: t.evictions}
}

func (t *Tier) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.entries = map[digest.Key]*list.Element{}
	t.lru.Init()
	t.bytes = 0
	return nil
}

type reader struct{ e *entry }

func (r *reader) Info() tiers.Info { return r.e.info }
func (r *reader) Close() error     { return nil }

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("memory: negative offset")
	}
	if off >= int64(len(r.e.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.e.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteTo copies the whole value to w.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(r.e.data)
	return int64(n), err
}
