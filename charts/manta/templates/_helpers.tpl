{{/* The release's base name, at most 63 characters (a DNS label). */}}
{{- define "manta.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's name: <fullname>-<component>, kept within 63 characters. */}}
{{- define "manta.componentName" -}}
{{- printf "%s-%s" (include "manta.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "manta.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: manta
{{ include "manta.selectorLabels" . }}
{{- end -}}

{{/* What selects a component's pods (never changes across upgrades). */}}
{{- define "manta.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "manta-%s" .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "manta.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The Secret holding the cluster token. */}}
{{- define "manta.tokenSecret" -}}
{{- default (include "manta.componentName" (dict "root" . "component" "cluster-token")) .Values.clusterToken.existingSecret -}}
{{- end -}}

{{/* The peers' headless Service. */}}
{{- define "manta.peersService" -}}
{{- include "manta.componentName" (dict "root" . "component" "peers") -}}
{{- end -}}

{{/* Where the token is mounted in agent and operator containers. */}}
{{- define "manta.tokenPath" -}}
/var/run/manta/cluster/token
{{- end -}}
