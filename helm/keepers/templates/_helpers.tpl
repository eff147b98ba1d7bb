{{- define "keepers.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "keepers.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keepers.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .kind }}
{{- end -}}

{{- define "keepers.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}{{ printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else -}}{{ printf "%s:%s" .Values.image.repository $tag }}{{- end -}}
{{- end -}}

{{- define "keepers.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name | default (include "keepers.fullname" .) }}
{{- else -}}{{ .Values.serviceAccount.name | default "default" }}{{- end -}}
{{- end -}}

{{/* keepers.toml: the chart's settings plus the enabled keepers, the signer sidecar's socket and
     the metrics port. database_url comes from the environment (KEEPERS__DATABASE_URL). */}}
{{- define "keepers.config" -}}
{{- $cfg := deepCopy .Values.settings -}}
{{- $_ := set $cfg "metrics_port" .Values.metrics.port -}}
{{- $_ := set $cfg "signer_url" "unix:/run/keepers-signer/signer.sock" -}}
{{- $keepers := dict -}}
{{- range $kind, $k := .Values.keepers -}}
{{- if $k.enabled -}}
{{- $keeper := dict "chain" $k.chain "strategy" $k.strategy "params" ($k.params | default dict) "shards" ($k.shards | default 0) -}}
{{- range $key := list "isolation" "strategy_timeout" "memory_limit_mb" -}}
{{- if hasKey $k $key -}}{{- $_ := set $keeper $key (index $k $key) -}}{{- end -}}
{{- end -}}
{{- $_ := set $keepers $kind $keeper -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "keepers" $keepers -}}
{{ toToml $cfg }}
{{- end -}}
