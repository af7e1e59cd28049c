package sftp

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyError is returned (wrapped, inside tiers.ErrUnavailable) when the
// server's host key is not accepted. It names the host and the known_hosts
// file, never key material beyond the key's type and SHA-256 fingerprint.
type HostKeyError struct {
	Host        string // host:port as dialed
	File        string // the known_hosts file
	Type        string // type of the key the server offered
	Fingerprint string // SHA256:... of the key the server offered
	// Lines of File that hold other keys for Host. Empty: the host is unknown.
	Lines   []int
	Revoked bool // the offered key is marked @revoked at Lines[0]
	port    int
	host    string
}

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked:
		return fmt.Sprintf("host key of %s (%s %s) is marked @revoked in %s line %d",
			e.Host, e.Type, e.Fingerprint, e.File, e.Lines[0])
	case len(e.Lines) == 0:
		scan := "ssh-keyscan " + e.host
		if e.port != 22 {
			scan = "ssh-keyscan -p " + strconv.Itoa(e.port) + " " + e.host
		}
		return fmt.Sprintf("host key of %s is not in %s (add it with %s >> %s, after checking that its fingerprint is %s)",
			e.Host, e.File, scan, e.File, e.Fingerprint)
	default:
		lines := make([]string, len(e.Lines))
		for i, l := range e.Lines {
			lines[i] = strconv.Itoa(l)
		}
		word := "line"
		if len(lines) > 1 {
			word = "lines"
		}
		return fmt.Sprintf("host key of %s CHANGED: the server's key %s %s does not match known_hosts %s %s %s; "+
			"this may be an attack; if the change is expected, remove the old entry with ssh-keygen -f %s -R '%s'",
			e.Host, e.Type, e.Fingerprint, e.File, word, strings.Join(lines, ", "), e.File, knownhosts.Normalize(e.Host))
	}
}

// hostKeys loads the known_hosts file (again at every dial, so that edits
// take effect) and returns the callback plus the key algorithms known for the
// host, so that the server is asked for a key type we can check.
func (t *Tier) hostKeys(remoteAddr net.Addr) (ssh.HostKeyCallback, []string, error) {
	file := t.opt.KnownHosts
	db, err := knownhosts.New(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("known_hosts file %s does not exist (create it with ssh-keyscan -p %d %s >> %s)",
				file, t.rem.port, t.rem.host, file)
		}
		return nil, nil, fmt.Errorf("known_hosts file %s: %w", file, err)
	}
	cb := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := db(hostname, remote, key)
		if err == nil {
			return nil
		}
		he := &HostKeyError{Host: t.rem.addr, File: file, Type: key.Type(),
			Fingerprint: ssh.FingerprintSHA256(key), host: t.rem.host, port: t.rem.port}
		var ke *knownhosts.KeyError
		var re *knownhosts.RevokedError
		switch {
		case errors.As(err, &re):
			he.Revoked = true
			he.Lines = []int{re.Revoked.Line}
			he.File = re.Revoked.Filename
		case errors.As(err, &ke):
			for _, w := range ke.Want {
				if !slices.Contains(he.Lines, w.Line) {
					he.Lines = append(he.Lines, w.Line)
				}
			}
		default:
			return fmt.Errorf("host key of %s: %w", t.rem.addr, err)
		}
		return he
	}
	// Ask the database with a key it cannot hold: the error lists the keys
	// it has for the host.
	var algos []string
	var ke *knownhosts.KeyError
	if err := db(t.rem.addr, remoteAddr, probeKey()); errors.As(err, &ke) {
		for _, w := range ke.Want {
			for _, a := range algorithmsFor(w.Key.Type()) {
				if !slices.Contains(algos, a) {
					algos = append(algos, a)
				}
			}
		}
	}
	return cb, algos, nil
}

func algorithmsFor(keyType string) []string {
	switch keyType {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	case ssh.CertAlgoRSAv01:
		return []string{ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSAv01}
	default:
		return []string{keyType}
	}
}

var probeKey = sync.OnceValue(func() ssh.PublicKey {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		panic(err)
	}
	return s.PublicKey()
})

// loadSigners reads the identity files. An encrypted key is skipped when the
// agent is in use (the agent may hold it) and is an error otherwise. Error
// messages name files, never contents.
func loadSigners(files []string, useAgent bool) ([]ssh.Signer, error) {
	var out []ssh.Signer
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("identity file: %w", err)
		}
		s, err := ssh.ParsePrivateKey(b)
		clear(b)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			if useAgent {
				continue
			}
			return nil, fmt.Errorf("identity file %s is encrypted with a passphrase; flechefs does not read passphrases: "+
				"load it into ssh-agent (ssh-add %s) and set agent = true in the tier's configuration", f, f)
		case err != nil:
			return nil, fmt.Errorf("identity file %s is not a private key flechefs can read (OpenSSH or PEM format)", f)
		}
		out = append(out, s)
	}
	return out, nil
}

// authMethod offers the file keys, then the agent's. The agent socket is
// opened for one dial and closed by the returned function.
func (t *Tier) authMethod() (ssh.AuthMethod, func(), error) {
	signers := t.signers
	done := func() {}
	if t.opt.UseAgent {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			if len(signers) == 0 {
				return nil, done, errors.New("agent = true but SSH_AUTH_SOCK is empty, and no identity file is usable")
			}
		} else if ac, err := net.Dial("unix", sock); err != nil {
			if len(signers) == 0 {
				return nil, done, fmt.Errorf("ssh-agent at SSH_AUTH_SOCK: %w", err)
			}
			t.log.Warn("ssh-agent unreachable; using identity files only", "err", err)
		} else {
			done = func() { ac.Close() }
			ag := agent.NewClient(ac)
			return ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
				as, err := ag.Signers()
				if err != nil {
					t.log.Warn("ssh-agent: list keys", "err", err)
				}
				return append(slices.Clip(signers), as...), nil
			}), done, nil
		}
	}
	if len(signers) == 0 {
		return nil, done, errors.New("no identity: set identity (key files) or agent = true")
	}
	return ssh.PublicKeys(signers...), done, nil
}
