package participant

import "testing"

func TestVoteZeroValueIsInvalid(t *testing.T) {
	var v Vote
	if v.Valid() || !VoteYes.Valid() || !VoteReadOnly.Valid() || Vote(4).Valid() {
		t.Fatal("vote validity")
	}
}
