// Command flechefs mounts a directory that is a tiered cache of computed
// results, and inspects such mounts.
//
//	flechefs mount [flags] MOUNTPOINT     mount, in the foreground
//	flechefs umount MOUNTPOINT            unmount
//	flechefs status MOUNTPOINT            tiers, hit rates, upload queue
//	flechefs sync MOUNTPOINT              wait until every entry is uploaded
//	flechefs warm MOUNTPOINT [KEY...]     fetch entries into the local tiers
//	flechefs prune [--dry-run] MOUNTPOINT a retention pass over bounded remotes
//	flechefs digest NAME [ARG...]         the key of a call
//	flechefs config                       the configuration in effect
//	flechefs version                      the version
//
// Exit status: 0 success, 1 failure, 2 usage error (bad flags or arguments,
// or an invalid configuration). Run "flechefs help COMMAND" for details.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// command is one subcommand.
type command struct {
	name    string
	summary string // one line, for flechefs help
	usage   string // synopsis, description and examples, for flechefs help NAME
	// setup registers the flags and returns the function that runs with
	// the positional arguments.
	setup func(fs *flagSet) func(c *cli, args []string) int
	// interspersed: flags may follow positional arguments (not for digest,
	// whose arguments may look like flags: -42).
	interspersed bool
}

var commands []*command

func init() {
	commands = []*command{
		mountCommand, umountCommand, statusCommand, syncCommand, warmCommand, pruneCommand,
		digestCommand, configCommand, versionCommand, helpCommand,
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// cli is one invocation's input and outputs.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	cmd            *command
	args           []string // the command's arguments, flags included
}

func main() {
	if strings.HasPrefix(filepath.Base(os.Args[0]), "mount.") {
		// Installed as /sbin/mount.fuse.flechefs: mount(8) runs it.
		os.Exit(runHelper(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// runHelper runs a mount helper's command line (see helper.go).
func runHelper(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	margs, err := helperArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "flechefs (mount helper): %v\n", err)
		return exitUsage
	}
	if margs == nil {
		return exitOK // mount -f
	}
	return run(margs, stdin, stdout, stderr)
}

// run runs the command line args (without the program name) and returns
// the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		c.mainUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help":
		c.mainUsage(stdout)
		return exitOK
	case "-version", "--version":
		args = []string{"version"}
	}
	cmd := lookup(args[0])
	if cmd == nil && isHelperCall(args) {
		// mount.fuse3 runs "flechefs SOURCE DIR -o OPTIONS".
		return runHelper(args, stdin, stdout, stderr)
	}
	if cmd == nil {
		if strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "flechefs: flag %s before a command\n", args[0])
		} else {
			fmt.Fprintf(stderr, "flechefs: unknown command %q\n", args[0])
		}
		fmt.Fprintln(stderr, "Run 'flechefs help' for the list of commands.")
		return exitUsage
	}
	c.cmd, c.args = cmd, args[1:]
	fs := newFlagSet(cmd.name)
	runFn := cmd.setup(fs)
	pos, err := fs.parse(args[1:], cmd.interspersed)
	if errors.Is(err, flag.ErrHelp) {
		c.commandUsage(stdout, cmd)
		return exitOK
	}
	if err != nil {
		return c.usageError("%v", err)
	}
	return runFn(c, pos)
}

// usageError reports a bad command line and returns exitUsage.
func (c *cli) usageError(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "flechefs %s: %s\n", c.cmd.name, fmt.Sprintf(format, args...))
	fmt.Fprintf(c.stderr, "Run 'flechefs %s --help' for usage.\n", c.cmd.name)
	return exitUsage
}

// fail reports a runtime error and returns exitFail.
func (c *cli) fail(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "flechefs %s: %s\n", c.cmd.name, fmt.Sprintf(format, args...))
	return exitFail
}

func (c *cli) mainUsage(w io.Writer) {
	fmt.Fprint(w, `flechefs mounts a directory that is a tiered cache of computed results: each
file is named by the digest of a computation and holds its result, kept in a
stack of tiers, fastest first (RAM, a local database, a shared SFTP server).

Usage: flechefs COMMAND [flags] [arguments]

Commands:
`)
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprint(w, `
Run 'flechefs help COMMAND' or 'flechefs COMMAND --help' for the flags and
examples of a command. Flags are written --flag or -flag.

Exit status: 0 success, 1 failure, 2 usage error or invalid configuration.
`)
}

func (c *cli) commandUsage(w io.Writer, cmd *command) {
	fs := newFlagSet(cmd.name)
	cmd.setup(fs)
	fmt.Fprint(w, strings.TrimLeft(cmd.usage, "\n"))
	if len(fs.order) > 0 {
		fmt.Fprint(w, "\nFlags:\n")
		fs.printFlags(w)
	}
}

var helpCommand = &command{
	name:    "help",
	summary: "show the commands, or the help of one",
	usage: `
Usage: flechefs help [COMMAND]

Shows the list of commands, or the flags and examples of COMMAND.
`,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		return func(c *cli, args []string) int {
			switch len(args) {
			case 0:
				c.mainUsage(c.stdout)
				return exitOK
			case 1:
				cmd := lookup(args[0])
				if cmd == nil {
					return c.usageError("unknown command %q", args[0])
				}
				c.commandUsage(c.stdout, cmd)
				return exitOK
			default:
				return c.usageError("too many arguments")
			}
		}
	},
}
