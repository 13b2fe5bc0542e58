// Loading a chart directory, its values and files, as Helm 3's chart loader does.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/Masterminds/semver"
	"github.com/ghodss/yaml"
)

// Chart is a chart directory read into memory.
type Chart struct {
	// Metadata: Chart.yaml, with the field names templates see (.Chart.Name, .Chart.AppVersion).
	Metadata map[string]interface{}
	// Values: values.yaml.
	Values map[string]interface{}
	// Schema: values.schema.json, when there is one.
	Schema []byte
	// Templates: "templates/x.yaml" → text.
	Templates map[string]string
	// Files: every other file (crds/ among them), for .Files.
	Files Files
	// CRDs: the files of crds/, in name order: installed as they are, never rendered.
	CRDs []string
}

// ChartMetadata is Helm's chart.Metadata, what templates see as .Chart: a struct, so that a
// misspelt field (`.Chart.Nmae`) fails the render as it does in Helm, rather than printing "".
type ChartMetadata struct {
	Name         string
	Home         string
	Sources      []string
	Version      string
	Description  string
	Keywords     []string
	Maintainers  []interface{}
	Icon         string
	APIVersion   string
	Condition    string
	Tags         string
	AppVersion   string
	Deprecated   bool
	Annotations  map[string]string
	KubeVersion  string
	Dependencies []interface{}
	Type         string
}

// metadataStruct is the Chart.yaml map as the struct templates see.
func (c *Chart) metadataStruct() (ChartMetadata, error) {
	var m ChartMetadata
	data, err := json.Marshal(c.Metadata)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("Chart.yaml: %w", err)
	}
	return m, nil
}

// Chart.yaml keys and the field names of Helm's chart.Metadata, which templates use.
var metadataFields = map[string]string{
	"name": "Name", "home": "Home", "sources": "Sources", "version": "Version",
	"description": "Description", "keywords": "Keywords", "maintainers": "Maintainers",
	"icon": "Icon", "apiVersion": "APIVersion", "condition": "Condition", "tags": "Tags",
	"appVersion": "AppVersion", "deprecated": "Deprecated", "annotations": "Annotations",
	"kubeVersion": "KubeVersion", "dependencies": "Dependencies", "type": "Type",
}

// LoadChart reads a chart directory. `.helmignore` is honoured for plain names and globs on
// the base name or the relative path (not negations).
func LoadChart(dir string) (*Chart, error) {
	c := &Chart{Templates: map[string]string{}, Files: Files{}}
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, fmt.Errorf("Chart.yaml file is missing: %w", err)
	}
	meta := map[string]interface{}{}
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("cannot load Chart.yaml: %w", err)
	}
	c.Metadata = map[string]interface{}{}
	for k, v := range meta {
		field, ok := metadataFields[k]
		if !ok {
			return nil, fmt.Errorf("Chart.yaml: unknown field %q", k)
		}
		c.Metadata[field] = v
	}
	if c.Metadata["APIVersion"] != "v2" {
		return nil, fmt.Errorf("Chart.yaml: apiVersion must be v2")
	}
	if s, _ := c.Metadata["Name"].(string); s == "" {
		return nil, fmt.Errorf("Chart.yaml: name is required")
	}
	if s, _ := c.Metadata["Version"].(string); s == "" {
		return nil, fmt.Errorf("Chart.yaml: version is required")
	}
	ignore := readIgnore(filepath.Join(dir, ".helmignore"))
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ignored(ignore, rel) {
			if info.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if info.IsDir() {
			if rel == "charts" {
				return fmt.Errorf("subcharts (charts/) are not supported by this renderer")
			}
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case rel == "Chart.yaml" || rel == ".helmignore":
		case rel == "values.yaml":
			c.Values = map[string]interface{}{}
			if err := yaml.Unmarshal(data, &c.Values); err != nil {
				return fmt.Errorf("cannot load values.yaml: %w", err)
			}
		case rel == "values.schema.json":
			c.Schema = data
		case strings.HasPrefix(rel, "templates/"):
			c.Templates[rel] = string(data)
		default:
			if strings.HasPrefix(rel, "crds/") {
				c.CRDs = append(c.CRDs, rel)
			}
			c.Files[rel] = data
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if c.Values == nil {
		c.Values = map[string]interface{}{}
	}
	sort.Strings(c.CRDs)
	return c, nil
}

func readIgnore(p string) []string {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, strings.TrimSuffix(l, "/"))
	}
	return out
}

func ignored(patterns []string, rel string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, rel); ok {
			return true
		}
		if ok, _ := path.Match(p, path.Base(rel)); ok {
			return true
		}
	}
	return false
}

// Files is Helm's .Files: the chart's non-template files by path.
type Files map[string][]byte

// Get is a file's text ("" when there is none).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes is a file's bytes.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Glob is the files whose path matches the pattern (path.Match's syntax: `*` does not cross
// `/`; Helm's gobwas/glob also has `**`, which this does not).
func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

// Lines is a file's lines.
func (f Files) Lines(name string) []string {
	s := string(f[name])
	if s == "" {
		return []string{}
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// AsConfig is the files as a ConfigMap's data: base name → text, as YAML.
func (f Files) AsConfig() string {
	if len(f) == 0 {
		return ""
	}
	m := map[string]string{}
	for k, v := range f {
		m[path.Base(k)] = string(v)
	}
	return toYAML(m)
}

// AsSecrets is the files as a Secret's data: base name → base64, as YAML.
func (f Files) AsSecrets() string {
	if len(f) == 0 {
		return ""
	}
	m := map[string]string{}
	for k, v := range f {
		m[path.Base(k)] = encodeBase64(v)
	}
	return toYAML(m)
}

// semverCheck is whether version meets a Chart.yaml kubeVersion constraint.
func semverCheck(constraint, version string) (bool, error) {
	c, err := semver.NewConstraint(constraint)
	if err != nil {
		return false, fmt.Errorf("Chart.yaml: kubeVersion %q: %w", constraint, err)
	}
	v, err := semver.NewVersion(version)
	if err != nil {
		return false, err
	}
	return c.Check(v), nil
}
