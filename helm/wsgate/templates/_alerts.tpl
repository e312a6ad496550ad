{{/*
wsgate's alert rules: the one source of the PrometheusRule and of
deploy/prometheus/alerts.yml (its render with the default values, written by
deploy/prometheus/render-alerts.sh; scripts/validate-deploy.sh checks they
agree). Thresholds come from metrics.prometheusRule.thresholds.

Every expression is aggregated `by (namespace, job)` (or kept per instance),
so one dead deployment is not hidden by a healthy one in another namespace
scraped by the same Prometheus. Prometheus' own templates are written as
{{`{{ ... }}`}} so Helm leaves them alone.
*/}}
{{- define "wsgate.alertRules" -}}
{{- $t := .Values.metrics.prometheusRule.thresholds }}
{{- $where := `{{ with $labels.namespace }}{{ . }}/{{ end }}{{ $labels.job }}` }}
{{- $node := `{{ with $labels.namespace }}{{ . }}/{{ end }}{{ $labels.instance }}` }}
- alert: WsgateAuthFailureRatioHigh
  # Share of authentications that fail, with a floor on traffic so a
  # handful of bad clients at night do not page.
  expr: |
    (
      sum by (namespace, job) (rate(wsgate_auth_failures_total[5m]))
      /
      (sum by (namespace, job) (rate(wsgate_auth_failures_total[5m])) + sum by (namespace, job) (rate(wsgate_auth_success_total[5m])))
    ) > {{ $t.authFailureRatio }}
    and
    (sum by (namespace, job) (rate(wsgate_auth_failures_total[5m])) + sum by (namespace, job) (rate(wsgate_auth_success_total[5m]))) > {{ $t.authMinRate }}
  for: 10m
  labels:
    severity: warning
  annotations:
    summary: More than {{ mulf $t.authFailureRatio 100 }}% of wsgate authentications fail in {{ $where }}
    description: >-
      {{`{{ $value | humanizePercentage }}`}} of authentications failed over the
      last 5 minutes. See the "Auth failures by reason" panel: invalid_token
      points at clients with stale tokens, timeout and malformed at client
      bugs, backend_unavailable at the database.
- alert: WsgateAuthBackendUnavailable
  # Neither the cache nor the database could answer (clients get 1013).
  expr: sum by (namespace, job) (rate(wsgate_auth_failures_total{reason="backend_unavailable"}[5m])) > {{ $t.authBackendUnavailableRate }}
  for: 5m
  labels:
    severity: critical
  annotations:
    summary: wsgate {{ $where }} cannot reach its token store
    description: >-
      {{`{{ $value | humanize }}`}} authentications per second fail with
      backend_unavailable: the database (and the Redis cache) cannot answer,
      so clients are refused with 1013.
- alert: WsgateRedisDown
  expr: wsgate_redis_up == 0
  for: 1m
  labels:
    severity: critical
  annotations:
    summary: wsgate node {{ $node }} has lost Redis
    description: >-
      The node has not reached Redis for a minute: it is not ready, and
      messages published on other nodes do not reach its clients until it
      reconnects.
- alert: WsgateDeliveryLatencyHigh
  expr: |
    histogram_quantile(0.99, sum by (namespace, job, le) (rate(wsgate_delivery_latency_seconds_bucket[5m]))) > {{ $t.deliveryLatencyP99Seconds }}
  for: 10m
  labels:
    severity: warning
  annotations:
    summary: wsgate {{ $where }} delivery latency p99 is above {{ $t.deliveryLatencyP99Seconds }} s
    description: >-
      99% of messages reach the client socket within
      {{`{{ $value | humanizeDuration }}`}} of their publish. Look at Redis,
      CPU saturation and slow consumers.
- alert: WsgateMessagesDropped
  # slow_consumer drops close the connection with 4009; closed drops are
  # messages for sockets that were already closing.
  expr: sum by (namespace, job, reason) (rate(wsgate_messages_dropped_total[5m])) > {{ $t.droppedPerSecond }}
  for: 10m
  labels:
    severity: warning
  annotations:
    summary: wsgate {{ $where }} drops messages ({{`{{ $labels.reason }}`}})
    description: >-
      {{`{{ $value | humanize }}`}} messages per second are dropped with reason
      {{`{{ $labels.reason }}`}}.
- alert: WsgateNoReadyNodes
  # A node is ready when it reaches Redis and is not draining. The second
  # operand keeps a deployment that was scraped within the lookback but has
  # no target left at all (every pod down) at 0, so it fires too.
  expr: |
    (
      sum by (namespace, job) (wsgate_redis_up * (1 - wsgate_draining))
      or
      0 * sum by (namespace, job) (present_over_time(wsgate_draining[{{ $t.absentLookback }}]))
    ) < 1
  for: 2m
  labels:
    severity: critical
  annotations:
    summary: No wsgate node of {{ $where }} is ready
    description: >-
      No node is both connected to Redis and not draining, or no node is
      scraped at all: clients cannot connect.
- alert: WsgateMetricsAbsent
  # A deployment scraped within the lookback that reports nothing now, or
  # no wsgate metrics at all in this Prometheus.
  expr: |
    (
      sum by (namespace, job) (present_over_time(wsgate_draining[{{ $t.absentLookback }}]))
      unless
      sum by (namespace, job) (wsgate_draining)
    )
    or
    absent(wsgate_draining)
  for: 5m
  labels:
    severity: warning
  annotations:
    summary: No wsgate metrics are scraped{{ `{{ with $labels.job }} for {{ with $labels.namespace }}{{ . }}/{{ end }}{{ . }}{{ end }}` }}
    description: >-
      Prometheus has no wsgate series from this deployment (or from any):
      every target is down, or the scrape configuration (ServiceMonitor,
      Service labels, NetworkPolicy) lost them.
- alert: WsgateDrainStuck
  # A drain takes drain.grace + drain.spread (25 s by default).
  expr: wsgate_draining == 1
  for: {{ $t.drainStuckFor }}
  labels:
    severity: warning
  annotations:
    summary: wsgate node {{ $node }} has been draining for {{ $t.drainStuckFor }}
    description: >-
      The node started draining over {{ $t.drainStuckFor }} ago and has not
      exited; the pod may be stuck in termination.
- alert: WsgateFileDescriptorsHigh
  # Every socket is a file descriptor: past the limit, accept() fails and
  # new clients cannot connect.
  expr: |
    (process_open_fds / process_max_fds) > {{ $t.fdUsageRatio }}
    and on (namespace, job, instance)
    wsgate_draining
  for: 5m
  labels:
    severity: warning
  annotations:
    summary: wsgate node {{ $node }} uses {{ `{{ $value | humanizePercentage }}` }} of its file descriptors
    description: >-
      Open file descriptors are above {{ mulf $t.fdUsageRatio 100 }}% of the
      process limit (RLIMIT_NOFILE). At the limit new connections fail.
{{- end }}

{{/* The rule groups: the rules above, less `disabled`, with runbook_url and
the extra labels added. */}}
{{- define "wsgate.alertGroups" -}}
{{- $p := .Values.metrics.prometheusRule }}
{{- $rules := list }}
{{- range (include "wsgate.alertRules" . | fromYamlArray) }}
{{- if not (has .alert $p.disabled) }}
{{- $r := . }}
{{- $_ := set $r "labels" (merge (deepCopy ($p.additionalRuleLabels | default dict)) $r.labels) }}
{{- $_ := set $r.annotations "runbook_url" (printf "%s#%s" $p.runbookBaseUrl (lower .alert)) }}
{{- $rules = append $rules $r }}
{{- end }}
{{- end }}
- name: wsgate
  rules:
    {{- toYaml $rules | nindent 4 }}
{{- end }}
