package main

import (
	"fmt"
	"os"
	"os/signal"

	"github.com/flechefs/flechefs/internal/sshdtest"
)

func main() {
	s, err := sshdtest.StartE(os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Printf("url=%s\nidentity=%s\nknown=%s\ndir=%s\n", s.URL(), s.IdentityFile, s.KnownHosts, s.Dir)
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt)
	<-c
	s.Stop()
}
