package main

import (
	"fmt"

	"github.com/flechefs/flechefs/internal/config"
)

var configCommand = &command{
	name:    "config",
	summary: "print the configuration in effect, or the default one",
	usage: `
Usage: flechefs config [--default] [--config FILE] [mount flags]

Reads the configuration as flechefs mount would (--config FILE, else
$XDG_CONFIG_HOME/flechefs/config.toml if it exists, else the built-in
default), applies the flags, checks it and prints it with every default
filled in and every path expanded, warnings first. An invalid configuration
is reported with file, line and column, and exit status 2.

With --default, prints the built-in default configuration, which documents
every key: a starting point for your own.

Examples:
  flechefs config
  flechefs config --config ./cache.toml --remote sftp://me@nas/srv/cache
  mkdir -p ~/.config/flechefs && flechefs config --default > ~/.config/flechefs/config.toml
`,
	interspersed: true,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		def := fs.boolFlag("default", "print the built-in default configuration, with the documentation of every key")
		cf := addConfigFlags(fs)
		return func(c *cli, args []string) int {
			if len(args) > 0 {
				return c.usageError("no arguments expected")
			}
			if *def {
				fmt.Fprint(c.stdout, config.DefaultTOML)
				return exitOK
			}
			cfg, code := cf.load(c)
			if cfg == nil {
				return code
			}
			fmt.Fprint(c.stdout, cfg.TOML())
			return exitOK
		}
	},
}

// configFlags are --config and the flags that override the file.
type configFlags struct {
	file      *string
	overrides []config.Override
}

func addConfigFlags(fs *flagSet) *configFlags {
	cf := &configFlags{}
	cf.file = fs.stringFlag("config", "FILE", "", "read the configuration from FILE instead of $XDG_CONFIG_HOME/flechefs/config.toml or the built-in default")
	for _, f := range config.Flags {
		name := f.Name
		fs.funcFlag(name, f.Arg, f.Usage, func(v string) error {
			cf.overrides = append(cf.overrides, config.Override{Name: name, Value: v})
			return nil
		})
	}
	return cf
}

// load reads the configuration and applies the flags. On failure it
// prints the errors, one per line, and returns nil and the exit code.
func (cf *configFlags) load(c *cli) (*config.Config, int) {
	env := config.OSEnv()
	cfg, err := config.Load(*cf.file, env)
	if err == nil {
		err = cfg.Apply(env, cf.overrides)
	}
	if err != nil {
		// The configuration is part of what the user asked for: an
		// invalid or unreadable one is a usage error.
		if _, ok := err.(config.Errors); ok {
			fmt.Fprintf(c.stderr, "flechefs %s: invalid configuration:\n%v\n", c.cmd.name, err)
		} else {
			fmt.Fprintf(c.stderr, "flechefs %s: %v\n", c.cmd.name, err)
		}
		return nil, exitUsage
	}
	return cfg, exitOK
}
