{{/* Names and labels shared by every object of the chart. */}}
{{- define "edge-reconciler.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edge-reconciler.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "edge-reconciler.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "edge-reconciler.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "edge-reconciler.agentImage" -}}
{{- $repository := .Values.agent.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.agent.image.tag | default (.Values.image.tag | default .Chart.AppVersion) -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "edge-reconciler.claim" -}}
{{- .Values.store.pvc.existingClaim | default (printf "%s-data" (include "edge-reconciler.fullname" .)) -}}
{{- end -}}

{{- define "edge-reconciler.caSecret" -}}
{{- .Values.ca.existingSecret | default (printf "%s-ca" (include "edge-reconciler.fullname" .)) -}}
{{- end -}}

{{/* The device API's in-cluster name: what agents dial and what its certificate must name. */}}
{{- define "edge-reconciler.deviceApiService" -}}
{{- printf "%s-device-api" (include "edge-reconciler.fullname" .) -}}
{{- end -}}
