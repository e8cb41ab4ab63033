// Package saga is an orchestrated saga: each step is a local transaction
// on its own database, a durable saga log (bbolt, with group commit)
// remembers every saga until it ends, and a failed saga runs the
// compensation of each step that may have run, in reverse, retried until
// done. Steps and compensations are idempotent under redelivery: a marker
// row written in the same local transaction says whether a step ran or was
// undone. It exists as txbench's fair opponent to two-phase commit.
package saga

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"

	"go.etcd.io/bbolt"
)

var bucket = []byte("sagas")

// Log is the saga log: a record per saga that has not ended. Forced
// writes of concurrent sagas share one bbolt commit (one fsync pair), with
// no timer: the first writer leads and takes everything queued.
type Log struct {
	db *bbolt.DB

	mu      sync.Mutex
	queue   []*logReq
	writing bool
	failed  error
	syncs   uint64
}

type logReq struct {
	id    [16]byte
	val   []byte // nil: delete (the saga ended)
	force bool
	done  chan error
}

// OpenLog opens or creates the saga log at path.
func OpenLog(path string) (*Log, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return nil, err
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &Log{db: db}, nil
}

// Close closes the log; records not yet written are lost only if they were
// not forced.
func (l *Log) Close() error {
	_ = l.write(context.Background(), nil) // flush lazy records
	return l.db.Close()
}

// Syncs counts bbolt commits.
func (l *Log) Syncs() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncs
}

// record is a saga's state in the log.
type record struct {
	Plan      Plan `json:"plan"`
	Aborting  bool `json:"aborting"`
	Completed int  `json:"completed"` // steps known done (a hint; steps are idempotent)
}

func encode(r record) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))), nil
}

func decode(v []byte) (record, error) {
	var r record
	if len(v) < 4 {
		return r, errors.New("saga: short record")
	}
	body, sum := v[:len(v)-4], binary.BigEndian.Uint32(v[len(v)-4:])
	if crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)) != sum {
		return r, errors.New("saga: record checksum mismatch")
	}
	return r, json.Unmarshal(body, &r)
}

// put writes the saga's record; with force it returns once durable.
func (l *Log) put(ctx context.Context, id [16]byte, r record, force bool) error {
	val, err := encode(r)
	if err != nil {
		return err
	}
	return l.write(ctx, &logReq{id: id, val: val, force: force})
}

// end removes the saga's record, lazily.
func (l *Log) end(id [16]byte) error {
	return l.write(context.Background(), &logReq{id: id})
}

// write queues req (nil: just flush) and, if nobody leads, leads: commits
// everything queued in one bbolt transaction until the queue is empty. A
// forced request waits for the commit that covers it.
func (l *Log) write(ctx context.Context, req *logReq) error {
	l.mu.Lock()
	if l.failed != nil {
		err := l.failed
		l.mu.Unlock()
		return err
	}
	if req != nil {
		req.done = make(chan error, 1)
		l.queue = append(l.queue, req)
		if !req.force {
			// Lazy: rides on the next commit.
			l.mu.Unlock()
			return nil
		}
	}
	if l.writing {
		l.mu.Unlock()
		if req == nil {
			return nil // the leader drains the queue
		}
		select {
		case err := <-req.done:
			return err
		case <-ctx.Done():
			return ctx.Err() // written all the same; the caller stops waiting
		}
	}
	l.writing = true
	for len(l.queue) > 0 {
		batch := l.queue
		l.queue = nil
		l.mu.Unlock()
		err := l.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucket)
			for _, r := range batch {
				var err error
				if r.val == nil {
					err = b.Delete(r.id[:])
				} else {
					err = b.Put(r.id[:], r.val)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		l.mu.Lock()
		l.syncs++
		if err != nil && l.failed == nil {
			l.failed = fmt.Errorf("saga log: %w", err)
		}
		for _, r := range batch {
			r.done <- err
		}
	}
	l.writing = false
	l.mu.Unlock()
	if req == nil {
		return nil
	}
	return <-req.done
}

// pending returns every saga that has not ended.
func (l *Log) pending() (map[[16]byte]record, error) {
	_ = l.write(context.Background(), nil)
	out := map[[16]byte]record{}
	err := l.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			r, err := decode(v)
			if err != nil {
				return fmt.Errorf("saga %x: %w", k, err)
			}
			var id [16]byte
			copy(id[:], k)
			out[id] = r
			return nil
		})
	})
	return out, err
}
