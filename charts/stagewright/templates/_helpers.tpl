{{/* The chart name, truncated to fit Kubernetes' 63-character label values. */}}
{{- define "stagewright.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release-scoped name prefix: the release name, unless it already contains the chart name.
`helm install stagewright ...` gives "stagewright", so objects are "stagewright-operator",
the names of the plain manifests.
*/}}
{{- define "stagewright.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the operator's Deployment, ServiceAccount, ClusterRole and bindings. */}}
{{- define "stagewright.operatorName" -}}
{{- printf "%s-operator" (include "stagewright.fullname" .) -}}
{{- end -}}

{{/* The leader Lease's name: the value, else the operator's name (one per release). */}}
{{- define "stagewright.leaseName" -}}
{{- default (include "stagewright.operatorName" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Labels that never change over a release's life: the Deployment's selector. */}}
{{- define "stagewright.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stagewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "stagewright.labels" -}}
{{ include "stagewright.selectorLabels" . }}
app.kubernetes.io/part-of: stagewright
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "stagewright.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
RBAC rules on namespaced resources: what the operator needs where it watches ImageBuilds.
In cluster-wide mode they go into the ClusterRole, in namespace mode into one Role per
watched namespace. They are identical to manifests/base/rbac.yaml (tests/unit/test_chart.py
compares the rendered rules), so the reasons are repeated here as well.
*/}}
{{- define "stagewright.namespacedRules" -}}
# kopf's event handlers and index list and watch ImageBuilds; the reconciler GETs one before
# a transition so it never acts on a stale copy.
- apiGroups: ["stagewright.dev"]
  resources: ["imagebuilds"]
  verbs: ["get", "list", "watch"]
# The only write to an ImageBuild: a merge patch of status through the status subresource.
# Spec and metadata are never written (no finalizer, no kopf progress annotations).
- apiGroups: ["stagewright.dev"]
  resources: ["imagebuilds/status"]
  verbs: ["patch"]
# Build pods name their ImageBuild as owner with blockOwnerDeletion: true. The
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) then
# requires update on the owner's finalizers subresource; custom resources serve no such
# endpoint, so this grants no write.
- apiGroups: ["stagewright.dev"]
  resources: ["imagebuilds/finalizers"]
  verbs: ["update"]
# Build pods: create one per generation and attempt, follow them (list, watch, get on
# resync), delete one when a new generation cancels it. Never modified.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "delete", "get", "list", "watch"]
# The log of a finished build pod, read once (bounded by limitBytes) for status.cache (Kaniko's
# cache hit and miss lines) and the target's base image. Read-only; a build's log holds no
# credentials (Kaniko never prints them).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Secrets and ConfigMaps an ImageBuild names (push and git credentials, a ConfigMap
# context), read by name: to report a missing one in status before a pod waits on it, and to
# check the pushed digest and size with the push credentials. get only: the operator cannot
# enumerate them.
- apiGroups: [""]
  resources: ["configmaps", "secrets"]
  verbs: ["get"]
# Warning Events on an ImageBuild for what needs a person (failure, retry, a pod that cannot start
# or be scheduled): create only, never patched; core v1 Events, not events.k8s.io.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
