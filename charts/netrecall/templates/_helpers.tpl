{{/* Names, labels and the values every component shares. */}}
{{- define "netrecall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "netrecall.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "netrecall.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "netrecall.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "netrecall.labels" -}}
app.kubernetes.io/name: {{ include "netrecall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "netrecall.selector" -}}
app.kubernetes.io/name: {{ include "netrecall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netrecall.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "netrecall.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "netrecall.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "netrecall.tokenSecret" -}}
{{- default (printf "%s-token" (include "netrecall.fullname" .)) .Values.token.existingSecret -}}
{{- end -}}

{{- define "netrecall.tokenKey" -}}
{{- if .Values.token.existingSecret -}}{{ .Values.token.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{- define "netrecall.clickhouseSecret" -}}
{{- default (printf "%s-clickhouse" (include "netrecall.fullname" .)) .Values.clickhouse.auth.existingSecret -}}
{{- end -}}

{{- define "netrecall.clickhouseHost" -}}
{{- printf "%s-clickhouse" (include "netrecall.fullname" .) -}}
{{- end -}}

{{/* host:port part of the store URL, without scheme or credentials */}}
{{- define "netrecall.clickhouseEndpoint" -}}
{{- if eq .Values.clickhouse.mode "bundled" -}}
{{- printf "http://%s:8123" (include "netrecall.clickhouseHost" .) -}}
{{- else -}}
{{- required "clickhouse.url is required when clickhouse.mode is external" .Values.clickhouse.url | trimSuffix "/" -}}
{{- end -}}
{{- end -}}

{{- define "netrecall.hubURL" -}}
{{- printf "http://%s-hub:%v" (include "netrecall.fullname" .) .Values.hub.service.port -}}
{{- end -}}

{{/*
The store URL as env vars: credentials come from the Secret, and Kubernetes expands $(VAR) in a later
env value. The password must be URL-safe (the generated one is alphanumeric).
*/}}
{{- define "netrecall.storeEnv" -}}
{{- $endpoint := include "netrecall.clickhouseEndpoint" . -}}
{{- $scheme := ternary "https" "http" (hasPrefix "https://" $endpoint) -}}
{{- $hostport := $endpoint | trimPrefix "https://" | trimPrefix "http://" -}}
{{- $query := "" -}}
{{- if .Values.clickhouse.cluster }}{{ $query = printf "?cluster=%s" .Values.clickhouse.cluster }}{{ end -}}
- name: CLICKHOUSE_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "netrecall.clickhouseSecret" . }}
      key: {{ .Values.clickhouse.auth.usernameKey }}
- name: CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "netrecall.clickhouseSecret" . }}
      key: {{ .Values.clickhouse.auth.passwordKey }}
- name: NETRECALL_STORE
  value: {{ printf "%s://$(CLICKHOUSE_USER):$(CLICKHOUSE_PASSWORD)@%s/%s%s" $scheme $hostport .Values.clickhouse.database $query | quote }}
{{- end -}}

{{- define "netrecall.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "netrecall.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
The exact `netrecall export pcap` command line of a compliance schedule (tests/test_compliance.py runs
it). The file is named by the schedule and the run's time; the window ends at the run.
*/}}
{{- define "netrecall.exportArgs" -}}
{{- $s := .schedule -}}
{{- $ext := ternary "pcapng" "pcap" (eq (default "pcap" $s.format) "pcapng") -}}
- export
- pcap
- {{ printf "--output=/exports/%s-{time}.%s" $s.name $ext | quote }}
- {{ printf "--format=%s" $ext | quote }}
- {{ printf "--since=-%s" (required "each compliance schedule needs a window" $s.window) | quote }}
- --until=now
- {{ printf "--schedule=%s" $s.name | quote }}
- {{ printf "--reason=%s" (default "" $s.reason) | quote }}
{{- with $s.kfl }}
- {{ printf "--kfl=%s" . | quote }}
{{- end }}
{{- range $flag, $key := dict "namespace" "namespaces" "pod" "pods" "node" "nodes" "ip" "ips" "port" "ports" "label" "labels" }}
{{- range (index $s $key | default list) }}
- {{ printf "--%s=%v" $flag . | quote }}
{{- end }}
{{- end }}
- --output-format=json
{{- end -}}
