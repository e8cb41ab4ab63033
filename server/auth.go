package server

import (
	"context"
	"crypto/subtle"
	"net"
	"strings"

	txcoordv1 "github.com/txcoord/txcoord/proto/txcoord/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// AdminMethods are the calls that change what happens to transactions on
// an operator's order.
var AdminMethods = []string{
	txcoordv1.Coordinator_Resolve_FullMethodName,
	txcoordv1.Coordinator_Recover_FullMethodName,
}

// AdminPolicy says who may make admin calls: a caller presenting one of
// Tokens (metadata "authorization: Bearer <token>"), or a client
// certificate (mutual TLS) whose subject common name is one of CommonNames.
// With neither configured, only callers on the loopback interface may,
// when AllowLoopback is set; nobody otherwise.
type AdminPolicy struct {
	Tokens        []string
	CommonNames   []string
	AllowLoopback bool
}

// UnaryInterceptor enforces p on AdminMethods; other calls pass.
func (p AdminPolicy) UnaryInterceptor() grpc.UnaryServerInterceptor {
	admin := map[string]bool{}
	for _, m := range AdminMethods {
		admin[m] = true
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if admin[info.FullMethod] {
			if err := p.authorize(ctx); err != nil {
				return nil, err
			}
		}
		return h(ctx, req)
	}
}

func (p AdminPolicy) authorize(ctx context.Context) error {
	if tok := bearer(ctx); tok != "" {
		for _, t := range p.Tokens {
			if subtle.ConstantTimeCompare([]byte(tok), []byte(t)) == 1 {
				return nil
			}
		}
		return status.Error(codes.PermissionDenied, "admin call refused: the token is not an admin token")
	}
	pr, _ := peer.FromContext(ctx)
	if pr != nil {
		if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.PeerCertificates) > 0 {
			cn := ti.State.PeerCertificates[0].Subject.CommonName
			for _, want := range p.CommonNames {
				if cn == want {
					return nil
				}
			}
			if len(p.CommonNames) > 0 {
				return status.Errorf(codes.PermissionDenied, "admin call refused: certificate %q is not an admin identity", cn)
			}
		}
	}
	if len(p.Tokens) == 0 && len(p.CommonNames) == 0 && p.AllowLoopback && pr != nil && loopback(pr.Addr) {
		return nil
	}
	return status.Error(codes.Unauthenticated, "admin call refused: present an admin token (txctl --token-file, or $TXCOORD_TOKEN) or an admin client certificate")
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(tok)
		}
	}
	return ""
}

func loopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
