package sftp

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kevinburke/ssh_config"
)

// With the built-in transport, the user's ssh_config (Options.SSHConfig,
// else ~/.ssh/config when it exists) fills in what the URL and the options
// leave open for the URL's host, as ssh would: HostName, User, Port and
// IdentityFile. What the built-in client cannot do (ProxyJump,
// ProxyCommand, a Match it cannot evaluate) is an error that names
// transport = "ssh", which does all of it. The parser is
// github.com/kevinburke/ssh_config.

// hostConfig is what an ssh_config says about one host.
type hostConfig struct {
	file       string
	hostName   string
	user       string
	port       int
	identities []string
}

// readSSHConfig reads what file (or ~/.ssh/config when file is "") says
// about alias. A missing default file says nothing.
func readSSHConfig(file, home, alias string) (hostConfig, error) {
	hc := hostConfig{file: file}
	if file == "" {
		if home == "" {
			return hc, nil
		}
		hc.file = filepath.Join(home, ".ssh", "config")
	}
	f, err := os.Open(hc.file)
	if err != nil {
		if file == "" && errors.Is(err, fs.ErrNotExist) {
			return hostConfig{}, nil
		}
		return hc, fmt.Errorf("ssh_config: %w", err)
	}
	defer f.Close()
	cfg, err := ssh_config.Decode(f)
	if err != nil {
		return hc, fmt.Errorf("ssh_config %s: %v; the built-in SSH client reads only Host blocks and Match host/all: set transport = \"ssh\" to use the system's ssh, which reads all of it", hc.file, err)
	}
	get := func(key string) (string, error) {
		v, err := cfg.Get(alias, key)
		if err != nil {
			return "", fmt.Errorf("ssh_config %s: %s: %w", hc.file, key, err)
		}
		return strings.TrimSpace(v), nil
	}
	for _, key := range []string{"ProxyJump", "ProxyCommand"} {
		v, err := get(key)
		if err != nil {
			return hc, err
		}
		if v != "" && !strings.EqualFold(v, "none") {
			return hc, fmt.Errorf("ssh_config %s sets %s for %s, which the built-in SSH client does not follow: set transport = \"ssh\" on the sftp tier to use the system's ssh", hc.file, key, alias)
		}
	}
	if hc.hostName, err = get("HostName"); err != nil {
		return hc, err
	}
	hc.hostName = strings.ReplaceAll(hc.hostName, "%h", alias)
	if hc.user, err = get("User"); err != nil {
		return hc, err
	}
	port, err := get("Port")
	if err != nil {
		return hc, err
	}
	if port != "" {
		if hc.port, err = strconv.Atoi(port); err != nil || hc.port < 1 || hc.port > 65535 {
			return hc, fmt.Errorf("ssh_config %s: Port %q for %s", hc.file, port, alias)
		}
	}
	ids, err := cfg.GetAll(alias, "IdentityFile")
	if err != nil {
		return hc, fmt.Errorf("ssh_config %s: IdentityFile: %w", hc.file, err)
	}
	for _, id := range ids {
		if id = strings.TrimSpace(id); id != "" {
			hc.identities = append(hc.identities, expandHome(id, home))
		}
	}
	return hc, nil
}

// apply fills in rem what the URL left open: the host to dial (and to
// find in known_hosts), the user and the port.
func (hc hostConfig) apply(rem *remote) {
	if hc.hostName != "" {
		rem.host = hc.hostName
	}
	if !rem.userSet && hc.user != "" {
		rem.user = hc.user
	}
	if !rem.portSet && hc.port != 0 {
		rem.port = hc.port
	}
	rem.addr = net.JoinHostPort(rem.host, strconv.Itoa(rem.port))
}
