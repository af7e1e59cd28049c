// Package digest names cache entries and hashes their content.
//
// # Keys
//
// Every entry of a flechefs mount is a file named by a Key: lowercase hex of
// 16 to 128 characters (64 is SHA-256, the form the Python library fleche
// uses), optionally followed by one suffix ".ext" of 1 to 32 characters from
// [A-Za-z0-9_-], so "<digest>.json" and fleche's "<digest>.lock" are keys.
// Parse refuses everything else with an error that wraps ErrInvalid and says
// why: '/', "..", NUL, uppercase hex, empty, overlong or odd characters. A Key
// is a comparable value; parse once at the edge and pass Keys after that.
//
// # Content hashes
//
// Sum is a SHA-256 of an entry's bytes. Hasher computes it while a value
// streams (use it with io.TeeReader or io.MultiWriter). Every copy between
// tiers is checked against it.
//
// # Call digests
//
// Call turns a function name and JSON-like arguments into a key, the same way
// in any language: SHA-256 of the canonical JSON of {"args": [...], "fn": name}
// with sorted object keys, no white space, UTF-8 strings with only the escapes
// JSON requires, and integers as digits. Floats are refused (Python prints 1.0
// where Go and JavaScript print 1). In Python, standard library only:
//
//	hashlib.sha256(json.dumps({"fn": fn, "args": args}, sort_keys=True,
//	    separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
//
// Test vectors (checked by TestCallVectors):
//
//	Call("simulate")                       814ed46ec90fecff3b7ba19d3d23aa27464e68dbb977e362fcadb1383d6f0e96
//	Call("simulate", "a", 1, true, nil)    dbd4865b2550c9e127b38f1e9c8e88bdfe261cb6fb42b0359fdf18399fed9a72
//	Call("build", -42, 9007199254740993)   226d83df41ffd209ba87a14756b08fd05e8760abf3a0b9b757224dd6b19e95bd
package digest
