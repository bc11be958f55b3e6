{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "vme.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already holds the chart name. */}}
{{- define "vme.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vme.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vme.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vme.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vme.labels" -}}
helm.sh/chart: {{ include "vme.chart" . }}
{{ include "vme.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: metrics
app.kubernetes.io/part-of: vm-migration-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "vme.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vme.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vme.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}{{ $repo = printf "%s/%s" .Values.image.registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Capabilities the enabled features need, as a list (JSON). */}}
{{- define "vme.capabilities" -}}
{{- $caps := list }}
{{- if .Values.icmp.enabled }}{{ $caps = append $caps "NET_RAW" }}{{ end }}
{{- if or .Values.peerDiscovery.enabled .Values.forecast.zeroPages }}{{ $caps = concat $caps (list "SYS_PTRACE" "DAC_READ_SEARCH") }}{{ end }}
{{- toJson $caps }}
{{- end }}

{{/* "https" when the web config serves TLS (or the monitor says so), else "http". */}}
{{- define "vme.scheme" -}}
{{- if .monitor.scheme }}{{ .monitor.scheme }}
{{- else if .root.Values.webConfig.config.tls_server_config }}https
{{- else }}http
{{- end }}
{{- end }}

{{/* True when the exporter answers only with basic auth: probes then connect over TCP. */}}
{{- define "vme.basicAuth" -}}
{{- if .Values.webConfig.config.basic_auth_users }}true{{ end }}
{{- end }}

{{- define "vme.webConfigSecretName" -}}
{{- default (printf "%s-web-config" (include "vme.fullname" .)) .Values.webConfig.existingSecret }}
{{- end }}

{{- define "vme.webConfigEnabled" -}}
{{- if or .Values.webConfig.existingSecret .Values.webConfig.config }}true{{ end }}
{{- end }}

{{/* The default relabeling of the node name to `node`, then the user's. */}}
{{- define "vme.relabelings" -}}
{{- $r := list }}
{{- if .monitor.nodeLabel }}
{{- $r = append $r (dict "action" "replace" "sourceLabels" (list "__meta_kubernetes_pod_node_name") "targetLabel" "node") }}
{{- end }}
{{- with .monitor.job }}
{{- $r = append $r (dict "action" "replace" "targetLabel" "job" "replacement" .) }}
{{- end }}
{{- $r = concat $r .monitor.relabelings }}
{{- if $r }}
relabelings:
{{- toYaml $r | nindent 2 }}
{{- end }}
{{- end }}

{{/* Endpoint fields shared by the ServiceMonitor and the PodMonitor. */}}
{{- define "vme.endpoint" -}}
port: metrics
path: {{ .root.Values.web.telemetryPath }}
scheme: {{ include "vme.scheme" . }}
{{- with .monitor.interval }}
interval: {{ . }}
{{- end }}
{{- with .monitor.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- if .monitor.honorLabels }}
honorLabels: true
{{- end }}
{{- with .monitor.tlsConfig }}
tlsConfig:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.basicAuth }}
basicAuth:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- include "vme.relabelings" . }}
{{- with .monitor.metricRelabelings }}
metricRelabelings:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
