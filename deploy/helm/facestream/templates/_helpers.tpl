{{/* Names and labels. */}}
{{- define "facestream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "facestream.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker-cpu"). */}}
{{- define "facestream.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "facestream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "facestream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: (dict "image" .Values.image "root" $). Digest wins over tag. */}}
{{- define "facestream.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Checks that fail the render with one line naming the value to fix. */}}
{{- define "facestream.validate" -}}
{{- $k := .Values.kafka -}}
{{- if and (hasPrefix "SASL" $k.securityProtocol) (not $k.sasl.mechanism) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $k.securityProtocol) -}}
{{- end -}}
{{- if and $k.sasl.mechanism (not (has $k.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512"))) -}}
{{- fail (printf "kafka.sasl.mechanism=%s: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" $k.sasl.mechanism) -}}
{{- end -}}
{{- if and $k.sasl.mechanism (not $k.sasl.existingSecret) -}}
{{- fail "kafka.sasl.mechanism is set: name the Secret with the SASL user name and password in kafka.sasl.existingSecret" -}}
{{- end -}}
{{- if le (mul (int .Values.workers.terminationGracePeriodSeconds) 1000) (int $k.maxPollIntervalMs) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds=%d must exceed kafka.maxPollIntervalMs=%d (in seconds): a stopping worker finishes its round first" (int .Values.workers.terminationGracePeriodSeconds) (int $k.maxPollIntervalMs)) -}}
{{- end -}}
{{- if and .Values.api.enabled (not .Values.api.tokenSecret) -}}
{{- fail "api.enabled: name the Secret with the API bearer token in api.tokenSecret (the API listens beyond loopback, so it needs one), or set api.enabled=false" -}}
{{- end -}}
{{- $cpu := .Values.workers.cpu -}}
{{- $gpu := .Values.workers.gpu -}}
{{- if and $cpu.enabled $gpu.enabled -}}
{{- if eq (default $k.videoTopic $cpu.videoTopic) (default $k.videoTopic $gpu.videoTopic) -}}
{{- fail "workers.cpu and workers.gpu read one topic: in one group streams would be split between the profiles at random, in two they would share each stream's checkpoint; give workers.gpu its own videoTopic" -}}
{{- end -}}
{{- end -}}
{{- if and $gpu.enabled (eq $gpu.profile "facellava") (not $gpu.facellava.existingClaim) -}}
{{- fail "workers.gpu runs the facellava profile: name the PersistentVolumeClaim holding the checkpoint and towers in workers.gpu.facellava.existingClaim" -}}
{{- end -}}
{{- end -}}

{{/* The connection and shared settings every facestream container gets:
(dict "root" $ "topic" T "group" G); empty T and G take kafka.videoTopic and kafka.consumerGroup. */}}
{{- define "facestream.env" -}}
{{- $k := .root.Values.kafka -}}
{{- $values := .root.Values -}}
- name: FACESTREAM_KAFKA_BOOTSTRAP
  value: {{ $k.bootstrap | quote }}
- name: FACESTREAM_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if $k.sasl.mechanism }}
- name: FACESTREAM_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: FACESTREAM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.usernameKey }}
- name: FACESTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.passwordKey }}
{{- end }}
{{- if $k.tls.caSecret }}
- name: FACESTREAM_KAFKA_SSL_CAFILE
  value: /etc/facestream/kafka-ca/{{ $k.tls.caKey }}
{{- end }}
- name: FACESTREAM_VIDEO_TOPIC
  value: {{ default $k.videoTopic .topic | quote }}
- name: FACESTREAM_DLQ_TOPIC
  value: {{ $k.dlqTopic | quote }}
- name: FACESTREAM_REGISTRY_TOPIC
  value: {{ $k.registryTopic | quote }}
- name: FACESTREAM_CONSUMER_GROUP
  value: {{ default $k.consumerGroup .group | quote }}
- name: FACESTREAM_KAFKA_SESSION_TIMEOUT_MS
  value: {{ $k.sessionTimeoutMs | quote }}
- name: FACESTREAM_KAFKA_MAX_POLL_INTERVAL_MS
  value: {{ $k.maxPollIntervalMs | quote }}
- name: FACESTREAM_REDIS_URL
{{- if $values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $values.redis.existingSecret }}
      key: {{ $values.redis.urlKey }}
{{- else }}
  value: {{ $values.redis.url | quote }}
{{- end }}
{{- if $values.llm.endpoint }}
- name: FACESTREAM_LLM_ENDPOINT
  value: {{ $values.llm.endpoint | quote }}
- name: FACESTREAM_LLM_TIMEOUT_S
  value: {{ $values.llm.timeoutS | quote }}
- name: FACESTREAM_LLM_MAX_IN_FLIGHT
  value: {{ $values.llm.maxInFlight | quote }}
{{- if $values.llm.apiKeySecret }}
- name: FACESTREAM_LLM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $values.llm.apiKeySecret }}
      key: {{ $values.llm.apiKeyKey }}
{{- end }}
{{- end }}
{{- range $name, $value := $values.settings }}
- name: {{ printf "FACESTREAM_%s" (upper $name) }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The Kafka CA volume and its mount, when kafka.tls.caSecret is set. */}}
{{- define "facestream.caVolume" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
{{- end }}
{{- end -}}
{{- define "facestream.caMount" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/facestream/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Scheduling fields of a component's values. */}}
{{- define "facestream.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
