package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/rs/zerolog"
)

// A link is a toxiproxy proxy between two processes. Each direction has
// one toxic, a gate, installed before the proxy first starts; faults change
// what the gates do and never add or remove toxics while connections are
// live. In toxiproxy 2.5.0, removing a timeout toxic from a live connection
// closes its stub and leaves the stub before it sending to a channel nobody
// reads, for ever (a leaked goroutine per connection, now and then); and
// adding or removing any toxic waits, under the proxy's toxic lock, for
// every live connection's last stub to take an interrupt, which a stub
// blocked on a connection whose writer has gone never does.
//
// A cut stops the proxy: its listener and every connection through it are
// closed, and new connections are refused until it starts again on the
// same address.
type link struct {
	name     string
	upstream string
	addr     string // where the proxy listens; fixed after the first start
	proxy    *toxiproxy.Proxy
	// gates[0] passes bytes toward the upstream (requests), gates[1] back
	// to the caller (responses).
	gates [2]*gate

	mu  sync.Mutex
	cut bool
}

// gateToxicType is the toxiproxy toxic type of a gate.
const gateToxicType = "txcoord_torture_gate"

func init() { toxics.Register(gateToxicType, new(gateToxic)) }

// gateToxic is the toxic of one direction of a link: it looks up its gate
// by id and lets it decide what happens to each chunk of bytes.
type gateToxic struct {
	Gate string `json:"gate"`
}

// GetBufferSize buffers chunks in front of the gate, so that a delay
// applies to each chunk from the moment it arrived, not one after another.
func (t *gateToxic) GetBufferSize() int { return 1024 }

// gateMode is what a gate does with bytes. The zero value is invalid.
type gateMode int

const (
	gatePass gateMode = 1 + iota
	gateDelay
	gateDrop
)

// gateState is a gate's setting; a new one replaces it whole.
type gateState struct {
	mode            gateMode
	latency, jitter time.Duration
	changed         chan struct{} // closed when the state is replaced
}

// gate decides the fate of the bytes crossing one direction of a link.
type gate struct {
	id    string
	state atomic.Pointer[gateState]
	mu    sync.Mutex // serialises set
	shut  chan struct{}
	once  sync.Once
}

// gates maps gate ids to gates, for gateToxic.
var (
	gates      sync.Map
	gateSeq    atomic.Uint64
	errStalled = errors.New("torture: nobody takes the bytes on")
)

// stallTimeout bounds how long a gate waits to hand a chunk on: past it,
// the link's writer is taken to be gone (toxiproxy keeps reading from a
// connection after writing to the other one failed) and the connection is
// ended rather than left with goroutines blocked forever.
const stallTimeout = 20 * time.Second

func newGate(name string) *gate {
	g := &gate{id: fmt.Sprintf("%s#%d", name, gateSeq.Add(1)), shut: make(chan struct{})}
	g.state.Store(&gateState{mode: gatePass, changed: make(chan struct{})})
	gates.Store(g.id, g)
	return g
}

func (g *gate) set(mode gateMode, latency, jitter time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.state.Load()
	g.state.Store(&gateState{mode: mode, latency: latency, jitter: jitter, changed: make(chan struct{})})
	close(old.changed)
}

// close releases every chunk waiting at the gate; call it after the proxy
// stopped.
func (g *gate) close() {
	g.once.Do(func() {
		close(g.shut)
		gates.Delete(g.id)
	})
}

func (t *gateToxic) Pipe(stub *toxics.ToxicStub) {
	v, ok := gates.Load(t.Gate)
	if !ok {
		new(toxics.NoopToxic).Pipe(stub)
		return
	}
	g := v.(*gate)
	// lost: this direction dropped bytes, so the stream is broken. When
	// the blackhole ends, the connection ends too, as a TCP connection cut
	// off for longer than its retransmissions would.
	lost := false
	for {
		st := g.state.Load()
		if lost && st.mode != gateDrop {
			g.end(stub)
			return
		}
		select {
		case <-stub.Interrupt:
			return
		case <-st.changed:
		case c := <-stub.Input:
			if c == nil {
				stub.Close()
				return
			}
			st = g.state.Load()
			switch st.mode {
			case gateDrop:
				lost = true
				continue
			case gateDelay:
				d := st.latency
				if st.jitter > 0 {
					d += time.Duration(rand.Int64N(2*int64(st.jitter))) - st.jitter
				}
				if wait := d - time.Since(c.Timestamp); wait > 0 {
					timer := time.NewTimer(wait)
					select {
					case <-timer.C:
					case <-g.shut:
						timer.Stop()
					}
				}
			}
			if err := g.forward(stub, c); err != nil {
				g.end(stub)
				return
			}
		}
	}
}

// forward hands a chunk to the next stage of the link.
func (g *gate) forward(stub *toxics.ToxicStub, c *stream.StreamChunk) error {
	timer := time.NewTimer(stallTimeout)
	defer timer.Stop()
	select {
	case stub.Output <- c:
		return nil
	case <-timer.C:
		return errStalled
	case <-g.shut:
		return errStalled
	}
}

// end closes this direction, which makes toxiproxy close both connections
// of the link, and discards what still arrives until the reader stops.
func (g *gate) end(stub *toxics.ToxicStub) {
	stub.Close()
	for {
		select {
		case <-stub.Interrupt:
			return
		case c := <-stub.Input:
			if c == nil {
				return
			}
		}
	}
}

// newProxyServer returns the toxiproxy server that owns the links.
func newProxyServer() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
}

// newLink starts a proxy named name on a free loopback port to upstream.
func newLink(server *toxiproxy.ApiServer, name, upstream string) (*link, error) {
	l := &link{name: name, upstream: upstream, gates: [2]*gate{newGate(name + " requests"), newGate(name + " responses")}}
	l.proxy = toxiproxy.NewProxy(server, name, "127.0.0.1:0", upstream)
	for i, stream := range []string{"upstream", "downstream"} {
		spec := fmt.Sprintf(`{"name": "gate_%s", "type": %q, "stream": %q, "toxicity": 1, "attributes": {"gate": %q}}`,
			stream, gateToxicType, stream, l.gates[i].id)
		if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
			l.close()
			return nil, fmt.Errorf("link %s: gate: %w", name, err)
		}
	}
	if err := l.proxy.Start(); err != nil {
		l.close()
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	l.addr = l.proxy.Listen
	return l, nil
}

// cutOff stops the proxy.
func (l *link) cutOff() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.proxy.Stop()
	l.cut = true
}

// restore starts a cut proxy again on its address, retrying until ctx
// ends (the port may be taken for a moment).
func (l *link) restore(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.cut {
		return nil
	}
	for {
		err := l.proxy.Start()
		if err == nil || errors.Is(err, toxiproxy.ErrProxyAlreadyStarted) {
			l.cut = false
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("link %s: restart on %s: %w", l.name, l.addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// delay delays the bytes both ways.
func (l *link) delay(latency, jitter time.Duration) {
	for _, g := range l.gates {
		g.set(gateDelay, latency, jitter)
	}
}

// blackhole drops the bytes going dir.
func (l *link) blackhole(dir direction) {
	if dir != responsesOnly {
		l.gates[0].set(gateDrop, 0, 0)
	}
	if dir != requestsOnly {
		l.gates[1].set(gateDrop, 0, 0)
	}
}

// clear lets the bytes through again.
func (l *link) clear() {
	for _, g := range l.gates {
		if g.state.Load().mode != gatePass {
			g.set(gatePass, 0, 0)
		}
	}
}

func (l *link) isCut() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cut
}

// close stops the proxy for good.
func (l *link) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.proxy.Stop()
	l.cut = true
	for _, g := range l.gates {
		g.close()
	}
}
