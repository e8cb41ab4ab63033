package torture

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/txcoord/txcoord/client"
	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/pki"
	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// Every process of the run talks mutual TLS under a policy; the hostile
// client holds a certificate of the same CA for an identity with the
// client role, and tries the attacks of the security review the whole
// time.

const trustDomain = "torture.example"

func spiffeOf(name string) string {
	if name == coordName {
		return "spiffe://" + trustDomain + "/txcoord/" + coordinatorID
	}
	return "spiffe://" + trustDomain + "/svc/" + name
}

// tlsFiles are a process's certificate, key and CA.
type tlsFiles struct{ cert, key, ca string }

// clientCreds are the workload's credentials (set by issueTLS).
var clientCreds credentials.TransportCredentials

// issueTLS makes a CA, a certificate per process (and the client and the
// intruder), and the policy; it sets clientCreds.
func issueTLS(dir string) (map[string]tlsFiles, string, error) {
	ca, err := pki.NewCA("torture CA", 24*time.Hour)
	if err != nil {
		return nil, "", err
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		return nil, "", err
	}
	out := map[string]tlsFiles{}
	for _, name := range append(append([]string{coordName}, services...), clientName, "intruder") {
		cp, kp, err := ca.Issue(pki.Leaf{ID: spiffeOf(name), IPs: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}})
		if err != nil {
			return nil, "", err
		}
		f := tlsFiles{cert: filepath.Join(dir, name+".pem"), key: filepath.Join(dir, name+"-key.pem"), ca: caFile}
		if err := os.WriteFile(f.cert, cp, 0o600); err != nil {
			return nil, "", err
		}
		if err := os.WriteFile(f.key, kp, 0o600); err != nil {
			return nil, "", err
		}
		out[name] = f
	}
	pol := "trust_domain: " + trustDomain + "\nidentities:\n" +
		"  - {id: " + spiffeOf(coordName) + ", roles: [coordinator]}\n" +
		"  - {id: " + spiffeOf(clientName) + ", roles: [client]}\n" +
		"  - {id: " + spiffeOf("intruder") + ", roles: [client]}\n"
	for _, s := range services {
		pol += "  - {id: " + spiffeOf(s) + ", roles: [participant], participant: " + s + "}\n"
	}
	polFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(pol), 0o600); err != nil {
		return nil, "", err
	}
	c, err := credsOf(out[clientName])
	if err != nil {
		return nil, "", err
	}
	clientCreds = c
	return out, polFile, nil
}

func credsOf(f tlsFiles) (credentials.TransportCredentials, error) {
	r, err := pki.NewReloader(pki.Files{Cert: f.cert, Key: f.key, CA: f.ca}, nil)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(r.ClientConfig("", "")), nil
}

// hostile keeps trying calls that only other identities may make, through
// the client's links: the services' participant API (F1), other clients'
// transactions (F3), participants' names (F4), junk names (F7) and the
// operators' calls (F10).
type hostile struct {
	coord txcoordv1.CoordinatorClient
	svc   map[string]txcoordv1.ParticipantClient
	conns []*grpc.ClientConn
	w     *workload

	mu       sync.Mutex
	refused  map[string]int // "call: code"
	down     int            // unreachable (faults), not counted as refused
	accepted []string       // calls that passed: violations
}

func newHostile(f tlsFiles, coords []string, svcAddrs map[string]string, w *workload) (*hostile, error) {
	creds, err := credsOf(f)
	if err != nil {
		return nil, err
	}
	h := &hostile{svc: map[string]txcoordv1.ParticipantClient{}, w: w, refused: map[string]int{}}
	dial := func(addr string) (*grpc.ClientConn, error) {
		c, err := grpc.NewClient(addr, append(dialOptions(), grpc.WithTransportCredentials(creds))...)
		if err == nil {
			h.conns = append(h.conns, c)
		}
		return c, err
	}
	c, err := client.DialCoordinators(coords, append(dialOptions(), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		return nil, err
	}
	h.conns = append(h.conns, c)
	h.coord = txcoordv1.NewCoordinatorClient(c)
	for _, s := range services {
		c, err := dial(svcAddrs[s])
		if err != nil {
			h.close()
			return nil, err
		}
		h.svc[s] = txcoordv1.NewParticipantClient(c)
	}
	return h, nil
}

func (h *hostile) close() {
	for _, c := range h.conns {
		c.Close()
	}
}

// victim is the txid of a recent order of the workload (the intruder
// learned it, as F3 supposes).
func (h *hostile) victim(i int) (ids.TxID, bool) {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	for j := len(h.w.records) - 1 - i%8; j >= 0; j-- {
		if !h.w.records[j].txid.IsZero() {
			return h.w.records[j].txid, true
		}
	}
	return ids.TxID{}, false
}

func (h *hostile) run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		h.attack(ctx, i)
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (h *hostile) attack(ctx context.Context, i int) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	txid, ok := h.victim(i)
	if !ok {
		return
	}
	s := services[i%len(services)]
	gid := "txc." + coordinatorID + "." + txid.String() + "." + s + "-1"
	var name string
	var err error
	switch i % 10 {
	case 0:
		name = "F1 ListPrepared at " + s
		_, err = h.svc[s].ListPrepared(cctx, &txcoordv1.ListPreparedRequest{})
	case 1:
		name = "F1 Rollback at " + s
		_, err = h.svc[s].Rollback(cctx, &txcoordv1.RollbackBranchRequest{Gid: gid})
	case 2:
		name = "F1 Commit at " + s
		_, err = h.svc[s].Commit(cctx, &txcoordv1.CommitBranchRequest{Gid: gid})
	case 3:
		name = "F3 Rollback of another's transaction"
		_, err = h.coord.Rollback(cctx, &txcoordv1.RollbackRequest{Txid: txid.String()})
	case 4:
		name = "F3 Commit of another's transaction"
		_, err = h.coord.Commit(cctx, &txcoordv1.CommitRequest{Txid: txid.String()})
	case 5:
		name = "F3/F14 ListTransactions"
		_, err = h.coord.ListTransactions(cctx, &txcoordv1.ListTransactionsRequest{})
	case 6:
		name = "F4 Announce as " + s
		_, err = h.coord.Announce(cctx, &txcoordv1.AnnounceRequest{Participant: s, Address: "127.0.0.1:9"})
	case 7:
		name = "F4 RegisterBranch as " + s
		_, err = h.coord.RegisterBranch(cctx, &txcoordv1.RegisterBranchRequest{Txid: txid.String(), Gid: "txc." + coordinatorID + "." + txid.String() + "." + s + "-9", Participant: s, Address: "127.0.0.1:9"})
	case 8:
		name = "F7 Announce of a junk name"
		_, err = h.coord.Announce(cctx, &txcoordv1.AnnounceRequest{Participant: fmt.Sprintf("junk-%d", i), Address: "127.0.0.1:9"})
	case 9:
		if i%20 == 9 {
			name = "F10 Resolve"
			_, err = h.coord.Resolve(cctx, &txcoordv1.ResolveRequest{Txid: txid.String(), Decision: txcoordv1.Decision_DECISION_ABORT, Reason: "hostile"})
		} else {
			name = "F10 Recover"
			_, err = h.coord.Recover(cctx, &txcoordv1.RecoverRequest{})
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch code := status.Code(err); code {
	case codes.PermissionDenied, codes.Unauthenticated:
		h.refused[name+": "+code.String()]++
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		h.down++
	default:
		h.accepted = append(h.accepted, fmt.Sprintf("hostile call accepted: %s (txid %s): %v", name, txid, err))
	}
}

// report says what the hostile client tried and what became of it.
func (h *hostile) report() (string, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var kinds []string
	total := 0
	for k, n := range h.refused {
		kinds = append(kinds, fmt.Sprintf("    %-55s %d", k, n))
		total += n
	}
	sort.Strings(kinds)
	s := fmt.Sprintf("  hostile:       %d calls refused, %d accepted, %d unanswered (faults)\n%s\n", total, len(h.accepted), h.down, strings.Join(kinds, "\n"))
	return s, append([]string(nil), h.accepted...)
}
