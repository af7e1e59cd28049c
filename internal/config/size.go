package config

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// units maps a lowercase unit to its multiplier. One-letter units are
// binary, as dd, ls -h and free -h read them.
var units = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	"p": 1 << 50, "pib": 1 << 50, "pb": 1e15,
}

const unitHelp = "B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)"

// ParseSize parses a byte count: a plain integer ("4096"), or a decimal
// number and a unit ("512MiB", "10GB", "1.5GiB", "2 G"). Units are
// case-insensitive; KiB, MiB, GiB, TiB, PiB and the one-letter K, M, G, T, P
// are powers of 1024, KB, MB, GB, TB, PB powers of 1000. A fraction of a byte
// is rounded down. The error does not repeat s.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("empty size")
	}
	if len(t) > 40 {
		return 0, errors.New("too long to be a size")
	}
	if t[0] == '-' {
		return 0, errors.New("negative size")
	}
	n := 0
	dot := -1
	for n < len(t) && (t[n] >= '0' && t[n] <= '9' || t[n] == '.' && dot < 0) {
		if t[n] == '.' {
			dot = n
		}
		n++
	}
	num, unit := t[:n], strings.TrimSpace(t[n:])
	if num == "" || num == "." {
		return 0, fmt.Errorf("want a number and a unit among %s", unitHelp)
	}
	mul, ok := units[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q; use %s", unit, unitHelp)
	}
	intPart, frac := num, ""
	if dot >= 0 {
		intPart, frac = num[:dot], num[dot+1:]
	}
	// (intPart·10^len(frac) + frac) · mul / 10^len(frac), exactly.
	v, ok := new(big.Int).SetString(intPart+frac, 10)
	if !ok {
		return 0, fmt.Errorf("want a number and a unit among %s", unitHelp)
	}
	v.Mul(v, big.NewInt(mul))
	v.Quo(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil))
	if !v.IsInt64() {
		return 0, fmt.Errorf("too large: the largest size is %d bytes", int64(math.MaxInt64))
	}
	return v.Int64(), nil
}

// FormatSize formats n bytes with the largest binary unit it reaches:
// "256MiB", "10GiB", "1.5GiB", "512B".
func FormatSize(n int64) string {
	if n < 0 {
		if n == math.MinInt64 {
			return strconv.FormatInt(n, 10) + "B"
		}
		return "-" + FormatSize(-n)
	}
	type u struct {
		name string
		size int64
	}
	for _, x := range []u{{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= x.size {
			if n%x.size == 0 {
				return strconv.FormatInt(n/x.size, 10) + x.name
			}
			s := strconv.FormatFloat(float64(n)/float64(x.size), 'f', 1, 64)
			return strings.TrimSuffix(s, ".0") + x.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
