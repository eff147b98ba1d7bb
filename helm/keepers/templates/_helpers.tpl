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

{{/* The enabled keeper instances by name, as YAML (read back with fromYaml): each with its
     `kind` resolved (the name, unless given) and, for a name that is not a kind, the fields it
     does not set taken whole from keepers.<kind>. Names too long for a Service fail here. */}}
{{- define "keepers.instances" -}}
{{- $out := dict -}}
{{- $full := include "keepers.fullname" . -}}
{{- range $name, $k := .Values.keepers -}}
{{- if $k.enabled -}}
{{- $kind := $k.kind | default $name -}}
{{- $i := deepCopy $k -}}
{{- if ne $kind $name -}}
{{- range $key, $v := omit (index $.Values.keepers $kind | default dict) "enabled" "kind" -}}
{{- if not (hasKey $i $key) -}}{{- $_ := set $i $key $v -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- range $need := list "replicas" "chain" "strategy" -}}
{{- if not (hasKey $i $need) -}}{{- fail (printf "keepers.%s.%s: not set, and not in keepers.%s" $name $need $kind) -}}{{- end -}}
{{- end -}}
{{- if not (hasKey $.Values.settings.chains $i.chain) -}}
{{- fail (printf "keepers.%s.chain: %q is not in settings.chains" $name $i.chain) -}}
{{- end -}}
{{- $longest := printf "%s-%s-test" $full $name -}}
{{- if gt (len $longest) 63 -}}
{{- fail (printf "keepers.%s: %s is %d characters, Kubernetes names allow 63: shorten the release or keeper name" $name $longest (len $longest)) -}}
{{- end -}}
{{- $_ := set $i "kind" $kind -}}
{{- $_ := set $out $name $i -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* keepers.toml: the chart's settings plus the enabled keepers, the signer sidecar's socket,
     the metrics port and the order API's. database_url comes from the environment (KEEPERS__DATABASE_URL). */}}
{{- define "keepers.config" -}}
{{- $cfg := deepCopy .Values.settings -}}
{{- $_ := set $cfg "metrics_port" .Values.metrics.port -}}
{{- $api := deepCopy ($cfg.order_api | default dict) -}}
{{- $_ := set $api "port" ((.Values.orderApi | default dict).port | default 8081) -}}
{{- $_ := set $cfg "order_api" $api -}}
{{- $_ := set $cfg "signer_url" "unix:/run/keepers-signer/signer.sock" -}}
{{- $keepers := dict -}}
{{- range $name, $k := include "keepers.instances" . | fromYaml -}}
{{- $keeper := dict "chain" $k.chain "strategy" $k.strategy "params" ($k.params | default dict) "shards" ($k.shards | default 0) -}}
{{- if ne $k.kind $name -}}{{- $_ := set $keeper "kind" $k.kind -}}{{- end -}}
{{- range $key := list "isolation" "strategy_timeout" "memory_limit_mb" -}}
{{- if hasKey $k $key -}}{{- $_ := set $keeper $key (index $k $key) -}}{{- end -}}
{{- end -}}
{{- $_ := set $keepers $name $keeper -}}
{{- end -}}
{{- $_ := set $cfg "keepers" $keepers -}}
{{ toToml $cfg }}
{{- end -}}

{{/* The pod labels of instance .name: its selector plus podLabels. */}}
{{- define "keepers.podLabels" -}}
{{- include "keepers.selector" (dict "root" .root "kind" .name) }}
{{- with .root.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The signer sidecar of instance .name (.k, resolved by keepers.instances): the funds key is
     mounted here only. A native sidecar (restartPolicy: Always): serving before the main
     containers start. Used by the Deployment and by its helm test pod alike. */}}
{{- define "keepers.signerSidecar" -}}
{{- $root := .root -}}
{{- $k := .k -}}
{{- $signer := merge (deepCopy ($k.signer | default dict)) $root.Values.signer -}}
{{- $chain := index $root.Values.settings.chains $k.chain -}}
- name: signer
  image: {{ include "keepers.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  restartPolicy: Always
  # The signer module alone (not the whole CLI): less code in the process with the key.
  command: ["python", "-P", "-m", "keepers.tx.signer_service"]
  args:
    - --keystore
    - /var/run/secrets/keepers/signer/keystore.json
    - --password-file
    - /var/run/secrets/keepers/signer/password
    - --socket
    - /run/keepers-signer/signer.sock
    - --chain-id
    - {{ $chain.chain_id | int | quote }}
    {{- with $signer.maxFeesPerHourEth }}
    - --max-fees-per-hour-eth
    - {{ . | quote }}
    {{- end }}
    {{- /* it signs this kind's calls on the chain's contracts, and anything to allowTo */}}
    - --kind
    - {{ $k.kind | quote }}
    {{- range $name := list "order_book" "oracle" "lending_market" "vault" "flash_liquidator" "builder_tip" }}
    {{- with index $chain.contracts $name }}
    - --contract
    - {{ printf "%s=%s" $name . | quote }}
    {{- end }}
    {{- end }}
    {{- range $signer.allowTo }}
    - --allow-to
    - {{ . | quote }}
    {{- end }}
    {{- /* value only to the builder tip contract and allowTo */}}
    {{- with $chain.contracts.builder_tip }}
    - --allow-value-to
    - {{ . | quote }}
    {{- end }}
    {{- range $signer.allowTo }}
    - --allow-value-to
    - {{ . | quote }}
    {{- end }}
  startupProbe:
    exec: { command: ["test", "-S", "/run/keepers-signer/signer.sock"] }
    periodSeconds: 1
    failureThreshold: 60
  resources:
    {{- toYaml $root.Values.signerResources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - { name: signer, mountPath: /var/run/secrets/keepers/signer, readOnly: true }
    - { name: signer-socket, mountPath: /run/keepers-signer }
{{- end -}}

{{/* The keeper container's environment: the database URL, rpcSecrets, extraEnv. */}}
{{- define "keepers.env" -}}
- name: KEEPERS__DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- range $name, $ref := .Values.rpcSecrets }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secret }}
      key: {{ $ref.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The keeper container's mounts: the config, the signer's socket, the relay key, /tmp, extraVolumeMounts. */}}
{{- define "keepers.mounts" -}}
- { name: config, mountPath: /etc/keepers, readOnly: true }
- { name: signer-socket, mountPath: /run/keepers-signer }
- { name: relay, mountPath: /var/run/secrets/keepers/relay, readOnly: true }
- { name: tmp, mountPath: /tmp }
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pod's volumes for instance .name (.k resolved). */}}
{{- define "keepers.volumes" -}}
{{- $root := .root -}}
{{- $signer := merge (deepCopy (.k.signer | default dict)) $root.Values.signer -}}
- name: config
  configMap:
    name: {{ include "keepers.fullname" $root }}-config
- name: signer
  secret:
    secretName: {{ $signer.existingSecret }}
    defaultMode: 0400
    items:
      - { key: {{ $signer.keystoreKey }}, path: keystore.json }
      - { key: {{ $signer.passwordKey }}, path: password }
- name: signer-socket
  emptyDir: { medium: Memory, sizeLimit: 1Mi }
- name: relay
  secret:
    secretName: {{ $root.Values.relay.existingSecret }}
    defaultMode: 0400
    optional: true
    items:
      - { key: {{ $root.Values.relay.reputationKey }}, path: reputation-key }
- name: tmp
  emptyDir: { sizeLimit: 64Mi }
{{- with $root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling of instance .name's pods: priority class, node selector, affinity, tolerations,
     with .spread, topology spread (a constraint without labelSelector gets the instance's pod
     selector). */}}
{{- define "keepers.scheduling" -}}
{{- $root := .root -}}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with and .spread $root.Values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range . }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "keepers.selector" (dict "root" $root "kind" $.name) | fromYaml)) }}
{{- end }}
  - {{- toYaml $c | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}
