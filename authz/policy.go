package authz

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/txcoord/txcoord/ids"
	"github.com/txcoord/txcoord/pki"
)

// Policy binds identities to roles: the contents of a policy file.
//
//	trust_domain: example.org
//	identities:
//	  - id: spiffe://example.org/txcoord/orders-1
//	    roles: [coordinator]
//	  - id: spiffe://example.org/svc/payment
//	    roles: [participant]
//	    participant: payment
//	  - id: spiffe://example.org/svc/order
//	    roles: [client]
//	  - id: spiffe://example.org/ops/alice
//	    roles: [operator]
//	    token_sha256: [9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08]
//	  - id: spiffe://example.org/ops/bob
//	    roles: [admin]
type Policy struct {
	// TrustDomain, when set, is the only trust domain whose certificates
	// identify anybody; every id must be in it.
	TrustDomain string `yaml:"trust_domain"`
	// Identities are the callers with roles. Any other caller has none.
	Identities []Entry `yaml:"identities"`
}

// Entry gives one identity its roles.
type Entry struct {
	// ID is the SPIFFE ID that a client certificate carries in its URI
	// SAN, or that a token stands for.
	ID string `yaml:"id"`
	// Roles: coordinator, participant, client, observer, operator, admin.
	Roles []Role `yaml:"roles"`
	// Participant is the participant name this identity speaks for (with
	// role participant): it alone may announce that name, register its
	// branches and ask their outcomes.
	Participant string `yaml:"participant"`
	// TokenSHA256 are the SHA-256 digests (hex) of bearer tokens that
	// stand for this identity (accepted over TLS only). The policy file
	// never holds a token itself.
	TokenSHA256 []string `yaml:"token_sha256"`
}

// maxPolicy bounds a policy file.
const maxPolicy = 1 << 20

// ParsePolicy reads a policy from YAML; unknown keys, unknown roles,
// malformed ids and duplicates are errors.
func ParsePolicy(b []byte) (*Policy, error) {
	if len(b) > maxPolicy {
		return nil, fmt.Errorf("policy: %d bytes, more than %d", len(b), maxPolicy)
	}
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// LoadPolicy reads a policy file.
func LoadPolicy(path string) (*Policy, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if fi.Size() > maxPolicy {
		return nil, fmt.Errorf("policy %s: %d bytes, more than %d", path, fi.Size(), maxPolicy)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(p.Identities) == 0 {
		// Also what a reload sees of a file being rewritten in place.
		return nil, fmt.Errorf("policy %s lists no identities: nobody could call anything", path)
	}
	return p, nil
}

// Validate says everything wrong with p.
func (p *Policy) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("policy: "+format, args...)) }
	if p.TrustDomain != "" {
		if _, err := pki.ParseSPIFFE("spiffe://" + p.TrustDomain + "/x"); err != nil {
			bad("trust_domain %q: lower-case letters, digits, '.', '-' and '_'", p.TrustDomain)
		}
	}
	ids_ := map[string]bool{}
	names := map[string]string{}
	tokens := map[string]string{}
	for i, e := range p.Identities {
		where := fmt.Sprintf("identities[%d]", i)
		if _, err := pki.ParseSPIFFE(e.ID); err != nil {
			bad("%s: %v", where, err)
			continue
		}
		where = fmt.Sprintf("identity %s", e.ID)
		if p.TrustDomain != "" && pki.TrustDomain(e.ID) != p.TrustDomain {
			bad("%s is outside the trust domain %s", where, p.TrustDomain)
		}
		if ids_[e.ID] {
			bad("%s is listed twice", where)
		}
		ids_[e.ID] = true
		if len(e.Roles) == 0 {
			bad("%s has no roles", where)
		}
		isParticipant := false
		for _, r := range e.Roles {
			if !r.valid() {
				bad("%s: unknown role %q (want one of %s)", where, r, strings.Join(roleNames(), ", "))
			}
			isParticipant = isParticipant || r == Participant
		}
		switch {
		case isParticipant && e.Participant == "":
			bad("%s has role participant but names no participant (participant: NAME)", where)
		case !isParticipant && e.Participant != "":
			bad("%s names participant %q but lacks the role participant", where, e.Participant)
		case e.Participant != "":
			if err := ids.ValidateName("participant name", e.Participant); err != nil {
				bad("%s: %v", where, err)
			} else if other, dup := names[e.Participant]; dup {
				bad("participant %s is bound to both %s and %s: a name speaks for one identity", e.Participant, other, e.ID)
			}
			names[e.Participant] = e.ID
		}
		for _, t := range e.TokenSHA256 {
			d, err := hex.DecodeString(t)
			if err != nil || len(d) != sha256.Size {
				bad("%s: token_sha256 %q is not 64 hex digits", where, t)
				continue
			}
			k := string(d)
			if other, dup := tokens[k]; dup {
				bad("one token stands for both %s and %s: a token is bound to one identity", other, e.ID)
			}
			tokens[k] = e.ID
		}
	}
	return errors.Join(errs...)
}

// TokenDigest is the hex SHA-256 of a token, as a policy file lists it.
func TokenDigest(token string) string {
	d := sha256.Sum256([]byte(token))
	return hex.EncodeToString(d[:])
}
