{{/* The chart's name. */}}
{{- define "flashsale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name. */}}
{{- define "flashsale.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "flashsale.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "flashsale.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "flashsale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "flashsale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selects every pod of the release. */}}
{{- define "flashsale.selector" -}}
app.kubernetes.io/name: {{ include "flashsale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image reference: by digest when one is given (what the pipeline deploys). */}}
{{- define "flashsale.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The termination grace period: preStop, then the binary's own grace, and a margin. */}}
{{- define "flashsale.terminationGrace" -}}
{{ add .Values.config.preStopSecs .Values.config.graceSecs 3 }}
{{- end -}}

{{/* Credentials from the existing Secret, as FLASHSALE__ overrides. Called with
(dict "root" $ "pooled" bool): pooled pods reach the databases through PgBouncer when
it is enabled; the migrations Job goes straight to the primaries. */}}
{{- define "flashsale.secretEnv" -}}
{{- $root := .root -}}
{{- $name := $root.Values.secrets.name -}}
{{- $keys := $root.Values.secrets.keys -}}
{{- $pooled := and .pooled $root.Values.pgbouncer.enabled -}}
{{- $catalog := ternary $keys.pooledCatalogUrl $keys.catalogUrl $pooled -}}
{{- $shards := ternary $keys.pooledShardUrls $keys.shardUrls $pooled -}}
{{- range $env, $key := dict "FLASHSALE__ADMIN__TOKEN" $keys.adminToken "FLASHSALE__AUTH__JWT_SECRET" $keys.jwtSecret "FLASHSALE__CATALOG__URL" $catalog "FLASHSALE__SHARDS__URLS" $shards "FLASHSALE__SHARDS__REPLICA_URLS" $keys.replicaUrls "FLASHSALE__INVENTORY__URLS" $keys.redisUrls "FLASHSALE__QUEUE__URL" $keys.amqpUrl "FLASHSALE__EVENTS__KAFKA__SASL_PASSWORD" $keys.kafkaPassword "FLASHSALE__PAYMENTS__WEBHOOK_SECRET" $keys.paymentWebhookSecret }}
{{- if $key }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The restricted security context of every container. */}}
{{- define "flashsale.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
