// Each test is a behaviour Helm 3 documents (helm.sh/docs: chart_template_guide, the
// function list, values files, `helm template`), checked on a chart written to a temp dir.
package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// chart writes a chart with these files (Chart.yaml added unless given) and returns its dir.
func chart(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if _, ok := files["Chart.yaml"]; !ok {
		files["Chart.yaml"] = "apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: \"1.2\"\n"
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func render(t *testing.T, files map[string]string, o Options) string {
	t.Helper()
	if o.Name == "" {
		o.Name = "rel"
	}
	if o.Namespace == "" {
		o.Namespace = "ns"
	}
	if o.KubeVersion == "" {
		o.KubeVersion = "1.33.0"
	}
	out, err := Template(chart(t, files), o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func renderErr(t *testing.T, files map[string]string, o Options) error {
	t.Helper()
	if o.KubeVersion == "" {
		o.KubeVersion = "1.33.0"
	}
	_, err := Template(chart(t, files), o)
	if err == nil {
		t.Fatal("rendered, but should have failed")
	}
	return err
}

// body is the one manifest's text without the separator and the Source comment.
func body(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return strings.Join(lines[2:], "\n")
}

func cm(data string) map[string]string {
	return map[string]string{"templates/cm.yaml": "kind: ConfigMap\ndata:\n" + data}
}

func TestBuiltInObjects(t *testing.T) {
	files := cm(`  name: {{ .Release.Name }}
  ns: {{ .Release.Namespace }}
  chart: {{ .Chart.Name }}-{{ .Chart.Version }}
  app: {{ .Chart.AppVersion | quote }}
  install: {{ .Release.IsInstall }}
  service: {{ .Release.Service }}
  template: {{ .Template.Name }}
  base: {{ .Template.BasePath }}
  kube: {{ .Capabilities.KubeVersion.Minor }}
  kubeVersion: {{ .Capabilities.KubeVersion }}
  apps: {{ .Capabilities.APIVersions.Has "apps/v1" }}
  monitoring: {{ .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}
`)
	got := body(render(t, files, Options{KubeVersion: "v1.35", APIVersions: []string{"monitoring.coreos.com/v1"}}))
	want := `kind: ConfigMap
data:
  name: rel
  ns: ns
  chart: demo-0.1.0
  app: "1.2"
  install: true
  service: Helm
  template: demo/templates/cm.yaml
  base: demo/templates
  kube: 35
  kubeVersion: v1.35.0
  apps: true
  monitoring: true`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestToYamlIsSortedAndHasNoTrailingNewline(t *testing.T) {
	files := cm("  x: |\n{{ toYaml .Values.m | indent 4 }}\n  end: 1\n")
	// values.yaml is YAML 1.1, as Helm reads it: `yes` is a boolean.
	files["values.yaml"] = "m:\n  b: 1\n  a: [x, \"yes\", yes]\n"
	got := body(render(t, files, Options{}))
	want := "kind: ConfigMap\ndata:\n  x: |\n    a:\n    - x\n    - \"yes\"\n    - true\n    b: 1\n  end: 1"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestFromYamlAndJson(t *testing.T) {
	files := cm(`  a: {{ (fromYaml "a: 1").a }}
  err: {{ hasKey (fromYaml "a: [") "Error" }}
  list: {{ index (fromYamlArray "[p, q]") 1 }}
  json: {{ (fromJson "{\"k\": \"v\"}").k }}
  back: {{ dict "z" 1 "a" "b" | toJson | squote }}
`)
	got := body(render(t, files, Options{}))
	want := "kind: ConfigMap\ndata:\n  a: 1\n  err: true\n  list: q\n  json: v\n  back: '{\"a\":\"b\",\"z\":1}'"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestIncludePipesWhereTemplateCannot(t *testing.T) {
	files := cm("  labels:\n    {{- include \"demo.labels\" . | nindent 4 }}\n")
	files["templates/_helpers.tpl"] = "{{- define \"demo.labels\" -}}\napp: {{ .Chart.Name }}\nrelease: {{ .Release.Name }}\n{{- end }}\n"
	got := body(render(t, files, Options{}))
	want := "kind: ConfigMap\ndata:\n  labels:\n    app: demo\n    release: rel"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(render(t, files, Options{}), "_helpers") {
		t.Fatal("a partial was printed")
	}
}

func TestIncludeRecursionIsStopped(t *testing.T) {
	files := cm("  x: {{ include \"loop\" . }}\n")
	files["templates/_loop.tpl"] = "{{- define \"loop\" }}{{ include \"loop\" . }}{{ end }}"
	err := renderErr(t, files, Options{})
	if !strings.Contains(err.Error(), "nested reference name: loop") {
		t.Fatal(err)
	}
}

func TestTplRendersValuesAsTemplatesWithTheChartsDefines(t *testing.T) {
	files := cm("  a: {{ tpl .Values.a . }}\n  b: {{ tpl .Values.b . }}\n")
	files["values.yaml"] = "a: \"{{ .Release.Name }}-x\"\nb: '{{ include \"n\" . }}'\n"
	files["templates/_n.tpl"] = "{{ define \"n\" }}named-{{ .Chart.Name }}{{ end }}"
	got := body(render(t, files, Options{}))
	if got != "kind: ConfigMap\ndata:\n  a: rel-x\n  b: named-demo" {
		t.Fatal(got)
	}
}

func TestRequiredFailsOnMissingAndEmpty(t *testing.T) {
	files := cm("  a: {{ required \"hub.token is required\" .Values.hub.token }}\n")
	files["values.yaml"] = "hub: {}\n"
	err := renderErr(t, files, Options{})
	if !strings.Contains(err.Error(), "execution error at (demo/templates/cm.yaml") ||
		!strings.Contains(err.Error(), "hub.token is required") {
		t.Fatal(err)
	}
	renderErr(t, files, Options{Set: []string{"hub.token="}})
	if got := body(render(t, files, Options{Set: []string{"hub.token=s"}})); !strings.HasSuffix(got, "a: s") {
		t.Fatal(got)
	}
}

func TestFailStopsTheRender(t *testing.T) {
	files := cm("  {{- if eq .Values.runtime \"podman\" }}{{ fail \"runtime must be containerd or crio\" }}{{ end }}\n")
	files["values.yaml"] = "runtime: podman\n"
	if err := renderErr(t, files, Options{}); !strings.Contains(err.Error(), "runtime must be containerd or crio") {
		t.Fatal(err)
	}
}

func TestMissingValuesRenderEmptyUnlessStrict(t *testing.T) {
	files := cm("  a: \"{{ .Values.nope }}\"\n")
	got := body(render(t, files, Options{}))
	if got != "kind: ConfigMap\ndata:\n  a: \"\"" {
		t.Fatal(got)
	}
	renderErr(t, files, Options{Strict: true})
}

func TestEnvIsNotAFunction(t *testing.T) {
	err := renderErr(t, cm("  a: {{ env \"HOME\" }}\n"), Options{})
	if !strings.Contains(err.Error(), `function "env" not defined`) {
		t.Fatal(err)
	}
}

func TestFiles(t *testing.T) {
	files := cm(`  one: {{ .Files.Get "conf/a.txt" | quote }}
  lines: {{ len (.Files.Lines "conf/b.txt") }}
  glob: {{ len (.Files.Glob "conf/*.txt") }}
  crd: {{ len (.Files.Glob "crds/*") }}
  values: {{ .Files.Get "values.yaml" | quote }}
  ignored: {{ .Files.Get "secret.key" | quote }}
{{ (.Files.Glob "conf/a.txt").AsConfig | indent 2 }}
`)
	files["conf/a.txt"] = "alpha"
	files["conf/b.txt"] = "1\n2\n3\n"
	files["crds/x.yaml"] = "kind: CustomResourceDefinition\n"
	files["secret.key"] = "do not ship"
	files[".helmignore"] = "# comment\n*.key\n"
	got := body(render(t, files, Options{}))
	want := "kind: ConfigMap\ndata:\n  one: \"alpha\"\n  lines: 3\n  glob: 2\n  crd: 1\n  values: \"\"\n  ignored: \"\"\n  a.txt: alpha"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestValuesFilesSetAndDefaultsCoalesce(t *testing.T) {
	files := cm("  v: {{ toJson .Values | squote }}\n")
	files["values.yaml"] = "a: 1\nm:\n  keep: k\n  drop: d\n  list: [1, 2]\ngone: x\n"
	dir := t.TempDir()
	f1 := filepath.Join(dir, "1.yaml")
	f2 := filepath.Join(dir, "2.yaml")
	os.WriteFile(f1, []byte("m:\n  list: [9]\n  drop: null\nb: from-1\n"), 0o644)
	os.WriteFile(f2, []byte("b: from-2\n"), 0o644)
	got := body(render(t, files, Options{
		ValueFiles: []string{f1, f2},
		Set:        []string{`gone=null,n.x=0,n.y=007,n.z=true,n.l={a,b},n.e=a\,b,dotted\.key=1,l[1]=second`},
		SetString:  []string{"s=true"},
	}))
	want := `kind: ConfigMap
data:
  v: '{"a":1,"b":"from-2","dotted.key":1,"l":[null,"second"],"m":{"keep":"k","list":[9]},"n":{"e":"a,b","l":["a","b"],"x":0,"y":"007","z":true},"s":"true"}'`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestOutputIsInHelmsInstallOrderWithSources(t *testing.T) {
	files := map[string]string{
		"templates/a-deploy.yaml": "kind: Deployment\nmetadata:\n  name: d\n",
		"templates/b-svc.yaml":    "kind: Service\nmetadata:\n  name: s\n---\n# only a comment\n---\nkind: ServiceAccount\nmetadata:\n  name: sa\n",
		"templates/c-empty.yaml":  "{{- if false }}\nkind: Secret\n{{- end }}\n",
		"templates/d-custom.yaml": "kind: Widget\nmetadata:\n  name: w\n",
		"templates/NOTES.txt":     "Thanks for installing {{ .Chart.Name }}",
		"crds/w.yaml":             "kind: CustomResourceDefinition\nmetadata:\n  name: widgets\n",
	}
	out := render(t, files, Options{IncludeCRDs: true})
	var kinds, sources []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "kind: ") {
			kinds = append(kinds, strings.TrimPrefix(l, "kind: "))
		}
		if strings.HasPrefix(l, "# Source: ") {
			sources = append(sources, strings.TrimPrefix(l, "# Source: "))
		}
	}
	if !reflect.DeepEqual(kinds, []string{"CustomResourceDefinition", "ServiceAccount", "Service", "Deployment", "Widget"}) {
		t.Fatalf("%v\n%s", kinds, out)
	}
	if sources[0] != "demo/crds/w.yaml" || sources[1] != "demo/templates/b-svc.yaml" || sources[3] != "demo/templates/a-deploy.yaml" {
		t.Fatal(sources)
	}
	if strings.Contains(out, "Thanks") {
		t.Fatal("NOTES.txt is not a manifest")
	}
	if strings.Contains(render(t, files, Options{}), "CustomResourceDefinition") {
		t.Fatal("crds/ printed without --include-crds")
	}
}

func TestKubeVersionConstraint(t *testing.T) {
	files := cm("  a: b\n")
	files["Chart.yaml"] = "apiVersion: v2\nname: demo\nversion: 0.1.0\nkubeVersion: \">= 1.33.0-0\"\n"
	render(t, files, Options{KubeVersion: "1.35.1"})
	err := renderErr(t, files, Options{KubeVersion: "1.32.0"})
	if !strings.Contains(err.Error(), "incompatible with Kubernetes v1.32.0") {
		t.Fatal(err)
	}
}

func TestInvalidYamlNamesTheTemplate(t *testing.T) {
	err := renderErr(t, map[string]string{"templates/bad.yaml": "kind: [\n"}, Options{})
	if !strings.Contains(err.Error(), "demo/templates/bad.yaml") {
		t.Fatal(err)
	}
}

func TestPrintValuesIsTheCoalescedValues(t *testing.T) {
	files := cm("  a: b\n")
	files["values.yaml"] = "a: 1\nm:\n  k: v\n"
	got, err := Template(chart(t, files), Options{KubeVersion: "1.33", PrintValues: true, Set: []string{"m.x=2"}})
	if err != nil {
		t.Fatal(err)
	}
	if got != `{"a":1,"m":{"k":"v","x":2}}`+"\n" {
		t.Fatal(got)
	}
}

func TestAMisspeltChartFieldFailsAsInHelm(t *testing.T) {
	err := renderErr(t, cm("  a: {{ .Chart.Nmae }}\n"), Options{})
	if !strings.Contains(err.Error(), "can't evaluate field Nmae") {
		t.Fatal(err)
	}
}
