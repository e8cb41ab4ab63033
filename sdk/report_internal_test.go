package sdk

import (
	"testing"
	"time"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// A participant reports under an instance only within keyRefresh of
// giving it its key; then it registers a branch, which gives the key
// again, so that the coordinator never forgets the key of a live process.
func TestReportKeyIsGivenAgainAfterKeyRefresh(t *testing.T) {
	var r reporter
	if _, name := r.instance(); name != "" {
		t.Fatalf("reports under %q before any instance took the key", name)
	}
	r.keyed(&txcoordv1.Instance{Owner: "txc.c1", LogId: "log1", Epoch: 2})
	if _, name := r.instance(); name != "txc.c1 log1 2" {
		t.Fatalf("reports under %q just after giving the key", name)
	}
	r.mu.Lock()
	r.at = time.Now().Add(-keyRefresh)
	r.mu.Unlock()
	if _, name := r.instance(); name != "" {
		t.Fatalf("reports under %q a minute after giving the key", name)
	}
	r.keyed(&txcoordv1.Instance{Owner: "txc.c1", LogId: "log1", Epoch: 2})
	if _, name := r.instance(); name != "txc.c1 log1 2" {
		t.Fatalf("reports under %q after giving the key again", name)
	}
}
