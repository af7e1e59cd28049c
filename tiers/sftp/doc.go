// Package sftp is the remote tier: a directory on an SSH server, shared by
// many machines, reached with SFTP (github.com/pkg/sftp over
// golang.org/x/crypto/ssh). It is tested against OpenSSH's sshd and relies
// on how OpenSSH's sftp-server renames; see Caveats.
//
// # Remote layout
//
//	<root>/<key>                    the value's raw bytes, one file per key
//	<root>/.flechefs/sums/<key>     a symlink to "<sha256>.<size>.<created>"
//	<root>/.flechefs/tmp/           uploads in progress
//	<root>/.flechefs/quarantine/    damaged copies moved aside, never deleted
//	<root>/.flechefs/used/<key>     last use, with a retention bound (retention.go)
//	<root>/.flechefs/prune.lease    the one mount pruning, with a bound
//
// Values are plain files named by their key, so other tools (or fleche's
// PickleFile) can read the directory directly. The sum record says what the
// writer uploaded; Stat and Open report it as Info.Sum. Open creates the
// .flechefs directories when it connects (not when ReadOnly).
//
// The sum record is the target of a symbolic link, not a file: one SYMLINK
// request writes it whole (or fails), one READLINK reads it, where a file
// costs an open, a write or read and a close, and a moment when it exists
// empty. The target is the SHA-256 in unpadded base64url (43 characters),
// the size in base 36 and the creation time in Unix milliseconds in base
// 36, separated by dots: under 60 characters for a value under 2 GiB, which
// ext4 and XFS keep in the inode. Regular sum files written by earlier
// versions ("sha256 <hex>\nsize <n>\ncreated <RFC 3339>\n") are still read
// (READLINK fails on them, and the file is read instead); a Put replaces a
// stale one. Tests and tools on the server read and write records with
// LocalSum and WriteLocalSum.
//
// # Publish protocol and first writer wins
//
// Put refuses early (ErrExist) if <root>/<key> exists and the value is
// larger than 1 MiB (for a smaller one the question costs more than a
// wasted upload). Then it
//
//  1. uploads to .flechefs/tmp/<key>.<random> with concurrent writes,
//     hashing and counting the bytes as they stream (a value of 1 MiB or
//     less is read whole first and written with one call);
//  2. checks size and hash against Meta (ErrCorrupt on a difference);
//  3. renames the data to <root>/<key> with a plain SFTP rename (the temp
//     file's close goes out with it: every write was answered). OpenSSH's
//     sftp-server implements the rename with link(2) then unlink(2), so it
//     fails when the name exists: of concurrent writers exactly one wins,
//     the others see the name exist and get ErrExist;
//  4. makes the sum record .flechefs/sums/<key> (one SYMLINK). Only the
//     winner of step 3 gets here; a record already there is decided as
//     "Records and concurrent writers" says, never removed blindly. If
//     this step fails (the connection dropped), Put fails although the
//     data is in place: the caller's retry finds the key (ErrExist) without
//     a record, hashes the data and records it (tiers.Stack does, with
//     Adopt; see "Files flechefs did not write"), never removing it.
//
// The temp file gets Options.Mode (default 0640) with an FSETSTAT sent
// beside the writes and answered before the rename, so a value never
// appears with the server's umask.
//
// A small value thus costs five requests (open, write, close, rename,
// symlink; the close is not waited for) in four round trips. With a sum
// file written in place it took seven, and before that nine requests and
// two more renames in nine round trips. BenchmarkPutSmall, 8 puts in
// flight: 3,530 values/s with sum files, 4,340 with records.
//
// A deferred cleanup keyed on a success flag removes the temp files on every
// failure path; temp files it cannot remove because the connection died are
// removed after the next connect, and temp files of any writer untouched for
// an hour are removed at the first connect.
//
// Why data before sum: the data file only ever appears complete (it is
// renamed into place), and only the writer that placed it (or an adopter
// that hashed it) writes the sum record. A reader can therefore see a data
// file without a record (for one round trip during a Put, or until it is
// adopted if the writer died between steps 3 and 4, or if someone copied a
// file in by hand): see "Files flechefs did not write". Writing the sum
// first would let two concurrent writers with different bytes leave the
// loser's sum next to the winner's data.
//
// Delete removes the sum record, then the data file, so an interrupted Delete
// also leaves a valid entry without sum, never a sum claiming missing data.
// Delete is only ever called for an explicit rm (delete_remote); nothing
// else in flechefs removes a data file from the remote.
//
// # Files flechefs did not write
//
// A data file without a sum record is a file flechefs did not write
// (fleche's PickleFile writing on the server, rsync or cp seeding the
// cache, a restored backup) or an upload cut between its rename and its
// record, whose data is complete since it was renamed into place. It is
// never removed, moved or changed by a lookup, read, listing, upload or
// cleanup. What the tier does with one is Options.Foreign, with one rule
// for Stat, Open and List (foreign.go):
//
//   - ForeignAdopt (the default) serves it, with a zero Info.Sum, unless it
//     looks like a write in progress: a <key>.lock beside it (fleche holds
//     one around its write), or an mtime less than foreignSettle (5 s) old
//     by this machine's clock: then it is ErrNotFound until its writer is
//     done. A <key>.lock without a record is fleche's lock, not an entry.
//     The stack hashes every fetched value; once it has read the whole
//     file, the Reader's Adopt (tiers.Adopter) checks by name that its size
//     and mtime did not change and writes its record (one SYMLINK, which
//     never replaces a record: one that appeared meanwhile is kept when sum
//     and size agree, and the read fails when they do not), so that later
//     readers verify it. A file that changed while it was read is not
//     served and not moved. A name of 64 hex digits that is the SHA-256 of
//     the content verifies itself; other names are trusted: fleche names
//     its pickles by the SHA-256 of the call, not of the content, so a name
//     that is not the content's hash is not damage.
//   - ForeignVerify serves only names whose hex part is 64 digits, with
//     the Reader's Info.Sum set from the name (Stat's stays zero: it says
//     what is recorded): the stack's check of the fetched bytes
//     against it is the verification, and a file whose content is not its
//     name's SHA-256 is damage (quarantined). Other names are
//     tiers.ErrForeign.
//   - ForeignIgnore: every such file is tiers.ErrForeign and unlisted.
//
// A file without a record that is not a regular file is absent, not damage.
// List reads .flechefs/sums beside the root and applies the same rules to
// the names and the .lock files of the same listing, so a listing never
// names an entry that a lookup made right after refuses. Stat and Open of a
// file without a record ask for its <key>.lock (Open beside the head's
// read): one more request, for such files only.
//
// # Records and concurrent writers
//
// Who writes a record: the writer whose rename placed the data file (step
// 4, writeSum), and an adopter, a party that found a data file without a
// record and hashed it whole (Adopt: tiers.Stack when an upload meets such
// a copy; readers that adopt foreign files). Nobody replaces a record in
// place; a record is removed by Delete, and by the two rules below, each
// only after hashing the data file and finding other bytes than the
// record says, and only if the record still reads as it did (removeSumIf).
//
// Rules. Writer W, after winning its rename, SYMLINKs its record; on
// failure it reads the record there: the same sum and size, done (an
// adopter hashed W's data, or W's own earlier try); gone, link again;
// another, hash the data file: other bytes than W's mean W's data was
// deleted after its rename and another writer's is there, so W touches
// nothing and fails with ErrExist (the stack then learns the remote's
// value: a conflict); W's bytes mean the record is stale (its data was
// removed by hand, or an adopter hashed a file replaced before it
// linked): W removes it, links its own, and hashes the data once more,
// removing its record again and failing with ErrExist if the data changed
// meanwhile. Adopter A SYMLINKs the record of what it hashed; on failure it
// leaves the record there alone; after linking, it stats the data file,
// and if the size or modification time differ from what it hashed, it
// removes its record (if still its own) and fails with ErrExist. Deleter D
// removes the record, then the data.
//
// The steps, for two writers W1 and W2 (values v1 ≠ v2), an adopter A and
// a deleter D: W.r (rename), W.s (record), W.h (hash on a record conflict),
// A.h (hash), A.s (record), A.c (check), D.r (remove record), D.d (remove
// data). Every interleaving below is forced against a real sshd by
// TestRecordInterleavings (hooks hold an actor between two steps while the
// others run); the end state is checked on the server's disk and by a
// verified read.
//
//	row  interleaving                                   end state      results
//	R1   W1.r  W2.r✗  [W2 stat: no record]  W1.s          v1 + rec(v1)   W2 ErrExist; its stack waits for the record
//	R2   (rec(v0) stale)  W1.r  W1.s✗  W1.h=v1  W1.s      v1 + rec(v1)   W1 ok
//	R3   W1.r  D.r  D.d  W2.r  W2.s  W1.s✗  W1.h=v2        v2 + rec(v2)   W1 ErrExist (conflict), W2 ok
//	R4   W1.r  D.r  D.d  W2.r  W1.s  W2.s✗  W2.h=v2        v2 + rec(v2)   W1 ok (see Residual), W2 ok
//	R5   (stale)  W1.r  W1.s✗  W1.h=v1  D.r D.d W2.r W2.s  v2 + rec(v2)   W1 finds rec(v2): hashes v2, ErrExist
//	     W1.s✗  W1.h=v2
//	R6   (stale)  W1.r  W1.s✗  W1.h=v1  W1.s  D.r  D.d     v2 + rec(v2)   W1's check hashes v2, finds rec(v2)
//	     W2.r  W2.s  W1.h=v2                                              and leaves it: ErrExist
//	R7   (v0, no record)  A.h=v0  D.d  W1.r  W1.s  A.s✗    v1 + rec(v1)   A ErrExist, W1 ok
//	R8   (v0)  A.h=v0  D.d  W1.r  A.s  A.c✗  W1.s          v1 + rec(v1)   A removes its record, ErrExist; W1 ok
//	R9   (v0)  A.h=v0  D.d  W1.r  A.s  W1.s✗ W1.h=v1       v1 + rec(v1)   W1 replaces A's stale record; A's check
//	     W1.s  A.c✗                                                       finds W1's record, leaves it: ErrExist
//	R10  W1.r  A.h=v1  A.s  A.c  W1.s✗(same)              v1 + rec(v1)   both ok
//	R11  (v1 + rec)  D.r  W2.r✗  D.d  W2.r  W2.s          v2 + rec(v2)   W2 ErrExist, then ok on retry
//	R12  W1.r  (W1 dies)  W2.r✗  W2 hashes  A.s (by W2)   v1 + rec(v1)   the data is adopted
//
// No row ends with a record that disagrees with its data, or with a valid
// record removed. With v1 = v2 every row ends with that value and no
// conflict.
//
// Residual. In R4 W1's record lands beside W2's data (a reader in that
// one-step window sees a size or hash mismatch: not served) and W1's Put
// succeeds although the remote then holds v2: W1's mount keeps v1 until it
// drops it. It takes an explicit delete of the key (rm with delete_remote on
// another mount, or by hand) between W1's rename and its record, plus a
// second writer inside the same window. removeSumIf has a window of one
// round trip between its read and its remove, in which only a delete plus
// a rename plus a record by others could slip a record in; the writer's
// final hash then removes its own record again, leaving the data without
// a record, which the next uploader or reader adopts. An adopter's check
// compares size and modification time (seconds): a file replaced within
// the same second with the same size by a writer that died before its
// record keeps the adopter's record; a reader's hash check then refuses to
// serve it.
//
// # Verification
//
// Names from the server are never trusted: List keeps only regular files
// whose names parse as keys. Stat and Open compare the data file's size with
// the record's and fail with ErrCorrupt when they differ; a garbled record
// is ErrCorrupt too. Readers check that the file is as long as
// recorded and fail with ErrCorrupt when it is shorter (ReadAt, WriteTo) or
// longer (WriteTo). The tier does not hash on read: the stack checks the
// fetched bytes against Info.Sum. A corrupt entry is reported, not
// deleted: the stack asks Quarantine (tiers.Quarantiner) to move it into
// .flechefs/quarantine as <key>.<UTC time>, its record beside it as
// <key>.<UTC time>.sum (data first: an interrupted move leaves a stale
// record, never damaged data without a record, which would be served as a
// foreign file). The quarantine keeps at most maxQuarantine (1000) data
// files; when it is full, the damaged copy stays in place, unserved (it
// fails verification at every read), and the stack logs it. An upload of
// the key then finds it in the way and tries again later; once it is moved
// (or removed by hand), the upload repairs the remote from the verified
// local copy.
//
// # Timeouts
//
// No call hangs on a dead server. Dialing (TCP, SSH handshake, SFTP start,
// directory creation) is bounded by Options.Timeout. Every operation runs
// under a watchdog: when the server has sent nothing for Timeout while the
// operation waits on it, the connection is closed, which fails every request
// on it at once with ErrUnavailable ("no answer from HOST for 10s"). Time
// spent in the caller's reader (Put) or writer (WriteTo) does not count, so
// a large transfer may take as long as it needs while data flows. Idle
// connections send keepalive@openssh.com every 15s (or Timeout, if longer)
// under the same watchdog, and TCP keepalive is on. A caller's context is
// checked before an operation and between the chunks of an upload; an
// operation already waiting on the server finishes or times out.
//
// # Reconnect
//
// The tier keeps one SSH connection with one SFTP session behind a mutex.
// When it breaks (EOF, connection lost, network error, watchdog), it is
// marked dead and dialed again: at once, in the background, when the lost
// connection had lived 30s or more (so that the next caller finds a
// connection, or a known outage, rather than waiting out a dial), else by
// the next operation (a server that accepts and then drops connections is
// not dialed in a loop). Concurrent callers share one dial and wait for
// it. When that dial fails, the tier is in an outage:
// callers fail at once with the dial's error (they never wait on a dial, so
// a frozen host does not stall them), and the tier dials again in the
// background after a backoff of 250ms, doubling to 5s, each ±20%, whether
// or not anyone asks. A server that comes back is thus found within 6s, and the
// next caller gets the connection. The same failure is logged once a
// minute, a changed one at once; a successful dial resets all of it.
// Readers are tied to the connection they were opened on and fail with
// ErrUnavailable when it drops (the caller opens again). With Options.Lazy, Open dials once and fails only when
// the server refused this client for good (ErrPermanent: host key, login,
// remote directory), so a mount starts while the server is down but not
// with a remote that can never work.
//
// # Host keys and authentication
//
// The host key must be in the known_hosts file (Options.KnownHosts); there
// is no option to skip the check. Unknown and changed keys give a
// *HostKeyError naming the host, the file and the line. The client asks the
// server for the key types known_hosts holds for the host. Keys come from
// identity files and, with UseAgent, from ssh-agent; encrypted identity
// files are only usable through the agent. Errors and logs never contain
// key material or passphrases. The user's ssh_config names the host to
// dial, the user, the port and the identity files of a Host alias
// (sshconfig.go); a ProxyJump or ProxyCommand there is an error that
// points to TransportSSH.
//
// # The system's ssh client
//
// With TransportSSH the connection is the system's ssh client instead
// (transport.go): one `ssh -s HOST sftp` process per SFTP session, SFTP over
// its pipes, so that everything ssh_config can say (ProxyJump, Host aliases,
// certificates, Kerberos, hardware keys, ControlMaster) works. Host keys and
// logins are then ssh's: its last words on stderr are the error, and a
// refused host key or login, or an invalid ssh_config, is ErrPermanent. ssh
// runs in BatchMode (never a prompt) with ServerAliveInterval, so a dead
// peer ends the process, which ends the connection; the keepalive and the
// round-trip measure use an SFTP request (REALPATH). A lane is one more
// process (through the jump host too, or through ssh's ControlMaster).
//
// # Transfers
//
// Reads and writes use up to Options.Concurrency requests in flight.
// OpenSSH's sftp-server (8.7 and later, which announce limits@openssh.com)
// accepts 261120-byte reads and writes, and the tier uses that size; a
// full 256 KiB write exceeds its 256 KiB message limit and makes it drop the
// connection. Other servers get 32 KiB. The Reader implements io.WriterTo
// for whole-value fetches with reads in flight and writes in order.
//
// Open sends the data file's open and the sum record's READLINK together.
// With a record, Open returns when both have answered (one round trip) with
// the record's size, hash and time, and the first 64 KiB (the head; a
// smaller value's recorded size exactly) are read in the background, with
// an fstat beside them: ReadAt and WriteTo wait for them, and a data file
// whose size disagrees with the record fails them with ErrCorrupt. A small
// value has arrived after two round trips, and a lookup of it answers
// after one. (Asking for more than the recorded size would cost a third:
// pkg/sftp's ReadAt asks again after a short reply, to see the end.)
// Without a record (or with a garbled one) Open reads the head and fstats
// before it returns, and a size that disagrees fails Open. WriteTo writes
// the head and reads from where it ends. Stat is a STAT and a READLINK, one
// round trip. A missing key takes one round trip.
//
// # Lanes: several sessions for one transfer on a long link
//
// x/crypto/ssh gives every channel a fixed 2 MiB receive window, and
// OpenSSH's sshd gives every session channel 2 MiB too, so one SFTP session
// moves at most one 2 MiB window per round trip in either direction,
// whatever the bandwidth: the longer the round trip, the lower the rate. On a connection whose round
// trip (measured at the dial, the least of three keepalive@openssh.com,
// beside the directory's requests) is 2 ms or more, a fetch or upload of
// more than 2 MiB spreads its chunks of four packets over the main session and
// Options.Channels-1 more (lanes), each chunk on the least busy handle with
// fewer than three in flight (more would queue behind one window). The
// lanes start in the background at the first large transfer (or Open of a
// large value) and live with the connection; a server that refuses more
// sessions leaves transfers on the main one. A fetch uses a lane's handle
// only when its file has the main handle's size and modification time, so
// a value removed and uploaded again after the Open is not mixed in; an
// upload opens its own temp file on the lanes. Over a 20 ms-each-way link
// (BenchmarkFetchSlowLink, BenchmarkPutSlowLink, 64 MiB): fetch 45 → 98
// MB/s, upload 42 → 93 MB/s with the default three. On loopback one session
// is no limit and lanes only add processes: they are not used.
//
// # Caveats
//
//   - First writer wins needs a server whose plain rename refuses to
//     replace (OpenSSH's sftp-server on a filesystem with hard links).
//     pkg/sftp's own server and OpenSSH on a filesystem without hard links
//     fall back to a check-then-rename that two writers can race.
//   - Modes: values get Options.Mode; records are symbolic links, whose
//     mode Linux ignores: whoever may search .flechefs/sums reads them
//     (a SHA-256, a size and a time, never the value). The directories
//     are created with the server's umask.
//   - Full disks are reported as the server reports them: SFTP version 3
//     has no "no space" code, so it is a plain failure, not ErrNoSpace.
//   - One connection carries all traffic; one sshd process (one core on the
//     server) serves it.
//   - The settle time of files without a record compares the server's mtime
//     with this machine's clock: a server clock ahead delays such files by
//     as much, one behind shortens the settle time by as much. SFTP version
//     3 reports mtimes in whole seconds, so the settle time is 4 to 5 s,
//     and Adopt's check does not see a rewrite of the same size within the
//     second the file was opened. A foreign
//     writer that pauses longer than 5 s inside a file without a lock
//     beside it, or rewrites a file in place after it was adopted, is
//     beyond what the tier can see: the first may be served partial (and
//     adopted so), the second fails verification against the adopted record
//     and is quarantined.
//   - Quarantine moves what is under the key's name when it runs: a good
//     copy uploaded by another machine between this machine's failed read
//     and its move would be moved too (and stays in the quarantine).
package sftp
