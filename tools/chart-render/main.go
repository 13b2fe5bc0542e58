// chart-render: `helm template` for this repository's chart, without Helm (no package these
// machines reach ships it). Go's text/template with Sprig is Helm's engine; this adds Helm's
// functions, objects, values rules and output order. See README.md.
//
//	chart-render [--name R] [--namespace N] [-f values.yaml]... [--set k=v]... [--set-string k=v]...
//	             [--kube-version 1.33.0] [--api-versions group/version]... [--include-crds] [--strict] CHART
package main

import (
	"flag"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/ghodss/yaml"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k KubeVersion) String() string { return k.Version }

// VersionSet is .Capabilities.APIVersions.
type VersionSet []string

// Has is whether the cluster serves an API version ("apps/v1") or a kind in one
// ("apps/v1/Deployment").
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// The API versions a Kubernetes 1.33 cluster serves (Helm's default set is its client-go's).
var defaultAPIVersions = []string{
	"v1", "admissionregistration.k8s.io/v1", "apiextensions.k8s.io/v1", "apiregistration.k8s.io/v1",
	"apps/v1", "authentication.k8s.io/v1", "authorization.k8s.io/v1", "autoscaling/v1", "autoscaling/v2",
	"batch/v1", "certificates.k8s.io/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1",
	"events.k8s.io/v1", "flowcontrol.apiserver.k8s.io/v1", "networking.k8s.io/v1", "node.k8s.io/v1",
	"policy/v1", "rbac.authorization.k8s.io/v1", "scheduling.k8s.io/v1", "storage.k8s.io/v1",
}

var kubeVersionRe = regexp.MustCompile(`^v?(\d+)\.(\d+)(\.(\d+))?$`)

func parseKubeVersion(s string) (KubeVersion, error) {
	m := kubeVersionRe.FindStringSubmatch(s)
	if m == nil {
		return KubeVersion{}, fmt.Errorf("invalid kube version %q", s)
	}
	patch := m[4]
	if patch == "" {
		patch = "0"
	}
	v := fmt.Sprintf("v%s.%s.%s", m[1], m[2], patch)
	return KubeVersion{Version: v, Major: m[1], Minor: m[2], GitVersion: v}, nil
}

// Helm's InstallOrder: the order `helm template` prints kinds in (and installs them).
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
	"PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
	"ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
	"RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
	"ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
	"IngressClass", "Ingress", "APIService", "MutatingWebhookConfiguration",
	"ValidatingWebhookConfiguration",
}

type manifest struct {
	source string
	kind   string
	body   string
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// splitManifests is releaseutil.SplitManifests: the YAML documents of one rendered file,
// blank ones dropped.
func splitManifests(source, text string) ([]manifest, error) {
	var out []manifest
	for _, doc := range docSep.Split(text, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("%s: the rendered YAML is invalid: %w\n%s", source, err, doc)
		}
		out = append(out, manifest{source: source, kind: head.Kind, body: strings.Trim(doc, "\n")})
	}
	return out, nil
}

func sortByKind(ms []manifest) {
	rank := map[string]int{}
	for i, k := range installOrder {
		rank[k] = i
	}
	sort.SliceStable(ms, func(i, j int) bool {
		ri, iok := rank[ms[i].kind]
		rj, jok := rank[ms[j].kind]
		switch {
		case iok && jok:
			return ri < rj
		case iok != jok:
			return iok
		default:
			return ms[i].kind < ms[j].kind
		}
	})
}

// Options are one render's inputs besides the chart.
type Options struct {
	Name, Namespace string
	ValueFiles      []string
	Set, SetString  []string
	KubeVersion     string
	APIVersions     []string
	IncludeCRDs     bool
	Strict          bool
	IsUpgrade       bool
	// PrintValues: print the coalesced values (what templates see as .Values) as JSON, instead
	// of the manifests: what Helm validates against values.schema.json.
	PrintValues bool
}

// Template renders the chart as `helm template` prints it.
func Template(chartDir string, o Options) (string, error) {
	c, err := LoadChart(chartDir)
	if err != nil {
		return "", err
	}
	user := map[string]interface{}{}
	for _, f := range o.ValueFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		m := map[string]interface{}{}
		if err := yaml.Unmarshal(data, &m); err != nil {
			return "", fmt.Errorf("failed to parse %s: %w", f, err)
		}
		user = mergeMaps(user, m)
	}
	for _, s := range o.Set {
		if err := parseSet(user, s, false); err != nil {
			return "", fmt.Errorf("failed parsing --set data: %w", err)
		}
	}
	for _, s := range o.SetString {
		if err := parseSet(user, s, true); err != nil {
			return "", fmt.Errorf("failed parsing --set-string data: %w", err)
		}
	}
	values := coalesce(c.Values, user)
	if o.PrintValues {
		return toJSON(values) + "\n", nil
	}
	kv, err := parseKubeVersion(o.KubeVersion)
	if err != nil {
		return "", err
	}
	if constraint, _ := c.Metadata["KubeVersion"].(string); constraint != "" {
		ok, err := semverCheck(constraint, kv.Version)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", constraint, kv.Version)
		}
	}
	chartName, _ := c.Metadata["Name"].(string)
	meta, err := c.metadataStruct()
	if err != nil {
		return "", err
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": o.Name, "Namespace": o.Namespace, "IsInstall": !o.IsUpgrade,
			"IsUpgrade": o.IsUpgrade, "Revision": 1, "Service": "Helm",
		},
		"Chart": meta,
		"Capabilities": map[string]interface{}{
			"KubeVersion": kv,
			"APIVersions": VersionSet(append(append([]string{}, defaultAPIVersions...), o.APIVersions...)),
			"HelmVersion": map[string]interface{}{"Version": "v3.17.0"},
		},
		"Files": c.Files,
	}
	templates := map[string]string{}
	for name, text := range c.Templates {
		templates[path.Join(chartName, name)] = text
	}
	out, err := Engine{Strict: o.Strict}.Render(templates, top, chartName)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	var ms []manifest
	for _, n := range names {
		if strings.HasSuffix(n, "NOTES.txt") {
			continue
		}
		docs, err := splitManifests(n, out[n])
		if err != nil {
			return "", err
		}
		ms = append(ms, docs...)
	}
	sortByKind(ms)
	var b strings.Builder
	if o.IncludeCRDs {
		for _, f := range c.CRDs {
			docs, err := splitManifests(path.Join(chartName, f), string(c.Files[f]))
			if err != nil {
				return "", err
			}
			for _, d := range docs {
				fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", d.source, d.body)
			}
		}
	}
	for _, m := range ms {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.source, m.body)
	}
	return b.String(), nil
}

func main() {
	var o Options
	var values, set, setString, apis multi
	flag.StringVar(&o.Name, "name", "manta", "the release name")
	flag.StringVar(&o.Namespace, "namespace", "default", "the release namespace")
	flag.Var(&values, "f", "a values file (repeatable; later ones win)")
	flag.Var(&values, "values", "a values file (repeatable; later ones win)")
	flag.Var(&set, "set", "key=value[,key=value] (repeatable)")
	flag.Var(&setString, "set-string", "key=value, the value kept a string (repeatable)")
	flag.StringVar(&o.KubeVersion, "kube-version", "1.33.0", ".Capabilities.KubeVersion")
	flag.Var(&apis, "api-versions", "an API version the cluster serves, besides the built-in ones (repeatable)")
	flag.BoolVar(&o.IncludeCRDs, "include-crds", false, "print the chart's crds/ first")
	flag.BoolVar(&o.Strict, "strict", false, "a missing value is an error")
	flag.BoolVar(&o.IsUpgrade, "is-upgrade", false, ".Release.IsUpgrade")
	flag.BoolVar(&o.PrintValues, "print-values", false, "print the coalesced values as JSON instead of the manifests")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [flags] CHART_DIR")
		os.Exit(2)
	}
	o.ValueFiles, o.Set, o.SetString, o.APIVersions = values, set, setString, apis
	out, err := Template(flag.Arg(0), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	fmt.Print(out)
}
