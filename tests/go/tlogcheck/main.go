// Command tlogcheck cross-checks cityledger's C2SP transparency-log artefacts
// (signed notes, checkpoints, cosignatures, tiles, entry bundles and
// .tlog-proof receipts) with the Go team's own implementation in
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog. cityledger and
// its tests are Python; checking its output with code nobody on the project
// wrote keeps a mistake shared by both from passing unnoticed.
//
// Each subcommand prints one line starting with "ok" on standard output and
// exits 0 when the artefact checks out. Otherwise it prints the reason on
// standard error and exits 1. Usage errors exit 2. Run it without arguments
// for the usage.
//
// It needs nothing but the standard library and x/mod, and builds offline
// against Debian's golang-go and golang-golang-x-mod-dev:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o tlogcheck ./tests/go/tlogcheck
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const usage = `usage: tlogcheck COMMAND ARGS...

  note VKEY FILE
      Open the signed note in FILE with x/mod's note.Open and the Ed25519
      verifier key VKEY (signed-note vkey, type 0x01).
      prints: ok NAME

  checkpoint VKEY FILE
      As note; the note text must also be a C2SP checkpoint with no extension
      lines whose origin is VKEY's name (PROTOCOL.md 7: the log's key name is
      its origin).
      prints: ok ORIGIN SIZE ROOTHEX

  cosig WITNESS_VKEY FILE
      Verify the C2SP tlog-cosignature/v1 (type 0x04, timestamped Ed25519) by
      WITNESS_VKEY on the checkpoint note in FILE. Other signatures are ignored.
      prints: ok TIMESTAMP

  inclusion URL_PREFIX INDEX LEAF SIZE ROOTB64
      Prove entry INDEX in the tree of SIZE leaves and root ROOTB64 from the
      hash tiles that the C2SP tlog-tiles server at URL_PREFIX serves, and
      check that entry in its entry bundle. LEAF is either the leaf hash as 64
      hex digits, or @PATH: the entry itself (its leaf data, the bytes whose
      SHA-256(0x00 || data) is the leaf hash) read from the file PATH; @- reads
      it from standard input.
      prints: ok INDEX SIZE LEAFHEX

  consistency URL_PREFIX OLDSIZE OLDROOTB64 NEWSIZE NEWROOTB64
      Prove from the tiles at URL_PREFIX that the tree of NEWSIZE leaves
      contains the tree of OLDSIZE leaves (1 <= OLDSIZE <= NEWSIZE).
      prints: ok OLDSIZE NEWSIZE

  tlogproof LEDGER_VKEY FILE
      Check the C2SP tlog-proof receipt in FILE as PROTOCOL.md 7 steps 2-4 do:
      the leaf hash of the extra data, the inclusion path to the checkpoint's
      root, and the log's signature by LEDGER_VKEY. Cosignatures and the
      device signature are not checked.
      prints: ok ORIGIN SIZE INDEX LEAFHEX

  vector
      Check the test vector of PROTOCOL.md 7.1, copied into this program.
      prints: ok vector

FILE may be - for standard input. Hashes are printed as lowercase hex, root
arguments are standard padded base64 as in checkpoints. Exit status: 0 ok,
1 the check failed (reason on standard error), 2 usage error.
`

// usageError is an error in the command line rather than in an artefact.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...interface{}) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

type command struct {
	name  string
	nargs int
	run   func(args []string) (string, error)
}

var commands = []command{
	{"note", 2, cmdNote},
	{"checkpoint", 2, cmdCheckpoint},
	{"cosig", 2, cmdCosig},
	{"inclusion", 5, cmdInclusion},
	{"consistency", 5, cmdConsistency},
	{"tlogproof", 2, cmdTlogProof},
	{"vector", 0, cmdVector},
}

// diag receives remarks that do not change the outcome, such as a tile
// fallback; standard output stays a single "ok" line for callers to parse.
var diag io.Writer = os.Stderr

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		if len(args)-1 != c.nargs {
			fmt.Fprintf(os.Stderr, "tlogcheck %s: want %d arguments, got %d\n\n%s", c.name, c.nargs, len(args)-1, usage)
			return 2
		}
		out, err := c.run(args[1:])
		var ue *usageError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(os.Stderr, "tlogcheck %s: %v\n\n%s", c.name, err, usage)
			return 2
		case err != nil:
			fmt.Fprintf(os.Stderr, "tlogcheck %s: %v\n", c.name, err)
			return 1
		}
		fmt.Println(out)
		return 0
	}
	fmt.Fprintf(os.Stderr, "tlogcheck: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// ---- subcommands ----------------------------------------------------------

func cmdNote(args []string) (string, error) {
	msg, err := readInput(args[1])
	if err != nil {
		return "", err
	}
	_, n, err := openNote(args[0], msg)
	if err != nil {
		return "", err
	}
	names := make([]string, len(n.Sigs))
	for i, s := range n.Sigs {
		names[i] = s.Name
	}
	return "ok " + strings.Join(names, " "), nil
}

func cmdCheckpoint(args []string) (string, error) {
	msg, err := readInput(args[1])
	if err != nil {
		return "", err
	}
	cp, err := openCheckpoint(args[0], msg)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("ok %s %d %s", cp.Origin, cp.Size, hex.EncodeToString(cp.Root[:])), nil
}

func cmdCosig(args []string) (string, error) {
	msg, err := readInput(args[1])
	if err != nil {
		return "", err
	}
	v, err := newCosigVerifier(args[0])
	if err != nil {
		return "", err
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return "", explainOpen(err, v)
	}
	// The cosigned message covers extension lines too, but PROTOCOL.md 7
	// allows none, so the body must be a plain checkpoint.
	if _, err := parseCheckpoint(n.Text); err != nil {
		return "", err
	}
	// Open only keeps signatures that verified; the timestamp is the first
	// eight bytes after the key ID of the (first) one by this cosigner.
	sig, err := base64.StdEncoding.DecodeString(n.Sigs[0].Base64)
	if err != nil || len(sig) < 12 {
		return "", fmt.Errorf("cosignature re-decoding failed")
	}
	return fmt.Sprintf("ok %d", binary.BigEndian.Uint64(sig[4:12])), nil
}

func cmdInclusion(args []string) (string, error) {
	prefix, err := parsePrefix(args[0])
	if err != nil {
		return "", err
	}
	index, err := parseIntArg("INDEX", args[1])
	if err != nil {
		return "", err
	}
	size, err := parseIntArg("SIZE", args[3])
	if err != nil {
		return "", err
	}
	if index >= size {
		return "", usagef("INDEX %d is not below SIZE %d", index, size)
	}
	root, err := decodeHash(args[4])
	if err != nil {
		return "", fmt.Errorf("ROOTB64: %v", err)
	}
	var leaf tlog.Hash
	var leafData []byte
	if path := strings.TrimPrefix(args[2], "@"); path != args[2] {
		if leafData, err = readInput(path); err != nil {
			return "", err
		}
		leaf = tlog.RecordHash(leafData)
	} else if leaf, err = parseHexHash(args[2]); err != nil {
		return "", usagef("LEAF must be 64 hex digits or @PATH: %v", err)
	}

	srv := newTileServer(prefix)
	hr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, srv)
	proof, err := tlog.ProveRecord(size, index, hr)
	if err != nil {
		return "", fmt.Errorf("building the inclusion proof from tiles: %v", err)
	}
	if err := tlog.CheckRecord(proof, size, root, index, leaf); err != nil {
		return "", fmt.Errorf("leaf %x at index %d is not in the tree of size %d with root %x: %v", leaf[:], index, size, root[:], err)
	}

	// The bundle holding INDEX, as wide as the tree of SIZE makes it.
	n := index / fullWidth
	w := size - n*fullWidth
	if w > fullWidth {
		w = fullWidth
	}
	entries, err := srv.readBundle(n, int(w))
	if err != nil {
		return "", err
	}
	// tlog-tiles requires every entry of the bundle to be the tree's leaf at
	// its index, not only the one asked about. Each is proven against the root
	// rather than compared with the level-0 tile: see tileServer on why hashes
	// from x/mod's TileHashReader are not taken as authenticated.
	for i, e := range entries {
		at := n*fullWidth + int64(i)
		p, err := tlog.ProveRecord(size, at, hr)
		if err != nil {
			return "", fmt.Errorf("building the inclusion proof of entry %d from tiles: %v", at, err)
		}
		if err := tlog.CheckRecord(p, size, root, at, tlog.RecordHash(e)); err != nil {
			return "", fmt.Errorf("entry %d in bundle %s is not in the tree of size %d with root %x: %v",
				at, bundlePath(n, int(w)), size, root[:], err)
		}
	}
	entry := entries[index%fullWidth]
	if leafData != nil && !bytes.Equal(entry, leafData) {
		return "", fmt.Errorf("entry %d is %q, not the given leaf data", index, entry)
	}
	if h := tlog.RecordHash(entry); h != leaf {
		return "", fmt.Errorf("entry %d hashes to %x, not the given leaf hash %x", index, h[:], leaf[:])
	}
	return fmt.Sprintf("ok %d %d %x", index, size, leaf[:]), nil
}

func cmdConsistency(args []string) (string, error) {
	prefix, err := parsePrefix(args[0])
	if err != nil {
		return "", err
	}
	oldSize, err := parseIntArg("OLDSIZE", args[1])
	if err != nil {
		return "", err
	}
	newSize, err := parseIntArg("NEWSIZE", args[3])
	if err != nil {
		return "", err
	}
	// A consistency proof from the empty tree proves nothing, and x/mod
	// refuses it too.
	if oldSize < 1 || oldSize > newSize {
		return "", usagef("need 1 <= OLDSIZE <= NEWSIZE, got %d and %d", oldSize, newSize)
	}
	oldRoot, err := decodeHash(args[2])
	if err != nil {
		return "", fmt.Errorf("OLDROOTB64: %v", err)
	}
	newRoot, err := decodeHash(args[4])
	if err != nil {
		return "", fmt.Errorf("NEWROOTB64: %v", err)
	}
	hr := tlog.TileHashReader(tlog.Tree{N: newSize, Hash: newRoot}, newTileServer(prefix))
	proof, err := tlog.ProveTree(newSize, oldSize, hr)
	if err != nil {
		return "", fmt.Errorf("building the consistency proof from tiles: %v", err)
	}
	if err := tlog.CheckTree(proof, newSize, newRoot, oldSize, oldRoot); err != nil {
		return "", fmt.Errorf("the tree of size %d with root %x does not contain the tree of size %d with root %x: %v",
			newSize, newRoot[:], oldSize, oldRoot[:], err)
	}
	return fmt.Sprintf("ok %d %d", oldSize, newSize), nil
}

func cmdTlogProof(args []string) (string, error) {
	msg, err := readInput(args[1])
	if err != nil {
		return "", err
	}
	r, err := verifyReceipt(args[0], msg)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("ok %s %d %d %x", r.cp.Origin, r.cp.Size, r.proof.Index, r.leaf[:]), nil
}

// ---- signed notes and checkpoints -----------------------------------------

// openNote opens msg with the single Ed25519 verifier key vkey, explaining
// x/mod's terse errors with what the note actually carries.
func openNote(vkey string, msg []byte) (note.Verifier, *note.Note, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, nil, fmt.Errorf("verifier key %q: %v", vkey, err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return nil, nil, explainOpen(err, v)
	}
	return v, n, nil
}

func explainOpen(err error, v note.Verifier) error {
	var unverified *note.UnverifiedNoteError
	if errors.As(err, &unverified) {
		var have []string
		for _, s := range unverified.Note.UnverifiedSigs {
			have = append(have, fmt.Sprintf("%s+%08x", s.Name, s.Hash))
		}
		return fmt.Errorf("no signature by %s+%08x (signatures present: %s)",
			v.Name(), v.KeyHash(), strings.Join(have, ", "))
	}
	return fmt.Errorf("note.Open: %v", err)
}

type checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// parseCheckpoint parses a C2SP tlog-checkpoint body strictly: exactly the
// origin, size and root lines, since PROTOCOL.md 7 allows no extension lines.
func parseCheckpoint(text string) (checkpoint, error) {
	var cp checkpoint
	if !strings.HasSuffix(text, "\n") {
		return cp, fmt.Errorf("checkpoint text does not end in a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	switch {
	case len(lines) < 3:
		return cp, fmt.Errorf("checkpoint has %d lines, want origin, size and root", len(lines))
	case len(lines) > 3:
		return cp, fmt.Errorf("checkpoint has extension lines %q; PROTOCOL.md 7 allows none", lines[3:])
	}
	cp.Origin = lines[0]
	if cp.Origin == "" {
		return cp, fmt.Errorf("checkpoint origin is empty")
	}
	size, err := parseDecimal(lines[1])
	if err != nil {
		return cp, fmt.Errorf("checkpoint size: %v", err)
	}
	cp.Size = size
	if cp.Root, err = decodeHash(lines[2]); err != nil {
		return cp, fmt.Errorf("checkpoint root: %v", err)
	}
	// RFC 6962 defines the empty tree's hash; a checkpoint cannot pick another.
	if cp.Size == 0 && cp.Root != tlog.Hash(sha256.Sum256(nil)) {
		return cp, fmt.Errorf("checkpoint of size 0 has root %x, not SHA-256 of nothing", cp.Root[:])
	}
	return cp, nil
}

// openCheckpoint verifies the log's signature on msg and parses its body.
func openCheckpoint(vkey string, msg []byte) (checkpoint, error) {
	v, n, err := openNote(vkey, msg)
	if err != nil {
		return checkpoint{}, err
	}
	cp, err := parseCheckpoint(n.Text)
	if err != nil {
		return cp, err
	}
	// A key is trusted for one log only; a valid signature on another log's
	// checkpoint must not pass for this one.
	if cp.Origin != v.Name() {
		return cp, fmt.Errorf("checkpoint origin %q is not the key's name %q", cp.Origin, v.Name())
	}
	return cp, nil
}

// ---- cosignatures ---------------------------------------------------------

const algCosignatureV1 = 0x04

// cosigVerifier is a note.Verifier for C2SP tlog-cosignature/v1 (signature
// type 0x04), which x/mod 0.7's note.NewVerifier does not know. note.Open
// takes any Verifier, so the signed-note parsing stays x/mod's and only the
// signature algorithm is written here.
type cosigVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

// newCosigVerifier parses a type 0x04 vkey, name+hex(keyID)+base64(0x04||key),
// and insists on the key ID that tlog-cosignature prescribes.
func newCosigVerifier(vkey string) (*cosigVerifier, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("witness vkey %q is not name+keyid+key", vkey)
	}
	name, id16, key64 := parts[0], parts[1], parts[2]
	if name == "" || strings.IndexFunc(name, unicode.IsSpace) >= 0 {
		return nil, fmt.Errorf("witness vkey %q: bad key name", vkey)
	}
	id, err := strconv.ParseUint(id16, 16, 32)
	if err != nil || len(id16) != 8 {
		return nil, fmt.Errorf("witness vkey %q: key ID %q is not 8 hex digits", vkey, id16)
	}
	key, err := decodeBase64(key64)
	if err != nil {
		return nil, fmt.Errorf("witness vkey %q: %v", vkey, err)
	}
	if len(key) != 1+ed25519.PublicKeySize || key[0] != algCosignatureV1 {
		return nil, fmt.Errorf("witness vkey %q: want 0x04 and a 32-byte Ed25519 key, got %d bytes starting 0x%02x",
			vkey, len(key), key[0])
	}
	sum := sha256.Sum256([]byte(name + "\n" + string(key)))
	if want := binary.BigEndian.Uint32(sum[:4]); uint32(id) != want {
		return nil, fmt.Errorf("witness vkey %q: key ID %08x, but SHA-256(name || 0x0A || 0x04 || key)[:4] is %08x",
			vkey, id, want)
	}
	return &cosigVerifier{name: name, hash: uint32(id), key: ed25519.PublicKey(key[1:])}, nil
}

func (v *cosigVerifier) Name() string    { return v.name }
func (v *cosigVerifier) KeyHash() uint32 { return v.hash }

// Verify checks a timestamped_signature (u64 big-endian timestamp, then the
// Ed25519 signature) over "cosignature/v1\ntime <t>\n" and the note text.
func (v *cosigVerifier) Verify(text, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	if t > math.MaxInt64 {
		return false
	}
	msg := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), text...)
	return ed25519.Verify(v.key, msg, sig[8:])
}

// ---- tiles ----------------------------------------------------------------

// fullWidth is the width of a full C2SP tile and entry bundle; tlog-tiles
// fixes the tile height at 8.
const (
	tileHeight = 8
	fullWidth  = 1 << tileHeight
)

// c2spTilePath maps a tile to tlog-tiles' path. Go's sumdb puts the height in
// the path (tile/8/L/N); C2SP has a fixed height and leaves it out.
func c2spTilePath(level string, n int64, w int) string {
	nStr := fmt.Sprintf("%03d", n%1000)
	for n >= 1000 {
		n /= 1000
		nStr = fmt.Sprintf("x%03d/%s", n%1000, nStr)
	}
	p := "tile/" + level + "/" + nStr
	if w < fullWidth {
		p += fmt.Sprintf(".p/%d", w)
	}
	return p
}

func bundlePath(n int64, w int) string { return c2spTilePath("entries", n, w) }

// tileServer reads tiles and entry bundles from a tlog-tiles HTTP prefix,
// each path at most once per run, and is the tlog.TileReader for x/mod's
// TileHashReader.
//
// TileHashReader is meant to authenticate every tile against the tree hash,
// but in x/mod 0.7 (and upstream at the time of writing) its loop that checks
// full tiles against their parents starts at len(stx), the number of subtree
// hashes the root needs, rather than at the number of distinct tiles holding
// them; when those share tiles, the tiles fetched for the requested indexes
// can go unchecked. So nothing here trusts a hash merely because
// TileHashReader returned it: every conclusion goes through tlog.CheckRecord
// or tlog.CheckTree against the root.
type tileServer struct {
	prefix string
	client *http.Client
	cache  map[string][]byte
}

func newTileServer(prefix string) *tileServer {
	return &tileServer{prefix: prefix, client: &http.Client{Timeout: 30 * time.Second}, cache: map[string][]byte{}}
}

func (s *tileServer) Height() int { return tileHeight }

// SaveTiles keeps nothing: each run is a fresh, independent check.
func (s *tileServer) SaveTiles([]tlog.Tile, [][]byte) {}

func (s *tileServer) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	data := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t.H != tileHeight || t.L < 0 {
			return nil, fmt.Errorf("unexpected tile %+v", t)
		}
		level := strconv.Itoa(t.L)
		b, full, err := s.readWithFallback(level, t.N, t.W)
		if err != nil {
			return nil, err
		}
		want := t.W
		if full {
			want = fullWidth
		}
		if len(b) != want*tlog.HashSize {
			return nil, fmt.Errorf("%s has %d bytes, want %d", c2spTilePath(level, t.N, want), len(b), want*tlog.HashSize)
		}
		b = b[:t.W*tlog.HashSize]
		data[i] = b
	}
	return data, nil
}

// readBundle returns the w entries of entry bundle n.
func (s *tileServer) readBundle(n int64, w int) ([][]byte, error) {
	b, full, err := s.readWithFallback("entries", n, w)
	if err != nil {
		return nil, err
	}
	want := w
	if full {
		want = fullWidth
	}
	var entries [][]byte
	for rest := b; len(rest) > 0; {
		if len(rest) < 2 {
			return nil, fmt.Errorf("%s: truncated length prefix after %d entries", bundlePath(n, w), len(entries))
		}
		l := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+l {
			return nil, fmt.Errorf("%s: entry %d claims %d bytes, %d remain", bundlePath(n, w), len(entries), l, len(rest)-2)
		}
		entries = append(entries, rest[2:2+l])
		rest = rest[2+l:]
	}
	if len(entries) != want {
		return nil, fmt.Errorf("%s holds %d entries, want %d", bundlePath(n, want), len(entries), want)
	}
	return entries[:w], nil
}

// readWithFallback fetches a tile or bundle of width w. When a partial one is
// not served it fetches the full one instead and reports full: tlog-tiles lets
// a log delete partial tiles once the full tile exists, and lets clients fall
// back to it. The caller checks the size and trims to width w.
func (s *tileServer) readWithFallback(level string, n int64, w int) (b []byte, full bool, err error) {
	path := c2spTilePath(level, n, w)
	b, err = s.get(path)
	var status *statusError
	if w == fullWidth || !errors.As(err, &status) || status.code != http.StatusNotFound {
		return b, w == fullWidth, err
	}
	fullPath := c2spTilePath(level, n, fullWidth)
	b, ferr := s.get(fullPath)
	if ferr != nil {
		return nil, false, fmt.Errorf("%v, and the full tile: %v", err, ferr)
	}
	fmt.Fprintf(diag, "tlogcheck: %s is not served; used %s\n", path, fullPath)
	return b, true, nil
}

type statusError struct {
	url  string
	code int
}

func (e *statusError) Error() string {
	return fmt.Sprintf("GET %s: HTTP %d %s", e.url, e.code, http.StatusText(e.code))
}

func (s *tileServer) get(path string) ([]byte, error) {
	if b, ok := s.cache[path]; ok {
		return b, nil
	}
	u := s.prefix + "/" + path
	// The default transport asks for gzip and undoes it, as tlog-tiles wants.
	resp, err := s.client.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &statusError{u, resp.StatusCode}
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "application/octet-stream" {
		return nil, fmt.Errorf("GET %s: Content-Type %q, tlog-tiles requires application/octet-stream", u, resp.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<24))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %v", u, err)
	}
	s.cache[path] = b
	return b, nil
}

// ---- tlog-proof receipts --------------------------------------------------

type tlogProof struct {
	Extra      []byte // nil when there is no extra line
	Index      int64
	Path       tlog.RecordProof // leaf's sibling first, as in RFC 6962 and x/mod
	Checkpoint []byte           // the signed note, verbatim
}

// parseTlogProof parses c2sp.org/tlog-proof@v1 strictly.
func parseTlogProof(b []byte) (*tlogProof, error) {
	rest := string(b)
	next := func() (string, bool) {
		i := strings.IndexByte(rest, '\n')
		if i < 0 {
			return "", false
		}
		line := rest[:i]
		rest = rest[i+1:]
		return line, true
	}
	p := &tlogProof{}
	if line, ok := next(); !ok || line != "c2sp.org/tlog-proof@v1" {
		return nil, fmt.Errorf("tlog-proof: first line is %q, want c2sp.org/tlog-proof@v1", line)
	}
	line, _ := next()
	if strings.HasPrefix(line, "extra ") {
		extra, err := decodeBase64(strings.TrimPrefix(line, "extra "))
		if err != nil {
			return nil, fmt.Errorf("tlog-proof: extra: %v", err)
		}
		p.Extra = extra
		line, _ = next()
	}
	if !strings.HasPrefix(line, "index ") {
		return nil, fmt.Errorf("tlog-proof: %q where the index line belongs", line)
	}
	index, err := parseDecimal(strings.TrimPrefix(line, "index "))
	if err != nil {
		return nil, fmt.Errorf("tlog-proof: index: %v", err)
	}
	p.Index = index
	for {
		line, ok := next()
		if !ok {
			return nil, fmt.Errorf("tlog-proof: no empty line before the checkpoint")
		}
		if line == "" {
			break
		}
		h, err := decodeHash(line)
		if err != nil {
			return nil, fmt.Errorf("tlog-proof: inclusion path line %d: %v", len(p.Path)+1, err)
		}
		p.Path = append(p.Path, h)
	}
	p.Checkpoint = []byte(rest)
	return p, nil
}

type receipt struct {
	proof *tlogProof
	cp    checkpoint
	leaf  tlog.Hash
}

// verifyReceipt does PROTOCOL.md 7's receipt steps 2-4 on a .tlog-proof:
// the leaf hash of extra, the inclusion path to the checkpoint's root, and
// the log's signature, which is checked first so no unsigned root is used.
func verifyReceipt(ledgerVkey string, b []byte) (*receipt, error) {
	p, err := parseTlogProof(b)
	if err != nil {
		return nil, err
	}
	if len(p.Extra) == 0 {
		return nil, fmt.Errorf("tlog-proof has no extra line; PROTOCOL.md 7 puts the entry's leaf data there")
	}
	cp, err := openCheckpoint(ledgerVkey, p.Checkpoint)
	if err != nil {
		return nil, fmt.Errorf("tlog-proof checkpoint: %v", err)
	}
	if p.Index >= cp.Size {
		return nil, fmt.Errorf("tlog-proof index %d is not below the checkpoint's size %d", p.Index, cp.Size)
	}
	leaf := tlog.RecordHash(p.Extra)
	if err := tlog.CheckRecord(p.Path, cp.Size, cp.Root, p.Index, leaf); err != nil {
		return nil, fmt.Errorf("inclusion path of %d hashes does not lead from leaf %x at index %d to root %x of size %d: %v",
			len(p.Path), leaf[:], p.Index, cp.Root[:], cp.Size, err)
	}
	return &receipt{proof: p, cp: cp, leaf: leaf}, nil
}

// ---- PROTOCOL.md 7.1 ------------------------------------------------------

// Copied from PROTOCOL.md 7.1 (and section 6 for the reading) by hand, so
// that this program shares no constant with the Python tests.
const (
	vectorLedgerSeedHex = "2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40"
	vectorLedgerPubHex  = "e7f162a10bec559afea195e4dce84b69568d5d2cb0963eb446c0685e2b17f2f0"
	vectorVkey          = "cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw"
	vectorEnrolment     = `{"at":1763999000000,"device":"wm-d01-000042","district":"d01","entry":"device_enrolled","kind":"water","public_key":"79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"}`
	vectorEnrolmentLeaf = "9482ad824f81b970bea3a7695f26127df3fa07dd8c5306019fd6681ccf3eee9a"
	vectorRoot          = "ec142232338418f934c4277d94f8042eb2bd8e6d4a4f8bd766e80b510488fcac"

	vectorCheckpoint = `cityledger.example/d01
2
7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=

— cityledger.example/d01 879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk=
`

	vectorReceipt = `c2sp.org/tlog-proof@v1
extra eyJkZXZpY2UiOiJ3bS1kMDEtMDAwMDQyIiwia2luZCI6IndhdGVyIiwic2VxIjo3LCJzaWciOiJqWTFBdkJkVzJYdlNFYUduMHRIMy8vL0lmSXd0ekNCcm1lTnNhNUZSV1JsaStHQ2NuNnJRQW9TYkdBWnYzOXBzV0dUTGc5TWVPY1lxVWZKUzN2RlhEdz09IiwidHMiOjE3NjQwMDAwMDAwMDAsInYiOjEsInZhbHVlIjoxMjM0NTZ9
index 1
lIKtgk+BuXC+o6dpXyYSffP6B92MUwYBn9ZoHM8+7po=

cityledger.example/d01
2
7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=

— cityledger.example/d01 879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk=
`

	// Section 6: the reading, its device key, what the device signed, its leaf hash.
	vectorDevicePubHex  = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
	vectorReadingSent   = `{"v":1,"device":"wm-d01-000042","kind":"water","seq":7,"ts":1764000000000,"value":123456,"sig":"jY1AvBdW2XvSEaGn0tH3///IfIwtzCBrmeNsa5FRWRli+GCcn6rQAoSbGAZv39psWGTLg9MeOcYqUfJS3vFXDw=="}`
	vectorReadingSigned = "cityledger/reading/v1\n" + `{"device":"wm-d01-000042","kind":"water","seq":7,"ts":1764000000000,"v":1,"value":123456}`
	vectorReadingLeaf   = "f8a11e59b8fffca00e4b627ead16f8b02f36a359e404dd6bb382c561bba71fb1"
)

func cmdVector([]string) (string, error) {
	check := func(ok bool, format string, args ...interface{}) error {
		if ok {
			return nil
		}
		return fmt.Errorf("PROTOCOL.md 7.1: "+format, args...)
	}
	hexHash := func(s string) tlog.Hash {
		h, err := parseHexHash(s)
		if err != nil {
			panic(err) // a constant above is mistyped
		}
		return h
	}

	// The ledger key: seed, public key and vkey agree.
	seed, _ := hex.DecodeString(vectorLedgerSeedHex)
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	if err := check(hex.EncodeToString(pub) == vectorLedgerPubHex, "seed gives public key %x", pub); err != nil {
		return "", err
	}
	vkey, err := note.NewEd25519VerifierKey("cityledger.example/d01", pub)
	if err != nil {
		return "", err
	}
	if err := check(vkey == vectorVkey, "x/mod makes the vkey %s", vkey); err != nil {
		return "", err
	}

	// The checkpoint verifies, says what 7.1 says, and is byte for byte what
	// x/mod's signer makes of its text (Ed25519 is deterministic).
	cp, err := openCheckpoint(vectorVkey, []byte(vectorCheckpoint))
	if err != nil {
		return "", fmt.Errorf("PROTOCOL.md 7.1 checkpoint: %v", err)
	}
	root := hexHash(vectorRoot)
	if err := check(cp.Origin == "cityledger.example/d01" && cp.Size == 2 && cp.Root == root,
		"checkpoint reads %s %d %x", cp.Origin, cp.Size, cp.Root[:]); err != nil {
		return "", err
	}
	privKey := append([]byte{0x01}, seed...)
	signer, err := note.NewSigner(fmt.Sprintf("PRIVATE+KEY+cityledger.example/d01+%s+%s",
		strings.SplitN(vectorVkey, "+", 3)[1], base64.StdEncoding.EncodeToString(privKey)))
	if err != nil {
		return "", fmt.Errorf("x/mod signer from the seed: %v", err)
	}
	text := vectorCheckpoint[:strings.Index(vectorCheckpoint, "\n\n")+1]
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return "", err
	}
	if err := check(string(signed) == vectorCheckpoint, "x/mod signs the checkpoint as\n%s", signed); err != nil {
		return "", err
	}

	// The leaves and the root.
	h0, h1 := hexHash(vectorEnrolmentLeaf), hexHash(vectorReadingLeaf)
	if h := tlog.RecordHash([]byte(vectorEnrolment)); h != h0 {
		return "", fmt.Errorf("PROTOCOL.md 7.1: the enrolment entry hashes to %x", h[:])
	}
	if h := tlog.NodeHash(h0, h1); h != root {
		return "", fmt.Errorf("PROTOCOL.md 7.1: NodeHash of the two leaves is %x", h[:])
	}
	if err := tlog.CheckRecord(tlog.RecordProof{h1}, 2, root, 0, h0); err != nil {
		return "", fmt.Errorf("PROTOCOL.md 7.1: the enrolment's inclusion: %v", err)
	}

	// The receipt, through the same code as the tlogproof command.
	r, err := verifyReceipt(vectorVkey, []byte(vectorReceipt))
	if err != nil {
		return "", fmt.Errorf("PROTOCOL.md 7.1 receipt: %v", err)
	}
	if err := check(r.leaf == h1 && r.proof.Index == 1 && len(r.proof.Path) == 1 && r.proof.Path[0] == h0 &&
		string(r.proof.Checkpoint) == vectorCheckpoint, "the receipt is not the reading's at index 1"); err != nil {
		return "", err
	}
	// Its extra is the section 6 reading: the same members and values as the
	// payload the device sent, with a device signature that verifies.
	var sent, extra map[string]interface{}
	if err := decodeJSON(vectorReadingSent, &sent); err != nil {
		return "", err
	}
	if err := decodeJSON(string(r.proof.Extra), &extra); err != nil {
		return "", fmt.Errorf("PROTOCOL.md 7.1 receipt extra: %v", err)
	}
	if err := check(reflect.DeepEqual(sent, extra), "the receipt's extra %s is not the reading of section 6", r.proof.Extra); err != nil {
		return "", err
	}
	devicePub, _ := hex.DecodeString(vectorDevicePubHex)
	sig, err := base64.StdEncoding.DecodeString(sent["sig"].(string))
	if err != nil {
		return "", err
	}
	if err := check(ed25519.Verify(devicePub, []byte(vectorReadingSigned), sig), "the device signature does not verify"); err != nil {
		return "", err
	}
	return "ok vector", nil
}

// ---- small parsers --------------------------------------------------------

func readInput(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(path)
}

// decodeBase64 accepts only canonical standard padded base64: the Go decoder
// skips newlines and tolerates non-zero padding bits, which would let two
// different texts stand for the same bytes.
func decodeBase64(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("bad base64 %q: %v", s, err)
	}
	if base64.StdEncoding.EncodeToString(b) != s {
		return nil, fmt.Errorf("non-canonical base64 %q", s)
	}
	return b, nil
}

func decodeHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := decodeBase64(s)
	if err != nil {
		return h, err
	}
	if len(b) != tlog.HashSize {
		return h, fmt.Errorf("%q is %d bytes, want %d", s, len(b), tlog.HashSize)
	}
	copy(h[:], b)
	return h, nil
}

func parseHexHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != tlog.HashSize {
		return h, fmt.Errorf("%q is not %d bytes of hex", s, tlog.HashSize)
	}
	copy(h[:], b)
	return h, nil
}

// parseDecimal parses a non-negative ASCII decimal with no sign and no
// leading zeros, as checkpoints and tlog-proofs write sizes and indexes.
func parseDecimal(s string) (int64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a decimal without leading zeros", s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %v", s, err)
	}
	return n, nil
}

func parseIntArg(name, s string) (int64, error) {
	n, err := parseDecimal(s)
	if err != nil {
		return 0, usagef("%s: %v", name, err)
	}
	return n, nil
}

func parsePrefix(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usagef("URL_PREFIX %q is not an http(s) URL", s)
	}
	return strings.TrimRight(s, "/"), nil
}

func decodeJSON(s string, v interface{}) error {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber() // compare integers as written, not as float64
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}
