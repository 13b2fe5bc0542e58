// The template engine: Go's text/template with the Sprig functions and Helm's own, as Helm 3's
// pkg/engine defines them (see README.md for what is and is not reproduced).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

// Helm stops an include or tpl chain this deep ("rendering template has a nested reference").
const recursionMaxNums = 1000

// toYAML is Helm's toYaml: sigs.k8s.io/yaml (ghodss/yaml: JSON field rules, sorted keys), the
// trailing newline trimmed, "" when the value cannot be marshalled.
func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

// fromYAML is Helm's fromYaml: a map, or a map holding only "Error" when the text is not one.
func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// fromYAMLArray is Helm's fromYamlArray: a list, or a list holding only the error text.
func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(str string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

// funcMap is Sprig's text functions without env and expandenv (Helm removes them: a chart must
// not read the renderer's environment), with Helm's additions. include, tpl, required and lookup
// are bound per render.
func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toToml":        func(interface{}) string { return "" },
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"include":       func(string, interface{}) string { return "not implemented" },
		"tpl":           func(string, interface{}) interface{} { return "not implemented" },
		"required":      func(string, interface{}) (interface{}, error) { return "not implemented", nil },
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
	}
	for k, v := range extra {
		f[k] = v
	}
	// toToml needs a TOML library Debian does not ship in GOPATH form; a chart that calls it
	// fails loudly rather than rendering nothing.
	f["toToml"] = func(interface{}) (string, error) {
		return "", fmt.Errorf("toToml is not available in this renderer")
	}
	return f
}

// Engine renders one chart's templates.
type Engine struct {
	// Strict: a missing map key is an error (Helm's --strict lint), not "".
	Strict bool
}

// renderable is one template file and the values it sees.
type renderable struct {
	tpl      string
	vals     map[string]interface{}
	basePath string
}

// Render executes every template (name → text) and returns name → output for the files whose
// base name does not start with "_" (partials only define).
func (e Engine) Render(templates map[string]string, top map[string]interface{}, chartName string) (map[string]string, error) {
	t := template.New("gotpl")
	if e.Strict {
		t.Option("missingkey=error")
	} else {
		// Helm: missing keys render as "<no value>", then removed from the output.
		t.Option("missingkey=zero")
	}
	includedNames := map[string]int{}
	t.Funcs(funcMap())
	t.Funcs(template.FuncMap{
		"include": includeFunc(t, includedNames),
		"tpl": func(tpl string, vals interface{}) (string, error) {
			return e.tpl(t, tpl, vals, includedNames)
		},
		"required": func(warn string, val interface{}) (interface{}, error) {
			if val == nil {
				return val, fmt.Errorf("%s", warn)
			} else if s, ok := val.(string); ok && s == "" {
				return val, fmt.Errorf("%s", warn)
			}
			return val, nil
		},
	})

	// Parse in a fixed order (Helm sorts by path depth then name, so a chart's own defines win
	// over a subchart's); partials first is harmless and deterministic.
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		di, dj := strings.Count(names[i], "/"), strings.Count(names[j], "/")
		if di != dj {
			return di > dj
		}
		return names[i] < names[j]
	})
	for _, n := range names {
		if _, err := t.New(n).Parse(templates[n]); err != nil {
			return nil, fmt.Errorf("parse error in %q: %w", n, err)
		}
	}

	out := map[string]string{}
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue
		}
		vals := copyTop(top)
		vals["Template"] = map[string]interface{}{
			"Name":     n,
			"BasePath": path.Join(chartName, "templates"),
		}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, n, vals); err != nil {
			return nil, cleanupExecError(n, err)
		}
		out[n] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// includeFunc is Helm's include over the template set t: a named template rendered to a string
// (so it can be piped), with Helm's limit on how deep includes may nest.
func includeFunc(t *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s: unable to execute template", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
}

// tpl renders a string as a template with every define of the chart in scope, as Helm does
// (the text is parsed into a clone of the template set under the calling template's name).
func (e Engine) tpl(parent *template.Template, tpl string, vals interface{}, includedNames map[string]int) (string, error) {
	t, err := parent.Clone()
	if err != nil {
		return "", fmt.Errorf("cannot clone template: %w", err)
	}
	if e.Strict {
		t.Option("missingkey=error")
	} else {
		t.Option("missingkey=zero")
	}
	name := "tpl"
	if m, ok := vals.(map[string]interface{}); ok {
		if tm, ok := m["Template"].(map[string]interface{}); ok {
			if n, ok := tm["Name"].(string); ok && n != "" {
				name = n
			}
		}
	}
	// include inside tpl must see the clone, where the new text is defined.
	t.Funcs(template.FuncMap{
		"include": includeFunc(t, includedNames),
		"tpl": func(s string, v interface{}) (string, error) {
			return e.tpl(t, s, v, includedNames)
		},
	})
	if _, err := t.New(name).Parse(tpl); err != nil {
		return "", fmt.Errorf("cannot parse template %q: %w", tpl, err)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, name, vals); err != nil {
		return "", fmt.Errorf("error during tpl function execution for %q: %w", tpl, err)
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

func copyTop(top map[string]interface{}) map[string]interface{} {
	c := make(map[string]interface{}, len(top)+1)
	for k, v := range top {
		c[k] = v
	}
	return c
}

// cleanupExecError keeps the first line that names the failing template and the reason, as
// Helm's error does ("execution error at (chart/templates/x.yaml:3:4): message").
func cleanupExecError(name string, err error) error {
	msg := err.Error()
	if i := strings.Index(msg, "error calling required: "); i >= 0 {
		return fmt.Errorf("execution error at (%s): %s", name, msg[i+len("error calling required: "):])
	}
	if i := strings.Index(msg, "error calling fail: "); i >= 0 {
		return fmt.Errorf("execution error at (%s): %s", name, msg[i+len("error calling fail: "):])
	}
	return fmt.Errorf("%s: %w", name, err)
}
