package testenv

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A DocBlock is one fenced code block of a Markdown document and the marker
// comment on the line before it: `<!-- snippet: NAME -->` for a block that a
// test runs, `<!-- not run by a test -->` for one that none does.
type DocBlock struct {
	Name string // NAME of the snippet marker; "" for a block marked not run
	Line int    // the line of the opening fence, from 1
	Text string // the block's lines, without the fences
}

var (
	snippetMarker = regexp.MustCompile(`^<!-- snippet: ([a-z0-9-]+) -->$`)
	notRunMarker  = "<!-- not run by a test -->"
)

// DocBlocks reads the Markdown file doc (a path from the module's root, such
// as "docs/clients.md") and returns its fenced code blocks in order. A block
// without a marker on the line before it, a marker not followed by a block,
// and a snippet name used twice fail t: every block of such a document says
// whether a test runs it.
func DocBlocks(t testing.TB, doc string) []DocBlock {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(t), doc))
	if err != nil {
		t.Fatal(err)
	}
	var (
		blocks  []DocBlock
		marker  string // the marker line just read, if the previous line was one
		current *DocBlock
		seen    = map[string]int{}
		lines   []string
	)
	s := bufio.NewScanner(strings.NewReader(string(b)))
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		if current != nil {
			if strings.TrimSpace(line) == "```" {
				current.Text = strings.Join(lines, "\n") + "\n"
				blocks = append(blocks, *current)
				current, lines = nil, nil
			} else {
				lines = append(lines, line)
			}
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			current = &DocBlock{Line: n}
			switch m := snippetMarker.FindStringSubmatch(marker); {
			case m != nil:
				if first, dup := seen[m[1]]; dup {
					t.Fatalf("%s:%d: snippet %q is also the name of the block at line %d", doc, n, m[1], first)
				}
				seen[m[1]] = n
				current.Name = m[1]
			case marker == notRunMarker:
			default:
				t.Fatalf("%s:%d: a code block without %q or %q on the line before it", doc, n, "<!-- snippet: NAME -->", notRunMarker)
			}
			marker = ""
			continue
		}
		if marker != "" {
			t.Fatalf("%s:%d: %s is not followed by a code block", doc, n-1, marker)
		}
		if m := strings.TrimSpace(line); snippetMarker.MatchString(m) || m == notRunMarker {
			marker = m
		}
	}
	if current != nil {
		t.Fatalf("%s:%d: code block not closed", doc, current.Line)
	}
	return blocks
}

// Snippet returns the code block of doc marked `<!-- snippet: name -->`, with
// the placeholders replaced: replace is pairs of old and new strings (applied
// as one strings.Replacer). Each old string must occur in the block, so a
// test fails when the document stops saying what the test substitutes.
func Snippet(t testing.TB, doc, name string, replace ...string) string {
	t.Helper()
	if len(replace)%2 != 0 {
		t.Fatalf("Snippet %s: replace holds pairs, got %d strings", name, len(replace))
	}
	for _, b := range DocBlocks(t, doc) {
		if b.Name != name {
			continue
		}
		for i := 0; i < len(replace); i += 2 {
			if !strings.Contains(b.Text, replace[i]) {
				t.Fatalf("%s:%d: snippet %s does not contain the placeholder %q", doc, b.Line, name, replace[i])
			}
		}
		out := strings.NewReplacer(replace...).Replace(b.Text)
		t.Logf("%s snippet %s, as run:\n%s", doc, name, out)
		return out
	}
	t.Fatalf("%s: no snippet %q", doc, name)
	return ""
}

// moduleRoot is the folder of go.mod, above the test's working directory.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above %s", dir)
		}
		dir = parent
	}
}
