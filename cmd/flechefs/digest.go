package main

import (
	"fmt"
	"io"
	"os"

	"github.com/flechefs/flechefs/digest"
)

var digestCommand = &command{
	name:    "digest",
	summary: "print the key of a call, or the SHA-256 of a file",
	usage: `
Usage: flechefs digest [--json] NAME [ARG...]
       flechefs digest --file PATH

Prints the key of the call NAME(ARG...): the SHA-256 of the canonical JSON
of {"args": [ARG...], "fn": NAME}, the file name under which a result is
cached (see the digest package for the scheme; Python computes the same with
the standard library). Each ARG is a string, or with --json a JSON value:
integers, strings, true, false, null, arrays and objects (not floats, which
have no language-neutral form). Flags go before NAME: what follows NAME is
arguments, even when it starts with "-".

With --file, prints the SHA-256 of the content of PATH ("-" for the
standard input), read as a stream.

Examples:
  flechefs digest simulate
  flechefs digest --json simulate '"a"' 1 true null
  flechefs digest --json build -42 9007199254740993
  cat result.bin > /mnt/cache/$(flechefs digest simulate run-7)
  flechefs digest --file result.bin
`,
	setup: func(fs *flagSet) func(c *cli, args []string) int {
		asJSON := fs.boolFlag("json", "parse each ARG as a JSON value instead of taking it as a string")
		file := fs.stringFlag("file", "PATH", "", `print the SHA-256 of the content of PATH ("-": standard input) instead`)
		return func(c *cli, args []string) int {
			if *file != "" {
				if len(args) > 0 || *asJSON {
					return c.usageError("--file takes no NAME, ARG or --json")
				}
				sum, err := fileSum(*file, c.stdin)
				if err != nil {
					return c.fail("%v", err)
				}
				fmt.Fprintln(c.stdout, sum)
				return exitOK
			}
			if len(args) == 0 {
				return c.usageError("missing NAME (or --file PATH)")
			}
			k, err := digestArgs(args[0], args[1:], *asJSON)
			if err != nil {
				return c.usageError("%v", err)
			}
			fmt.Fprintln(c.stdout, k)
			return exitOK
		}
	},
}

// digestArgs returns the key of the call name(args...); with asJSON each
// argument is parsed as a JSON value, otherwise each is a string.
func digestArgs(name string, args []string, asJSON bool) (digest.Key, error) {
	vals, err := digest.ParseArgs(args, asJSON)
	if err != nil {
		return digest.Key{}, err
	}
	return digest.Call(name, vals)
}

// fileSum streams the file at path ("-": stdin) through a digest.Hasher.
func fileSum(path string, stdin io.Reader) (digest.Sum, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return digest.Sum{}, err
		}
		defer f.Close()
		r = f
	}
	h := digest.NewHasher()
	if _, err := io.Copy(h, r); err != nil {
		if path == "-" {
			err = fmt.Errorf("standard input: %w", err)
		}
		return digest.Sum{}, err // an *os.PathError names the file
	}
	return h.Sum(), nil
}
