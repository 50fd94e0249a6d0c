#!/usr/bin/env bash
# Brings up a real single-node Kubernetes v1.36.3 on this machine, from upstream parts:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from their Go
# modules by scripts/build-kube-tools.sh and scripts/build-node-tools.sh), containerd +
# runc + the CNI plugins (containerd v2 built by build-node-tools.sh; runc and the plugins
# Debian's: scripts/install-node-deps.sh), kubelet, kube-proxy (iptables mode) and CoreDNS.
# Images come from scripts/node-images.sh (no registry is needed).
#
# All state (PKI, configs, etcd data, containerd root, kubelet root, pod logs, logs, pids)
# is under ${STRAIT_NODE_DIR:-/tmp/strait-node}; addresses are in scripts/node-lib.sh.
# On success it prints `export KUBECONFIG=...` on stdout; progress goes to stderr.
# scripts/node-down.sh removes everything this creates. Run as root.
#
# Usage: scripts/node-up.sh            (fails if a node is already up: run node-down.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

[[ $EUID -eq 0 ]] || node_die "run as root"
if [[ -e "$NODE_DIR" ]]; then
  node_die "$NODE_DIR exists: a node is up or was not torn down (scripts/node-down.sh)"
fi
start_all=$SECONDS
# A failed bring-up leaves what it started running: say where to look and how to clean up.
on_exit() {
  local rc=$?
  if ((rc)) && [[ -d "$NODE_DIR/logs" ]]; then
    node_log "failed (exit $rc); logs in $NODE_DIR/logs; scripts/node-down.sh removes what was started"
  fi
}
trap on_exit EXIT

scripts/install-node-deps.sh
KUBE_BIN="$(kube_bin_dir)"
NODE_BIN="$(node_bin_dir)"
# containerd, ctr and containerd-shim-runc-v2: v2 built by build-node-tools.sh from
# tools/containerd, unless STRAIT_NODE_CONTAINERD_DIR names another directory
# (/usr/bin: Debian's 1.6.20, which kubelet 1.36 still accepts; see tools/node/README.md).
CONTAINERD_DIR="${STRAIT_NODE_CONTAINERD_DIR:-$NODE_BIN}"
[[ -x "$CONTAINERD_DIR/containerd" && -x "$CONTAINERD_DIR/ctr" ]] || node_die "no containerd and ctr in $CONTAINERD_DIR"
CONTAINERD_VERSION="$("$CONTAINERD_DIR/containerd" --version | awk '{print $3}')"
CONTAINERD_MAJOR="${CONTAINERD_VERSION#v}"; CONTAINERD_MAJOR="${CONTAINERD_MAJOR%%.*}"
[[ "$CONTAINERD_MAJOR" =~ ^[0-9]+$ ]] || node_die "cannot read containerd's version: $CONTAINERD_VERSION"
export PATH="$NODE_BIN:$KUBE_BIN:$PATH"
kubectl() { "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

mkdir -p "$NODE_DIR"/{pki,kubeconfigs,config,logs,pids,etcd,images,cni/net.d,cni/ipam,containerd,kubelet,pod-logs,host}
chmod 700 "$NODE_DIR/pki"

# ---- host state to restore (node-down.sh) ----------------------------------------------
: >"$NODE_DIR/host/sysctls"
for key in "${HOST_SYSCTLS[@]}"; do
  if value="$(sysctl -n "$key" 2>/dev/null)"; then
    printf '%s=%s\n' "$key" "$value" >>"$NODE_DIR/host/sysctls"
  fi
done
# Directories outside $NODE_DIR that containerd, CNI or kubelet create (paths compiled into
# them): node-down.sh removes the ones that did not exist before.
for d in /run/containerd /var/run/netns /var/lib/cni /var/log/containers; do
  [[ -e "$d" ]] || echo "$d" >>"$NODE_DIR/host/created-dirs"
done
touch "$NODE_DIR/host/created-dirs"

# ---- network: the pod bridge (also the node's address) and forwarding ---------------------------------------
ip link add "$POD_BRIDGE" type bridge
ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$POD_BRIDGE"
ip link set "$POD_BRIDGE" up
modprobe br_netfilter 2>/dev/null || true
# Pod -> ClusterIP -> pod on the same bridge is DNAT'ed by kube-proxy's iptables rules,
# which only see bridged packets with bridge-nf-call-iptables; the DNAT'ed packet is then
# routed back out of the bridge (ip_forward).
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1
sysctl -qw net.bridge.bridge-nf-call-ip6tables=1

# ---- PKI ------------------------------------------------------------------------------
pki="$NODE_DIR/pki"
openssl_quiet() { openssl "$@" 2>/dev/null; }
# ECDSA P-256 keys: nine RSA-2048 keys took 13 s of node-up on the loaded machine.
openssl_quiet req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj "/CN=strait-node-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
# mkcert NAME SUBJECT [SAN]: a client or serving certificate signed by the CA.
mkcert() {
  local name="$1" subject="$2" san="${3:-}"
  openssl_quiet req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" -keyout "$pki/$name.key" -out "$pki/$name.csr"
  local ext="$pki/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl_quiet x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 7 -extfile "$ext" -out "$pki/$name.crt"
  rm -f "$pki/$name.csr" "$ext"
}
mkcert apiserver "/CN=kube-apiserver" \
  "IP:$NODE_IP,IP:$SERVICE_APISERVER_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
mkcert admin "/O=system:masters/CN=strait-node-admin"
mkcert controller-manager "/CN=system:kube-controller-manager"
mkcert scheduler "/CN=system:kube-scheduler"
mkcert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
# kubelet's serving certificate (the API server verifies it: --kubelet-certificate-authority).
mkcert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
mkcert kube-proxy "/CN=system:kube-proxy"
# ServiceAccount tokens are signed ES256 with it.
openssl_quiet genpkey -algorithm ec -pkeyopt ec_paramgen_curve:prime256v1 -out "$pki/sa.key"
openssl_quiet pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

# kubeconfig NAME: client certificate $pki/NAME.{crt,key}.
kubeconfig() {
  cat >"$NODE_DIR/kubeconfigs/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: strait-node
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: strait-node
  context: {cluster: strait-node, user: $1, namespace: default}
current-context: strait-node
EOF
}
for c in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig "$c"; done

# spawn NAME BINARY ARGS...: runs it in its own session, log in logs/NAME.log, pid in pids/.
spawn() {
  local name="$1"; shift
  setsid "$@" >>"$NODE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/pids/$name.pid"
}
# alive NAME: fails (with the log's tail) if NAME exited.
alive() {
  node_pid "$1" >/dev/null && return 0
  node_log "$1 exited; last lines of $NODE_DIR/logs/$1.log:"
  tail -n 30 "$NODE_DIR/logs/$1.log" >&2
  return 1
}
# wait_up NAME SECONDS CHECK...: waits for CHECK while NAME stays alive.
wait_up() {
  local name="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || exit 1
    ((SECONDS < deadline)) || { node_log "$name not ready after ${secs}s"; tail -n 30 "$NODE_DIR/logs/$name.log" >&2; exit 1; }
    sleep 1
  done
  node_log "${UP_WHAT:-$name up} ($((SECONDS - start_all))s)"
}
https_ok() { curl -sfk --max-time 3 "$1" | grep -qx ok; }

# ---- etcd, kube-apiserver --------------------------------------------------------------
spawn etcd "$KUBE_BIN/etcd" --name="$NODE_NAME" --data-dir="$NODE_DIR/etcd" \
  --listen-client-urls="http://$NODE_IP:2379" --advertise-client-urls="http://$NODE_IP:2379" \
  --listen-peer-urls="http://$NODE_IP:2380" --initial-advertise-peer-urls="http://$NODE_IP:2380" \
  --initial-cluster="$NODE_NAME=http://$NODE_IP:2380" --initial-cluster-state=new \
  --unsafe-no-fsync=true --log-level=warn --listen-metrics-urls=
wait_up etcd 60 curl -sf --max-time 3 "http://$NODE_IP:2379/health"

spawn kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers="http://$NODE_IP:2379" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
  --cert-dir="$NODE_DIR/pki/apiserver-generated" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" \
  --service-account-signing-key-file="$pki/sa.key" \
  --allow-privileged=true --profiling=false
wait_up kube-apiserver 120 https_ok "https://$NODE_IP:$APISERVER_PORT/readyz"

# ---- controller-manager, scheduler -----------------------------------------------------
spawn kube-controller-manager "$NODE_BIN/kube-controller-manager" \
  --kubeconfig="$NODE_DIR/kubeconfigs/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$NODE_DIR/kubeconfigs/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$NODE_DIR/kubeconfigs/controller-manager.kubeconfig" \
  --bind-address="$NODE_IP" --secure-port=10257 \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" \
  --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --profiling=false
spawn kube-scheduler "$NODE_BIN/kube-scheduler" \
  --kubeconfig="$NODE_DIR/kubeconfigs/scheduler.kubeconfig" \
  --authentication-kubeconfig="$NODE_DIR/kubeconfigs/scheduler.kubeconfig" \
  --authorization-kubeconfig="$NODE_DIR/kubeconfigs/scheduler.kubeconfig" \
  --bind-address="$NODE_IP" --secure-port=10259 \
  --leader-elect=false --profiling=false
wait_up kube-controller-manager 90 https_ok "https://$NODE_IP:10257/healthz"
wait_up kube-scheduler 90 https_ok "https://$NODE_IP:10259/healthz"

# ---- containerd + CNI ------------------------------------------------------------------
cat >"$NODE_DIR/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
# The common part of containerd's config (the same keys in config version 2 and 3).
containerd_common() {
  cat <<EOF
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
# 0: containerd itself keeps the default OOM score (a negative one is refused here).
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$NODE_DIR/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
EOF
}
# The runc runtime: cgroupfs, like kubelet's cgroupDriver (no systemd on this machine).
runc_runtime() {
  cat <<EOF
    default_runtime_name = "runc"
    [$1.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [$1.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
EOF
}
# restrict_oom_score_adj: containers ask for a negative oom_score_adj (Guaranteed pods,
# the sandbox); this machine refuses to lower it, so containerd clamps it to its own score.
if ((CONTAINERD_MAJOR >= 2)); then
  cri='plugins."io.containerd.cri.v1.runtime"'
  {
    # Version 3 is 2.0's format; 2.4 (config version 4) migrates it when it loads it.
    echo "# containerd $CONTAINERD_VERSION: config version 3."
    echo "version = 3"
    containerd_common
    cat <<EOF

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
EOF
    runc_runtime "$cri"
    cat <<EOF
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$NODE_DIR/cni/net.d"
    max_conf_num = 1
EOF
  } >"$NODE_DIR/config/containerd.toml"
else
  cri='plugins."io.containerd.grpc.v1.cri"'
  {
    echo "# containerd $CONTAINERD_VERSION: config version 2."
    echo "version = 2"
    containerd_common
    cat <<EOF

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
EOF
    runc_runtime "$cri"
    cat <<EOF
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_DIR/cni/net.d"
    max_conf_num = 1
EOF
  } >"$NODE_DIR/config/containerd.toml"
fi
# containerd finds its shim (containerd-shim-runc-v2) on PATH: its own directory first.
spawn containerd env PATH="$CONTAINERD_DIR:$PATH" "$CONTAINERD_DIR/containerd" --config "$NODE_DIR/config/containerd.toml"
echo "$CONTAINERD_DIR/ctr" >"$NODE_DIR/host/ctr"
ctr() { "$CONTAINERD_DIR/ctr" --address "$CONTAINERD_SOCK" "$@"; }
wait_up containerd 60 ctr version

# Images: built here (no registry), imported into the namespace the CRI plugin uses.
scripts/node-images.sh "$NODE_DIR/images" "$NODE_BIN/coredns"
for img in pause busybox coredns; do
  ctr -n k8s.io images import "$NODE_DIR/images/$img.tar" >/dev/null
done
# (The list is read whole first: `ctr ... | grep -q` fails under pipefail when grep stops
# reading early and ctr gets SIGPIPE.)
images="$(ctr -n k8s.io images ls -q)"
for img in "$PAUSE_IMAGE" "$BUSYBOX_IMAGE" "$COREDNS_IMAGE"; do
  grep -qx "$img" <<<"$images" || node_die "import of $img failed"
done
node_log "images imported: $PAUSE_IMAGE, $BUSYBOX_IMAGE, $COREDNS_IMAGE"

# ---- kubelet ---------------------------------------------------------------------------
cat >"$NODE_DIR/config/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: $NODE_IP
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
# This machine has cgroup v1 (hybrid: cgroup2 only at /sys/fs/cgroup/unified); kubelet
# 1.36 refuses v1 unless told not to.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: $NODE_DIR/pod-logs
# CoreDNS (deployed below) answers for the cluster domain. resolvConf "": pods get no
# search domain or nameserver of the host's, so no pod query leaves the machine.
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: ""
# A negative oom_score_adj is refused on this machine.
oomScoreAdj: 0
rotateCertificates: false
serverTLSBootstrap: false
failSwapOn: false
# The shared machine's disk is mostly others' build trees: evict only when nearly full.
evictionHard:
  memory.available: "200Mi"
  nodefs.available: "2%"
  imagefs.available: "2%"
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
maxPods: 30
EOF
spawn kubelet "$NODE_BIN/kubelet" \
  --config="$NODE_DIR/config/kubelet.yaml" \
  --kubeconfig="$NODE_DIR/kubeconfigs/kubelet.kubeconfig" \
  --root-dir="$NODE_DIR/kubelet" \
  --cert-dir="$NODE_DIR/kubelet/pki" \
  --hostname-override="$NODE_NAME" \
  --node-ip="$NODE_IP" \
  --v=2
wait_up kubelet 120 curl -sf --max-time 3 "http://$NODE_IP:10248/healthz"

# ---- kube-proxy (iptables) -------------------------------------------------------------
cat >"$NODE_DIR/config/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $NODE_DIR/kubeconfigs/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: $NODE_IP:10256
metricsBindAddress: $NODE_IP:10249
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
# NodePorts only on the node's own address, and not on 127.0.0.1 (that would set
# net.ipv4.conf.all.route_localnet on the host).
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
oomScoreAdj: 0
# 0: leave the host's conntrack table size and timeouts as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
spawn kube-proxy "$NODE_BIN/kube-proxy" --config="$NODE_DIR/config/kube-proxy.yaml" --v=2
wait_up kube-proxy 60 curl -sf --max-time 3 "http://$NODE_IP:10256/healthz"

# ---- the Node is Ready -----------------------------------------------------------------
node_ready() { [[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]; }
UP_WHAT="node $NODE_NAME Ready" wait_up kubelet 120 node_ready

# ---- CoreDNS (kube-dns Service) --------------------------------------------------------
# Upstream's deployment (coredns/deployment kubernetes/coredns.yaml.sed), trimmed: one
# replica, no forward plugin (nothing to forward to), the locally built image.
cat >"$NODE_DIR/config/coredns.yaml" <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 2s
        }
        ready
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      terminationGracePeriodSeconds: 3
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          readOnlyRootFilesystem: true
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          periodSeconds: 10
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 1
      volumes:
      - name: config
        configMap:
          name: coredns
          items: [{key: Corefile, path: Corefile}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $CLUSTER_DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
kubectl apply -f "$NODE_DIR/config/coredns.yaml" >/dev/null
coredns_ready() { kubectl -n kube-system rollout status deployment/coredns --timeout=2s; }
UP_WHAT="CoreDNS Ready at $CLUSTER_DNS_IP" wait_up kubelet 120 coredns_ready
node_log "cluster up in $((SECONDS - start_all))s"
echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
