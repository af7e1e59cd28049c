package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/flechefs/flechefs/internal/config"
)

// flagSet is a flag.FlagSet that remembers the order flags were declared
// in and the name of their argument, for usage text that reads like the
// rest of the help: "--config FILE".
type flagSet struct {
	*flag.FlagSet
	order []string
	args  map[string]string // flag name → argument name, "" for booleans
}

func newFlagSet(name string) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet("flechefs "+name, flag.ContinueOnError), args: map[string]string{}}
	fs.SetOutput(io.Discard) // errors are reported by run, help by commandUsage
	fs.Usage = func() {}
	return fs
}

func (fs *flagSet) declared(name, arg string) {
	fs.order = append(fs.order, name)
	fs.args[name] = arg
}

func (fs *flagSet) boolFlag(name string, usage string) *bool {
	fs.declared(name, "")
	return fs.Bool(name, false, usage)
}

func (fs *flagSet) stringFlag(name, arg, value, usage string) *string {
	fs.declared(name, arg)
	return fs.String(name, value, usage)
}

func (fs *flagSet) intFlag(name string, value int, usage string) *int {
	fs.declared(name, "N")
	return fs.Int(name, value, usage)
}

func (fs *flagSet) durationFlag(name string, value time.Duration, usage string) *time.Duration {
	fs.declared(name, "DURATION")
	return fs.Duration(name, value, usage)
}

func (fs *flagSet) funcFlag(name, arg, usage string, fn func(string) error) {
	fs.declared(name, arg)
	if arg == "" {
		fs.BoolFunc(name, usage, fn)
	} else {
		fs.Func(name, usage, fn)
	}
}

// parse parses args. With interspersed, flags may follow positional
// arguments; "--" ends the flags either way. It returns the positional
// arguments.
func (fs *flagSet) parse(args []string, interspersed bool) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if !interspersed || len(rest) == 0 || consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// printFlags writes one entry per flag, in declaration order:
//
//	--name ARG
//	    usage (default: value)
func (fs *flagSet) printFlags(w io.Writer) {
	for _, name := range fs.order {
		f := fs.Lookup(name)
		head := "  --" + name
		if arg := fs.args[name]; arg != "" {
			head += " " + arg
		}
		fmt.Fprintln(w, head)
		usage := f.Usage
		def := f.DefValue
		if g, ok := f.Value.(flag.Getter); ok {
			if d, ok := g.Get().(time.Duration); ok {
				def = config.FormatDuration(d)
			}
		}
		if def != "" && def != "false" && def != "0" && def != "0s" && fs.args[name] != "" {
			usage += " (default " + def + ")"
		}
		for _, line := range wrap(usage, 72) {
			fmt.Fprintln(w, "      "+line)
		}
	}
}

// wrap breaks s into lines of at most width bytes, at spaces.
func wrap(s string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, word := range strings.Fields(s) {
		if cur.Len() > 0 && cur.Len()+1+len(word) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(word)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}
