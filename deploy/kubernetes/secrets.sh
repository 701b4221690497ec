#!/usr/bin/env bash
# Print the two TLS Secrets the manifests mount, made with zc-ctl pki; apply them before the kustomization:
#
#   deploy/kubernetes/secrets.sh PKI_DIR NODE... | kubectl apply -f -
#   kubectl apply -k deploy/kubernetes
#
# PKI_DIR is the cluster CA directory (created with `zc-ctl pki init` when it has no ca.pem yet; keep it, and
# its ca.key, off the cluster). Certificates missing from it are issued: "controller" (the controller's; its
# DNS name controller.zcrepl is what every client verifies), one per NODE (agents are named after their
# node, as the DaemonSet does with spec.nodeName), and an admin operator certificate for zc-ctl. Run it again
# with more nodes when the cluster grows: existing certificates are reused.
#
# zcrepl-controller-tls: ca.pem, controller.pem, controller.key
# zcrepl-agent-tls:      ca.pem, NODE.pem and NODE.key for every NODE
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 PKI_DIR NODE... | kubectl apply -f -" >&2
    exit 2
fi
dir=$1
shift
ZC_CTL=${ZC_CTL:-zc-ctl}
NAMESPACE=${NAMESPACE:-zcrepl}

[ -f "$dir/ca.pem" ] || "$ZC_CTL" pki init "$dir" >&2
issue() {  # NAME ARGS...: issue NAME's certificate unless it exists
    local name=$1
    shift
    [ -f "$dir/$name.pem" ] || "$ZC_CTL" pki issue "$dir" "$@" >&2
}
issue controller --controller controller
issue admin --operator admin --role admin
agent_files=(--from-file="ca.pem=$dir/ca.pem")
for node in "$@"; do
    issue "$node" --agent "$node"
    agent_files+=(--from-file="$node.pem=$dir/$node.pem" --from-file="$node.key=$dir/$node.key")
done

kubectl create secret generic zcrepl-controller-tls --namespace "$NAMESPACE" --dry-run=client -o yaml \
    --from-file="ca.pem=$dir/ca.pem" --from-file="controller.pem=$dir/controller.pem" \
    --from-file="controller.key=$dir/controller.key"
echo ---
kubectl create secret generic zcrepl-agent-tls --namespace "$NAMESPACE" --dry-run=client -o yaml "${agent_files[@]}"
