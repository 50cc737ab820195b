{{/* Names, labels and the pieces every rankmesh workload shares. */}}

{{- define "rankmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* rankmesh.name: the object name of one component. Args: root, component. */}}
{{- define "rankmesh.name" -}}
{{- printf "%s-%s" (include "rankmesh.fullname" .root) .component -}}
{{- end -}}

{{- define "rankmesh.selectorLabels" -}}
app.kubernetes.io/name: rankmesh
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "rankmesh.labels" -}}
{{ include "rankmesh.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* rankmesh.image: an image reference. Args: root, image (repository). */}}
{{- define "rankmesh.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image $tag -}}
{{- else -}}
{{- printf "%s:%s" .image $tag -}}
{{- end -}}
{{- end -}}

{{/* The etcd endpoints services use: the bundled members, or the external ones. */}}
{{- define "rankmesh.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $name := include "rankmesh.name" (dict "root" . "component" "etcd") -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "https://%s-%d.%s-peer.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{- define "rankmesh.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "rankmesh.name" (dict "root" . "component" "redis")) .Release.Namespace -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* The TLS Secret of a role. Args: root, component. */}}
{{- define "rankmesh.tlsSecret" -}}
{{- printf "%s-tls-%s" (include "rankmesh.fullname" .root) .component -}}
{{- end -}}

{{/* A container's security context: non-root, read-only root, no capabilities. */}}
{{- define "rankmesh.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* The pod's: files on volumes belong to the services' group. */}}
{{- define "rankmesh.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Topology spread of a component's pods across nodes. Args: root, component. */}}
{{- define "rankmesh.spread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ .root.Values.topologySpread.topologyKey }}
    whenUnsatisfiable: {{ .root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "rankmesh.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* The TLS volume of a role, its files named as the services expect. */}}
{{- define "rankmesh.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ include "rankmesh.tlsSecret" . }}
    defaultMode: 0440
    items:
      - {key: ca.crt, path: ca.pem}
      - {key: tls.crt, path: tls.pem}
      - {key: tls.key, path: tls.key}
{{- end -}}

{{/*
rankmesh.service: the Deployment, Service, PDB (and HPA) of one rankmesh service.
Args: root, component (feature|embedding|ranking|registry), binary, values (its
block), env (extra env entries, a list of maps), secrets (which registry secrets
its init container writes: a list of admin-token, master-key, signing-key),
volumes and mounts (extra), gpu (the component's GPU block, or nil).
*/}}
{{- define "rankmesh.service" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $s := $root.Values.service -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $name := include "rankmesh.name" $ctx -}}
{{- $gpu := and .gpu .gpu.enabled -}}
{{- $image := $v.image -}}
{{- if $gpu }}{{ $image = .gpu.image }}{{ end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "rankmesh.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "rankmesh.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      {{- if $gpu }}
      # A surge pod would wait for a spare GPU: replace one at a time instead.
      maxSurge: 0
      maxUnavailable: 1
      {{- else }}
      # A new replica is ready before an old one drains: no capacity is lost.
      maxSurge: 1
      maxUnavailable: 0
      {{- end }}
  template:
    metadata:
      labels:
        {{- include "rankmesh.selectorLabels" $ctx | nindent 8 }}
        rankmesh-mesh: "true"
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $s.adminPort | quote }}
    spec:
      {{- include "rankmesh.podSecurity" . | nindent 6 }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      # preStop sleep + discovery grace + drain, and a little for exit.
      terminationGracePeriodSeconds: {{ add $s.preStopSleepSeconds (div (add $s.shutdownGraceMs $s.drainTimeoutMs) 1000) 5 }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- include "rankmesh.spread" $ctx | nindent 6 }}
      {{- $nodeSelector := $root.Values.nodeSelector -}}
      {{- $tolerations := $root.Values.tolerations -}}
      {{- if $gpu }}
      {{- $nodeSelector = .gpu.nodeSelector -}}
      {{- $tolerations = .gpu.tolerations -}}
      {{- end }}
      {{- with $nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .secrets }}
      initContainers:
        # Copies the registry secrets into owner-only files on a memory volume:
        # the services refuse secret files others can read, and a Secret volume's
        # files are group-readable under fsGroup.
        - name: secrets
          image: {{ include "rankmesh.image" (dict "root" $root "image" "rankmesh/meshctl") }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["write-secrets", "--dir", "/run/rankmesh", "--secrets-from", "/registry-secrets"]
          {{- include "rankmesh.containerSecurity" . | nindent 10 }}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {cpu: 100m, memory: 64Mi}
          volumeMounts:
            - {name: run, mountPath: /run/rankmesh}
            - {name: registry-secrets, mountPath: /registry-secrets, readOnly: true}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "rankmesh.image" (dict "root" $root "image" $image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - {name: grpc, containerPort: {{ $s.grpcPort }}, protocol: TCP}
            - {name: admin, containerPort: {{ $s.adminPort }}, protocol: TCP}
            - {name: probe, containerPort: {{ $s.probePort }}, protocol: TCP}
          env:
            - name: RANKMESH__SERVER__INSTANCE_ID
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            # Discovery hands callers this pod's address; they check its
            # certificate names the role they meant, whatever the address.
            - name: RANKMESH__SERVER__ADVERTISE_HOST
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - {name: RANKMESH__SERVER__LISTEN, value: "0.0.0.0:{{ $s.grpcPort }}"}
            - {name: RANKMESH__SERVER__ADMIN_LISTEN, value: "0.0.0.0:{{ $s.adminPort }}"}
            - {name: RANKMESH__SERVER__PROBE_LISTEN, value: "0.0.0.0:{{ $s.probePort }}"}
            - {name: RANKMESH__SERVER__SHUTDOWN_GRACE_MS, value: {{ $s.shutdownGraceMs | quote }}}
            - {name: RANKMESH__SERVER__DRAIN_TIMEOUT_MS, value: {{ $s.drainTimeoutMs | quote }}}
            - {name: RANKMESH__SERVER__TLS__CA, value: /run/rankmesh/tls/ca.pem}
            - {name: RANKMESH__SERVER__TLS__CERT, value: /run/rankmesh/tls/tls.pem}
            - {name: RANKMESH__SERVER__TLS__KEY, value: /run/rankmesh/tls/tls.key}
            - {name: RANKMESH__ETCD__ENDPOINTS, value: {{ include "rankmesh.etcdEndpoints" $root | quote }}}
            - {name: RANKMESH__ETCD__TLS__CA, value: /run/rankmesh/tls/ca.pem}
            - {name: RANKMESH__ETCD__TLS__CERT, value: /run/rankmesh/tls/tls.pem}
            - {name: RANKMESH__ETCD__TLS__KEY, value: /run/rankmesh/tls/tls.key}
            - {name: RANKMESH__TELEMETRY__LOG_FORMAT, value: {{ $s.logFormat | quote }}}
            {{- if $root.Values.otel.endpoint }}
            - {name: RANKMESH__TELEMETRY__OTLP_ENDPOINT, value: {{ $root.Values.otel.endpoint | quote }}}
            - {name: RANKMESH__TELEMETRY__SAMPLE_RATIO, value: {{ $root.Values.otel.sampleRatio | quote }}}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- range $k, $val := $s.extraEnv }}
            - {name: {{ $k }}, value: {{ $val | quote }}}
            {{- end }}
          {{- include "rankmesh.containerSecurity" . | nindent 10 }}
          resources:
            {{- $res := deepCopy $v.resources }}
            {{- if $gpu }}
            {{- $_ := set $res.limits "nvidia.com/gpu" .gpu.count }}
            {{- end }}
            {{- toYaml $res | nindent 12 }}
          # Native gRPC probes on grpc.health.v1 (server.probe_listen): "" is
          # SERVING exactly when /ready is, "liveness" while the process runs.
          startupProbe:
            grpc: {port: {{ $s.probePort }}, service: liveness}
            periodSeconds: 2
            failureThreshold: {{ div (default 300 $v.startupSeconds) 2 }}
          livenessProbe:
            grpc: {port: {{ $s.probePort }}, service: liveness}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            grpc: {port: {{ $s.probePort }}}
            periodSeconds: 2
            timeoutSeconds: 2
            failureThreshold: 1
          lifecycle:
            preStop:
              # The kubelet's own sleep (the images have no shell): endpoints
              # stop listing the pod before SIGTERM starts the drain.
              sleep: {seconds: {{ $s.preStopSleepSeconds }}}
          volumeMounts:
            - {name: tls, mountPath: /run/rankmesh/tls, readOnly: true}
            - {name: run, mountPath: /run/rankmesh/secrets, subPath: secrets, readOnly: true}
            - {name: tmp, mountPath: /tmp}
            - {name: data, mountPath: /data}
            {{- with .mounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "rankmesh.tlsVolume" $ctx | nindent 8 }}
        - name: run
          emptyDir: {medium: Memory, sizeLimit: 1Mi}
        {{- if .secrets }}
        - name: registry-secrets
          secret:
            secretName: {{ $root.Values.registrySecrets.secretName }}
            defaultMode: 0440
            items:
              - {key: admin-token, path: admin-token}
              - {key: master-key, path: master-key}
              - {key: signing-key, path: signing-key}
        {{- end }}
        - name: tmp
          emptyDir: {sizeLimit: 256Mi}
        - name: data
          emptyDir: {sizeLimit: 4Gi}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "rankmesh.labels" $ctx | nindent 4 }}
spec:
  selector:
    {{- include "rankmesh.selectorLabels" $ctx | nindent 4 }}
  ports:
    - {name: grpc, port: {{ $s.grpcPort }}, targetPort: grpc, protocol: TCP, appProtocol: grpc}
    - {name: admin, port: {{ $s.adminPort }}, targetPort: admin, protocol: TCP}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "rankmesh.labels" $ctx | nindent 4 }}
spec:
  minAvailable: {{ $v.pdb.minAvailable }}
  selector:
    matchLabels:
      {{- include "rankmesh.selectorLabels" $ctx | nindent 6 }}
{{- if and $v.autoscaling $v.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "rankmesh.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
    {{- with $v.autoscaling.metric }}
    - type: Pods
      pods:
        metric:
          name: {{ .name }}
        target:
          type: AverageValue
          averageValue: {{ .averageValue | quote }}
    {{- end }}
  behavior:
    # Scale down slowly: a replica that leaves drains, and load comes back.
    scaleDown:
      stabilizationWindowSeconds: 300
      policies:
        - {type: Pods, value: 1, periodSeconds: 60}
{{- end }}
{{- end -}}
