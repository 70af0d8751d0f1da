package config

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// referenceKeys are the configuration keys, dotted (upstreams[].notary.url),
// of every field of Config that YAML sets.
func referenceKeys(t reflect.Type, prefix string, out *[]string) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "-" || !f.IsExported() {
			continue
		}
		ft := f.Type
		if tag == "" && f.Anonymous { // inline (Endpoint in Upstream)
			referenceKeys(ft, prefix, out)
			continue
		}
		key := prefix + tag
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			*out = append(*out, key)
			referenceKeys(ft.Elem(), key+"[].", out)
			continue
		}
		if ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
			*out = append(*out, key)
			referenceKeys(ft, key+".", out)
			continue
		}
		*out = append(*out, key)
	}
}

// TestReferenceComplete: docs/configuration.md documents every key of
// Config, and no key Config does not have.
func TestReferenceComplete(t *testing.T) {
	var keys []string
	referenceKeys(reflect.TypeFor[Config](), "", &keys)
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_.\\[\\]]+)` \\|")
	var documented []string
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		documented = append(documented, m[1])
	}
	for _, k := range keys {
		if !slices.Contains(documented, k) {
			t.Errorf("docs/configuration.md does not document %s", k)
		}
	}
	for _, k := range documented {
		if !slices.Contains(keys, k) {
			t.Errorf("docs/configuration.md documents %s, which Config does not have", k)
		}
	}
}
