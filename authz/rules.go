package authz

import (
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
)

// Rule says who may call a method. Roles are alternatives; a Public
// method needs no identity. Handlers narrow some rules further (Note).
type Rule struct {
	Roles  []Role
	Public bool
	Note   string
}

// Rules is the method table of the trust model: every method of the
// Coordinator, Participant and health services.
var Rules = map[string]Rule{
	txcoordv1.Coordinator_Begin_FullMethodName: {Roles: []Role{Client},
		Note: "the transaction belongs to the caller's identity"},
	txcoordv1.Coordinator_RegisterBranch_FullMethodName: {Roles: []Role{Participant},
		Note: "only under the participant name bound to the caller"},
	txcoordv1.Coordinator_Commit_FullMethodName: {Roles: []Role{Client, Observer},
		Note: "a client only for a live transaction it began; an observer reads the logged outcome of one no longer tracked"},
	txcoordv1.Coordinator_Rollback_FullMethodName: {Roles: []Role{Client, Operator},
		Note: "a client only for a live transaction it began"},
	txcoordv1.Coordinator_GetTransaction_FullMethodName: {Roles: []Role{Client, Observer},
		Note: "a client only for a transaction it began"},
	txcoordv1.Coordinator_ListTransactions_FullMethodName: {Roles: []Role{Observer}},
	txcoordv1.Coordinator_GetOutcome_FullMethodName: {Roles: []Role{Participant, Client, Observer},
		Note: "a participant for its own branches, a client for a transaction it began"},
	txcoordv1.Coordinator_Resolve_FullMethodName: {Roles: []Role{Operator},
		Note: "COMMIT only for admin"},
	txcoordv1.Coordinator_Recover_FullMethodName: {Roles: []Role{Operator}},
	txcoordv1.Coordinator_Announce_FullMethodName: {Roles: []Role{Participant},
		Note: "only the participant name bound to the caller"},

	txcoordv1.Participant_Prepare_FullMethodName:      {Roles: []Role{Coordinator}},
	txcoordv1.Participant_Commit_FullMethodName:       {Roles: []Role{Coordinator}},
	txcoordv1.Participant_CommitBatch_FullMethodName:  {Roles: []Role{Coordinator}},
	txcoordv1.Participant_Rollback_FullMethodName:     {Roles: []Role{Coordinator}},
	txcoordv1.Participant_ListPrepared_FullMethodName: {Roles: []Role{Coordinator}},

	healthpb.Health_Check_FullMethodName: {Public: true},
	healthpb.Health_Watch_FullMethodName: {Public: true},
	healthpb.Health_List_FullMethodName:  {Public: true},
}
