package remote

import (
	"strings"
	"testing"
)

// F15: an address is host:port; gRPC target schemes and other forms that
// would make the coordinator dial where a caller chooses are refused.
func TestValidateAddressRefusesTargetSchemes(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:7002", "payment.svc:7002", "[::1]:7002", "localhost:1"} {
		if err := ValidateAddress(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"unix:relative.sock", "unix-abstract:name", "dns:///host:1", "passthrough:host:1", "host", ":7002", "host:port", "host:99999", "a b:1", "unix:/tmp/x.sock"} {
		if err := ValidateAddress(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// F13: a participant's message is cut and its control characters replaced
// before it reaches the coordinator's state, logs and operators.
func TestParticipantMessagesAreBounded(t *testing.T) {
	got := bounded("\x1b[2Jcommitted\r\u009b" + strings.Repeat("y", 5000))
	if len(got) > maxMessage+20 || strings.ContainsAny(got, "\x1b\r\u009b") {
		t.Fatalf("bounded: %d bytes, %q...", len(got), got[:20])
	}
}
