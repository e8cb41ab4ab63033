package torture

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// echoServer answers every line with the same line until it is closed.
type echoServer struct {
	lis net.Listener
	wg  sync.WaitGroup
	mu  sync.Mutex
	cs  []net.Conn
}

func newEchoServer(t *testing.T) *echoServer {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{lis: lis}
	e.wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.cs = append(e.cs, c)
			e.mu.Unlock()
			e.wg.Go(func() { _, _ = io.Copy(c, c) })
		}
	})
	t.Cleanup(e.close)
	return e
}

func (e *echoServer) close() {
	e.lis.Close()
	e.mu.Lock()
	for _, c := range e.cs {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// roundTrip sends a line on c and reads the echo, within d.
func roundTrip(c net.Conn, rd *bufio.Reader, d time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := rd.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return errors.New("echo garbled: " + line)
	}
	return nil
}

func dialLink(t *testing.T, l *link) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestLinkPassesDelaysBlackholesAndCuts(t *testing.T) {
	echo := newEchoServer(t)
	l, err := newLink(newProxyServer(), "test", echo.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()

	c, rd := dialLink(t, l)
	if err := roundTrip(c, rd, 5*time.Second); err != nil {
		t.Fatalf("through a clear link: %v", err)
	}

	// Latency holds each chunk at least that long, each way.
	l.delay(150*time.Millisecond, 0)
	begin := time.Now()
	if err := roundTrip(c, rd, 5*time.Second); err != nil {
		t.Fatalf("through a delayed link: %v", err)
	}
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Errorf("a round trip through 150ms of latency each way took %v", took)
	}
	l.clear()
	if err := roundTrip(c, rd, 5*time.Second); err != nil {
		t.Fatalf("after latency: %v", err)
	}

	// A blackhole answers nothing; when it ends, a connection that lost
	// bytes is closed and a new one works.
	idle, idleRd := dialLink(t, l)
	if err := roundTrip(idle, idleRd, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	l.blackhole(responsesOnly)
	if err := roundTrip(c, rd, 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("through a blackhole: %v, want a timeout", err)
	}
	l.clear()
	if err := roundTrip(c, rd, 5*time.Second); err == nil || isTimeout(err) {
		t.Fatalf("a connection that lost bytes in a blackhole: %v, want it closed", err)
	}
	if err := roundTrip(idle, idleRd, 5*time.Second); err != nil {
		t.Fatalf("a connection idle through the blackhole: %v", err)
	}
	c, rd = dialLink(t, l)
	if err := roundTrip(c, rd, 5*time.Second); err != nil {
		t.Fatalf("a new connection after the blackhole: %v", err)
	}

	// A cut closes every connection and refuses new ones until restored.
	l.cutOff()
	if err := roundTrip(c, rd, 5*time.Second); err == nil || isTimeout(err) {
		t.Fatalf("a connection through a cut link: %v, want it closed", err)
	}
	if c, err := net.DialTimeout("tcp", l.addr, time.Second); err == nil {
		c.Close()
		t.Fatal("a cut link accepted a connection")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.restore(ctx); err != nil {
		t.Fatal(err)
	}
	c, rd = dialLink(t, l)
	if err := roundTrip(c, rd, 5*time.Second); err != nil {
		t.Fatalf("after the cut: %v", err)
	}
}
