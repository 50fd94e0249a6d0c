#!/usr/bin/env bash
# Proves a node brought up by scripts/node-up.sh runs real workloads:
#   1. the Node is Ready;
#   2. a Deployment of the locally built busybox image (an HTTP server) gets a Running,
#      Ready pod (its readiness probe is an HTTP GET from kubelet to the pod's IP);
#   3. `kubectl logs` shows what the container printed;
#   4. `kubectl exec` runs a command in it (and sees the pod's hostname and IP);
#   5. a ClusterIP Service reaches it from another pod (kube-proxy's iptables DNAT);
#   6. CoreDNS resolves the Service's name, and its short name works through the pod's
#      search path;
#   7. the `kubernetes` Service (10.97.0.1) reaches the API server from a pod, and the
#      pod's ServiceAccount token authenticates.
# Each step waits for its condition with a deadline; timings go to stderr.
# Everything it creates is in namespace strait-smoke, deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

KUBE_BIN="$(kube_bin_dir)"
k() { "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ns=strait-smoke
t0=$SECONDS
step() { node_log "ok ($((SECONDS - t0))s): $*"; }
fail() {
  node_log "FAILED: $*"
  k -n "$ns" get pods -o wide >&2 || true
  k -n "$ns" describe pods >&2 || true
  k get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
  exit 1
}

[[ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] ||
  fail "node $NODE_NAME is not Ready"
step "node $NODE_NAME Ready ($(k get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion} kubelet {.status.nodeInfo.kubeletVersion}'))"

k create namespace "$ns" >/dev/null
# The ServiceAccount admission plugin needs the namespace's `default` ServiceAccount,
# which the controller-manager creates.
wait_for 60 k -n "$ns" get serviceaccount default || fail "no default ServiceAccount in $ns (controller-manager)"

k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $ns}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: ["/bin/sh", "-c"]
        args:
        - echo "web starting on \$(hostname)"; echo "hello from \$(hostname)" > /www/index.html; exec httpd -f -v -p 8080 -h /www
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $ns}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
EOF
k -n "$ns" rollout status deployment/web --timeout=120s >&2 || fail "deployment web did not become available"
pod="$(k -n "$ns" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')"
pod_ip="$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.podIP}')"
[[ "$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.phase}/{.status.conditions[?(@.type=="Ready")].status}')" == Running/True ]] ||
  fail "pod $pod not Running/Ready"
step "deployment web: pod $pod Running and Ready at $pod_ip"

wait_for 30 bash -c "'$KUBE_BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' -n $ns logs $pod | grep -q 'web starting on $pod'" ||
  fail "kubectl logs $pod lacks the start line: $(k -n "$ns" logs "$pod" 2>&1 | head -5)"
step "kubectl logs: $(k -n "$ns" logs "$pod" | head -1)"

# shellcheck disable=SC2016  # expanded in the pod, not here
out="$(k -n "$ns" exec "$pod" -- sh -c 'echo "$(hostname) $(ip -4 -o addr show eth0 | awk "{print \$4}")"')" || fail "kubectl exec failed"
[[ "$out" == "$pod $pod_ip/"* ]] || fail "kubectl exec printed '$out', expected '$pod $pod_ip/...'"
step "kubectl exec: $out"

svc_ip="$(k -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')"
k -n "$ns" run client --image="$BUSYBOX_IMAGE" --image-pull-policy=Never --restart=Never \
  --overrides='{"spec":{"terminationGracePeriodSeconds":1}}' --command -- sleep 3600 >/dev/null
k -n "$ns" wait --for=condition=Ready pod/client --timeout=60s >&2 || fail "client pod not Ready"
client_ip="$(k -n "$ns" get pod client -o jsonpath='{.status.podIP}')"
body=""
for _ in $(seq 1 20); do
  body="$(k -n "$ns" exec client -- timeout 5 wget -qO- "http://$svc_ip/index.html" 2>/dev/null)" && break
  sleep 1
done
[[ "$body" == "hello from $pod" ]] || fail "GET http://$svc_ip/ from pod client ($client_ip) returned '$body'"
step "ClusterIP $svc_ip:80 -> $pod from pod client ($client_ip): '$body'"

# DNS: CoreDNS (kube-dns at CLUSTER_DNS_IP) resolves the Service's name to its ClusterIP,
# and the pod's search path lets the short name reach it.
answer="$(k -n "$ns" exec client -- nslookup "web.$ns.svc.$CLUSTER_DOMAIN" 2>&1)" ||
  fail "nslookup web.$ns.svc.$CLUSTER_DOMAIN from pod client failed: $answer"
grep -q "Address: $svc_ip\$" <<<"$answer" || fail "nslookup web.$ns.svc.$CLUSTER_DOMAIN answered: $answer"
body="$(k -n "$ns" exec client -- timeout 5 wget -qO- "http://web/index.html" 2>&1)" || true
[[ "$body" == "hello from $pod" ]] || fail "GET http://web/ (short name) from pod client returned '$body'"
step "DNS: web.$ns.svc.$CLUSTER_DOMAIN -> $svc_ip via $CLUSTER_DNS_IP; http://web/ by short name: '$body'"

# The API server through the `kubernetes` Service from a pod (TCP through kube-proxy's
# DNAT to the API server's address): a plain HTTP request to its TLS port gets Go's
# "Client sent an HTTP request to an HTTPS server", which only the API server sends here.
# busybox's built-in TLS client (the image has no openssl) fails the handshake with the
# API server ("TLS error from peer (alert code 40): handshake failure"), so the token side
# is checked by a TokenReview of the pod's ServiceAccount token instead: it must
# authenticate as the pod's ServiceAccount (token controller + projected volume work).
answer="$(k -n "$ns" exec client -- sh -c "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $SERVICE_APISERVER_IP 443" 2>&1)" || true
grep -q 'Client sent an HTTP request to an HTTPS server' <<<"$answer" ||
  fail "kubernetes Service $SERVICE_APISERVER_IP:443 from pod client answered: '$answer'"
token="$(k -n "$ns" exec client -- cat /var/run/secrets/kubernetes.io/serviceaccount/token)"
review="$(printf 'apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {token: "%s"}\n' "$token" |
  k create -o jsonpath='{.status.authenticated} {.status.user.username}' -f -)"
[[ "$review" == "true system:serviceaccount:$ns:default" ]] || fail "TokenReview of the pod's token: '$review'"
step "kubernetes Service $SERVICE_APISERVER_IP:443 reached from a pod; its ServiceAccount token authenticates as system:serviceaccount:$ns:default"

k delete namespace "$ns" --wait=true --timeout=90s >/dev/null || fail "namespace $ns not deleted"
step "namespace $ns deleted"
node_log "all checks passed in $((SECONDS - t0))s"
