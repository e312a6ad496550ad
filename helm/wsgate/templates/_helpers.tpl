{{/* Names and labels. */}}
{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wsgate.fullname" -}}
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

{{- define "wsgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wsgate.labels" -}}
helm.sh/chart: {{ include "wsgate.chart" . }}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wsgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: the existing one, or the chart's own. */}}
{{- define "wsgate.secretName" -}}
{{- default (include "wsgate.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* "true" when the chart creates its own Secret (something to put in it). */}}
{{- define "wsgate.createSecret" -}}
{{- $s := .Values.secrets }}
{{- if and (not $s.existingSecret) (or $s.databaseUrl $s.redisUrl $s.redisShards $s.apiKeys $s.jwtSecret) }}true{{ end }}
{{- end }}

{{/* "true" when a database URL is configured. */}}
{{- define "wsgate.hasDatabase" -}}
{{- if and .Values.secrets.keys.databaseUrl (or .Values.secrets.existingSecret .Values.secrets.databaseUrl) }}true{{ end }}
{{- end }}

{{/* "true" when the JWT secret comes from the Secret: the chart's own,
with secrets.jwtSecret set; an existing one, when config.auth.store is jwt
(then it must hold secrets.keys.jwtSecret, unless a key file or JWKS URL
is configured instead). */}}
{{- define "wsgate.hasJwtSecret" -}}
{{- $s := .Values.secrets }}
{{- $auth := .Values.config.auth | default dict }}
{{- $keyed := or (get $auth "jwt_public_key_file") (get $auth "jwt_jwks_url") }}
{{- if and $s.keys.jwtSecret (or $s.jwtSecret (and $s.existingSecret (eq (toString (get $auth "store")) "jwt") (not $keyed))) }}true{{ end }}
{{- end }}

{{/* "true" when the API keys come from the Secret. */}}
{{- define "wsgate.hasApiKeys" -}}
{{- if and .Values.secrets.keys.apiKeys (or .Values.secrets.existingSecret .Values.secrets.apiKeys) }}true{{ end }}
{{- end }}

{{/* "true" when a PodDisruptionBudget is rendered (null: more than one pod). */}}
{{- define "wsgate.pdbEnabled" -}}
{{- $e := .Values.podDisruptionBudget.enabled }}
{{- if kindIs "invalid" $e }}
{{- if .Values.autoscaling.enabled }}{{ if gt (int .Values.autoscaling.minReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- else if $e }}true{{ end }}
{{- end }}

{{/*
The secret settings as container variables: WSGATE__X__Y from the Secret,
or WSGATE__X__Y__FILE naming the mounted key with secrets.mountAsFiles.
Context: dict "root" $ "only" (list of setting names, or nil for all).
*/}}
{{- define "wsgate.secretEnv" -}}
{{- $root := .root }}
{{- $s := $root.Values.secrets }}
{{- $name := include "wsgate.secretName" $root }}
{{- $items := list }}
{{- if include "wsgate.hasDatabase" $root }}{{ $items = append $items (list "WSGATE__DATABASE__URL" $s.keys.databaseUrl "database") }}{{ end }}
{{- if include "wsgate.hasRedisUrl" $root }}{{ $items = append $items (list "WSGATE__REDIS__URL" $s.keys.redisUrl "redis") }}{{ end }}
{{- if include "wsgate.hasRedisShards" $root }}{{ $items = append $items (list "WSGATE__REDIS__SHARDS" $s.keys.redisShards "redis") }}{{ end }}
{{- if include "wsgate.hasApiKeys" $root }}{{ $items = append $items (list "WSGATE__API__KEYS" $s.keys.apiKeys "api") }}{{ end }}
{{- if include "wsgate.hasJwtSecret" $root }}{{ $items = append $items (list "WSGATE__AUTH__JWT_SECRET" $s.keys.jwtSecret "jwt") }}{{ end }}
{{- range $items }}
{{- if or (not $.only) (has (index . 2) $.only) }}
{{- if $s.mountAsFiles }}
- name: {{ index . 0 }}__FILE
  value: {{ printf "%s/%s" (trimSuffix "/" $s.mountPath) (index . 1) | quote }}
{{- else }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ index . 1 }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* OpenTelemetry variables from .Values.opentelemetry. */}}
{{- define "wsgate.otelEnv" -}}
{{- $o := .Values.opentelemetry }}
{{- if $o.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $o.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $o.protocol | quote }}
{{- with $o.serviceName }}
- name: OTEL_SERVICE_NAME
  value: {{ . | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $o.sampler | quote }}
{{- with $o.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ $attrs := list "k8s.namespace.name=$(K8S_NAMESPACE_NAME)" "k8s.pod.name=$(K8S_POD_NAME)" }}{{ range $k, $v := $o.resourceAttributes }}{{ $attrs = append $attrs (printf "%s=%v" $k $v) }}{{ end }}{{ join "," $attrs | quote }}
{{- end }}
{{- end }}

{{/* "true" when Redis is configured (an existing Secret must then hold it). */}}
{{- define "wsgate.hasRedis" -}}
{{- if or (include "wsgate.hasRedisUrl" .) (include "wsgate.hasRedisShards" .) }}true{{ end }}
{{- end }}

{{/* "true" when the Secret holds a Redis URL. */}}
{{- define "wsgate.hasRedisUrl" -}}
{{- if and .Values.secrets.keys.redisUrl (or .Values.secrets.existingSecret .Values.secrets.redisUrl) }}true{{ end }}
{{- end }}

{{/* "true" when the Secret holds `redis.shards`. */}}
{{- define "wsgate.hasRedisShards" -}}
{{- $s := .Values.secrets }}
{{- if and $s.keys.redisShards (or (and (not $s.existingSecret) $s.redisShards) (and $s.existingSecret $s.redisShardsInExistingSecret)) }}true{{ end }}
{{- end }}

{{/*
Seconds in a duration as wsgate writes them ("250ms", "5s", "2m", "1h",
"1m30s"). Rounded up.
*/}}
{{- define "wsgate.durationSeconds" -}}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h)" (toString .) -1 }}
{{- $n := regexFind "^[0-9]+" $part | float64 }}
{{- $unit := regexFind "(ms|s|m|h)$" $part }}
{{- if eq $unit "ms" }}{{ $total = addf $total (divf $n 1000) }}
{{- else if eq $unit "s" }}{{ $total = addf $total $n }}
{{- else if eq $unit "m" }}{{ $total = addf $total (mulf $n 60) }}
{{- else }}{{ $total = addf $total (mulf $n 3600) }}
{{- end }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep runs first and counts
against the grace period, then SIGTERM starts the drain (drain.grace, then
closes spread over drain.spread), then a margin to flush telemetry and exit.
*/}}
{{- define "wsgate.terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- else }}
{{- $drain := .Values.config.drain | default dict }}
{{- $grace := include "wsgate.durationSeconds" (default "5s" $drain.grace) | int }}
{{- $spread := include "wsgate.durationSeconds" (default "20s" $drain.spread) | int }}
{{- add (int .Values.lifecycle.preStopSleepSeconds) $grace $spread (int .Values.terminationGraceMarginSeconds) }}
{{- end }}
{{- end }}

{{/*
One TOML value: string, bool, whole number, a list of values, or a table
(written inline, e.g. groups.conflate = [{ groups = "market.*", key = "symbol" }]).
*/}}
{{- define "wsgate.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ int64 . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "wsgate.tomlValue" $v }}{{ end }}]
{{- else if kindIs "map" . }}{ {{- $first := true }}{{ range $k, $v := . }}{{ if not $first }},{{ end }}{{ $first = false }} {{ $k }} = {{ include "wsgate.tomlValue" $v }}{{ end }} }
{{- else }}{{ fail (printf "wsgate: config value %v (%s) cannot be written to TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* wsgate.toml: `config` plus the listen addresses from `ports`. */}}
{{- define "wsgate.configToml" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- range $section := list "server" "api" "metrics" }}
{{- if not (kindIs "map" (get $cfg $section)) }}{{ $_ := set $cfg $section dict }}{{ end }}
{{- end }}
{{- $_ := set $cfg.server "listen" (printf "0.0.0.0:%d" (int .Values.ports.ws)) }}
{{- $_ := set $cfg.api "listen" (printf "0.0.0.0:%d" (int .Values.ports.api)) }}
{{- $_ := set $cfg.metrics "listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) }}
{{- if .Values.migrateJob.enabled }}
{{- if not (kindIs "map" (get $cfg "database")) }}{{ $_ := set $cfg "database" dict }}{{ end }}
{{- $_ := set $cfg.database "migrate" false }}
{{- end -}}
# wsgate configuration rendered by the Helm chart from `.Values.config`.
# server.node_id, database.url, redis.url, redis.shards and api.keys come from the
# environment (pod name and Secret), which overrides this file.
{{- range $section, $values := $cfg }}

[{{ $section }}]
{{- range $key, $value := $values }}
{{ $key }} = {{ include "wsgate.tomlValue" $value }}
{{- end }}
{{- end }}
{{ end }}

{{/* Refuses combinations that install something broken. */}}
{{- define "wsgate.validate" -}}
{{- if and (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (not (include "wsgate.hasRedis" .)) }}
{{- fail "wsgate: replicaCount > 1 or autoscaling.enabled needs Redis (secrets.redisUrl, or secrets.existingSecret holding it): without it every pod is a separate gateway that does not see the others' groups" }}
{{- end }}
{{- $s := .Values.secrets }}
{{- if and (not $s.existingSecret) (or $s.databaseUrl $s.redisUrl) (not $s.apiKeys) }}
{{- fail "wsgate: secrets.apiKeys is required when secrets.databaseUrl or secrets.redisUrl is set (wsgate only generates a key in embedded mode)" }}
{{- end }}
{{- if and .Values.migrateJob.enabled (not (include "wsgate.hasDatabase" .)) }}
{{- fail "wsgate: migrateJob.enabled needs a database URL (secrets.databaseUrl, or secrets.existingSecret holding it): embedded SQLite lives in each pod" }}
{{- end }}
{{- if and .Values.opentelemetry.enabled (not .Values.opentelemetry.endpoint) }}
{{- fail "wsgate: opentelemetry.enabled needs opentelemetry.endpoint (the collector's OTLP/HTTP URL, port 4318 by default)" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (eq .name "OTEL_EXPORTER_OTLP_PROTOCOL") (ne (toString .value) "http/protobuf") }}
{{- fail "wsgate: OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf: wsgate exports OTLP over HTTP only (collector port 4318)" }}
{{- end }}
{{- end }}
{{- if and (include "wsgate.pdbEnabled" .) (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not .Values.autoscaling.enabled) }}
{{- if ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount) }}
{{- fail "wsgate: podDisruptionBudget.minAvailable must be below replicaCount, or no pod can ever be evicted (node drains would hang)" }}
{{- end }}
{{- end }}
{{- end }}
