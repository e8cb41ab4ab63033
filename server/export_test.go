package server

import "github.com/txcoord/txcoord/ids"

// Settled reports whether the transaction txid is remembered in its
// settled form (status and outcome only).
func (s *Server) Settled(txid string) bool {
	id, err := ids.ParseTxID(txid)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.txs[id]
	return ok && e.tx == nil
}
