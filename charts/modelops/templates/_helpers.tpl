{{/* Chart name, or nameOverride. */}}
{{- define "modelops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else "<release>-<name>" (just the release name when it already
contains the name). Also the leader-election Lease's name (MODELOPS_LEADER_ELECTION_ID).
*/}}
{{- define "modelops.fullname" -}}
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

{{/* The metrics Service's name; Prometheus' `job` label when scraped through the ServiceMonitor. */}}
{{- define "modelops.metricsName" -}}
{{- printf "%s-metrics" (include "modelops.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "modelops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "modelops.labels" -}}
helm.sh/chart: {{ include "modelops.chart" . }}
{{ include "modelops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelops
{{- end }}

{{/* Labels that select the operator pods (never change them: Deployment selectors are immutable). */}}
{{- define "modelops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelops.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator watches: checks the mode's requirements and returns them comma-joined
(empty in cluster mode: every namespace).
*/}}
{{- define "modelops.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "namespaced" }}
{{- if not .Values.watchNamespaces }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the namespaces the operator watches and gets a Role in, e.g. --set 'watchNamespaces={team-a,team-b}'" }}
{{- end }}
{{- join "," .Values.watchNamespaces }}
{{- else if .Values.watchNamespaces }}
{{- fail "watchNamespaces is only used with rbac.scope=namespaced; in cluster mode the operator watches every namespace (set rbac.scope=namespaced or leave watchNamespaces empty)" }}
{{- end }}
{{- end }}

{{/*
The pod and container security contexts (values podSecurityContext and containerSecurityContext),
for every pod the chart runs. The defaults meet the restricted Pod Security profile.
*/}}
{{- define "modelops.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "modelops.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
Whether to render the CRDs ("true" or empty). Fails when the values have no `crds` section at all:
that is `helm upgrade --reuse-values` from a chart that had none, which drops new defaults.
*/}}
{{- define "modelops.installCRDs" -}}
{{- if not (kindIs "map" .Values.crds) }}
{{- fail "values have no crds section: `helm upgrade --reuse-values` keeps the previous chart's values and drops this chart's new defaults; upgrade with your values file (-f values.yaml) or --reset-then-reuse-values instead (docs/upgrade.md)" }}
{{- end }}
{{- if .Values.crds.enabled }}true{{ end }}
{{- end }}

{{/* Labels a release adds to the CRDs (the generated ones, part-of and bundle-version, come first). */}}
{{- define "modelops.crdLabels" -}}
helm.sh/chart: {{ include "modelops.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* extraEnv, refusing the operator's own settings (they are chart values, under settings). */}}
{{- define "modelops.extraEnv" -}}
{{- range .Values.extraEnv }}
{{- if hasPrefix "MODELOPS_" (.name | default "") }}
{{- fail (printf "extraEnv sets %s: the operator's MODELOPS_* settings are chart values under settings (values.yaml), which the chart sets itself; set settings.<name> instead" .name) }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Exactly the API access the operator uses in the watched namespaces (no wildcards, no Secrets, no
pod creation). Rendered into the ClusterRole (cluster mode) or each namespace's Role.
*/}}
{{- define "modelops.rules" -}}
# The three kinds: read and watch them, patch finalizers and kopf's annotations.
- apiGroups: ["modelops.dev"]
  resources: ["datasets", "trainingruns", "modeldeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
# ...and write their status.
- apiGroups: ["modelops.dev"]
  resources: ["datasets/status", "trainingruns/status", "modeldeployments/status"]
  verbs: ["get", "patch", "update"]
# Events announcing state changes; list: a Job's or PyTorchJob's FailedCreate Events say why no pod
# could be created (a missing ServiceAccount, a quota), which no pod can.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Data-preparation Jobs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Reading Job and trial pods' state (never creating pods, never reading their logs: a trial's
# progress comes from its trainer's endpoint, results from termination messages).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Training trials (Kubeflow training operator); patch suspends and resumes them.
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# Training trials (Kubeflow Trainer v2); patch suspends and resumes them; a namespace's
# TrainingRuntimes are read to say when the one a run names does not exist.
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainingruntimes"]
  verbs: ["get"]
# Kueue's Workloads of trials (when Kueue is installed): read to show why a trial is queued or was
# preempted; patch sets spec.active for spec.suspend (the operator never suspends a job Kueue admits).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "patch"]
# A ModelDeployment's children: read first (one it did not create is left alone), then applied
# server-side (an apply is a patch; one that creates the object needs create too).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors", "prometheusrules"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Canary weights on an HTTPRoute the user owns and hands over (annotation modelops.dev/modeldeployment).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "patch"]
{{- if .Values.rbac.readSecrets }}
# MLflow credentials a TrainingRun names (sent only where the Secret's annotation says).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}
