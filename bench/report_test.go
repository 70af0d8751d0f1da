package bench

import (
	"fmt"
	"maps"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// table collects the samples of every cell: by row, then by impl.
type table struct {
	scale   scale
	mu      sync.Mutex
	samples map[string]map[string][]float64
}

func (t *table) add(row, impl string, v float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.samples == nil {
		t.samples = map[string]map[string][]float64{}
	}
	if t.samples[row] == nil {
		t.samples[row] = map[string][]float64{}
	}
	t.samples[row][impl] = append(t.samples[row][impl], v)
}

// median of the row's samples for impl; 0 when there are none.
func (t *table) median(row, impl string) float64 {
	s := slices.Clone(t.samples[row][impl])
	if len(s) == 0 {
		return 0
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// cell formats the median with f and, when base is not 0, its ratio to it.
func (t *table) cell(row, impl string, f func(float64) string, base float64) string {
	m := t.median(row, impl)
	if m == 0 {
		return "–"
	}
	if base == 0 {
		return f(m)
	}
	return fmt.Sprintf("%s (%.2fx)", f(m), m/base)
}

func secs(v float64) string  { return fmt.Sprintf("%.2f s", v) }
func msecs(v float64) string { return fmt.Sprintf("%.1f ms", v*1000) }
func rate(v float64) string  { return fmt.Sprintf("%.0f req/s", v) }
func mib(v float64) string   { return fmt.Sprintf("%.0f MiB", v) }
func times(v float64) string { return fmt.Sprintf("%.1fx", v) }

// markdown is the table of medians, with ratios, targets and whether each
// is met, then every raw sample.
func (t *table) markdown(took time.Duration) string {
	sc := t.scale
	var b strings.Builder
	bigMiB := float64(int64(sc.bigLayers)*sc.bigLayerSize) / (1 << 20)
	fmt.Fprintf(&b, "Medians of %d samples (%d for the cold pull of one client); the ratio in parentheses is to the direct column (for warm pulls: direct's time over the column's, i.e. speed).\n\n", sc.reps, sc.coldReps)
	b.WriteString("| measurement | direct | distribution proxy | trustproxy | target | met |\n|---|---|---|---|---|---|\n")

	d := t.median("cold-big", direct)
	tp := t.median("cold-big", trustproxy) / d
	fmt.Fprintf(&b, "| cold pull, one client, %.0f MiB image (%d layers) | %s | %s | %s | ≤ 1.1x | %s |\n", bigMiB, sc.bigLayers,
		t.cell("cold-big", direct, secs, d), t.cell("cold-big", distribution, secs, d), t.cell("cold-big", trustproxy, secs, d), yes(tp <= 1.1))

	d = t.median("cold-remote", direct)
	tp = t.median("cold-remote", trustproxy) / d
	fmt.Fprintf(&b, "| the same, the upstream %d MiB/s per connection away (a remote registry) | %s | %s | %s | ≤ 1.1x | %s |\n", remoteRate>>20,
		t.cell("cold-remote", direct, secs, d), t.cell("cold-remote", distribution, secs, d), t.cell("cold-remote", trustproxy, secs, d), yes(tp <= 1.1))

	d = t.median("cold-small", direct)
	tp = t.median("cold-small", trustproxy) / d
	fmt.Fprintf(&b, "| %d small signed images, each its own repository, cold, sequential (per image) | %s | %s | %s | ≤ 2x | %s |\n", sc.small,
		t.cell("cold-small", direct, msecs, d), t.cell("cold-small", distribution, msecs, d), t.cell("cold-small", trustproxy, msecs, d), yes(tp <= 2))

	fmt.Fprintf(&b, "| the same, against an unverified pull by tag straight from the upstream (no trust data fetched) | %s | | %s (%.2fx) | | |\n",
		t.cell("cold-small", plain, msecs, 0), t.cell("cold-small", trustproxy, msecs, 0), t.median("cold-small", trustproxy)/t.median("cold-small", plain))

	d = t.median("warm", direct)
	speed := func(impl string) string {
		m := t.median("warm", impl)
		return fmt.Sprintf("%s (%.2fx)", msecs(m), d/m)
	}
	fmt.Fprintf(&b, "| warm pull, %d × %d MiB (per pull; speed vs direct) | %s | %s | %s | ≥ 0.95x | %s |\n", sc.warmLayers, sc.warmLayerSize>>20,
		speed(direct), speed(distribution), speed(trustproxy), yes(d/t.median("warm", trustproxy) >= 0.95))

	dist := t.median("tags", distribution)
	tr := t.median("tags", trustproxy) / dist
	fmt.Fprintf(&b, "| manifest by tag, %d clients | %s | %s | %s (%.1fx distribution) | ≥ 5x distribution | %s |\n", sc.tagClients,
		t.cell("tags", direct, rate, 0), t.cell("tags", distribution, rate, 0), t.cell("tags", trustproxy, rate, 0), tr, yes(tr >= 5))

	up := func(impl string) string {
		return fmt.Sprintf("%s; %s", times(t.median("concurrent-upstream", impl)), secs(t.median("concurrent-time", impl)))
	}
	ct := t.median("concurrent-time", trustproxy) / t.median("concurrent-time", distribution)
	fmt.Fprintf(&b, "| %d concurrent cold pulls of the %.0f MiB image: upstream bytes / image; total time | %s | %s | %s (%.2fx distribution) | 1.0x; ≤ 0.5x distribution | %s |\n",
		sc.concurrent, bigMiB, up(direct), up(distribution), up(trustproxy), ct,
		yes(t.median("concurrent-upstream", trustproxy) <= 1.0 && ct <= 0.5))

	rssBig, rssHuge := t.median("rss-big", trustproxy), t.median("rss-huge", trustproxy)
	fmt.Fprintf(&b, "| peak RSS, %d concurrent cold pulls: %.0f MiB image / one %d MiB layer | – | %s / %s | %s / %s | ≤ 100 MiB, flat | %s |\n",
		sc.concurrent, bigMiB, sc.hugeLayerSize>>20,
		t.cell("rss-big", distribution, mib, 0), t.cell("rss-huge", distribution, mib, 0),
		t.cell("rss-big", trustproxy, mib, 0), t.cell("rss-huge", trustproxy, mib, 0),
		yes(rssBig <= 100 && rssHuge <= 100 && rssHuge <= rssBig*1.25))

	fmt.Fprintf(&b, "\nThe %d MiB layer's concurrent pulls through trustproxy: upstream bytes / image %s, total time %s. (distribution is not run there: it would fetch the layer once per client.)\n",
		sc.hugeLayerSize>>20, times(t.median("huge-upstream", trustproxy)), secs(t.median("huge-time", trustproxy)))

	if *beforeFlag != "" {
		b.WriteString("\nThe same rows, medians, for the build given by -before (" + *beforeFlag + ") and this one, measured in this run:\n\n")
		b.WriteString("| row | before | after | after / before |\n|---|---|---|---|\n")
		for _, r := range []struct {
			row, what string
			f         func(float64) string
		}{
			{"cold-big", "cold pull, one client", secs},
			{"cold-remote", "cold pull, one client, remote upstream", secs},
			{"cold-small", "cold small image (per image)", msecs},
			{"warm", "warm pull", msecs},
			{"tags", "manifest by tag", rate},
			{"concurrent-time", "concurrent cold pulls: total time", secs},
			{"concurrent-upstream", "concurrent cold pulls: upstream bytes / image", times},
			{"rss-big", "peak RSS, concurrent", mib},
			{"rss-huge", "peak RSS, concurrent, the one big layer", mib},
		} {
			bf, af := t.median(r.row, before), t.median(r.row, trustproxy)
			if bf == 0 || af == 0 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.2f |\n", r.what, r.f(bf), r.f(af), af/bf)
		}
	}

	b.WriteString("\nRaw samples (seconds; per image for cold-small and per pull for warm; req/s for tags; MiB for rss; upstream bytes / image for *-upstream):\n\n```\n")
	for _, row := range slices.Sorted(maps.Keys(t.samples)) {
		for _, impl := range append(columns(), plain) {
			if s := t.samples[row][impl]; len(s) > 0 {
				fmt.Fprintf(&b, "%-20s %-18s %v\n", row, impl, roundAll(s))
			}
		}
	}
	b.WriteString("```\n")
	fmt.Fprintf(&b, "\nMachine: %d CPUs, %s/%s, %s, %s. Whole run: %s.\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), cpuModel(), took.Round(time.Second))
	return b.String()
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func roundAll(s []float64) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = fmt.Sprintf("%.4g", v)
	}
	return out
}

func cpuModel() string {
	out, err := exec.Command("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").Output()
	if err != nil {
		return "unknown CPU"
	}
	return strings.TrimSpace(string(out))
}
