package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
// When empty, it comes from the module version or the VCS revision the
// binary was built from.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += "-dirty"
	}
	return "devel-" + rev
}

var versionCommand = &command{
	name:    "version",
	summary: "print the version",
	usage: `
Usage: flechefs version

Prints the version of flechefs, and the Go version and platform it was
built with.
`,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		return func(c *cli, args []string) int {
			if len(args) > 0 {
				return c.usageError("no arguments expected")
			}
			fmt.Fprintf(c.stdout, "flechefs %s (%s %s/%s)\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return exitOK
		}
	},
}
