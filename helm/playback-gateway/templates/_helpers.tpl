{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "playback-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix: the release name, plus the chart name unless the release name contains it.
*/}}
{{- define "playback-gateway.fullname" -}}
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

{{- define "playback-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "playback-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "playback-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "playback-gateway.labels" -}}
helm.sh/chart: {{ include "playback-gateway.chart" . }}
{{ include "playback-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: playback-gateway
{{- end }}

{{- define "playback-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "playback-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "playback-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "playback-gateway.configMapName" -}}
{{- printf "%s-config" (include "playback-gateway.fullname" .) }}
{{- end }}

{{- define "playback-gateway.policiesConfigMapName" -}}
{{- default (printf "%s-policies" (include "playback-gateway.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{- define "playback-gateway.shadowPoliciesConfigMapName" -}}
{{- default (printf "%s-shadow-policies" (include "playback-gateway.fullname" .)) .Values.shadowPolicies.existingConfigMap }}
{{- end }}

{{/*
Variables that hold credentials: they may only come from the Secret named by secrets.existingSecret.
*/}}
{{- define "playback-gateway.secretVariables" -}}
MUX_SIGNING_KEY MUX_PRIVATE_KEY MUX_TOKEN_ID MUX_TOKEN_SECRET GATEWAY_KEYRING_KEY GATEWAY_REDIS_URL
{{- end }}

{{/*
Non-secret variables accepted under `config`. The chart sets GATEWAY_POLICY_PATH,
GATEWAY_SHADOW_POLICY_PATH, GATEWAY_DATA_DIR and GATEWAY_CLIENTS_FILE itself from its mounts.
*/}}
{{- define "playback-gateway.configVariables" -}}
GATEWAY_MUX_API_URL GATEWAY_VIEWER_JWKS_URL GATEWAY_VIEWER_PUBLIC_KEY GATEWAY_VIEWER_ISSUER GATEWAY_VIEWER_AUDIENCE GATEWAY_VIEWER_ENTITLEMENTS_CLAIM GATEWAY_COUNTRY_HEADER GATEWAY_CORS_ORIGINS GATEWAY_RATE_LIMITS GATEWAY_TRUSTED_PROXIES GATEWAY_MAX_BODY_BYTES GATEWAY_LOG_LEVEL
{{- end }}

{{/*
Reject values that would deploy a broken or unsafe release, with the value to fix in the message.
Types and ranges are checked by values.schema.json; these are the rules a schema cannot express.
*/}}
{{- define "playback-gateway.validateValues" -}}
{{- $secretVariables := splitList " " (include "playback-gateway.secretVariables" .) }}
{{- $configVariables := splitList " " (include "playback-gateway.configVariables" .) }}
{{- range $name, $value := .Values.config }}
{{- if has $name $secretVariables }}
{{- fail (printf "config.%s holds a credential: store it in the Secret named by secrets.existingSecret (mapped by secrets.keys), never in values" $name) }}
{{- end }}
{{- if not (has $name $configVariables) }}
{{- fail (printf "config.%s is not a gateway setting the chart accepts (accepted: %s); use extraEnv for anything else" $name (join ", " $configVariables)) }}
{{- end }}
{{- end }}
{{- range $variable, $key := .Values.secrets.keys }}
{{- if not (regexMatch "^[A-Z_][A-Z0-9_]*$" $variable) }}
{{- fail (printf "secrets.keys has an invalid environment variable name %q: use upper-case letters, digits and underscores" $variable) }}
{{- end }}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" (toString $key)) }}
{{- fail (printf "secrets.keys.%s must name a key of the Secret (letters, digits, '-', '_' or '.'), got %q" $variable (toString $key)) }}
{{- end }}
{{- end }}
{{- if and (not .Values.policies.existingConfigMap) (empty .Values.policies.files) }}
{{- fail "policies: set policies.files or policies.existingConfigMap; the gateway does not start without a policy" }}
{{- end }}
{{- if and .Values.shadowPolicies.enabled (not .Values.shadowPolicies.existingConfigMap) (empty .Values.shadowPolicies.files) }}
{{- fail "shadowPolicies.enabled is true: set shadowPolicies.files or shadowPolicies.existingConfigMap" }}
{{- end }}
{{- range $file, $_ := .Values.policies.files }}
{{- if not (regexMatch "^[-_a-zA-Z0-9.]+\\.yaml$" $file) }}
{{- fail (printf "policies.files key %q must be a file name ending in .yaml (the gateway loads *.yaml from the folder)" $file) }}
{{- end }}
{{- end }}
{{- range $file, $_ := .Values.shadowPolicies.files }}
{{- if not (regexMatch "^[-_a-zA-Z0-9.]+\\.yaml$" $file) }}
{{- fail (printf "shadowPolicies.files key %q must be a file name ending in .yaml (the gateway loads *.yaml from the folder)" $file) }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) is greater than autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- if and .Values.keyJobs.rotate.enabled (not .Values.secrets.existingSecret) }}
{{- fail "keyJobs.rotate.enabled needs secrets.existingSecret: rotation calls the System API with MUX_TOKEN_ID and MUX_TOKEN_SECRET" }}
{{- end }}
{{- end }}

{{/*
Environment shared by the gateway pods and the key CronJobs: the chart-managed paths, the
credentials from the existing Secret, then extraEnv.
*/}}
{{- define "playback-gateway.env" -}}
- name: GATEWAY_DATA_DIR
  value: {{ .Values.dataDir.path | quote }}
- name: GATEWAY_POLICY_PATH
  value: {{ .Values.policies.mountPath | quote }}
{{- if .Values.shadowPolicies.enabled }}
- name: GATEWAY_SHADOW_POLICY_PATH
  value: {{ .Values.shadowPolicies.mountPath | quote }}
{{- end }}
{{- if .Values.clients.existingSecret }}
- name: GATEWAY_CLIENTS_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" .Values.clients.mountPath) .Values.clients.key | quote }}
{{- end }}
{{- if .Values.secrets.existingSecret }}
{{- range $variable, $key := .Values.secrets.keys }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.secrets.existingSecret | quote }}
      key: {{ $key | quote }}
      optional: true
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "playback-gateway.envFrom" -}}
- configMapRef:
    name: {{ include "playback-gateway.configMapName" . }}
{{- end }}

{{/*
Volumes shared by the gateway pods and the key CronJobs. The root filesystem is read-only, so
/tmp and the data folder are emptyDirs. Policy folders are whole-ConfigMap mounts, never subPath:
the kubelet only updates files in place for whole mounts, and policy reloads rely on that.
*/}}
{{- define "playback-gateway.volumes" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmp.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.tmp.sizeLimit }}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDir.sizeLimit }}
- name: policies
  configMap:
    name: {{ include "playback-gateway.policiesConfigMapName" . }}
{{- if .Values.shadowPolicies.enabled }}
- name: shadow-policies
  configMap:
    name: {{ include "playback-gateway.shadowPoliciesConfigMapName" . }}
{{- end }}
{{- if .Values.clients.existingSecret }}
- name: clients
  secret:
    secretName: {{ .Values.clients.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.clients.key }}
        path: {{ .Values.clients.key }}
{{- end }}
{{- end }}

{{- define "playback-gateway.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.dataDir.path }}
- name: policies
  mountPath: {{ .Values.policies.mountPath }}
  readOnly: true
{{- if .Values.shadowPolicies.enabled }}
- name: shadow-policies
  mountPath: {{ .Values.shadowPolicies.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.clients.existingSecret }}
- name: clients
  mountPath: {{ .Values.clients.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod-level fields shared by the Deployment and the CronJobs.
*/}}
{{- define "playback-gateway.podCommon" -}}
serviceAccountName: {{ include "playback-gateway.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
